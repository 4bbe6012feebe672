//! `StartRunner`: start the run's sandboxed runner and return its evidence, exactly once.
//!
//! The runner is started in its own session so it outlives the worker. A retried attempt for the
//! same run finds the run directory and, instead of starting the agent again:
//! - returns `result.json` if the runner finished;
//! - waits (heartbeating) while the runner holds the directory's lock;
//! - reports the run [`RunnerEvidence::Lost`] if the agent started but its runner died without
//!   a result. It is never silently re-run.

use crate::ActivitiesConfig;
use cogward_protocol::activities::StartRunnerInput;
use cogward_protocol::runner::{
    Checkout, EVENTS_FILE, GatewayEgress, LOCK_FILE, Limits, PROTOCOL_VERSION, REQUEST_FILE,
    RESULT_FILE, RunnerEvent, RunnerRequest, RunnerResult, STARTED_FILE, SandboxProfile, SecretRef,
};
use cogward_protocol::spec::{CommandRuntime, RunId, RunnerEvidence, RuntimeSpec};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tokio::sync::oneshot;

/// The file the activity creates (`O_EXCL`) before it starts a runner: its presence means a
/// runner was started for this run directory, so no attempt ever starts a second one.
pub const SPAWNED_FILE: &str = "spawned";

/// When a running activity starts heartbeating (its heartbeat timeout is 5 s).
const FIRST_HEARTBEAT_AFTER: Duration = Duration::from_secs(1);

/// How long a freshly started runner may take to lock its directory before it counts as lost.
const RUNNER_START_GRACE: Duration = Duration::from_secs(10);

