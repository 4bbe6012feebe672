//! The MCP gateway against no gateway: what does governing a tool call cost?
//!
//! ```sh
//! source scripts/setup.sh && cargo build --release --workspace --bins && cargo bench -p cogward-e2e --bench gateway
//! ```
//!
//! One upstream serves both sides: the reference server `@modelcontextprotocol/server-everything`
//! over Streamable HTTP (Node). The same client (a minimal Streamable HTTP JSON-RPC client over
//! a keep-alive reqwest connection, one per session) calls its `echo` tool either directly or
//! through the real release `cogward serve --worker` at `/mcp`, with a run credential of a real
//! running run: credential check, session, tool-access policy (wasm) and the ledger + journal
//! record (group commit, SQLite with `synchronous=FULL`) on every call, and the gateway's one
//! shared upstream connection (our own JSON-RPC client, `gateway/rpc.rs`). At 1, 8 and 32 concurrent sessions, the two sides
//! alternated (A B B A halves), each call timed. Prints latency percentiles, the added latency
//! and the throughput ratio, then markdown rows for docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use anyhow::{Context, Result, bail};
use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const BENCH_COMMAND: &str = "source scripts/setup.sh && cargo build --release --workspace --bins && cargo bench -p cogward-e2e --bench gateway";
const SESSIONS: [usize; 3] = [1, 8, 32];
/// Calls per side and level, split over the sessions (and over the two halves).
const CALLS: usize = 4000;
const WARMUP: usize = 20;

/// A Streamable HTTP session, as an agent's MCP client holds one.
struct Session {
    http: reqwest::Client,
    url: String,
    bearer: Option<String>,
    session: String,
    tool: String,
    next_id: u64,
}

impl Session {
    async fn open(url: &str, bearer: Option<&str>, tool: &str) -> Result<Session> {
        let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
        let mut s = Session {
            http,
            url: url.to_string(),
            bearer: bearer.map(str::to_string),
            session: String::new(),
            tool: tool.to_string(),
            next_id: 1,
        };
        let (headers, v) = s
            .post(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                         "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                    "clientInfo": {"name": "bench", "version": "1"}}}))
            .await?;
        anyhow::ensure!(v.get("result").is_some(), "initialize: {v}");
        s.session = headers
            .get("mcp-session-id")
            .and_then(|h| h.to_str().ok())
            .context("no Mcp-Session-Id")?
            .to_string();
        s.post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(s)
    }

    /// POST one message; the response's headers and its JSON-RPC answer (from a JSON body or
    /// an SSE stream), or Null for an accepted notification.
    async fn post(&self, message: Value) -> Result<(reqwest::header::HeaderMap, Value)> {
        let mut req = self
            .http
            .post(&self.url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(message.to_string());
        if let Some(b) = &self.bearer {
            req = req.bearer_auth(b);
        }
        if !self.session.is_empty() {
            req = req
                .header("mcp-session-id", &self.session)
                .header("mcp-protocol-version", "2025-11-25");
        }
        let resp = req.send().await?;
        let headers = resp.headers().clone();
        let sse = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let text = resp.text().await?;
        if text.trim().is_empty() {
            return Ok((headers, Value::Null));
        }
        if !sse {
            return Ok((headers, serde_json::from_str(&text)?));
        }
        for line in text.lines() {
            if let Some(data) = line.strip_prefix("data:")
                && let Ok(v) = serde_json::from_str::<Value>(data.trim())
                && v.get("id").is_some()
            {
                return Ok((headers, v));
            }
        }
        bail!("no response in the event stream: {text}")
    }

    /// One `tools/call` of echo; its latency.
    async fn call(&mut self) -> Result<Duration> {
        self.next_id += 1;
        let started = Instant::now();
        let (_, v) = self
            .post(
                json!({"jsonrpc": "2.0", "id": self.next_id, "method": "tools/call",
                         "params": {"name": self.tool, "arguments": {"message": "bench"}}}),
            )
            .await?;
        let elapsed = started.elapsed();
        let ok = v["result"]["content"][0]["text"].as_str() == Some("Echo: bench")
            && v["result"]["isError"] != true;
        anyhow::ensure!(ok, "unexpected answer: {v}");
        Ok(elapsed)
    }
}

#[derive(Clone)]
struct Side {
    name: &'static str,
    url: String,
    bearer: Option<String>,
    tool: &'static str,
}

/// `sessions` concurrent sessions make `calls` calls in all: (latencies in µs, wall time).
async fn phase(side: &Side, sessions: usize, calls: usize) -> Result<(Vec<f64>, Duration)> {
    let mut opened = Vec::new();
    for _ in 0..sessions {
        let mut s = Session::open(&side.url, side.bearer.as_deref(), side.tool).await?;
        for _ in 0..WARMUP {
            s.call().await?;
        }
        opened.push(s);
    }
    let per = calls / sessions;
    let started = Instant::now();
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    lat.push(s.call().await?.as_secs_f64() * 1e6);
                }
                anyhow::Ok(lat)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(calls);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, started.elapsed()))
}

