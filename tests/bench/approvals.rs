//! Approvals as workflows: how long from a human's decision to the run released, through the API
//! and through a signed Slack callback, and what a waiting approval costs Temporal.
//!
//! ```sh
//! source scripts/setup.sh && cargo build --release --workspace --bins && cargo bench -p cogward-e2e --bench approvals
//! ```
//!
//! The real release `cogward serve --worker` against a Temporal dev server. Each run needs
//! approval (`requires_approval`, command `true`); once its `Approval` child is open, one vote is
//! sent — side `api`: `POST /v1/runs/{id}/approve`; side `slack`: a `block_actions` callback at
//! `/v1/callbacks/slack`, form-encoded and signed v0 as Slack signs it (verified, replay-recorded,
//! the Slack user mapped to the principal) — and the clock stops when the run's runner has
//! claimed its run directory (`spawned`): the vote's signal, the approval deciding, the child's
//! completion reaching `AgentRun`, and `start_runner` starting. Sides alternate A B B A. Then
//! `IDLE_RUNS` runs wait at their gates for `IDLE` and Temporal's frontend requests in that
//! window are counted by operation: an open approval is a timer and a condition in a workflow,
//! so what remains is the history mirror's backed-off reads.

mod common;

use anyhow::{Context, Result};
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const RUNS: usize = 20;
const IDLE_RUNS: usize = 10;
const IDLE: Duration = Duration::from_secs(75);
const SLACK_SECRET: &str = "bench-slack-signing-secret";
const BENCH_COMMAND: &str = "cargo bench -p cogward-e2e --bench approvals";

struct Api {
    http: reqwest::Client,
    url: String,
    submitter: String,
    approver: String,
}

impl Api {
    async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.submitter)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Submit a run that needs approval; its id once its `Approval` is open.
    async fn gated_run(&self, n: usize) -> Result<String> {
        let spec = json!({"spec_version": 1, "agent": "bench-agent", "tenant": "bench",
                          "runtime": {"type": "command", "command": ["true"]},
                          "requires_approval": true, "idempotency_key": format!("approval-bench-{n}")});
        let mut run = Value::Null;
        // The worker may still be connecting to Temporal: retry until the run is accepted.
        for _ in 0..100 {
            let resp = self
                .http
                .post(format!("{}/v1/runs", self.url))
                .bearer_auth(&self.submitter)
                .json(&spec)
                .send()
                .await?;
            let ok = resp.status().is_success();
            run = resp.json().await?;
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let id = run["run_id"]
            .as_str()
            .with_context(|| format!("submitting: {run}"))?
            .to_string();
        for _ in 0..500 {
            if self
                .get(&format!("/v1/approvals/approval-gate-{id}"))
                .await?
                .0
                == 200
            {
                return Ok(id);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::bail!("run {id}'s approval never opened")
    }

    /// One vote from `side`; the time its answer took.
    async fn approve(&self, side: &str, run_id: &str) -> Result<Duration> {
        let started = Instant::now();
        let resp = if side == "api" {
            self.http
                .post(format!("{}/v1/runs/{run_id}/approve", self.url))
                .bearer_auth(&self.approver)
                .send()
                .await?
        } else {
            let (body, headers) = slack_click(&format!("run:{run_id}"));
            let mut req = self
                .http
                .post(format!("{}/v1/callbacks/slack", self.url))
                .body(body);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            req.send().await?
        };
        anyhow::ensure!(
            resp.status().is_success(),
            "{side} approve: {}",
            resp.text().await?
        );
        Ok(started.elapsed())
    }
}

/// Slack's interactive callback for a click on the approve button, signed as Slack signs it.
fn slack_click(value: &str) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": "U_BENCH", "username": "bench", "team_id": "T0BENCH"},
        "api_app_id": "A0BENCH", "team": {"id": "T0BENCH", "domain": "bench"},
        "channel": {"id": "C0BENCH", "name": "approvals"},
        "message": {"type": "message", "ts": "1700000000.000100", "text": "approve?"},
        "trigger_id": "1.2.3", "response_url": "https://hooks.slack.com/actions/T0BENCH/1/abc",
        "actions": [{"action_id": "approve", "block_id": "cogward-decision", "type": "button",
                     "value": value, "action_ts": format!("{:.6}", std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64())}],
    });
    let body = serde_urlencoded::to_string([("payload", payload.to_string())])
        .unwrap_or_default()
        .into_bytes();
    let ts = chrono::Utc::now().timestamp();
    let mut signed = format!("v0:{ts}:").into_bytes();
    signed.extend_from_slice(&body);
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(SLACK_SECRET.as_bytes())
        .expect("any key length");
    mac.update(&signed);
    let headers = vec![
        (
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("x-slack-request-timestamp", ts.to_string()),
        (
            "x-slack-signature",
            format!("v0={}", hex::encode(mac.finalize().into_bytes())),
        ),
    ];
    (body, headers)
}