/// Heartbeat details: the runner's latest progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunnerProgress {
    pub events: u64,
    pub last_event: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartRunnerError {
    #[error("run directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("result.json in {0} is unreadable: {1}")]
    BadResult(PathBuf, serde_json::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StartRunnerError + '_ {
    move |source| StartRunnerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn run_dir(config: &ActivitiesConfig, run_id: &RunId) -> PathBuf {
    config.state_dir.join("runs").join(run_id.as_str())
}

/// Largest evidence the activity returns into workflow history (Temporal refuses payloads over
/// 2 MiB; the result of a run stays far below this).
const MAX_EVIDENCE_BYTES: usize = 256 * 1024;

/// The port on the sandbox's own loopback that leads to the gateway.
pub const SANDBOX_GATEWAY_PORT: u16 = 7480;
/// The port on the sandbox's own loopback that leads to the egress proxy.
pub const SANDBOX_PROXY_PORT: u16 = 7481;
/// What the runner writes on each egress-proxy connection before the agent's bytes, followed
/// by the run's credential and CRLF: the proxy's proof of which run the connection is from.
pub const EGRESS_PREAMBLE: &str = "CGW-EGRESS ";

/// Build the runner's request from the run's input: the agent's environment is exactly its run
/// id, inputs and gateway access (a run credential and the URLs agents read: their provider
/// base URLs point at the gateway, so agents need no change), nothing from the worker. An
/// agent-CLI runtime adds its command line, opt-outs and configuration ([`crate::agent_cli`]);
/// `Err` if its CLI is not installed here.
pub fn runner_request(
    config: &ActivitiesConfig,
    input: &StartRunnerInput,
    secrets: Vec<SecretRef>,
    credential: Option<&str>,
) -> Result<RunnerRequest, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "COGWARD_INPUTS".to_string(),
        serde_json::to_string(&input.inputs).unwrap_or_else(|_| "{}".into()),
    );
    let mut files = BTreeMap::new();
    let mut egress_proxy = None;
    let base = format!("http://127.0.0.1:{SANDBOX_GATEWAY_PORT}");
    let gateway = config.gateway.as_ref().zip(credential).map(|(gw, token)| {
        let token = token.to_string();
        if let Some(proxy) = &gw.egress_proxy {
            // For convenience only: nothing else routes, whatever the agent sets.
            let url = format!("http://127.0.0.1:{SANDBOX_PROXY_PORT}");
            for name in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
                env.insert(name.to_string(), url.clone());
            }
            for name in ["NO_PROXY", "no_proxy"] {
                env.insert(name.to_string(), "127.0.0.1,localhost".to_string());
            }
            let mut route = GatewayEgress::new(proxy.clone(), SANDBOX_PROXY_PORT);
            route.preamble = Some(format!("{EGRESS_PREAMBLE}{token}\r\n"));
            egress_proxy = Some(route);
        }
        for (name, value) in [
            ("COGWARD_RUN_TOKEN", token.clone()),
            ("COGWARD_GATEWAY_URL", base.clone()),
            ("COGWARD_MCP_URL", format!("{base}/mcp")),
            ("ANTHROPIC_BASE_URL", format!("{base}/gw/anthropic")),
            ("ANTHROPIC_API_KEY", token.clone()),
            ("OPENAI_BASE_URL", format!("{base}/gw/openai/v1")),
            ("OPENAI_API_KEY", token),
        ] {
            env.insert(name.to_string(), value);
        }
        // Claude Code's project MCP configuration; it expands the variable itself, so the file
        // holds no secret.
        let mcp = serde_json::json!({"mcpServers": {"cogward": {
            "type": "http",
            "url": format!("{base}/mcp"),
            "headers": {"Authorization": "Bearer ${COGWARD_RUN_TOKEN}"},
        }}});
        if matches!(input.runtime, RuntimeSpec::Command(_)) {
            files.insert(".mcp.json".to_string(), mcp.to_string());
        }
        GatewayEgress::new(gw.upstream.clone(), SANDBOX_GATEWAY_PORT)
    });
    let mut sandbox = SandboxProfile {
        name: input.sandbox_profile,
        ..config.sandbox.clone()
    };
    let mut home_files = BTreeMap::new();
    let argv = match config.agent_clis.launch(
        &input.runtime,
        gateway.as_ref().map(|_| base.as_str()),
        input.limits.wall_clock_seconds,
    )? {
        None => match &input.runtime {
            RuntimeSpec::Command(CommandRuntime { command }) => command.clone(),
            _ => Vec::new(),
        },
        Some(launch) => {
            env.extend(launch.env);
            home_files = launch.home_files;
            for path in launch.read_only {
                if !sandbox.read_only.contains(&path) {
                    sandbox.read_only.push(path);
                }
            }
            launch.argv
        }
    };
    let checkout = match &input.workspace {
        None => None,
        Some(cogward_protocol::spec::Workspace::Git(git)) => {
            let repo = crate::workspace::repository(&config.repositories_dir, &git.repository)?;
            let commit = crate::workspace::resolve(&repo, &git.repository, &git.git_ref)?;
            Some(Checkout {
                repository: repo.to_string_lossy().into_owned(),
                commit,
            })
        }
    };
    let l = input.limits;
    Ok(RunnerRequest {
        protocol: PROTOCOL_VERSION,
        run_id: input.run_id.to_string(),
        argv,
        env,
        limits: Limits {
            cpu_seconds: l.cpu_seconds,
            memory_bytes: l.memory_mb.saturating_mul(1024 * 1024),
            max_processes: l.max_processes,
            wall_clock_seconds: l.wall_clock_seconds,
            grace_seconds: l.grace_seconds,
            max_output_bytes: config.max_output_bytes,
            max_file_bytes: config.max_file_bytes,
            max_open_files: config.max_open_files,
        },
        sandbox,
        gateway,
        egress_proxy,
        files,
        checkout,
        home_files,
        secrets,
    })
}

fn read_result(dir: &Path) -> Result<Option<RunnerResult>, StartRunnerError> {
    let path = dir.join(RESULT_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StartRunnerError::BadResult(path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Write `bytes` to `path` atomically: a reader sees the old file or the whole new one.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// Is some process holding the run directory's lock (i.e. is its runner alive)?
fn runner_alive(dir: &Path) -> Result<bool, StartRunnerError> {
    let path = dir.join(LOCK_FILE);
    let file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(&path)(e)),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_released_on_drop) => Ok(false),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, errno)) => Err(io_err(&path)(errno.into())),
    }
}

