//! cogward against a bare Temporal workflow: what does governance cost a trivial run?
//!
//! ```sh
//! cargo build --release --workspace --bins && cargo bench -p cogward-e2e --bench runs
//! ```
//!
//! One `temporal server start-dev` serves both sides. The cogward side is the real release
//! `cogward serve --worker` (API, history mirror and worker in one process) with the real
//! `cogward-runner`, driven through the HTTP API. The baseline is `BareRun`, a workflow defined
//! here whose single activity runs the same command (`true`) with `std::process::Command`, on a
//! worker inside this process. Measured, in one run, side by side:
//!
//! a. end-to-end latency of one run, sequential, the two sides interleaved;
//! b. sustained throughput with 8 concurrent submitters (ABBA phases to even out drift);
//! c. sandbox start: `cogward-runner exec` running `true` versus a plain fork/exec of `true`.
//!
//! Then where the time goes: per-event gaps from Temporal's own history of the latency runs
//! (`temporal workflow show`), the runner's timestamps (`events.jsonl`), and the CPU each
//! process used per run during the throughput phases (`/proc/PID/stat`). Last, markdown rows
//! for `docs/benchmarks.md`.
//!
//! `cogward serve` gets cogward's default configuration (SQLite ledger in a fresh state
//! directory); `COGWARD_MIRROR_INTERVAL_MS`, if set, passes through. Every process started here
//! is killed when the bench ends, panics or is interrupted (Ctrl-C); on a failure the bench's
//! directory (logs, state) is kept and named.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