struct Measured {
    p50: f64,
    p99: f64,
    per_second: f64,
}

fn measured(lat: &[f64], calls: usize, wall: Duration) -> Measured {
    let s = sorted(lat);
    Measured {
        p50: pct(&s, 50.0),
        p99: pct(&s, 99.0),
        per_second: calls as f64 / wall.as_secs_f64(),
    }
}

fn main() -> Result<()> {
    let (_dir, env) = Env::release("cogward-gwbench")?;
    let (_upstream, upstream_url) = start_everything(&env)?;
    std::fs::create_dir_all(env.state_dir())?;
    std::fs::write(
        env.state_dir().join("gateway.json"),
        json!({"mcp_servers": [{"name": "everything", "transport": {"http": {"url": upstream_url}}}]})
            .to_string(),
    )?;
    let token = add_principal(&env, "submit,read,operate")?;
    let _temporal = start_temporal(&env)?;
    let _cogward = start_cogward(&env)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // tool-access: echo for tenant bench.
        let data = env.dir.join("tools.json");
        std::fs::write(&data, json!({"tenants": {"bench": {"default_scope": ["everything.echo"]}}}).to_string())?;
        for args in [
            vec!["policy", "push", "builtin:tool-access", "--name", "bench-tools", "--data", data.to_str().unwrap()],
            vec!["policy", "bind", "--tenant", "bench", "--kind", "tool.call", "--name", "bench-tools", "--version", "1"],
        ] {
            let out = env
                .cogward()
                .env("COGWARD_TOKEN", &token)
                .env("COGWARD_API", format!("http://127.0.0.1:{}", env.api_port))
                .args(&args)
                .output()?;
            anyhow::ensure!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        // A real running run, whose credential the gateway side presents.
        let api = format!("http://127.0.0.1:{}", env.api_port);
        let http = reqwest::Client::new();
        // The worker may still be connecting to Temporal: retry until the run is accepted.
        let mut run = Value::Null;
        for _ in 0..100 {
            let resp = http
                .post(format!("{api}/v1/runs"))
                .bearer_auth(&token)
                .json(&json!({"spec_version": 1, "agent": "bench-agent", "tenant": "bench",
                              "runtime": {"type": "command", "command": ["sleep", "3600"]},
                              "limits": {"wall_clock_seconds": 3600, "cpu_seconds": 60},
                              "idempotency_key": "gateway-bench"}))
                .send()
                .await?;
            let ok = resp.status().is_success();
            run = resp.json().await?;
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let run_id = run["run_id"].as_str().with_context(|| format!("submitting the run: {run}"))?.to_string();
        for _ in 0..200 {
            let v: Value = http.get(format!("{api}/v1/runs/{run_id}")).bearer_auth(&token).send().await?.json().await?;
            if v["status"] == "running" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let db = cogward::db::Db::connect(&format!("sqlite://{}", env.state_dir().join("cogward.db").display())).await?;
        let (credential, _) = cogward::gateway::keys::KeyRing::open(env.state_dir().join("gateway-keys.json"))?.mint(&run_id)?;

        let direct = Side { name: "direct", url: upstream_url.clone(), bearer: None, tool: "echo" };
        let gateway = Side { name: "gateway", url: format!("http://127.0.0.1:{}/mcp", env.gateway_port), bearer: Some(credential), tool: "everything_echo" };
        let started = Instant::now();
        let mut rows = Vec::new();
        println!("MCP tools/call echo, server-everything over Streamable HTTP; {CALLS} calls per side and level");
        println!("{:>8} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}", "sessions", "side", "p50 µs", "p99 µs", "calls/s", "+p50 µs", "+p99 µs");
        let mut inside_rows = Vec::new();
        for sessions in SESSIONS {
            let since: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM ledger_entries").fetch_one(&db.pool).await?;
            let mut lat = [Vec::new(), Vec::new()];
            let mut wall = [Duration::ZERO; 2];
            // A B B A: drift (the ledger growing, caches warming) falls on both sides alike.
            for side in [&direct, &gateway, &gateway, &direct] {
                let (l, w) = phase(side, sessions, CALLS / 2).await?;
                let k = usize::from(side.name == "gateway");
                lat[k].extend(l);
                wall[k] += w;
            }
            let d = measured(&lat[0], CALLS, wall[0]);
            let g = measured(&lat[1], CALLS, wall[1]);
            for (side, m) in [("direct", &d), ("gateway", &g)] {
                println!("{sessions:>8} {side:>8} {:>10.0} {:>10.0} {:>10.0}", m.p50, m.p99, m.per_second);
            }
            // Where the gateway's time went: the calls' own records of this level.
            let bodies: Vec<String> = sqlx::query_scalar(
                "SELECT body FROM ledger_entries WHERE seq > $1 AND event_type = 'gateway.tool_call'",
            )
            .bind(since)
            .fetch_all(&db.pool)
            .await?;
            let field = |name: &str| -> Vec<f64> {
                sorted(&bodies.iter().map(|b| serde_json::from_str::<Value>(b).unwrap()[name].as_f64().unwrap_or(f64::NAN)).collect::<Vec<_>>())
            };
            let (total, up) = (field("latency_us"), field("upstream_latency_us"));
            inside_rows.push(format!(
                "| {sessions} | {:.0} | {:.0} | {:.0} |",
                pct(&total, 50.0),
                pct(&up, 50.0),
                pct(&total, 50.0) - pct(&up, 50.0)
            ));
            println!("{:>8} {:>8} {:>10} {:>10} {:>10.2}× {:>9.0} {:>10.0}", "", "", "", "", g.per_second / d.per_second, g.p50 - d.p50, g.p99 - d.p99);
            rows.push(format!(
                "| {sessions} | {:.0} / {:.0} | {:.0} / {:.0} | **+{:.0}** / **+{:.0}** | {:.0} / {:.0} | **{:.2}×** |",
                d.p50, d.p99, g.p50, g.p99, g.p50 - d.p50, g.p99 - d.p99, d.per_second, g.per_second, g.per_second / d.per_second
            ));
        }
        let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM gateway_calls").fetch_one(&db.pool).await?;
        println!("\ngateway calls recorded in the journal (each also in the ledger): {recorded}");
        println!("inside the gateway, from the calls' records (p50 µs; the record itself and the HTTP hop are not in them):");
        println!("| sessions | handler before the record | of it, the upstream call | of it, the gateway's own |");
        println!("|---|---|---|---|");
        for r in &inside_rows {
            println!("{r}");
        }
        println!("elapsed {:.0} s", started.elapsed().as_secs_f64());
        println!("\nmarkdown rows for docs/benchmarks.md (`{BENCH_COMMAND}`):");
        println!("| sessions | direct p50 / p99 µs | gateway p50 / p99 µs | added p50 / p99 µs | calls/s direct / gateway | throughput ratio |");
        println!("|---|---|---|---|---|---|");
        for r in rows {
            println!("{r}");
        }
        anyhow::Ok(())
    })?;
    Ok(())
}
