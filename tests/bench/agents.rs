//! One scripted Claude Code task end to end: governed by cogward versus the bare CLI.
//!
//! ```sh
//! source scripts/setup.sh && cargo build --release --workspace --bins && cargo bench -p cogward-e2e --bench agents
//! ```
//!
//! Both sides run the same Claude Code binary (installed by `scripts/setup.sh`) through the same
//! scripted task of `tests/fakes/scripted_agent.py` (write, read and edit a file, a command,
//! three MCP calls, a final message) against the same fake provider (`fake_provider.py`) and
//! the same MCP server (`server-everything` over Streamable HTTP):
//!
//! - **bare**: the CLI started directly on the host (no sandbox, no gateway), its model calls to
//!   the provider and its MCP client to server-everything;
//! - **cogward**: a `claude-code` run in the `strict` sandbox submitted to the real release
//!   `cogward serve --worker`, its calls through the gateway (every call decided by the
//!   model-access, budget and tool-access policies and recorded), its evidence stored.
//!
//! The sides alternate, `RUNS` each. For the cogward side, the time is split by the runner's
//! and the provider's clocks and the ledger: submit → runner spawned (admission, workflow),
//! sandbox start (spawned → agent started), CLI start (agent started → its first model request at
//! the provider), gateway (the calls' gateway time: latency minus upstream latency, from the
//! ledger), agent (the rest of the agent's life), and after (agent exit → run `succeeded`:
//! credential revocation, evidence store, workflow completion). CPU: the agent's process tree
//! (the runner's rusage of the sandbox; the bare CLI's rusage), and `cogward serve`'s own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use anyhow::{Context, Result, bail};
use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BENCH_COMMAND: &str = "source scripts/setup.sh && cargo build --release --workspace --bins && cargo bench -p cogward-e2e --bench agents";
const RUNS: usize = 5;
const MODEL: &str = "scripted-agent-bench";

fn agents_dir() -> String {
    std::env::var("COGWARD_AGENTS_DIR").unwrap_or_else(|_| "/opt/cogward-tools/agents".into())
}

fn claude_bin() -> String {
    format!(
        "{}/node_modules/@anthropic-ai/claude-code-linux-x64/claude",
        agents_dir()
    )
}

/// CPU of this process's reaped children so far, in milliseconds.
fn children_cpu_ms() -> f64 {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    let ms = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 * 1e3 + t.tv_usec() as f64 / 1e3;
    ms(u.user_time()) + ms(u.system_time())
}

/// CPU a process has used (utime + stime), in milliseconds.
fn process_cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    ticks * 1000.0 / 100.0
}

/// The bare CLI through the task, directly; (wall ms, CPU ms).
fn bare_run(dir: &Path, provider: &str, mcp_url: &str, i: usize) -> Result<(f64, f64)> {
    let home = dir.join(format!("bare-home-{i}"));
    let work = dir.join(format!("bare-work-{i}"));
    std::fs::create_dir_all(&home)?;
    std::fs::create_dir_all(&work)?;
    let mcp = dir.join("bare-mcp.json");
    std::fs::write(
        &mcp,
        json!({"mcpServers": {"cogward": {"type": "http", "url": mcp_url}}}).to_string(),
    )?;
    let cpu0 = children_cpu_ms();
    let t = Instant::now();
    let out = Command::new(claude_bin())
        .current_dir(&work)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &home)
        .env("ANTHROPIC_BASE_URL", provider)
        .env("ANTHROPIC_API_KEY", "sk-fake-provider-key")
        .envs(
            [
                "DISABLE_TELEMETRY",
                "DISABLE_ERROR_REPORTING",
                "DISABLE_AUTOUPDATER",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
            ]
            .map(|k| (k, "1")),
        )
        .args(["-p", "--output-format", "stream-json", "--verbose"])
        .args(["--no-session-persistence", "--model", MODEL])
        .args(["--permission-mode", "acceptEdits", "--strict-mcp-config"])
        .args(["--allowedTools", "Bash,Edit,Write,Read,mcp__cogward"])
        .arg("--mcp-config")
        .arg(&mcp)
        .args(["--", "Do the scripted task."])
        .stdin(Stdio::null())
        .output()?;
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("All scripted steps done") {
        bail!(
            "the bare CLI did not finish the task: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((wall, children_cpu_ms() - cpu0))
}

/// One governed run's figures, in milliseconds.
#[derive(Debug, Default, Clone)]
struct Split {
    total: f64,
    to_spawn: f64,
    sandbox: f64,
    cli_start: f64,
    gateway: f64,
    /// Calls the gateway decided and recorded for the run (model and tool).
    calls: f64,
    agent: f64,
    after: f64,
    agent_cpu: f64,
    engine_cpu: f64,
}

fn mtime_ms(p: &Path) -> Result<f64> {
    let t = std::fs::metadata(p)?.modified()?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)?.as_secs_f64() * 1e3)
}

fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3
}

async fn governed_run(
    env: &Env,
    http: &reqwest::Client,
    token: &str,
    provider_log: &Path,
    serve_pid: u32,
) -> Result<Split> {
    let api = format!("http://127.0.0.1:{}", env.api_port);
    let spec = json!({"spec_version": 1, "agent": "bench-agent", "tenant": "bench",
        "runtime": {"type": "claude-code", "prompt": "Do the scripted task.", "model": MODEL,
                    "mcp_servers": ["everything"], "allowed_tools": ["Bash", "Edit", "Write", "Read"]},
        "sandbox_profile": "strict",
        "limits": {"wall_clock_seconds": 300, "cpu_seconds": 300, "memory_mb": 2048, "max_processes": 256}});
    let engine_cpu0 = process_cpu_ms(serve_pid);
    let submitted = epoch_ms();
    let t = Instant::now();
    let v: Value = http
        .post(format!("{api}/v1/runs"))
        .bearer_auth(token)
        .json(&spec)
        .send()
        .await?
        .json()
        .await?;
    let id = v["run_id"]
        .as_str()
        .with_context(|| format!("submit: {v}"))?
        .to_string();
    // As a pipeline waits (`cogward run submit --wait`): for the workflow's own result.
    let run: Value = http
        .get(format!("{api}/v1/runs/{id}?wait=300"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    if run["status"] != "succeeded" {
        bail!("run {id} ended {}: {run}", run["status"]);
    }
    let total = t.elapsed().as_secs_f64() * 1e3;
    let engine_cpu = process_cpu_ms(serve_pid) - engine_cpu0;
    let dir = env.state_dir().join("runs").join(&id);
    let result = &run["summary"]["evidence"];
    let started = result["started_at_ms"].as_f64().context("started_at_ms")?;
    let finished = result["finished_at_ms"]
        .as_f64()
        .context("finished_at_ms")?;
    let agent_cpu = result["cpu_ms"]["user"].as_f64().unwrap_or(0.0)
        + result["cpu_ms"]["system"].as_f64().unwrap_or(0.0);
    let spawned = mtime_ms(&dir.join("spawned"))?;
    // The provider's first request from this run (the only one in flight at a time).
    let first_call = std::fs::read_to_string(provider_log)?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|l| l["t_ms"].as_f64())
        .find(|&t| t >= started)
        .context("no model request from the run")?;
    let history: Value = http
        .get(format!("{api}/v1/runs/{id}/history"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    let (mut gateway_us, mut calls) = (0.0, 0.0);
    for e in history["entries"].as_array().into_iter().flatten() {
        if e["event_type"] == "gateway.model_call" || e["event_type"] == "gateway.tool_call" {
            calls += 1.0;
            let body: Value = serde_json::from_str(e["body"].as_str().unwrap_or("{}"))?;
            gateway_us += body["latency_us"].as_f64().unwrap_or(0.0)
                - body["upstream_latency_us"].as_f64().unwrap_or(0.0);
        }
    }
    let gateway = gateway_us / 1e3;
    let cli_start = first_call - started;
    Ok(Split {
        total,
        to_spawn: spawned - submitted,
        sandbox: started - spawned,
        cli_start,
        gateway,
        calls,
        agent: (finished - first_call - gateway).max(0.0),
        after: (submitted + total - finished).max(0.0),
        agent_cpu,
        engine_cpu,
    })
}

fn main() -> Result<()> {
    anyhow::ensure!(
        Path::new(&claude_bin()).is_file(),
        "Claude Code is missing: `source scripts/setup.sh` installs it"
    );
    let (_dir, env) = Env::release("cogward-agentbench")?;
    let provider_log = env.dir.join("provider.log");
    let provider_port = free_port();
    let mut provider_cmd = Command::new("python3");
    provider_cmd
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fakes/fake_provider.py"))
        .args(["--port", &provider_port.to_string()])
        .args(["--api-key", "sk-fake-provider-key", "--log"])
        .arg(&provider_log);
    let provider = Guard::spawn("fake provider", provider_cmd, env.dir.join("provider.out"))?;
    wait_port(
        provider_port,
        Duration::from_secs(30),
        "fake provider",
        &provider.log,
    )?;
    let provider_url = format!("http://127.0.0.1:{provider_port}");
    let (_upstream, upstream_url) = start_everything(&env)?;
    std::fs::create_dir_all(env.state_dir())?;
    std::fs::write(
        env.state_dir().join("gateway.json"),
        json!({
            "providers": {"anthropic": {"wire": "anthropic", "base_url": provider_url, "api_key_env": "BENCH_PROVIDER_KEY"}},
            "prices": [{"provider": "anthropic", "model": "scripted-agent*", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 5.0}],
            "region": "us",
            "mcp_servers": [{"name": "everything", "transport": {"http": {"url": upstream_url}}}]
        })
        .to_string(),
    )?;
    let token = add_principal(&env, "submit,read,operate")?;
    let _temporal = start_temporal(&env)?;
    let mut serve_cmd = env.cogward();
    serve_cmd
        .args(["serve", "--worker"])
        .env("BENCH_PROVIDER_KEY", "sk-fake-provider-key");
    let serve = Guard::spawn(
        "cogward serve --worker",
        serve_cmd,
        env.dir.join("serve.log"),
    )?;
    wait_port(
        env.api_port,
        Duration::from_secs(60),
        "cogward serve",
        &serve.log,
    )?;
    let serve_pid = serve.child.id();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let policies = [
            ("model-access", "bench-models", "model.call",
             json!({"tenants": {"bench": {"tiers": {"standard": [{"provider": "anthropic", "models": ["scripted-agent*"]}]}}},
                    "residency": {"anthropic": ["us"]}})),
            ("budget", "bench-budget", "budget.spend",
             json!({"tenants": {"bench": {"run_max_tokens": 10000000, "run_max_cost_usd": 100.0,
                                          "tenant_daily_max_cost_usd": 10000.0, "throttle_from": 0.99, "max_delay_ms": 0}}})),
            ("tool-access", "bench-tools", "tool.call",
             json!({"tenants": {"bench": {"default_scope": ["everything.echo", "everything.get-sum"],
                    "arguments": [{"tools": ["everything.echo"], "pointer": "/message", "deny": ["*rm -rf*"], "reason": "no"}]}}})),
        ];
        for (builtin, name, kind, data) in policies {
            let file = env.dir.join(format!("{name}.json"));
            std::fs::write(&file, data.to_string())?;
            for args in [
                vec!["policy".to_string(), "push".into(), format!("builtin:{builtin}"), "--name".into(), name.into(), "--data".into(), file.display().to_string()],
                vec!["policy".into(), "bind".into(), "--tenant".into(), "bench".into(), "--kind".into(), kind.into(), "--name".into(), name.into(), "--version".into(), "1".into()],
            ] {
                let out = env
                    .cogward()
                    .env("COGWARD_TOKEN", &token)
                    .env("COGWARD_API", format!("http://127.0.0.1:{}", env.api_port))
                    .args(&args)
                    .output()?;
                anyhow::ensure!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        let http = reqwest::Client::new();
        // Warm-up: one of each (the worker connecting to Temporal, page cache).
        let mut warm = None;
        for _ in 0..100 {
            match governed_run(&env, &http, &token, &provider_log, serve_pid).await {
                Ok(s) => {
                    warm = Some(s);
                    break;
                }
                Err(e) if e.to_string().contains("submit") => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => return Err(e),
            }
        }
        warm.context("the warm-up run never started")?;
        bare_run(&env.dir, &provider_url, &upstream_url, 0)?;
        let (mut bare, mut bare_cpu, mut gov) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..RUNS {
            let (wall, cpu) = bare_run(&env.dir, &provider_url, &upstream_url, i + 1)?;
            bare.push(wall);
            bare_cpu.push(cpu);
            gov.push(governed_run(&env, &http, &token, &provider_log, serve_pid).await?);
        }
        report(&bare, &bare_cpu, &gov);
        Ok(())
    })
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    let s = sorted(&v.collect::<Vec<_>>());
    pct(&s, 50.0)
}

fn report(bare: &[f64], bare_cpu: &[f64], gov: &[Split]) {
    let m = |f: fn(&Split) -> f64| median(gov.iter().map(f));
    let (b, g) = (median(bare.iter().copied()), m(|s| s.total));
    let calls = m(|s| s.calls);
    println!(
        "One scripted Claude Code task (8 model turns, 3 MCP calls), {RUNS} runs per side, medians:"
    );
    println!(
        "  bare CLI on the host:       {b:8.0} ms wall, {:6.0} ms CPU",
        median(bare_cpu.iter().copied())
    );
    println!(
        "  governed by cogward:        {g:8.0} ms wall  ({:.2}x)",
        g / b
    );
    println!("    submit -> runner spawned  {:8.0} ms", m(|s| s.to_spawn));
    println!("    sandbox start             {:8.0} ms", m(|s| s.sandbox));
    println!(
        "    CLI start (to 1st call)   {:8.0} ms",
        m(|s| s.cli_start)
    );
    println!(
        "    gateway ({calls:.0} calls)        {:8.0} ms",
        m(|s| s.gateway)
    );
    println!("    agent (the rest)          {:8.0} ms", m(|s| s.agent));
    println!("    exit -> succeeded         {:8.0} ms", m(|s| s.after));
    println!(
        "    CPU: agent {:.0} ms, cogward serve {:.0} ms",
        m(|s| s.agent_cpu),
        m(|s| s.engine_cpu)
    );
    println!("\nmarkdown rows for docs/benchmarks.md (`{BENCH_COMMAND}`):");
    println!("| side | wall (median) | vs bare | CPU agent | CPU engine |");
    println!("|---|---|---|---|---|");
    println!(
        "| bare Claude Code | {b:.0} ms | 1.00× | {:.0} ms | – |",
        median(bare_cpu.iter().copied())
    );
    println!(
        "| cogward `claude-code`, strict | {g:.0} ms | {:.2}× | {:.0} ms | {:.0} ms |",
        g / b,
        m(|s| s.agent_cpu),
        m(|s| s.engine_cpu)
    );
    println!("\n| part of the governed run | median |");
    println!("|---|---|");
    for (name, f) in [
        (
            "submit → runner spawned (API, admission policy, workflow)",
            (|s: &Split| s.to_spawn) as fn(&Split) -> f64,
        ),
        ("sandbox start (spawned → agent started)", |s| s.sandbox),
        ("CLI start (agent started → first model request)", |s| {
            s.cli_start
        }),
        (
            "gateway (its time on the run's calls: latency − upstream latency)",
            |s| s.gateway,
        ),
        ("agent (the rest of its life)", |s| s.agent),
        (
            "exit → succeeded (revocation, evidence, workflow end)",
            |s| s.after,
        ),
    ] {
        println!("| {name} | {:.0} ms |", m(f));
    }
    println!("\n({calls:.0} model and tool calls decided and recorded per governed run.)");
}