fn main() -> Result<()> {
    let (_dir, env) = Env::release("cogward-approvalbench")?;
    let submitter = add_principal(&env, "submit,read")?;
    let out = env
        .cogward()
        .args([
            "tokens",
            "add",
            "approver",
            "--roles",
            "approve,read",
            "--tenants",
            "*",
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let approver = String::from_utf8(out.stdout)?.trim().to_string();
    let channels = env.state_dir().join("channels.json");
    std::fs::write(
        &channels,
        json!({"slack": {"signing_secret_env": "BENCH_SLACK_SECRET",
                         "users": {"U_BENCH": "approver"}}})
        .to_string(),
    )?;
    let temporal = start_temporal(&env)?;
    let cogward = start_cogward_with(&env, &[("BENCH_SLACK_SECRET", SLACK_SECRET)])?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let api = Api {
            http: reqwest::Client::new(),
            url: format!("http://127.0.0.1:{}", env.api_port),
            submitter,
            approver,
        };
        let mut ack = [Vec::new(), Vec::new()];
        let mut released = [Vec::new(), Vec::new()];
        let mut n = 0;
        // Warm up: one run each way, not counted.
        for side in ["api", "slack"]
            .into_iter()
            .chain(std::iter::repeat_n(["api", "slack", "slack", "api"], RUNS / 2).flatten())
        {
            let id = api.gated_run(n).await?;
            n += 1;
            let spawned = env.state_dir().join("runs").join(&id).join("spawned");
            let started = Instant::now();
            let answered = api.approve(side, &id).await?;
            while !spawned.exists() {
                anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "run {id} never released");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if n > 2 {
                let k = usize::from(side == "slack");
                ack[k].push(answered.as_secs_f64() * 1e3);
                released[k].push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        println!("decision → run released ({} runs per side after 2 warm-up runs; ms)", ack[0].len());
        println!("{:>6} {:>10} {:>10} {:>13} {:>13}", "side", "ack p50", "ack p99", "released p50", "released p99");
        let mut rows = Vec::new();
        for (k, side) in ["api", "slack"].into_iter().enumerate() {
            let (a, r) = (sorted(&ack[k]), sorted(&released[k]));
            println!("{side:>6} {:>10.1} {:>10.1} {:>13.1} {:>13.1}", pct(&a, 50.0), pct(&a, 99.0), pct(&r, 50.0), pct(&r, 99.0));
            rows.push((pct(&a, 50.0), pct(&a, 99.0), pct(&r, 50.0), pct(&r, 99.0)));
        }
        let ratio = rows[1].2 / rows[0].2;
        println!("slack / api, released p50: {ratio:.2}×");

        // Waiting costs: runs at their gates, nobody deciding.
        for i in 0..IDLE_RUNS {
            api.gated_run(1000 + i).await?;
        }
        // Let every run and approval settle into its parked long polls.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let metrics_port = env.temporal_port + 2;
        let before = frontend_requests(&api.http, metrics_port).await;
        tokio::time::sleep(IDLE).await;
        let after = frontend_requests(&api.http, metrics_port).await;
        let mut ops: Vec<(String, f64)> = after
            .iter()
            .map(|(op, v)| (op.clone(), v - before.get(op).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d > 0.0)
            .collect();
        ops.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!("\nTemporal frontend requests in {} s with {IDLE_RUNS} approvals open (per approval per second):", IDLE.as_secs());
        for (op, d) in &ops {
            println!("  {op:<40} {d:>6.0}  ({:.3})", d / IDLE_RUNS as f64 / IDLE.as_secs_f64());
        }
        println!("\nmarkdown rows for docs/benchmarks.md (`{BENCH_COMMAND}`):");
        println!("| side | answered p50 / p99 ms | released p50 / p99 ms |");
        println!("|---|---|---|");
        for (side, r) in ["API `POST /v1/runs/{id}/approve`", "signed Slack callback"].iter().zip(&rows) {
            println!("| {side} | {:.1} / {:.1} | {:.1} / {:.1} |", r.0, r.1, r.2, r.3);
        }
        anyhow::Ok(())
    })?;
    drop(cogward);
    drop(temporal);
    Ok(())
}