use anyhow::{Context, Result, bail};
use cogward_protocol::runner::{
    EVENTS_FILE, Limits, Outcome, PROTOCOL_VERSION, REQUEST_FILE, RESULT_FILE, RunnerEvent,
    RunnerRequest, RunnerResult, SandboxProfile,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use temporalio_client::{
    Client, ClientOptions, Connection, ConnectionOptions, WorkflowGetResultOptions,
    WorkflowStartOptions,
};
use temporalio_macros::{activities, workflow, workflow_methods};
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use temporalio_sdk::{
    ActivityOptions, Runtime, Worker, WorkerOptions, WorkflowContext, WorkflowResult,
};

const BENCH_COMMAND: &str =
    "cargo build --release --workspace --bins && cargo bench -p cogward-e2e --bench runs";
const BARE_TASK_QUEUE: &str = "bench-bare";
const NAMESPACE: &str = "default";

const LATENCY_WARMUP: usize = 3;
const LATENCY_N: usize = 30;
const THROUGHPUT_CONCURRENCY: usize = 8;
/// Per side; run as two halves (bare, cogward, cogward, bare).
const THROUGHPUT_RUNS: usize = 96;
const SANDBOX_N: usize = 50;
/// Pause before and after each throughput phase (not timed).
const SETTLE: Duration = Duration::from_secs(2);
const SANDBOX_WARMUP: usize = 3;
/// Long-poll per GET, and how many GETs a run may take before the bench gives up on it.
const WAIT_SECONDS: u64 = 60;
const MAX_POLLS: usize = 5;
const TERMINAL: &[&str] = &[
    "succeeded",
    "failed",
    "rejected",
    "expired",
    "cancelled",
    "denied",
];

// ---------------------------------------------------------------------------------------------
// The baseline: a bare workflow with one activity that runs the same command directly.

#[workflow]
#[derive(Default)]
pub struct BareRun;

#[workflow_methods]
impl BareRun {
    #[run]
    pub async fn run(ctx: &mut WorkflowContext<Self>, seq: u64) -> WorkflowResult<i32> {
        let code = ctx
            .execute_activity(
                BareActivities::run_true,
                seq,
                ActivityOptions::start_to_close_timeout(Duration::from_secs(60)),
            )
            .await?;
        Ok(code)
    }
}

pub struct BareActivities;

#[activities]
impl BareActivities {
    /// `true`, fork/exec'd directly; its exit code.
    #[activity]
    pub async fn run_true(_ctx: ActivityContext, _seq: u64) -> Result<i32, ActivityError> {
        let status =
            tokio::task::spawn_blocking(|| Command::new("true").stdin(Stdio::null()).status())
                .await??;
        Ok(status.code().unwrap_or(-1))
    }
}

// ---------------------------------------------------------------------------------------------
// Processes, ports, binaries.

/// `target/release`, where `cargo build --release` put the binaries (this bench runs from
/// `target/release/deps/`).
// ---------------------------------------------------------------------------------------------
// One run on each side.

#[derive(Clone)]
struct Sides {
    http: reqwest::Client,
    api: String,
    token: String,
    temporal: Client,
    seq: Arc<AtomicUsize>,
    /// GETs repeated after a transport error.
    get_retries: Arc<AtomicUsize>,
    /// For CPU accounting.
    temporal_pid: u32,
    cogward_pid: u32,
    /// Temporal's Prometheus endpoint, for request counts.
    metrics_port: u16,
}

impl Sides {
    /// Submit a trivial cogward run and long-poll it to the end: its run id.
    async fn cogward(&self) -> Result<String> {
        let spec = json!({
            "spec_version": 1,
            "agent": "bench",
            "tenant": "bench",
            "runtime": {"type": "command", "command": ["true"]},
        });
        let resp = self
            .http
            .post(format!("{}/v1/runs", self.api))
            .bearer_auth(&self.token)
            .json(&spec)
            .send()
            .await?;
        let status = resp.status();
        let run: Value = resp.json().await?;
        anyhow::ensure!(status.as_u16() == 201, "POST /v1/runs: {status} {run}");
        let id = run["run_id"].as_str().context("run_id")?.to_string();
        for _ in 0..MAX_POLLS {
            let get = || {
                self.http
                    .get(format!("{}/v1/runs/{id}?wait={WAIT_SECONDS}", self.api))
                    .bearer_auth(&self.token)
                    .send()
            };
            // A GET is safe to repeat: once, on a transport error (a pooled keep-alive
            // connection closed under it); counted and printed with the results.
            let resp = match get().await {
                Ok(resp) => resp,
                Err(e) if e.is_request() || e.is_connect() => {
                    eprintln!("GET /v1/runs/{id}: {e:#}; retrying once");
                    self.get_retries.fetch_add(1, Ordering::Relaxed);
                    get().await?
                }
                Err(e) => return Err(e.into()),
            };
            let status = resp.status();
            let v: Value = resp.json().await?;
            anyhow::ensure!(status.as_u16() == 200, "GET /v1/runs/{id}: {status} {v}");
            let s = v["status"].as_str().unwrap_or("");
            if TERMINAL.contains(&s) {
                anyhow::ensure!(s == "succeeded", "run {id} ended {s}: {v}");
                return Ok(id);
            }
        }
        bail!("run {id} not finished after {MAX_POLLS} long polls of {WAIT_SECONDS}s")
    }

    /// Start a `BareRun` and wait for its result: its workflow id.
    async fn bare(&self) -> Result<String> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed) as u64;
        let id = format!("bare-{}", uuid::Uuid::new_v4().simple());
        let handle = self
            .temporal
            .start_workflow(
                BareRun::run,
                n,
                WorkflowStartOptions::new(BARE_TASK_QUEUE, id.clone()).build(),
            )
            .await?;
        let code = handle
            .get_result(WorkflowGetResultOptions::default())
            .await?;
        anyhow::ensure!(code == 0, "BareRun {id} returned {code}");
        Ok(id)
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics.

/// Nearest-rank percentile of sorted `v` (p in 0..=100).
struct Summary {
    p50: f64,
    p90: f64,
    max: f64,
}

fn summary(v: &[f64]) -> Summary {
    let s = sorted(v);
    Summary {
        p50: pct(&s, 50.0),
        p90: pct(&s, 90.0),
        max: s.last().copied().unwrap_or(f64::NAN),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// a. Latency.

struct Latency {
    cogward: Vec<f64>,
    bare: Vec<f64>,
    cogward_ids: Vec<String>,
    bare_ids: Vec<String>,
}

async fn latency(sides: &Sides) -> Result<Latency> {
    for _ in 0..LATENCY_WARMUP {
        sides.cogward().await?;
        sides.bare().await?;
    }
    let mut l = Latency {
        cogward: Vec::new(),
        bare: Vec::new(),
        cogward_ids: Vec::new(),
        bare_ids: Vec::new(),
    };
    for _ in 0..LATENCY_N {
        let t = Instant::now();
        l.cogward_ids.push(sides.cogward().await?);
        l.cogward.push(ms(t.elapsed()));
        let t = Instant::now();
        l.bare_ids.push(sides.bare().await?);
        l.bare.push(ms(t.elapsed()));
    }
    Ok(l)
}

// ---------------------------------------------------------------------------------------------
// b. Throughput.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Bare,
    Cogward,
}

/// `runs` runs of `side` from `THROUGHPUT_CONCURRENCY` submitters: the wall time.
async fn phase(sides: &Sides, side: Side, runs: usize) -> Result<Duration> {
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..THROUGHPUT_CONCURRENCY {
        let sides = sides.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            // Bounded: each submitter takes at most `runs` jobs off the shared counter.
            for _ in 0..runs {
                if next.fetch_add(1, Ordering::Relaxed) >= runs {
                    break;
                }
                match side {
                    Side::Bare => sides.bare().await?,
                    Side::Cogward => sides.cogward().await?,
                };
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(t.elapsed())
}

/// CPU seconds (user + system) a process has used so far: (its own, its reaped children's).
fn cpu_seconds(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name's ")": state is field 3, utime 14, stime 15, cutime 16,
    // cstime 17 (proc(5)), in USER_HZ ticks (100 a second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = |range: std::ops::Range<usize>| {
        fields.get(range).map_or(0, |f| f.iter().sum::<u64>()) as f64 / 100.0
    };
    (ticks(11..13), ticks(13..15))
}

/// CPU seconds of: the temporal server, `cogward serve --worker` itself, the runners it
/// started (and reaped), this bench process (with the `true`s its bare worker ran).
fn cpu_now(sides: &Sides) -> [f64; 4] {
    let (temporal, _) = cpu_seconds(&sides.temporal_pid.to_string());
    let (serve, runners) = cpu_seconds(&sides.cogward_pid.to_string());
    let (bench, trues) = cpu_seconds("self");
    [temporal, serve, runners, bench + trues]
}

struct PhaseResult {
    side: Side,
    runs: usize,
    wall: Duration,
    /// CPU seconds used by the phase's runs (including the settling after it), as in
    /// [`cpu_now`].
    cpu: [f64; 4],
    /// CPU seconds used, all processes, during the phase's wall time only.
    busy: f64,
    /// Temporal frontend requests during the phase, by operation.
    requests: HashMap<String, f64>,
}

struct Throughput {
    bare_per_min: f64,
    cogward_per_min: f64,
    phases: Vec<PhaseResult>,
}

impl Throughput {
    /// CPU ms per run of `side`, as in [`cpu_now`].
    fn cpu_per_run(&self, side: Side) -> [f64; 4] {
        let mut total = [0.0; 4];
        let mut runs = 0;
        for p in self.phases.iter().filter(|p| p.side == side) {
            runs += p.runs;
            for (t, c) in total.iter_mut().zip(p.cpu) {
                *t += c;
            }
        }
        total.map(|t| t * 1000.0 / runs.max(1) as f64)
    }

    /// Temporal frontend requests per run of `side`, by operation.
    fn requests_per_run(&self, side: Side) -> HashMap<String, f64> {
        let mut total: HashMap<String, f64> = HashMap::new();
        let mut runs = 0;
        for p in self.phases.iter().filter(|p| p.side == side) {
            runs += p.runs;
            for (op, n) in &p.requests {
                *total.entry(op.clone()).or_insert(0.0) += n;
            }
        }
        total
            .into_iter()
            .map(|(op, n)| (op, n / runs.max(1) as f64))
            .collect()
    }
}

async fn throughput(sides: &Sides) -> Result<Throughput> {
    let half = THROUGHPUT_RUNS / 2;
    let order = [Side::Bare, Side::Cogward, Side::Cogward, Side::Bare];
    let mut phases = Vec::new();
    for side in order {
        // Let the previous phase's trailing work (the mirror catching up) and Temporal's metrics
        // reporting settle, so each phase is charged for its own runs.
        tokio::time::sleep(SETTLE).await;
        let requests_before = frontend_requests(&sides.http, sides.metrics_port).await;
        let before = cpu_now(sides);
        let wall = phase(sides, side, half).await?;
        let at_end = cpu_now(sides);
        tokio::time::sleep(SETTLE).await;
        let after = cpu_now(sides);
        let requests_after = frontend_requests(&sides.http, sides.metrics_port).await;
        let requests = requests_after
            .into_iter()
            .map(|(op, n)| {
                let was = requests_before.get(&op).copied().unwrap_or(0.0);
                (op, n - was)
            })
            .filter(|(_, n)| *n > 0.0)
            .collect();
        eprintln!(
            "  throughput phase: {half} {side:?} runs in {:.1}s",
            wall.as_secs_f64()
        );
        phases.push(PhaseResult {
            side,
            runs: half,
            wall,
            cpu: [0, 1, 2, 3].map(|i| after[i] - before[i]),
            busy: [0, 1, 2, 3].map(|i| at_end[i] - before[i]).iter().sum(),
            requests,
        });
    }
    let per_min = |which: Side| {
        let (n, secs) = phases
            .iter()
            .filter(|p| p.side == which)
            .fold((0usize, 0f64), |(n, t), p| {
                (n + p.runs, t + p.wall.as_secs_f64())
            });
        n as f64 / secs * 60.0
    };
    Ok(Throughput {
        bare_per_min: per_min(Side::Bare),
        cogward_per_min: per_min(Side::Cogward),
        phases,
    })
}

// ---------------------------------------------------------------------------------------------
// c. Sandbox start.

struct Sandbox {
    runner: Vec<f64>,
    plain: Vec<f64>,
    /// Runner spawned → agent started (its `started` event), ms.
    to_agent_start: Vec<f64>,
}

fn runner_request(i: usize) -> RunnerRequest {
    RunnerRequest {
        protocol: PROTOCOL_VERSION,
        run_id: format!("bench-sandbox-{i}"),
        argv: vec!["true".into()],
        // What the StartRunner activity gives a run without inputs.
        env: BTreeMap::from([("COGWARD_INPUTS".to_string(), "{}".to_string())]),
        limits: Limits {
            cpu_seconds: 10,
            memory_bytes: 512 * 1024 * 1024,
            max_processes: 64,
            wall_clock_seconds: 30,
            grace_seconds: 1,
            max_output_bytes: 1024 * 1024,
            max_file_bytes: 1 << 30,
            max_open_files: 1024,
        },
        sandbox: SandboxProfile::default(),
        gateway: None,
        egress_proxy: None,
        files: BTreeMap::new(),
        checkout: None,
        home_files: BTreeMap::new(),
        secrets: Vec::new(),
    }
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One `cogward-runner exec` of `true` in a fresh run directory: (wall ms, ms to agent start).
fn runner_once(runner: &Path, root: &Path, i: usize) -> Result<(f64, f64)> {
    let dir = root.join(format!("run-{i}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join(REQUEST_FILE),
        serde_json::to_vec_pretty(&runner_request(i))?,
    )?;
    let mut cmd = Command::new(runner);
    // As the StartRunner activity starts it: empty environment, no stdio.
    cmd.arg("exec")
        .arg("--dir")
        .arg(&dir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let spawned_at = epoch_ms();
    let t = Instant::now();
    let status = cmd.status()?;
    let wall = ms(t.elapsed());
    anyhow::ensure!(
        status.success(),
        "cogward-runner exec --dir {}: {status}",
        dir.display()
    );
    let result: RunnerResult = serde_json::from_slice(&std::fs::read(dir.join(RESULT_FILE))?)?;
    anyhow::ensure!(
        result.outcome == Outcome::Exited && result.exit_code == Some(0),
        "runner result: {result:?}"
    );
    let started_at = std::fs::read_to_string(dir.join(EVENTS_FILE))?
        .lines()
        .filter_map(|l| serde_json::from_str::<RunnerEvent>(l).ok())
        .find_map(|e| match e {
            RunnerEvent::Started { at_ms, .. } => Some(at_ms),
            _ => None,
        })
        .context("no started event")?;
    Ok((wall, started_at.saturating_sub(spawned_at) as f64))
}

fn plain_once() -> Result<f64> {
    let t = Instant::now();
    let status = Command::new("true").stdin(Stdio::null()).status()?;
    let wall = ms(t.elapsed());
    anyhow::ensure!(status.success(), "true: {status}");
    Ok(wall)
}

fn sandbox(runner: &Path, root: &Path) -> Result<Sandbox> {
    std::fs::create_dir_all(root)?;
    for i in 0..SANDBOX_WARMUP {
        runner_once(runner, root, 10_000 + i)?;
        plain_once()?;
    }
    let mut s = Sandbox {
        runner: Vec::new(),
        plain: Vec::new(),
        to_agent_start: Vec::new(),
    };
    for i in 0..SANDBOX_N {
        let (wall, to_start) = runner_once(runner, root, i)?;
        s.runner.push(wall);
        s.to_agent_start.push(to_start);
        s.plain.push(plain_once()?);
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// Where the time goes: Temporal's own history of the latency runs.

/// An event type without its prefix and separators: `ACTIVITYTASKSCHEDULED`.
fn norm_type(e: &Value) -> String {
    e["eventType"]
        .as_str()
        .unwrap_or("")
        .to_uppercase()
        .replace(['_', '-'], "")
        .trim_start_matches("EVENTTYPE")
        .to_string()
}

fn event_ms(e: &Value) -> Option<f64> {
    let t = e["eventTime"].as_str()?;
    let dt = chrono::DateTime::parse_from_rfc3339(t).ok()?;
    Some(dt.timestamp_micros() as f64 / 1000.0)
}

fn id_of(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
}

/// Phase durations (ms) of one workflow, from `temporal workflow show --output json`, plus the
/// absolute (epoch ms) start and close times.
struct Phases {
    named: Vec<(String, f64)>,
    /// Every event, labelled `id type`, with the ms since the previous event.
    timeline: Vec<(String, f64)>,
    started: f64,
    closed: f64,
    /// Per activity type: (started, completed) epoch ms.
    activity_times: HashMap<String, (f64, f64)>,
}

fn history_phases(temporal: &Path, port: u16, workflow_id: &str) -> Result<Phases> {
    let out = Command::new(temporal)
        .args(["workflow", "show", "-w", workflow_id, "--output", "json"])
        .args(["--address", &format!("127.0.0.1:{port}")])
        .args(["--namespace", NAMESPACE])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "temporal workflow show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let events = v["events"].as_array().context("events")?;
    let mut started = None;
    let mut closed = None;
    let mut scheduled: HashMap<i64, (String, f64)> = HashMap::new();
    let mut act_started: HashMap<i64, f64> = HashMap::new();
    let mut named = Vec::new();
    let mut activity_times = HashMap::new();
    let mut last_mark = None;
    let mut timeline = Vec::new();
    let mut previous = None;
    for e in events {
        let ty = norm_type(e);
        let Some(t) = event_ms(e) else { continue };
        let id = id_of(&e["eventId"]).unwrap_or(0);
        timeline.push((format!("{id:>2} {ty}"), previous.map_or(0.0, |p| t - p)));
        previous = Some(t);
        match ty.as_str() {
            "WORKFLOWEXECUTIONSTARTED" => {
                started = Some(t);
                last_mark = Some(t);
            }
            "ACTIVITYTASKSCHEDULED" => {
                let name = e["activityTaskScheduledEventAttributes"]["activityType"]["name"]
                    .as_str()
                    .unwrap_or("activity")
                    .to_string();
                if let Some(m) = last_mark {
                    named.push((format!("workflow task → schedule {name}"), t - m));
                }
                scheduled.insert(id, (name, t));
            }
            "ACTIVITYTASKSTARTED" => {
                let sid = id_of(&e["activityTaskStartedEventAttributes"]["scheduledEventId"])
                    .unwrap_or(-1);
                if let Some((name, st)) = scheduled.get(&sid) {
                    named.push((format!("{name}: queued (scheduled → started)"), t - st));
                }
                act_started.insert(sid, t);
            }
            "ACTIVITYTASKCOMPLETED" => {
                let sid = id_of(&e["activityTaskCompletedEventAttributes"]["scheduledEventId"])
                    .unwrap_or(-1);
                if let (Some((name, _)), Some(st)) = (scheduled.get(&sid), act_started.get(&sid)) {
                    named.push((format!("{name}: executing (started → completed)"), t - st));
                    activity_times.insert(name.clone(), (*st, t));
                }
                last_mark = Some(t);
            }
            "WORKFLOWEXECUTIONCOMPLETED" => {
                if let Some(m) = last_mark {
                    named.push(("last completion → workflow completed".into(), t - m));
                }
                closed = Some(t);
            }
            _ => {}
        }
    }
    let (started, closed) = (
        started.context("no WorkflowExecutionStarted")?,
        closed.context("no WorkflowExecutionCompleted")?,
    );
    Ok(Phases {
        named,
        timeline,
        started,
        closed,
        activity_times,
    })
}

/// Labelled milliseconds: p50 and p90.
type Rows = Vec<(String, f64, f64)>;

/// p50 and p90 of each named phase over many workflows, in first-seen order.
fn phase_percentiles(all: &[Vec<(String, f64)>]) -> Rows {
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, Vec<f64>> = HashMap::new();
    for phases in all {
        for (name, v) in phases {
            if !values.contains_key(name) {
                order.push(name.clone());
            }
            values.entry(name.clone()).or_default().push(*v);
        }
    }
    order
        .into_iter()
        .map(|n| {
            let s = sorted(&values[&n]);
            (n, pct(&s, 50.0), pct(&s, 90.0))
        })
        .collect()
}

fn breakdown(
    env: &Env,
    temporal: &Path,
    ids: &[String],
    e2e: &[f64],
    cogward: bool,
) -> Result<(Rows, Rows)> {
    let mut all = Vec::new();
    let mut timelines = Vec::new();
    for (id, total) in ids.iter().zip(e2e) {
        let p = history_phases(temporal, env.temporal_port, id)?;
        let mut named = Vec::new();
        let in_temporal = p.closed - p.started;
        named.push(("end to end (client)".to_string(), *total));
        named.push(("workflow started → completed".to_string(), in_temporal));
        named.push((
            "client overhead (submit + result delivery)".to_string(),
            total - in_temporal,
        ));
        named.extend(p.named);
        timelines.push(p.timeline);
        if cogward {
            // The runner's own timestamps (epoch ms, same clock) inside start_runner.
            let run_dir = env.state_dir().join("runs").join(id);
            let events = std::fs::read_to_string(run_dir.join(EVENTS_FILE)).unwrap_or_default();
            let mut agent_started = None;
            let mut finished = None;
            for ev in events
                .lines()
                .filter_map(|l| serde_json::from_str::<RunnerEvent>(l).ok())
            {
                match ev {
                    RunnerEvent::Started { at_ms, .. } => agent_started = Some(at_ms as f64),
                    RunnerEvent::Finished { at_ms } => finished = Some(at_ms as f64),
                    _ => {}
                }
            }
            let runner_activity = p
                .activity_times
                .iter()
                .find(|(name, _)| name.contains("runner"))
                .map(|(_, t)| *t);
            if let (Some((act_start, act_done)), Some(agent), Some(fin)) =
                (runner_activity, agent_started, finished)
            {
                named.push((
                    "  runner: activity started → agent started (spawn + sandbox)".into(),
                    agent - act_start,
                ));
                named.push((
                    "  runner: agent started → result.json written".into(),
                    fin - agent,
                ));
                named.push((
                    "  runner: result.json → activity completed (poll + RPC)".into(),
                    act_done - fin,
                ));
            }
        }
        all.push(named);
    }
    Ok((phase_percentiles(&all), phase_percentiles(&timelines)))
}

// ---------------------------------------------------------------------------------------------

async fn connect(port: u16) -> Result<Client> {
    let url = temporalio_client::Url::parse(&format!("http://127.0.0.1:{port}"))?;
    let mut last = None;
    for _ in 0..80 {
        match Connection::connect(ConnectionOptions::new(url.clone()).build()).await {
            Ok(conn) => return Ok(Client::new(conn, ClientOptions::new(NAMESPACE).build())?),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("connecting to Temporal on 127.0.0.1:{port}: {last:?}")
}

struct Results {
    get_retries: usize,
    lat: Latency,
    thr: Throughput,
    sb: Sandbox,
}

async fn measure(sides: &Sides, env: &Env) -> Result<Results> {
    eprintln!(
        "a. latency: {LATENCY_WARMUP} warm-up + {LATENCY_N} interleaved runs of each side ..."
    );
    let lat = latency(sides).await?;
    eprintln!(
        "b. throughput: {THROUGHPUT_RUNS} runs of each side, {THROUGHPUT_CONCURRENCY} concurrent ..."
    );
    let thr = throughput(sides).await?;
    eprintln!("c. sandbox start: {SANDBOX_N} interleaved runs of each ...");
    let runner = env.runner.clone();
    let root = env.dir.join("sandbox");
    let sb = tokio::task::spawn_blocking(move || sandbox(&runner, &root)).await??;
    Ok(Results {
        get_retries: sides.get_retries.load(Ordering::Relaxed),
        lat,
        thr,
        sb,
    })
}

fn print_results(env: &Env, r: &Results, temporal: &Path, elapsed: Duration) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    println!();
    println!("cogward vs a bare Temporal workflow — trivial command `true`");
    println!("date {date}; {cpus} CPUs; one temporal dev server (SQLite, WAL) for both sides");
    let mirror = std::env::var("COGWARD_MIRROR_INTERVAL_MS")
        .map_or_else(|_| "default".to_string(), |v| format!("{v} ms"));
    println!("cogward: serve --worker, SQLite ledger, history mirror interval {mirror}");
    println!();

    let c = summary(&r.lat.cogward);
    let b = summary(&r.lat.bare);
    println!(
        "a. end-to-end latency, sequential, N={LATENCY_N} each, interleaved ({LATENCY_WARMUP} warm-up each)"
    );
    println!(
        "   {:<26} {:>9} {:>9} {:>9}",
        "", "p50 ms", "p90 ms", "max ms"
    );
    println!(
        "   {:<26} {:>9.1} {:>9.1} {:>9.1}",
        "bare workflow (BareRun)", b.p50, b.p90, b.max
    );
    println!(
        "   {:<26} {:>9.1} {:>9.1} {:>9.1}",
        "cogward run (API)", c.p50, c.p90, c.max
    );
    let lat50 = c.p50 / b.p50;
    let lat90 = c.p90 / b.p90;
    println!(
        "   {:<26} {:>8.2}× {:>8.2}×",
        "ratio cogward/bare", lat50, lat90
    );
    println!();

    let t = &r.thr;
    let thr_ratio = t.cogward_per_min / t.bare_per_min;
    println!(
        "b. sustained throughput, {THROUGHPUT_CONCURRENCY} concurrent submitters, {THROUGHPUT_RUNS} runs each side (phases bare, cogward, cogward, bare)"
    );
    let cpus_f = cpus.max(1) as f64;
    for p in &t.phases {
        let wall = p.wall.as_secs_f64();
        println!(
            "   phase {:<8} {:>3} runs in {:>6.2}s = {:>6.0} runs/min; CPU busy {:>3.0}%",
            format!("{:?}", p.side),
            p.runs,
            wall,
            p.runs as f64 / wall * 60.0,
            p.busy / wall / cpus_f * 100.0
        );
    }
    println!("   bare workflow        {:>7.0} runs/min", t.bare_per_min);
    println!(
        "   cogward run          {:>7.0} runs/min",
        t.cogward_per_min
    );
    println!("   ratio cogward/bare   {thr_ratio:>7.2}×");
    println!(
        "   (CPU from /proc: temporal server; `cogward serve --worker`; the cogward-runners it \
         reaped; this bench process, i.e. the client plus, for bare, its worker and `true`s)"
    );
    println!(
        "   CPU ms per run       {:>9} {:>9} {:>9} {:>9} {:>9}",
        "temporal", "cogward", "runners", "bench", "total"
    );
    for (label, side) in [
        ("bare workflow", Side::Bare),
        ("cogward run", Side::Cogward),
    ] {
        let c = t.cpu_per_run(side);
        println!(
            "   {label:<20} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            c[0],
            c[1],
            c[2],
            c[3],
            c.iter().sum::<f64>()
        );
    }
    let bare_rpcs = t.requests_per_run(Side::Bare);
    let cog_rpcs = t.requests_per_run(Side::Cogward);
    let mut ops: Vec<&String> = bare_rpcs.keys().chain(cog_rpcs.keys()).collect();
    ops.sort();
    ops.dedup();
    let rate = |m: &HashMap<String, f64>, op: &str| m.get(op).copied().unwrap_or(0.0);
    ops.sort_by(|a, b| rate(&cog_rpcs, b).total_cmp(&rate(&cog_rpcs, a)));
    println!("   Temporal frontend requests per run (its service_requests metric)");
    println!("   {:<38} {:>9} {:>9}", "operation", "bare", "cogward");
    for op in ops {
        let (b, c) = (rate(&bare_rpcs, op), rate(&cog_rpcs, op));
        if b >= 0.05 || c >= 0.05 {
            println!("   {op:<38} {b:>9.2} {c:>9.2}");
        }
    }
    println!();

    let sr = summary(&r.sb.runner);
    let sp = summary(&r.sb.plain);
    let ss = summary(&r.sb.to_agent_start);
    let added = sr.p50 - sp.p50;
    println!("c. sandbox start, N={SANDBOX_N} each, interleaved");
    println!(
        "   {:<34} {:>9} {:>9} {:>9}",
        "", "p50 ms", "p90 ms", "max ms"
    );
    println!(
        "   {:<34} {:>9.2} {:>9.2} {:>9.2}",
        "plain fork/exec of `true`", sp.p50, sp.p90, sp.max
    );
    println!(
        "   {:<34} {:>9.2} {:>9.2} {:>9.2}",
        "cogward-runner exec (`true`)", sr.p50, sr.p90, sr.max
    );
    println!(
        "   {:<34} {:>9.0} {:>9.0} {:>9.0}",
        "  of which: spawn → agent started", ss.p50, ss.p90, ss.max
    );
    println!("   added at p50: {added:.2} ms");
    println!();

    println!(
        "where the time goes (over the {LATENCY_N} latency runs: Temporal's history, the runner's timestamps)"
    );
    for (label, ids, e2e, cog) in [
        ("bare workflow", &r.lat.bare_ids, &r.lat.bare, false),
        ("cogward run", &r.lat.cogward_ids, &r.lat.cogward, true),
    ] {
        println!("   {label}:");
        match breakdown(env, temporal, ids, e2e, cog) {
            Ok((rows, timeline)) => {
                println!("     {:<62} {:>8} {:>8}", "", "p50 ms", "p90 ms");
                for (name, p50, p90) in rows {
                    println!("     {name:<62} {p50:>8.1} {p90:>8.1}");
                }
                println!("     every history event, ms after the previous one:");
                for (name, p50, p90) in timeline {
                    println!("       {name:<60} {p50:>8.1} {p90:>8.1}");
                }
            }
            Err(e) => println!("     (history unavailable: {e:#})"),
        }
    }
    println!();

    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    println!("markdown rows for docs/benchmarks.md ({date}; `{BENCH_COMMAND}`):");
    println!();
    println!("| measure | bare Temporal workflow | cogward | cogward / bare | target | |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| latency p50, sequential, N={LATENCY_N} | {:.1} ms | {:.1} ms | {lat50:.2}× | ≤ 1.2× | {} |",
        b.p50,
        c.p50,
        verdict(lat50 <= 1.2)
    );
    println!(
        "| latency p90 | {:.1} ms | {:.1} ms | {lat90:.2}× | | |",
        b.p90, c.p90
    );
    println!(
        "| latency max | {:.1} ms | {:.1} ms | {:.2}× | | |",
        b.max,
        c.max,
        c.max / b.max
    );
    println!(
        "| throughput, {THROUGHPUT_CONCURRENCY} concurrent, {THROUGHPUT_RUNS} runs | {:.0} runs/min | {:.0} runs/min | {thr_ratio:.2}× | ≥ 0.8× | {} |",
        t.bare_per_min,
        t.cogward_per_min,
        verdict(thr_ratio >= 0.8)
    );
    let (cpu_b, cpu_c) = (
        t.cpu_per_run(Side::Bare).iter().sum::<f64>(),
        t.cpu_per_run(Side::Cogward).iter().sum::<f64>(),
    );
    println!(
        "| CPU per run during b, all processes | {cpu_b:.1} ms | {cpu_c:.1} ms | {:.2}× | | |",
        cpu_c / cpu_b
    );
    println!(
        "| sandbox start p50, N={SANDBOX_N} (fork/exec vs runner) | {:.2} ms | {:.2} ms | +{added:.2} ms | ≤ +25 ms | {} |",
        sp.p50,
        sr.p50,
        verdict(added <= 25.0)
    );
    println!(
        "| sandbox start p90 | {:.2} ms | {:.2} ms | +{:.2} ms | | |",
        sp.p90,
        sr.p90,
        sr.p90 - sp.p90
    );
    println!();
    println!(
        "bench wall time: {:.0}s; GETs retried after a transport error: {}",
        elapsed.as_secs_f64(),
        r.get_retries
    );
    Ok(())
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let started = Instant::now();
    let cogward = release_bin("cogward");
    let runner = release_bin("cogward-runner");
    let temporal = temporal_bin();
    let tmp = tempfile::Builder::new()
        .prefix("cogward-bench-")
        .tempdir()?;
    let env = Env {
        dir: tmp.path().to_path_buf(),
        temporal_port: free_port_triple(),
        api_port: free_port(),
        gateway_port: free_port(),
        cogward,
        runner,
    };
    eprintln!("bench directory {}", env.dir.display());
    let temporal_guard = start_temporal(&env)?;
    let token = add_principal(&env, "submit,read")?;
    let serve_guard = start_cogward(&env)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let results = rt.block_on(async {
        let sdk = Runtime::from_current_tokio(Default::default())?;
        let client = connect(env.temporal_port).await?;
        let options = WorkerOptions::new(BARE_TASK_QUEUE)
            .register_workflow::<BareRun>()?
            .register_activities(BareActivities)
            .build();
        let mut worker = Worker::new(&sdk, client.clone(), options)?;
        let sides = Sides {
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(WAIT_SECONDS + 30))
                .build()?,
            api: format!("http://127.0.0.1:{}", env.api_port),
            token,
            temporal: client,
            seq: Arc::new(AtomicUsize::new(0)),
            get_retries: Arc::new(AtomicUsize::new(0)),
            temporal_pid: temporal_guard.child.id(),
            cogward_pid: serve_guard.child.id(),
            metrics_port: env.temporal_port + 2,
        };
        // The worker's future is not Send: it runs here, beside the measurements.
        tokio::select! {
            r = worker.run() => bail!("the bench worker stopped: {r:?}"),
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            r = measure(&sides, &env) => r,
        }
    });
    let results = match results {
        Ok(r) => r,
        Err(e) => {
            drop(rt);
            drop(serve_guard);
            drop(temporal_guard);
            let kept = tmp.keep();
            eprintln!(
                "bench failed; logs and state kept in {} (serve.log, temporal.log, state/)",
                kept.display()
            );
            return Err(e);
        }
    };
    print_results(&env, &results, &temporal, started.elapsed())?;
    drop(rt);
    drop(serve_guard);
    drop(temporal_guard);
    Ok(())
}
