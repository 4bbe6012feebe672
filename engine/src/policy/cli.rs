//! `cogward policy …`: push, list and bind go through the API; test runs locally (the way
//! policy authors work); replay reads the ledger and the policy store directly, offline.

use super::{Policies, store::Bundle};
use crate::cli::{ApiClient, Cli};
use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Subcommand;
use cogward_policy_host::PolicyHost;
use cogward_policy_host::builtins::{TestCase, builtin, parse_tests};
use cogward_protocol::spec::DecisionRecord;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a module and store it as the next version of a bundle.
    Push {
        /// A .wasm file, or builtin:NAME (run-admission, tool-access, model-access, budget,
        /// promotion-gate).
        module: String,
        #[arg(long)]
        name: String,
        /// The data document (JSON).
        #[arg(long)]
        data: PathBuf,
        /// Test requests (JSON lines of {"name","request","expect"}) the push must pass.
        #[arg(long)]
        tests: Option<PathBuf>,
    },
    /// List bundles and bindings.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Point (tenant, agent, kind) at a bundle version.
    Bind {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "*")]
        agent: String,
        /// run.admission, tool.call, model.call, budget.spend or promotion.gate.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: i64,
    },
    /// Evaluate test requests against a module locally and diff the expected decisions.
    Test {
        /// A .wasm file, or builtin:NAME.
        module: String,
        /// JSON lines of {"name","request","expect"}.
        requests: PathBuf,
        /// The data document (default for builtin:NAME: its example data).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Re-evaluate every policy decision recorded for a run with the exact module and data
    /// recorded, and compare (exit 1 on any difference).
    Replay { run_id: String },
}

