//! `cogward-runner exec --dir DIR`: one run directory, one sandbox, the agent at most once.

use crate::capture::StreamCapture;
use crate::exit_code;
use crate::outcome::{self, AgentStatus, Decision};
use crate::request::{self, RequestError};
use crate::rundir::{ClaimError, EventLog, LockError, RunDir, StartedClaim, now_ms};
use crate::{manifest, sandbox};
use cogward_protocol::runner::{
    GIT_DIR, Outcome, PROTOCOL_VERSION, REQUEST_FILE, RunnerEvent, RunnerRequest, RunnerResult,
    STARTED_FILE, STDERR_FILE, STDOUT_FILE, SandboxEvidence, StreamDigest,
};
use sha2::{Digest, Sha256};
use std::fmt::Display;
use std::io;
use std::path::{Path, PathBuf};

/// How a run directory was handled, when it went well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// `result.json` was already there: nothing was done.
    AlreadyFinished,
    /// The run ended and `result.json` was written.
    Finished(Outcome),
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("run directory {path}: {source}")]
    RunDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("bad request: {0}")]
    BadRequest(#[from] RequestError),
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// `result.json` records `sandbox_failed`; the agent never ran.
    #[error("sandbox failed: {0}")]
    SandboxFailed(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Supervise(#[from] crate::supervise::SuperviseError),
}

impl RunError {
    /// The process exit code for this error (see [`crate::exit_code`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Lock(LockError::Busy(_)) => exit_code::LOCK_BUSY,
            RunError::BadRequest(_) => exit_code::BAD_REQUEST,
            RunError::Claim(ClaimError::AlreadyStarted(_)) => exit_code::ALREADY_STARTED,
            RunError::SandboxFailed(_) => exit_code::SANDBOX_FAILED,
            RunError::RunDir { .. }
            | RunError::Lock(LockError::Io { .. })
            | RunError::Claim(ClaimError::Io { .. })
            | RunError::Io { .. }
            | RunError::Supervise(_) => exit_code::INTERNAL,
        }
    }
}

fn io_ctx(context: impl Display) -> impl FnOnce(io::Error) -> RunError {
    move |source| RunError::Io {
        context: context.to_string(),
        source,
    }
}

/// A line in `runner.log` (the runner's stderr once redirected).
fn log(msg: impl Display) {
    eprintln!("{} cogward-runner[{}]: {msg}", now_ms(), std::process::id());
}

/// SHA-256 and size of nothing: the output of an agent that never ran.
fn empty_digest() -> StreamDigest {
    StreamDigest {
        sha256: hex::encode(Sha256::digest([])),
        bytes: 0,
        truncated: false,
    }
}

/// Handle the run directory `dir`. See the crate documentation for the sequence.
#[cfg(target_os = "linux")]
pub fn exec(dir: &Path) -> Result<Completion, RunError> {
    // Before anything else: from here on SIGTERM is a cancellation to record, never a death
    // between claiming the directory and writing its result.
    let signals = linux::runner_signals().map_err(io_ctx("setting up the runner's signals"))?;
    let run_dir = RunDir::open(dir).map_err(|source| RunError::RunDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let _lock = run_dir.lock()?;
    if run_dir.has_result() {
        return Ok(Completion::AlreadyFinished);
    }
    // The secrets' values, if any, before standard input becomes /dev/null.
    let secret_input = crate::secrets::read_stdin();
    run_dir
        .redirect_stdio()
        .map_err(io_ctx("redirecting output to runner.log"))?;
    log(format_args!(
        "cogward-runner {} exec --dir {}",
        env!("CARGO_PKG_VERSION"),
        run_dir.root().display()
    ));
    let request = request::load(&run_dir.file(REQUEST_FILE)).inspect_err(|e| log(e))?;
    let events = run_dir
        .open_events()
        .map_err(io_ctx("opening events.jsonl"))?;
    let mut run = Run {
        dir: &run_dir,
        request: &request,
        events,
        started_at_ms: now_ms(),
        sandbox: None,
    };
    linux::sandboxed_run(&mut run, &signals, secret_input)
}

#[cfg(not(target_os = "linux"))]
pub fn exec(_dir: &Path) -> Result<Completion, RunError> {
    Err(RunError::SandboxFailed(
        "the sandbox needs Linux namespaces; this platform has none".into(),
    ))
}

/// One run in progress: whatever happens once the request is valid ends in `result.json`.
struct Run<'a> {
    dir: &'a RunDir,
    request: &'a RunnerRequest,
    events: EventLog,
    started_at_ms: u64,
    /// Set once the sandbox exists.
    sandbox: Option<SandboxEvidence>,
}

