//! The `cogward` command line: the engine's processes, and the client commands CI/CD and
//! operators use against the API.

use crate::config::EngineConfig;
use crate::http::auth::Role;
use crate::http::error::Problem;
use crate::runs::events::{EventsView, SequencedEvent};
use crate::runs::evidence::EvidenceView;
use crate::runs::routes::{HistoryView, RunView};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cogward_activities::agent_events::AgentEvent;
use cogward_protocol::spec::RunStatus;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    name = "cogward",
    version,
    about = "Governance runtime for AI coding agents"
)]
pub struct Cli {
    #[command(flatten)]
    pub engine: EngineConfig,
    /// API base URL for client commands.
    #[arg(
        long,
        env = "COGWARD_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api: String,
    /// Bearer token for client commands (default: the development credentials of `cogward dev`).
    #[arg(long, env = "COGWARD_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Which development principal to act as when no token is given.
    #[arg(long = "as", global = true)]
    pub as_principal: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole stack locally: a Temporal dev server (unless one answers), API, mirror, worker.
    Dev,
    /// API and history mirror (add --worker to run the worker in the same process).
    Serve {
        #[arg(long)]
        worker: bool,
    },
    /// A Temporal worker for cogward's task queue.
    Worker,
    /// Submit and manage agent runs.
    #[command(subcommand)]
    Run(RunCommand),
    /// Approvals (a run's gate, a parked tool call): list the open ones, show, approve, reject.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// The audit ledger.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// API principals.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Policy bundles: push, list, bind, test, replay.
    #[command(subcommand)]
    Policy(crate::policy::cli::PolicyCommand),
    /// The gateway's credential keys.
    #[command(subcommand)]
    Gateway(GatewayCommand),
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// The open approvals of the tenants one may act on.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One approval: its request, the stage asked, the votes and the result.
    Show {
        approval_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve (one vote; the approval may need more distinct approvers).
    Approve {
        approval_id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject (one eligible rejection rejects).
    Reject {
        approval_id: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Put a new key first in the key file (it mints from now on; older keys still verify),
    /// or with --retire ID remove one (credentials it signed stop verifying).
    RotateKey {
        #[arg(long)]
        retire: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Submit a run spec (JSON file, or - for stdin).
    Submit {
        spec: PathBuf,
        /// Wait for the verdict; the exit code tells it (see docs/api.md).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 2).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        #[arg(long)]
        json: bool,
    },
    /// Show a run.
    Status {
        run_id: String,
        #[arg(long)]
        json: bool,
    },
    /// List runs.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Approve a run waiting at its approval gate (or, with --tool-call, a tool call of the
    /// running agent that the gateway parked).
    Approve {
        run_id: String,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long)]
        tool_call: Option<String>,
    },
    /// Reject a run waiting at its approval gate (or, with --tool-call, a parked tool call).
    Reject {
        run_id: String,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long)]
        tool_call: Option<String>,
    },
    /// The run's tool calls the gateway parked for approval, and their decisions.
    ToolCalls {
        run_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a run (the agent gets SIGTERM, then SIGKILL after its grace period).
    Cancel {
        run_id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// The run's ledger entries (history events and application events).
    History {
        run_id: String,
        #[arg(long)]
        json: bool,
    },
    /// A finished run's evidence: its items and their digests, or one item's bytes (checked
    /// against the digest its history records) on stdout.
    Evidence {
        run_id: String,
        /// An item to print (`manifest`, `diff`, `transcript`, `stdout`, `stderr`, `artifacts`,
        /// `work/<path>`).
        item: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The run's changes to its work directory, as a unified diff.
    Diff { run_id: String },
    /// An agent-CLI run's events (model turns, tool calls and results, file changes,
    /// commands, messages); with --follow, as they happen until the run ends.
    Events {
        run_id: String,
        #[arg(long)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the whole hash chain offline, from the database alone; with --checkpoint, also
    /// that the database still holds exactly what each signed checkpoint in FILE signed.
    Verify {
        #[arg(long)]
        json: bool,
        /// A checkpoint file (one signed checkpoint per line).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The public key checkpoints must be signed with, hex (default: the installation's
        /// signing key file's).
        #[arg(long)]
        public_key: Option<String>,
    },
    /// Sign a checkpoint of the chain as it is now: appended to the checkpoint file and printed.
    Checkpoint {
        /// Default: <state-dir>/checkpoints.jsonl.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Rebuild a workflow's history (a run's, an approval's) from the ledger alone and replay it
    /// against this build's workflow code (exit 1 on nondeterminism).
    Replay {
        /// A run id, or an approval's id (`approval-gate-<run id>`, …).
        workflow_id: String,
    },
    /// Print a workflow's history (a run's, an approval's) rebuilt from the ledger alone, as
    /// Temporal's JSON (`temporal workflow show --output json` prints the same shape).
    History { workflow_id: String },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Add a principal and print its token (shown once).
    Add {
        name: String,
        /// Comma-separated: submit, read, approve, operate.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Comma-separated approval groups the principal belongs to.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Comma-separated tenants (globs) it may act on; '*' for a platform operator.
        #[arg(long, value_delimiter = ',', required = true)]
        tenants: Vec<String>,
    },
}

/// Exit codes of `run submit --wait` (and `run status`).
pub fn exit_code_for(status: RunStatus) -> u8 {
    match status {
        RunStatus::Succeeded => 0,
        RunStatus::Failed => 10,
        RunStatus::Rejected => 11,
        RunStatus::Expired => 12,
        RunStatus::Cancelled => 13,
        RunStatus::Denied => 14,
        RunStatus::Pending | RunStatus::AwaitingApproval | RunStatus::Running => 15,
    }
}

/// Exit code for errors the API reported (bad input, not found, conflicts, auth).
const EXIT_API_ERROR: u8 = 2;

pub fn main() -> ExitCode {
    crate::state_dir::private_umask();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,temporalio_sdk_core=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let Some(p) = e.downcast_ref::<ApiProblem>() {
                eprintln!("error: {} ({}): {}", p.0.title, p.0.code, p.0.detail);
                return ExitCode::from(EXIT_API_ERROR);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<u8> {
    match &cli.command {
        Command::Dev => crate::dev::dev(&cli.engine).await.map(|_| 0),
        Command::Serve { worker } => crate::dev::serve(&cli.engine, *worker).await.map(|_| 0),
        Command::Worker => crate::worker::run(&cli.engine).await.map(|_| 0),
        Command::Audit(AuditCommand::Verify {
            json,
            checkpoint,
            public_key,
        }) => {
            audit_verify(
                &cli.engine,
                *json,
                checkpoint.as_deref(),
                public_key.as_deref(),
            )
            .await
        }
        Command::Audit(AuditCommand::Checkpoint { file }) => {
            use crate::audit::checkpoint;
            let db = crate::db::Db::connect(&cli.engine.database_url()).await?;
            let key = checkpoint::signing_key(&cli.engine.ledger_signing_key())?;
            let c = checkpoint::make(&db, &key).await?;
            let file = file.clone().unwrap_or_else(|| cli.engine.checkpoint_file());
            checkpoint::append(&file, &c)?;
            println!("{}", serde_json::to_string(&c)?);
            Ok(0)
        }
        Command::Audit(AuditCommand::Replay { workflow_id }) => {
            audit_replay(&cli.engine, workflow_id).await
        }
        Command::Audit(AuditCommand::History { workflow_id }) => {
            let db = crate::db::Db::connect(&cli.engine.database_url()).await?;
            let ledger = crate::audit::Ledger::start(db);
            let events = crate::audit::replay::history_from_ledger(&ledger, workflow_id).await?;
            let history = temporalio_common::protos::temporal::api::history::v1::History { events };
            println!("{}", serde_json::to_string_pretty(&history)?);
            Ok(0)
        }
        Command::Tokens(TokensCommand::Add {
            name,
            roles,
            groups,
            tenants,
        }) => {
            let roles = roles
                .iter()
                .map(|r| {
                    serde_json::from_value::<Role>(serde_json::Value::String(r.clone()))
                        .map_err(|_| anyhow::anyhow!("unknown role {r:?}"))
                })
                .collect::<Result<Vec<_>>>()?;
            crate::state_dir::prepare(&cli.engine.state_dir)?;
            let token = crate::dev::add_principal(
                &cli.engine.tokens_file(),
                name,
                roles,
                groups.clone(),
                tenants.clone(),
            )?;
            println!("{token}");
            Ok(0)
        }
        Command::Run(cmd) => {
            let principal = match cmd {
                RunCommand::Approve { .. } | RunCommand::Reject { .. } => "approver",
                _ => "ci",
            };
            let api = ApiClient::new(&cli, principal)?;
            run_command(&api, cmd).await
        }
        Command::Approvals(cmd) => {
            let principal = match cmd {
                ApprovalsCommand::Approve { .. } | ApprovalsCommand::Reject { .. } => "approver",
                _ => "ci",
            };
            let api = ApiClient::new(&cli, principal)?;
            approvals_command(&api, cmd).await
        }
        Command::Policy(cmd) => crate::policy::cli::run(&cli, cmd).await,
        Command::Gateway(GatewayCommand::RotateKey { retire }) => {
            let path = cli.engine.gateway_keys();
            // Created first if it does not exist yet.
            crate::gateway::keys::KeyRing::open(path.clone())?;
            println!(
                "{}",
                crate::gateway::keys::rotate(&path, retire.as_deref())?
            );
            Ok(0)
        }
    }
}

async fn audit_verify(
    config: &EngineConfig,
    json: bool,
    checkpoints: Option<&std::path::Path>,
    public_key: Option<&str>,
) -> Result<u8> {
    use crate::audit::checkpoint;
    let db = crate::db::Db::connect(&config.database_url()).await?;
    let mut report = crate::audit::verify(&db).await?;
    if let Some(file) = checkpoints {
        let trusted = match public_key {
            Some(k) => checkpoint::public_key(k)?,
            None => checkpoint::signing_key(&config.ledger_signing_key())?.verifying_key(),
        };
        for c in checkpoint::read_file(file)? {
            let problem = checkpoint::check(&db, &c, &trusted).await?;
            report
                .checkpoints
                .push(crate::audit::verify::CheckpointCheck {
                    at: c.at,
                    size: c.size,
                    problem,
                });
        }
        if report.checkpoints.iter().any(|c| c.problem.is_some()) {
            report.ok = false;
        }
    }
    for c in &report.checkpoints {
        if !json && let Some(p) = &c.problem {
            println!("FAILED: {p}");
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if let Some(bad) = &report.first_bad {
        println!(
            "FAILED: ledger entry {} is bad: {} ({} entries verified before it)",
            bad.seq, bad.reason, report.entries
        );
    } else {
        println!(
            "OK: {} entries, chain head seq {} hash {}",
            report.entries, report.head_seq, report.head_hash
        );
        if !report.checkpoints.is_empty() && report.ok {
            println!(
                "OK: the database holds exactly what {} signed checkpoint(s) signed",
                report.checkpoints.len()
            );
        }
        let open = &report.calls_without_outcome;
        if !open.is_empty() {
            println!(
                "NOTE: {} gateway call(s) have an intent but no outcome (in flight, or lost in a crash; charged their reservation):",
                open.len()
            );
            for c in open.iter().take(20) {
                println!(
                    "  seq {} run {} call {} {}",
                    c.seq, c.run_id, c.call_id, c.target
                );
            }
        }
    }
    Ok(if report.ok { 0 } else { 1 })
}

async fn audit_replay(config: &EngineConfig, run_id: &str) -> Result<u8> {
    let db = crate::db::Db::connect(&config.database_url()).await?;
    let ledger = crate::audit::Ledger::start(db);
    let events = crate::audit::replay::history_from_ledger(&ledger, run_id).await?;
    let n = events.len();
    let problems = crate::audit::replay::check_app_entries(&ledger, run_id, &events).await?;
    if !problems.is_empty() {
        for p in &problems {
            println!("FAILED: {p}");
        }
        return Ok(1);
    }
    match crate::audit::replay::replay_events(events).await {
        Ok(()) => {
            println!(
                "OK: {n} history events of {run_id}, rebuilt from the ledger, replay against this build, and its application entries match them"
            );
            Ok(0)
        }
        Err(e) => {
            println!("FAILED: {run_id} does not replay against this build: {e:#}");
            Ok(1)
        }
    }
}

/// A problem document the API returned.
#[derive(Debug)]
pub struct ApiProblem(Problem);

impl std::fmt::Display for ApiProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.0.title, self.0.code, self.0.detail)
    }
}

impl std::error::Error for ApiProblem {}

pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl ApiClient {
    /// A client acting as `--token`, or else as the development principal `--as` (default
    /// `default_principal`).
    pub fn new(cli: &Cli, default_principal: &str) -> Result<Self> {
        let token = match &cli.token {
            Some(t) => t.clone(),
            None => {
                let path = cli.engine.state_dir.join(crate::dev::DEV_CREDENTIALS);
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "no --token / COGWARD_TOKEN, and no development credentials at {}",
                        path.display()
                    )
                })?;
                let creds: BTreeMap<String, String> = serde_json::from_str(&text)?;
                let who = cli.as_principal.as_deref().unwrap_or(default_principal);
                creds.get(who).cloned().with_context(|| {
                    format!("no development principal {who:?} in {}", path.display())
                })?
            }
        };
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(330))
                .build()?,
            base: cli.api.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// A GET whose answer is bytes, not JSON.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        Ok(self.get_stream(path).await?.bytes().await?.to_vec())
    }

    /// A GET whose answer is read as it arrives (a server-sent event stream: no time limit).
    pub async fn get_stream(&self, path: &str) -> Result<reqwest::Response> {
        self.send(reqwest::Client::new().get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let bytes = self.send(req).await?.bytes().await?;
        serde_json::from_slice(&bytes).context("decoding the API's answer")
    }

    /// Send `req` as this principal; a refusal as the API's problem document.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("calling the cogward API at {}", self.base))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await?;
        let problem: Problem = serde_json::from_slice(&bytes).with_context(|| {
            format!("API answered {status}: {}", String::from_utf8_lossy(&bytes))
        })?;
        Err(ApiProblem(problem).into())
    }
}

fn print_run(run: &RunView, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(run)?);
    } else {
        println!(
            "{}  {}  agent={} tenant={}{}",
            run.run_id,
            run.status,
            run.agent,
            run.tenant,
            run.reason
                .as_ref()
                .map(|r| format!("  reason: {r}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// One line per approval: id, open/result, stage group, votes.
fn approval_line(v: &serde_json::Value) -> String {
    let stage = v["stage"].as_u64().unwrap_or(0) as usize;
    let group = v["request"]["stages"][stage]["group"]
        .as_str()
        .unwrap_or("any approver");
    let state = match (&v["result"], v["open"].as_bool()) {
        (serde_json::Value::String(r), _) => r.clone(),
        (_, Some(true)) => "open".into(),
        _ => "closed".into(),
    };
    let votes: Vec<String> = v["votes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            format!(
                "{} {} ({})",
                x["verdict"].as_str().unwrap_or("?"),
                x["approver"].as_str().unwrap_or("?"),
                x["channel"].as_str().unwrap_or("?")
            )
        })
        .collect();
    format!(
        "{}  {:<9} stage {} ({group})  {}/{} approvals  {}",
        v["approval_id"].as_str().unwrap_or("?"),
        state,
        stage + 1,
        votes.iter().filter(|v| v.starts_with("approved")).count(),
        v["request"]["required"].as_u64().unwrap_or(1),
        votes.join(", ")
    )
}

async fn approvals_command(api: &ApiClient, cmd: &ApprovalsCommand) -> Result<u8> {
    use reqwest::Method;
    match cmd {
        ApprovalsCommand::List { json } => {
            let v: Vec<serde_json::Value> = api.call(Method::GET, "/v1/approvals", None).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for a in &v {
                    println!("{}", approval_line(a));
                }
            }
        }
        ApprovalsCommand::Show { approval_id, json } => {
            let v: serde_json::Value = api
                .call(Method::GET, &format!("/v1/approvals/{approval_id}"), None)
                .await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", approval_line(&v));
            }
        }
        ApprovalsCommand::Approve {
            approval_id,
            comment,
        }
        | ApprovalsCommand::Reject {
            approval_id,
            comment,
        } => {
            let verb = if matches!(cmd, ApprovalsCommand::Approve { .. }) {
                "approve"
            } else {
                "reject"
            };
            let v: serde_json::Value = api
                .call(
                    Method::POST,
                    &format!("/v1/approvals/{approval_id}/{verb}"),
                    Some(serde_json::json!({ "comment": comment })),
                )
                .await?;
            println!("{}", approval_line(&v));
        }
    }
    Ok(0)
}

async fn run_command(api: &ApiClient, cmd: &RunCommand) -> Result<u8> {
    use reqwest::Method;
    match cmd {
        RunCommand::Submit {
            spec,
            wait,
            timeout,
            json,
        } => {
            let text = if spec.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(spec)
                    .with_context(|| format!("reading {}", spec.display()))?
            };
            // Sent as the file says: the API is the one judge of the spec.
            let body: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", spec.display()))?;
            let mut run: RunView = api.call(Method::POST, "/v1/runs", Some(body)).await?;
            if !json {
                eprintln!("submitted {}", run.run_id);
            }
            if *wait {
                let deadline = Instant::now() + Duration::from_secs(*timeout);
                while !run.status.is_terminal() {
                    if Instant::now() >= deadline {
                        print_run(&run, *json)?;
                        eprintln!("gave up waiting after {timeout}s");
                        return Ok(EXIT_API_ERROR);
                    }
                    let left = deadline
                        .saturating_duration_since(Instant::now())
                        .as_secs()
                        .clamp(1, 60);
                    run = api
                        .call(
                            Method::GET,
                            &format!("/v1/runs/{}?wait={left}", run.run_id),
                            None,
                        )
                        .await?;
                }
                print_run(&run, *json)?;
                return Ok(exit_code_for(run.status));
            }
            print_run(&run, *json)?;
            Ok(0)
        }
        RunCommand::Status { run_id, json } => {
            let run: RunView = api
                .call(Method::GET, &format!("/v1/runs/{run_id}"), None)
                .await?;
            print_run(&run, *json)?;
            Ok(0)
        }
        RunCommand::List {
            status,
            agent,
            tenant,
            json,
        } => {
            let mut query = Vec::new();
            for (k, v) in [("status", status), ("agent", agent), ("tenant", tenant)] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", urlencode(v)));
                }
            }
            let runs: Vec<RunView> = api
                .call(Method::GET, &format!("/v1/runs?{}", query.join("&")), None)
                .await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                for run in &runs {
                    print_run(run, false)?;
                }
            }
            Ok(0)
        }
        RunCommand::Approve {
            run_id,
            comment,
            tool_call,
        }
        | RunCommand::Reject {
            run_id,
            comment,
            tool_call,
        } => {
            let verb = if matches!(cmd, RunCommand::Approve { .. }) {
                "approve"
            } else {
                "reject"
            };
            let _: RunView = api
                .call(
                    Method::POST,
                    &format!("/v1/runs/{run_id}/{verb}"),
                    Some(serde_json::json!({ "comment": comment, "tool_call": tool_call })),
                )
                .await?;
            match tool_call {
                Some(call) => println!("{verb} sent for tool call {call} of {run_id}"),
                None => println!("{verb} sent for {run_id}"),
            }
            Ok(0)
        }
        RunCommand::ToolCalls { run_id, json } => {
            let v: serde_json::Value = api
                .call(Method::GET, &format!("/v1/runs/{run_id}/tool-calls"), None)
                .await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(0);
            }
            for c in v["tool_calls"].as_array().into_iter().flatten() {
                let decision = match &c["decision"] {
                    serde_json::Value::Null => "pending".to_string(),
                    d => format!(
                        "{} by {}",
                        d["verdict"].as_str().unwrap_or("?"),
                        d["approver"].as_str().unwrap_or("?")
                    ),
                };
                println!(
                    "{}  {:<32} group {:<18} {}",
                    c["call_id"].as_str().unwrap_or("?"),
                    c["tool"].as_str().unwrap_or("?"),
                    c["group"].as_str().unwrap_or("-"),
                    decision
                );
            }
            Ok(0)
        }
        RunCommand::Cancel { run_id, reason } => {
            let _: RunView = api
                .call(
                    Method::POST,
                    &format!("/v1/runs/{run_id}/cancel"),
                    Some(serde_json::json!({ "reason": reason })),
                )
                .await?;
            println!("cancellation requested for {run_id}");
            Ok(0)
        }
        RunCommand::Evidence {
            run_id,
            item: Some(item),
            ..
        } => {
            let bytes = api
                .get_bytes(&format!("/v1/runs/{run_id}/evidence/{item}"))
                .await?;
            std::io::Write::write_all(&mut std::io::stdout(), &bytes)?;
            Ok(0)
        }
        RunCommand::Evidence {
            run_id,
            item: None,
            json,
        } => {
            let v: EvidenceView = api
                .call(Method::GET, &format!("/v1/runs/{run_id}/evidence"), None)
                .await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(0);
            }
            println!("{}  index sha256 {}", v.run_id, v.index_sha256);
            for i in &v.items {
                println!(
                    "  {:<40} {:>10} bytes  {}{}",
                    i.name,
                    i.bytes,
                    i.sha256,
                    if i.stored { "" } else { "  (digest only)" }
                );
            }
            Ok(0)
        }
        RunCommand::Diff { run_id } => {
            let bytes = api
                .get_bytes(&format!("/v1/runs/{run_id}/evidence/diff"))
                .await?;
            std::io::Write::write_all(&mut std::io::stdout(), &bytes)?;
            Ok(0)
        }
        RunCommand::Events {
            run_id,
            follow,
            json,
        } => {
            let print = |e: &SequencedEvent| -> Result<()> {
                if *json {
                    println!("{}", serde_json::to_string(e)?);
                } else {
                    println!("{}", describe_event(e));
                }
                Ok(())
            };
            if !*follow {
                let v: EventsView = api
                    .call(Method::GET, &format!("/v1/runs/{run_id}/events"), None)
                    .await?;
                v.events.iter().try_for_each(print)?;
                return Ok(0);
            }
            let mut resp = api
                .get_stream(&format!("/v1/runs/{run_id}/events?follow=true"))
                .await?;
            let mut buf = String::new();
            while let Some(chunk) = resp.chunk().await? {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(frame) = crate::sse::take_event(&mut buf) {
                    let data = frame.data.unwrap_or_default();
                    match frame.event.as_deref() {
                        Some("run_event") => print(&serde_json::from_str(&data)?)?,
                        Some("end") => {
                            let data: serde_json::Value = serde_json::from_str(&data)?;
                            if !*json {
                                println!("-- run {}", data["status"].as_str().unwrap_or("ended"));
                            }
                            return Ok(0);
                        }
                        _ => {}
                    }
                }
            }
            anyhow::bail!("the API closed the event stream before the run ended")
        }
        RunCommand::History { run_id, json } => {
            let h: HistoryView = api
                .call(Method::GET, &format!("/v1/runs/{run_id}/history"), None)
                .await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                println!(
                    "{}  {}  ({} ledger entries{})",
                    h.run_id,
                    h.status,
                    h.entries.len(),
                    if h.complete {
                        ""
                    } else {
                        ", mirror still catching up"
                    }
                );
                for e in &h.entries {
                    let id = e.event_id.map(|i| i.to_string()).unwrap_or_default();
                    println!(
                        "  #{:<6} {:<8} {:>4} {:<48} {}",
                        e.seq,
                        e.kind,
                        id,
                        e.event_type,
                        &e.hash[..16]
                    );
                }
            }
            Ok(0)
        }
    }
}