/// A module given as a file or `builtin:NAME`, with the built-in's example data.
fn read_module(spec: &str) -> Result<(Vec<u8>, Option<&'static str>)> {
    if let Some(name) = spec.strip_prefix("builtin:") {
        let b = builtin(name).with_context(|| format!("no built-in policy {name:?}"))?;
        return Ok((b.wasm.to_vec(), Some(b.example_data)));
    }
    let wasm = std::fs::read(spec).with_context(|| format!("reading {spec}"))?;
    Ok((wasm, None))
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn read_tests(path: &Path) -> Result<Vec<TestCase>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_tests(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

pub async fn run(cli: &Cli, cmd: &PolicyCommand) -> Result<u8> {
    match cmd {
        PolicyCommand::Push {
            module,
            name,
            data,
            tests,
        } => {
            let (wasm, _) = read_module(module)?;
            let tests = tests.as_deref().map(read_tests).transpose()?;
            let body = json!({
                "name": name,
                "wasm_base64": B64.encode(&wasm),
                "data": read_json(data)?,
                "tests": tests.unwrap_or_default().iter().map(|t| json!({
                    "name": t.name, "request": t.request, "expect": t.expect,
                })).collect::<Vec<_>>(),
            });
            let api = ApiClient::new(cli, "ci")?;
            let pushed: Value = api
                .call(reqwest::Method::POST, "/v1/policies", Some(body))
                .await?;
            println!(
                "{} {} version {} (module {}{}, data {}, {} tests passed)",
                if pushed["created"] == true {
                    "pushed"
                } else {
                    "unchanged:"
                },
                pushed["name"].as_str().unwrap_or_default(),
                pushed["version"],
                pushed["module_sha256"].as_str().unwrap_or_default(),
                if pushed["module_stored"] == true {
                    ""
                } else {
                    ", already stored"
                },
                pushed["data_sha256"].as_str().unwrap_or_default(),
                pushed["tests_passed"],
            );
            Ok(0)
        }
        PolicyCommand::List { json } => {
            let api = ApiClient::new(cli, "ci")?;
            let list: Value = api.call(reqwest::Method::GET, "/v1/policies", None).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(0);
            }
            println!(
                "{:<24} {:>7}  {:<16} {:<16} CREATED BY",
                "BUNDLE", "VERSION", "MODULE", "DATA"
            );
            for b in list["bundles"].as_array().into_iter().flatten() {
                let b: Bundle = serde_json::from_value(b.clone())?;
                println!(
                    "{:<24} {:>7}  {:<16} {:<16} {}",
                    b.name,
                    b.version,
                    &b.module_sha256[..16.min(b.module_sha256.len())],
                    &b.data_sha256[..16.min(b.data_sha256.len())],
                    b.created_by
                );
            }
            println!("\n{:<16} {:<12} {:<16} BUNDLE", "KIND", "TENANT", "AGENT");
            for b in list["bindings"].as_array().into_iter().flatten() {
                println!(
                    "{:<16} {:<12} {:<16} {} v{}",
                    b["kind"].as_str().unwrap_or_default(),
                    b["tenant"].as_str().unwrap_or_default(),
                    b["agent"].as_str().unwrap_or_default(),
                    b["name"].as_str().unwrap_or_default(),
                    b["version"]
                );
            }
            Ok(0)
        }
        PolicyCommand::Bind {
            tenant,
            agent,
            kind,
            name,
            version,
        } => {
            let api = ApiClient::new(cli, "ci")?;
            let body = json!({"tenant": tenant, "agent": agent, "kind": kind, "name": name, "version": version});
            let _: Value = api
                .call(reqwest::Method::PUT, "/v1/policies/bindings", Some(body))
                .await?;
            println!("bound {kind} for tenant {tenant}, agent {agent} to {name} v{version}");
            Ok(0)
        }
        PolicyCommand::Test {
            module,
            requests,
            data,
        } => test(module, requests, data.as_deref(), cli),
        PolicyCommand::Replay { run_id } => replay(cli, run_id).await,
    }
}

fn test(module: &str, requests: &Path, data: Option<&Path>, cli: &Cli) -> Result<u8> {
    let (wasm, example) = read_module(module)?;
    let data = match (data, example) {
        (Some(path), _) => read_json(path)?.to_string(),
        (None, Some(example)) => example.to_string(),
        (None, None) => bail!("--data is required for a module file"),
    };
    let cases = read_tests(requests)?;
    let host = Arc::new(PolicyHost::new(cli.engine.policy_limits()).map_err(anyhow::Error::msg)?);
    let loaded = host.load(&wasm)?;
    let policy = host
        .prepare(loaded, data.as_bytes())
        .map_err(|f| anyhow::anyhow!("{f}"))?;
    println!(
        "module {} data {}",
        policy.module_sha256(),
        policy.data_sha256()
    );
    let mut failed = 0;
    for (i, case) in cases.iter().enumerate() {
        let eval = policy.evaluate(&serde_json::to_vec(&case.request)?);
        let name = if case.name.is_empty() {
            format!("#{}", i + 1)
        } else {
            case.name.clone()
        };
        let got = eval.decision.effect;
        let ok = got == case.expect && eval.fault.is_none();
        if !ok {
            failed += 1;
        }
        println!(
            "{} {name}: expected {}, got {} ({} µs){}",
            if ok { "ok  " } else { "FAIL" },
            case.expect.as_str(),
            got.as_str(),
            eval.elapsed.as_micros(),
            if ok {
                String::new()
            } else {
                format!(" — {}", eval.decision.reasons.join("; "))
            }
        );
    }
    println!("{} passed, {failed} failed", cases.len() - failed);
    Ok(if failed == 0 { 0 } else { 1 })
}

async fn replay(cli: &Cli, run_id: &str) -> Result<u8> {
    let db = crate::db::Db::connect(&cli.engine.database_url()).await?;
    let bodies: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM ledger_entries WHERE workflow_id = $1 AND event_type = 'policy.decision' ORDER BY seq",
    )
    .bind(run_id)
    .fetch_all(&db.pool)
    .await?;
    if bodies.is_empty() {
        println!("no policy decisions recorded for {run_id}");
        return Ok(1);
    }
    let policies = Policies::new(db, cli.engine.policy_limits())?;
    let mut differ = 0;
    for body in &bodies {
        let record: DecisionRecord =
            serde_json::from_str(body).context("a policy.decision entry does not parse")?;
        let Some(policy) = &record.policy else {
            println!(
                "same {}: no policy was bound; recorded {} ({})",
                record.kind,
                record.decision.effect.as_str(),
                record.decision.reasons.join("; ")
            );
            continue;
        };
        let eval = policies.reevaluate(&record).await?;
        let same = eval.decision == record.decision;
        if !same {
            differ += 1;
        }
        println!(
            "{} {} by {} v{} (module {}, data {}, request {}): recorded {}, replayed {}{}",
            if same { "same" } else { "DIFF" },
            record.kind,
            policy.name,
            policy.version,
            &policy.module_sha256[..12],
            &policy.data_sha256[..12],
            &record.request_sha256[..12],
            record.decision.effect.as_str(),
            eval.decision.effect.as_str(),
            if same {
                String::new()
            } else {
                format!(
                    " — recorded {:?}, replayed {:?}",
                    record.decision.reasons, eval.decision.reasons
                )
            }
        );
    }
    Ok(if differ == 0 { 0 } else { 1 })
}