/// Start `cogward-runner exec --dir DIR` (which puts itself in a new session, so killing the
/// worker does not kill it). The receiver fires when it exits.
/// `stdin` (the secrets' values, or nothing) goes through a pipe, never a file.
fn spawn_runner(
    config: &ActivitiesConfig,
    dir: &Path,
    stdin: &[u8],
) -> Result<(u32, oneshot::Receiver<()>), StartRunnerError> {
    let mut child = Command::new(&config.runner_bin)
        .arg("exec")
        .arg("--dir")
        .arg(dir)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| StartRunnerError::Spawn {
            bin: config.runner_bin.clone(),
            source,
        })?;
    if let Some(mut pipe) = child.stdin.take() {
        // A runner that stops before reading (its directory locked, say) closes the pipe: the
        // write fails, and the runner, if it went on, reports what it did not get.
        let _ = pipe.write_all(stdin);
    }
    let pid = child.id();
    let (exited, rx) = oneshot::channel();
    // Reap it when it exits, so no zombie stays behind while this worker lives, and wake the
    // activity at once instead of at its next poll.
    std::thread::spawn(move || {
        let _ = child.wait();
        let _ = exited.send(());
    });
    Ok((pid, rx))
}

/// How long ago `path` was last modified (zero if unknown: treat as fresh).
fn age(path: &Path) -> Duration {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default()
}