impl Run<'_> {
    fn emit(&mut self, event: RunnerEvent) -> Result<(), RunError> {
        self.events
            .emit(&event)
            .map_err(io_ctx("appending to events.jsonl"))
    }

    /// Record the run's end: manifest, `result.json`, then the `finished` event.
    fn finish(
        &mut self,
        decision: Decision,
        status: Option<AgentStatus>,
        stdout: StreamDigest,
        stderr: StreamDigest,
    ) -> Result<Outcome, RunError> {
        let mut detail = decision.detail;
        let work = self.dir.work_dir();
        let manifest = if work.is_dir() {
            let skip: &[&str] = match self.request.checkout {
                Some(_) => &[GIT_DIR],
                None => &[],
            };
            match manifest::build(&work, skip) {
                Ok(m) => {
                    for skipped in &m.skipped {
                        log(format_args!(
                            "artifact {} left out: its path is not UTF-8",
                            skipped.display()
                        ));
                    }
                    m.file
                }
                Err(e) => {
                    log(format_args!("building the artifact manifest: {e}"));
                    let note = format!("artifact manifest unavailable: {e}");
                    detail = Some(match detail {
                        Some(d) => format!("{d}; {note}"),
                        None => note,
                    });
                    Default::default()
                }
            }
        } else {
            Default::default()
        };
        let artifacts = self
            .dir
            .write_manifest(&manifest)
            .map_err(io_ctx("writing manifest.json"))?;
        let result = RunnerResult {
            protocol: PROTOCOL_VERSION,
            run_id: self.request.run_id.clone(),
            outcome: decision.outcome,
            exit_code: status.and_then(AgentStatus::exit_code),
            signal: status.and_then(AgentStatus::signal),
            detail,
            stdout,
            stderr,
            artifacts,
            sandbox: self.sandbox.clone(),
            started_at_ms: self.started_at_ms,
            finished_at_ms: now_ms(),
            cpu_ms: children_cpu(),
            evidence: None,
        };
        self.dir
            .write_result(&result)
            .map_err(io_ctx("writing result.json"))?;
        self.emit(RunnerEvent::Finished { at_ms: now_ms() })?;
        log(format_args!("finished: {:?}", result.outcome));
        Ok(result.outcome)
    }

    /// The sandbox could not be built: record `sandbox_failed` and fail the process. Never a
    /// fallback to running the agent without it.
    fn sandbox_failed(
        &mut self,
        detail: String,
        stdout: StreamDigest,
        stderr: StreamDigest,
    ) -> Result<Completion, RunError> {
        log(format_args!("sandbox failed: {detail}"));
        let decision = Decision {
            outcome: Outcome::SandboxFailed,
            detail: Some(detail.clone()),
        };
        self.finish(decision, None, stdout, stderr)?;
        Err(RunError::SandboxFailed(detail))
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use crate::supervise::{self, Supervision};
    use cogward_protocol::runner::StopReason;
    use nix::sys::signal::{SigHandler, SigSet, Signal, signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use std::time::Instant;

    /// Block SIGTERM, SIGINT and SIGCHLD and receive them through a signalfd instead; ignore
    /// SIGPIPE (a reader of ours going away is an error to handle, not a death) and SIGHUP.
    pub(super) fn runner_signals() -> io::Result<SignalFd> {
        let mut mask = SigSet::empty();
        for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
            mask.add(sig);
        }
        mask.thread_block()?;
        for sig in [Signal::SIGPIPE, Signal::SIGHUP] {
            // SAFETY: SIG_IGN installs no handler code.
            unsafe { signal(sig, SigHandler::SigIgn) }?;
        }
        Ok(SignalFd::with_flags(
            &mask,
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )?)
    }

    /// Drain pending signals; true if one of them asks the runner to stop.
    fn cancel_pending(signals: &SignalFd) -> io::Result<bool> {
        let mut cancel = false;
        while let Some(info) = signals.read_signal()? {
            let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
            cancel |= signo == libc::SIGTERM || signo == libc::SIGINT;
        }
        Ok(cancel)
    }

    /// The sandbox's processes must not carry the runner's supplementary groups (the sandbox
    /// cannot drop them itself: `setgroups` is denied inside).
    fn drop_supplementary_groups() -> Result<(), String> {
        let groups = nix::unistd::getgroups().map_err(|e| format!("reading groups: {e}"))?;
        if groups.is_empty() {
            return Ok(());
        }
        nix::unistd::setgroups(&[])
            .map_err(|e| format!("dropping the runner's supplementary groups {groups:?}: {e}"))
    }

    /// What the sandbox is built from, all held until the runner exits: the leased host id (no
    /// other live run gets it), the plan, and the control group (removed when dropped, its
    /// processes gone).
    struct Prepared {
        lease: crate::lease::IdLease,
        plan: sandbox::SandboxPlan,
        cgroup: crate::cgroup::Cgroup,
    }

    /// Lease an id, check the secrets, decide the plan, create the cgroup. An error is the
    /// reason the sandbox cannot be built; nothing has started.
    fn prepare(
        run: &Run<'_>,
        secret_input: Result<Vec<u8>, crate::secrets::SecretError>,
    ) -> Result<Prepared, String> {
        let request = run.request;
        let profile = &request.sandbox;
        let lease = crate::lease::acquire(
            Path::new(&profile.lease_dir),
            profile.host_ids,
            &request.run_id,
        )
        .map_err(|e| e.to_string())?;
        let secrets = secret_input
            .and_then(|input| crate::secrets::values(&request.secrets, &input))
            .map_err(|e| e.to_string())?;
        let host = sandbox::HostFacts {
            fs: &sandbox::fs_view::RealHost,
            landlock_abi: sandbox::landlock::host_abi(),
        };
        let plan = sandbox::plan(request, &run.dir.work_dir(), lease.id, &secrets, &host)
            .map_err(|e| e.to_string())?;
        let cgroup = crate::cgroup::detect(Path::new(crate::cgroup::CGROUP_ROOT))
            .and_then(|layout| {
                crate::cgroup::Cgroup::create(
                    layout,
                    &format!("sandbox-{}", lease.id),
                    crate::cgroup::decide(&request.limits),
                )
            })
            .map_err(|e| e.to_string())?;
        Ok(Prepared {
            lease,
            plan,
            cgroup,
        })
    }

    pub(super) fn sandboxed_run(
        run: &mut Run<'_>,
        signals: &SignalFd,
        secret_input: Result<Vec<u8>, crate::secrets::SecretError>,
    ) -> Result<Completion, RunError> {
        let request = run.request;
        let limits = request.limits;
        let Prepared {
            lease,
            plan,
            cgroup,
        } = match prepare(run, secret_input) {
            Ok(p) => p,
            Err(detail) => return run.sandbox_failed(detail, empty_digest(), empty_digest()),
        };
        if cancel_pending(signals).map_err(io_ctx("reading the runner's signals"))? {
            log("cancelled before the agent started");
            run.emit(RunnerEvent::Stopping {
                at_ms: now_ms(),
                reason: StopReason::Cancelled,
            })?;
            let decision = Decision {
                outcome: Outcome::Cancelled,
                detail: Some("the run was cancelled before the agent started".into()),
            };
            let outcome = run.finish(decision, None, empty_digest(), empty_digest())?;
            return Ok(Completion::Finished(outcome));
        }
        run.dir
            .restrict_access()
            .map_err(io_ctx("restricting access to the run directory"))?;
        // Before the claim: a work directory that cannot be prepared (a link planted in one
        // that already existed, say) refuses the run with nothing started. (Unless an earlier
        // runner started the agent: then its work directory is evidence, left as it is.)
        if run.dir.has_started() {
            return Err(ClaimError::AlreadyStarted(run.dir.file(STARTED_FILE)).into());
        }
        if let Err(e) = run
            .dir
            .prepare_work(&request.files, request.checkout.as_ref(), lease.id)
        {
            let detail = format!("preparing the work directory and the agent's files: {e}");
            return run.sandbox_failed(detail, empty_digest(), empty_digest());
        }

        // The point of no return: from here the agent counts as started, forever.
        run.started_at_ms = now_ms();
        run.dir
            .claim_started(&StartedClaim {
                runner_pid: std::process::id(),
                started_at_ms: run.started_at_ms,
            })
            .inspect_err(|e| log(e))?;
        let stdout_file = run
            .dir
            .create_output(STDOUT_FILE)
            .map_err(io_ctx("creating stdout.log"))?;
        let stderr_file = run
            .dir
            .create_output(STDERR_FILE)
            .map_err(io_ctx("creating stderr.log"))?;
        let cap = limits.max_output_bytes;
        let stdout = StreamCapture::new(stdout_file, cap);
        let stderr = StreamCapture::new(stderr_file, cap);

        if let Err(detail) = drop_supplementary_groups() {
            return finish_unstarted(run, detail, stdout, stderr);
        }
        let launched = sandbox::launch(&plan, &cgroup);
        if let Err(e) = &launched
            && e.is_sandbox_failure()
        {
            return finish_unstarted(run, e.to_string(), stdout, stderr);
        }
        // The sandbox was built (even if the agent's program then could not be executed).
        run.sandbox = Some(SandboxEvidence {
            profile: request.sandbox.name,
            host_id: lease.id,
            landlock_abi: plan.landlock.abi,
            seccomp_rules: u32::try_from(plan.seccomp_rules).unwrap_or(u32::MAX),
            cgroup: cgroup.describe(),
            secrets: request.secrets.clone(),
        });
        let mut sandbox = match launched {
            Ok(s) => s,
            Err(e) => {
                // The sandbox worked; the program did not exist or could not be executed.
                // Reported like a shell does (127), with the reason.
                log(&e);
                let code = e.agent_exit_code().unwrap_or(127);
                let status = AgentStatus::Exited(code);
                run.emit(RunnerEvent::Exited {
                    at_ms: now_ms(),
                    code: Some(code),
                    signal: None,
                })?;
                let decision = Decision {
                    outcome: Outcome::Exited,
                    detail: Some(e.to_string()),
                };
                let (out, err) = finish_streams(stdout, stderr)?;
                let outcome = run.finish(decision, Some(status), out, err)?;
                return Ok(Completion::Finished(outcome));
            }
        };
        let init_pid = sandbox.init_pid;
        for (listener, route) in std::mem::take(&mut sandbox.egress)
            .into_iter()
            .zip(request.routes())
        {
            // Validated as a socket address with the request.
            if let Ok(upstream) = route.upstream.parse() {
                crate::egress::forward(listener, upstream, route.into());
            }
        }
        let started = Instant::now();
        run.emit(RunnerEvent::Started {
            at_ms: now_ms(),
            pid: init_pid.as_raw(),
        })?;
        log(format_args!(
            "agent started; sandbox init is pid {init_pid}"
        ));

        let supervised = supervise::supervise(Supervision {
            sandbox,
            signals,
            limits: &limits,
            events: &mut run.events,
            stdout,
            stderr,
            started,
        })
        .inspect_err(|e| log(e))?;
        let decision = outcome::decide(
            supervised.stop,
            supervised.status,
            limits.wall_clock_seconds,
            cgroup.oom_kills(),
            limits.memory_bytes,
        );
        let outcome = run.finish(
            decision,
            Some(supervised.status),
            supervised.stdout,
            supervised.stderr,
        )?;
        Ok(Completion::Finished(outcome))
    }

    fn finish_streams(
        stdout: StreamCapture,
        stderr: StreamCapture,
    ) -> Result<(StreamDigest, StreamDigest), RunError> {
        Ok((
            stdout.finish().map_err(io_ctx("syncing stdout.log"))?,
            stderr.finish().map_err(io_ctx("syncing stderr.log"))?,
        ))
    }

    fn finish_unstarted(
        run: &mut Run<'_>,
        detail: String,
        stdout: StreamCapture,
        stderr: StreamCapture,
    ) -> Result<Completion, RunError> {
        let (out, err) = finish_streams(stdout, stderr)?;
        run.sandbox_failed(detail, out, err)
    }
}

/// The CPU time of the runner's reaped children: the sandbox's init, which reaps every process
/// of the sandbox, so the agent's whole tree (`None` before the sandbox was started).
fn children_cpu() -> Option<cogward_protocol::runner::CpuTime> {
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).ok()?;
    let ms = |t: nix::sys::time::TimeVal| (t.tv_sec() as u64) * 1000 + (t.tv_usec() as u64) / 1000;
    Some(cogward_protocol::runner::CpuTime {
        user: ms(usage.user_time()),
        system: ms(usage.system_time()),
    })
}