/// One line for a run event.
fn describe_event(e: &SequencedEvent) -> String {
    let detail = match &e.event {
        AgentEvent::Started { model, tools, .. } => format!(
            "started  model={} tools={}",
            model.as_deref().unwrap_or("?"),
            tools.len()
        ),
        AgentEvent::ModelTurn {
            input_tokens,
            output_tokens,
            ..
        } => format!("model turn  in={input_tokens} out={output_tokens}"),
        AgentEvent::Message { text, .. } => format!("message  {}", one_line(text)),
        AgentEvent::ToolCall { tool, input, .. } => {
            format!("tool call  {tool} {}", one_line(&input.to_string()))
        }
        AgentEvent::ToolResult {
            tool,
            is_error,
            output,
            ..
        } => format!(
            "tool {}  {tool}: {}",
            if *is_error { "error" } else { "result" },
            one_line(output)
        ),
        AgentEvent::FileChange { path, kind } => format!("file {kind}  {path}"),
        AgentEvent::Command {
            command, exit_code, ..
        } => format!(
            "command  {} (exit {})",
            one_line(command),
            exit_code.map_or("?".to_string(), |c| c.to_string())
        ),
        AgentEvent::Error { message } => format!("error  {}", one_line(message)),
        AgentEvent::Finished {
            ok, turns, result, ..
        } => format!(
            "finished  ok={ok} turns={} {}",
            turns.map_or("?".to_string(), |t| t.to_string()),
            result.as_deref().map(one_line).unwrap_or_default()
        ),
    };
    format!("#{:<5} {detail}", e.seq)
}

/// The first 120 characters of `s`, on one line.
fn one_line(s: &str) -> String {
    let flat: String = s.chars().map(|c| if c == '\n' { ' ' } else { c }).collect();
    match flat.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