/// Ask the runner to stop the agent (it sends SIGTERM, then SIGKILL after the grace).
fn signal_runner(dir: &Path) {
    let pid = fs::read_to_string(dir.join(SPAWNED_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(pid) = pid {
        // Only our runner: its command line names this run directory.
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let needle = dir.as_os_str().as_encoded_bytes();
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
}

/// Reads new lines of `events.jsonl` as the runner appends them.
struct EventTail {
    path: PathBuf,
    offset: u64,
    progress: RunnerProgress,
}

impl EventTail {
    fn poll(&mut self) {
        let Ok(mut f) = File::open(&self.path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = String::new();
        if f.read_to_string(&mut buf).is_err() {
            return;
        }
        // Only whole lines; a partial last line is read again next time.
        let complete = buf.rfind('\n').map_or(0, |i| i + 1);
        for line in buf[..complete].lines() {
            self.progress.events += 1;
            if let Ok(ev) = serde_json::from_str::<RunnerEvent>(line) {
                tracing::debug!(event = ?ev, "runner event");
                self.progress.last_event = Some(line.to_string());
            }
        }
        self.offset += complete as u64;
    }
}

/// Start the run's runner (or follow the one an earlier attempt started) until it has a result;
/// then revoke the run's credential, so no gateway call can be made after the agent exited.
pub(crate) async fn start_runner(
    config: &ActivitiesConfig,
    ctx: &ActivityContext,
    input: StartRunnerInput,
) -> Result<RunnerEvidence, ActivityError> {
    let run_id = input.run_id.clone();
    let mut evidence = run_to_result(config, ctx, input.clone()).await?;
    if let Some(gw) = &config.gateway {
        gw.credentials
            .revoke(run_id.as_str())
            .await
            .map_err(|e| e.context("revoking the run's credential"))?;
    }
    if let RunnerEvidence::Finished(result) = &mut evidence {
        // A failure here (a full disk) fails the attempt: the retry stores it again, from the
        // run directory, before the run can finish without its evidence.
        let begun = Instant::now();
        let stored = store_evidence(config, &input, result)
            .map_err(|e| anyhow::Error::from(e).context("storing the run's evidence"))?;
        tracing::info!(
            items = stored.items.len(),
            artifacts = stored.artifacts_listed,
            ms = begun.elapsed().as_millis() as u64,
            "evidence stored"
        );
        result.evidence = Some(stored);
    }
    // Everything that grows with the agent's work stays in the run directory and the evidence
    // store; this is the backstop: evidence history could not take would make the activity
    // fail forever.
    let size = serde_json::to_vec(&evidence).map_or(0, |v| v.len());
    if size > MAX_EVIDENCE_BYTES {
        tracing::error!(
            size,
            "the runner's evidence is too large for workflow history"
        );
        evidence = RunnerEvidence::Lost {
            detail: format!(
                "the runner's evidence ({size} bytes) exceeds the {MAX_EVIDENCE_BYTES} bytes \
                 workflow history takes; its result.json is in the run directory"
            ),
        };
    }
    Ok(evidence)
}

/// Put the finished run's evidence into the store ([`crate::evidence`]).
fn store_evidence(
    config: &ActivitiesConfig,
    input: &StartRunnerInput,
    result: &RunnerResult,
) -> io::Result<cogward_protocol::runner::StoredEvidence> {
    let dir = run_dir(config, &input.run_id);
    // What `work/` held at the start, as the run's request (written once, before it started)
    // says: the checkout's tree, read from the engine's repository, and the files it was given.
    let request = fs::read(dir.join(REQUEST_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<RunnerRequest>(&b).ok());
    let mut initial = BTreeMap::new();
    let mut workspace = None;
    if let Some(request) = &request {
        if let (Some(c), Some(cogward_protocol::spec::Workspace::Git(git))) =
            (&request.checkout, &input.workspace)
        {
            initial = crate::workspace::tree(
                Path::new(&c.repository),
                &c.commit,
                crate::evidence::MAX_DIFFED_FILE,
            )?;
            workspace = Some(crate::evidence::CheckedOut {
                repository: git.repository.clone(),
                git_ref: git.git_ref.clone(),
                commit: c.commit.clone(),
            });
        }
        for (path, text) in &request.files {
            let file = crate::evidence::TreeFile {
                sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
                bytes: Some(text.as_bytes().to_vec()),
                executable: false,
            };
            initial.insert(path.clone(), file);
        }
    }
    let facts = crate::evidence::RunFacts {
        run_id: input.run_id.as_str(),
        tenant: &input.tenant,
        runtime: &input.runtime,
        cli: config
            .agent_clis
            .version(&input.runtime)
            .ok()
            .flatten()
            .map(|v| format!("{} {v}", input.runtime.name())),
        sandbox_profile: input.sandbox_profile.as_str(),
        spec_sha256: &input.spec_sha256,
        admission_policy: input.admission_policy.clone(),
        initial_files: &initial,
        workspace,
    };
    crate::evidence::store_run(
        &crate::evidence::root(&config.state_dir),
        &facts,
        &dir,
        result,
    )
}

async fn run_to_result(
    config: &ActivitiesConfig,
    ctx: &ActivityContext,
    input: StartRunnerInput,
) -> Result<RunnerEvidence, ActivityError> {
    let dir = run_dir(config, &input.run_id);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    if let Some(result) = read_result(&dir)? {
        return Ok(RunnerEvidence::Finished(Box::new(result)));
    }

    let spawned_path = dir.join(SPAWNED_FILE);
    let mut runner_exit = None;
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&spawned_path)
    {
        Ok(mut claim) => {
            let env = |k: &str| std::env::var(k).ok();
            let secrets = match crate::secrets::resolve(
                config.secrets_file.as_deref(),
                &env,
                &input.tenant,
                &input.secrets,
            ) {
                Ok(s) => s,
                Err(e) => {
                    // Nothing started, and nothing a retry could change.
                    let _ = fs::remove_file(&spawned_path);
                    tracing::warn!(error = %e, "run refused before its runner started");
                    return Ok(RunnerEvidence::NotStarted {
                        detail: e.to_string(),
                    });
                }
            };
            let credential = match &config.gateway {
                Some(gw) => Some(gw.credentials.issue(input.run_id.as_str()).await.map_err(
                    |e| {
                        let _ = fs::remove_file(&spawned_path);
                        e.context("issuing the run's credential")
                    },
                )?),
                None => None,
            };
            let request = match runner_request(
                config,
                &input,
                crate::secrets::references(&secrets),
                credential.as_deref(),
            ) {
                Ok(request) => request,
                Err(detail) => {
                    let _ = fs::remove_file(&spawned_path);
                    tracing::warn!(%detail, "run refused before its runner started");
                    return Ok(RunnerEvidence::NotStarted { detail });
                }
            };
            let bytes = serde_json::to_vec_pretty(&request).map_err(anyhow::Error::from)?;
            write_atomic(&dir.join(REQUEST_FILE), &bytes).map_err(io_err(&dir))?;
            let stdin = crate::secrets::runner_input(&secrets);
            let pid = match spawn_runner(config, &dir, &stdin) {
                Ok((pid, rx)) => {
                    runner_exit = Some(rx);
                    pid
                }
                Err(e) => {
                    // Nothing started: release the claim so a retry may start the runner.
                    let _ = fs::remove_file(&spawned_path);
                    return Err(e.into());
                }
            };
            claim
                .write_all(pid.to_string().as_bytes())
                .and_then(|_| claim.sync_all())
                .map_err(io_err(&spawned_path))?;
            tracing::info!(pid, dir = %dir.display(), "runner started");
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            tracing::info!(dir = %dir.display(), "runner already started by an earlier attempt; following it");
        }
        Err(e) => return Err(io_err(&spawned_path)(e).into()),
    }

    let mut tail = EventTail {
        path: dir.join(EVENTS_FILE),
        offset: 0,
        progress: RunnerProgress::default(),
    };
    let mut cancel_sent = false;
    let begun = Instant::now();
    loop {
        if let Some(result) = read_result(&dir)? {
            return Ok(RunnerEvidence::Finished(Box::new(result)));
        }
        if ctx.is_cancelled() && !cancel_sent {
            tracing::info!("run cancelled: asking the runner to stop the agent");
            signal_runner(&dir);
            cancel_sent = true;
        }
        tail.poll();
        // A short run needs no heartbeat at all (one RPC saved per run); past the first second
        // the SDK sends them, throttled, well inside the heartbeat timeout.
        if begun.elapsed() >= FIRST_HEARTBEAT_AFTER {
            ctx.record_heartbeat(tail.progress.clone())
                .await
                .map_err(anyhow::Error::from)?;
        }

        // Probing the lock while a fresh runner may still be taking it could make that runner
        // think its directory is busy; so probe only once it started the agent, or is overdue.
        let started = dir.join(STARTED_FILE).exists();
        let overdue = age(&spawned_path) >= RUNNER_START_GRACE;
        if (started || overdue) && !runner_alive(&dir)? {
            // The result may have landed just now; if not, the runner is gone.
            if let Some(result) = read_result(&dir)? {
                return Ok(RunnerEvidence::Finished(Box::new(result)));
            }
            let detail = if started {
                "the agent started but its runner exited without a result; not re-run"
            } else {
                "the runner exited before starting the agent"
            };
            tracing::warn!(detail, "runner lost");
            return Ok(RunnerEvidence::Lost {
                detail: detail.to_string(),
            });
        }
        match runner_exit.as_mut() {
            Some(exit) => {
                tokio::select! {
                    _ = tokio::time::sleep(config.poll_interval) => {}
                    _ = exit => runner_exit = None,
                }
            }
            None => tokio::time::sleep(config.poll_interval).await,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use cogward_protocol::runner::ProfileName;
    use cogward_protocol::spec::RunLimits;

    fn config() -> ActivitiesConfig {
        ActivitiesConfig {
            state_dir: "/tmp/x".into(),
            runner_bin: "/bin/false".into(),
            sandbox: Default::default(),
            max_output_bytes: 1024,
            max_file_bytes: 1 << 20,
            max_open_files: 64,
            secrets_file: None,
            poll_interval: Duration::from_millis(100),
            gateway: None,
            agent_clis: crate::agent_cli::AgentClis {
                dir: "/nonexistent/agents".into(),
            },
            repositories_dir: "/nonexistent/repositories".into(),
            posters: Default::default(),
            group_rules: Default::default(),
        }
    }

    fn input() -> StartRunnerInput {
        StartRunnerInput {
            run_id: RunId("run-1".into()),
            runtime: RuntimeSpec::Command(CommandRuntime {
                command: vec!["true".into()],
            }),
            inputs: BTreeMap::from([("k".to_string(), "v".to_string())]),
            limits: RunLimits::default(),
            sandbox_profile: ProfileName::Standard,
            tenant: "acme".into(),
            secrets: Vec::new(),
            spec_sha256: String::new(),
            admission_policy: None,
            workspace: None,
        }
    }

    #[test]
    fn a_workspace_is_checked_out_at_the_commit_its_ref_names_then() {
        let repos = tempfile::tempdir().unwrap();
        crate::workspace::tests::repo(repos.path());
        let config = ActivitiesConfig {
            repositories_dir: repos.path().into(),
            ..config()
        };
        let with = |repository: &str, git_ref: &str| StartRunnerInput {
            workspace: Some(cogward_protocol::spec::Workspace::Git(
                cogward_protocol::spec::GitWorkspace {
                    repository: repository.into(),
                    git_ref: git_ref.into(),
                },
            )),
            ..input()
        };
        let req = runner_request(&config, &with("app", "v1"), Vec::new(), None).unwrap();
        let checkout = req.checkout.unwrap();
        let app = repos.path().join("app").canonicalize().unwrap();
        assert_eq!(checkout.repository, app.to_string_lossy());
        assert_eq!(
            checkout.commit,
            crate::workspace::resolve(&app, "app", "v1").unwrap()
        );
        let err = runner_request(&config, &with("other", "main"), Vec::new(), None).unwrap_err();
        assert!(
            err.contains("\"other\" is not one of this engine's"),
            "{err}"
        );
        let err = runner_request(&config, &with("app", "gone"), Vec::new(), None).unwrap_err();
        assert!(err.contains("not a commit of repository app"), "{err}");
        assert!(
            runner_request(&config, &input(), Vec::new(), None)
                .unwrap()
                .checkout
                .is_none()
        );
    }

    #[test]
    fn request_has_only_run_inputs_in_env() {
        let req = runner_request(&config(), &input(), Vec::new(), None).unwrap();
        assert_eq!(req.env.len(), 1);
        assert_eq!(req.env["COGWARD_INPUTS"], r#"{"k":"v"}"#);
        assert_eq!(req.limits.memory_bytes, 1024 * 1024 * 1024);
        assert_eq!(req.limits.max_output_bytes, 1024);
        assert!(req.gateway.is_none() && req.files.is_empty());
    }

    #[test]
    fn with_a_gateway_the_agent_gets_a_credential_for_its_run_and_the_urls() {
        struct Issued;
        impl crate::Credentials for Issued {
            fn issue<'a>(
                &'a self,
                _: &'a str,
            ) -> futures::future::BoxFuture<'a, anyhow::Result<String>> {
                Box::pin(async { unreachable!("the request takes the issued credential") })
            }
            fn revoke<'a>(
                &'a self,
                _: &'a str,
            ) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
                Box::pin(async { Ok(()) })
            }
        }
        let mut config = config();
        config.gateway = Some(crate::GatewayAccess {
            upstream: "127.0.0.1:8080".into(),
            credentials: std::sync::Arc::new(Issued),
            egress_proxy: None,
        });
        let issued = crate::credential::mint("k1", b"k", "run-1");
        let req = runner_request(&config, &input(), Vec::new(), Some(&issued)).unwrap();
        let token = &req.env["COGWARD_RUN_TOKEN"];
        assert_eq!(token, &issued);
        assert_eq!(&req.env["ANTHROPIC_API_KEY"], token);
        assert_eq!(&req.env["OPENAI_API_KEY"], token);
        assert_eq!(
            req.env["ANTHROPIC_BASE_URL"],
            "http://127.0.0.1:7480/gw/anthropic"
        );
        assert_eq!(
            req.env["OPENAI_BASE_URL"],
            "http://127.0.0.1:7480/gw/openai/v1"
        );
        let gw = req.gateway.unwrap();
        assert_eq!((gw.upstream.as_str(), gw.port), ("127.0.0.1:8080", 7480));
        assert!(!req.files[".mcp.json"].contains(token.as_str()));

        // An agent CLI: its command line and configuration, its installation bound read-only,
        // nothing in `work/`; and refused before it starts when the CLI is not installed.
        let mut input = input();
        input.runtime = serde_json::from_str(
            r#"{"type":"claude-code","prompt":"p","model":"m","mcp_servers":["everything"]}"#,
        )
        .unwrap();
        let err = runner_request(&config, &input, Vec::new(), Some(&issued)).unwrap_err();
        assert!(err.contains("claude-code is not installed"), "{err}");
        let agents = tempfile::tempdir().unwrap();
        let pkg = agents.path().join("node_modules/@anthropic-ai/claude-code");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(pkg.join("package.json"), r#"{"version":"9.9.9"}"#).unwrap();
        let bin = agents
            .path()
            .join("node_modules/@anthropic-ai/claude-code-linux-x64");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("claude"), "").unwrap();
        config.agent_clis.dir = agents.path().to_path_buf();
        let req = runner_request(&config, &input, Vec::new(), Some(&issued)).unwrap();
        assert!(req.argv[0].ends_with("claude-code-linux-x64/claude"));
        assert!(req.files.is_empty(), "{:?}", req.files);
        assert!(req.home_files[".cogward/mcp.json"].contains("/mcp"));
        assert_eq!(req.sandbox.read_only, [agents.path().display().to_string()]);
        assert_eq!(req.env["ANTHROPIC_API_KEY"], issued);
    }

    #[test]
    fn a_free_lock_is_not_a_live_runner() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!runner_alive(dir.path()).unwrap());
        let f = File::create(dir.path().join(LOCK_FILE)).unwrap();
        let held = Flock::lock(f, FlockArg::LockExclusiveNonblock).unwrap();
        assert!(runner_alive(dir.path()).unwrap());
        drop(held);
        assert!(!runner_alive(dir.path()).unwrap());
    }
}
