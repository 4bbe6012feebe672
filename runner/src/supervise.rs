//! Watching a running sandbox: capture its output, report progress, enforce the wall-clock
//! deadline, honour cancellation (SIGTERM to the runner), and learn how the agent ended.
//!
//! Single-threaded: one `poll` over the signalfd and the two output pipes. Stopping is always
//! SIGTERM to the sandbox's init (which forwards it to every process in the sandbox), then
//! SIGKILL to the init after the grace — which makes the kernel kill everything in its PID
//! namespace, so nothing the agent started can outlive the run.

use crate::capture::StreamCapture;
use crate::outcome::AgentStatus;
use crate::rundir::{EventLog, now_ms};
use crate::sandbox::Sandbox;
use cogward_protocol::runner::{Limits, RunnerEvent, StopReason, StreamDigest};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// After the init is gone every writer of the output pipes is dead; this only bounds the wait
/// for the kernel to finish tearing the namespace down.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> SuperviseError {
    move |source| SuperviseError::Io { context, source }
}

fn os(context: &'static str) -> impl FnOnce(Errno) -> SuperviseError {
    move |errno| SuperviseError::Io {
        context,
        source: errno.into(),
    }
}

/// What the supervisor needs.
pub struct Supervision<'a> {
    pub sandbox: Sandbox,
    pub signals: &'a SignalFd,
    pub limits: &'a Limits,
    pub events: &'a mut EventLog,
    pub stdout: StreamCapture,
    pub stderr: StreamCapture,
    /// When the agent started: the wall-clock deadline counts from here.
    pub started: Instant,
}

/// How it went.
#[derive(Debug)]
pub struct Supervised {
    pub status: AgentStatus,
    pub stop: Option<StopReason>,
    pub stdout: StreamDigest,
    pub stderr: StreamDigest,
}

/// Watch the sandbox until it is gone and its output drained. On error the sandbox is killed
/// before returning: it never runs unsupervised.
pub fn supervise(s: Supervision<'_>) -> Result<Supervised, SuperviseError> {
    let mut state = State {
        init: s.sandbox.init_pid,
        reaped: false,
        events: s.events,
    };
    let result = watch(
        &mut state, &s.sandbox, s.signals, s.limits, s.started, s.stdout, s.stderr,
    );
    if result.is_err() && !state.reaped {
        let _ = kill(state.init, Signal::SIGKILL);
        let _ = waitpid(state.init, None);
    }
    result
}

struct State<'a> {
    init: nix::unistd::Pid,
    /// Once the init is reaped its pid may be reused: it must never be signalled again.
    reaped: bool,
    events: &'a mut EventLog,
}

/// One output pipe and where it goes.
struct Stream<'a> {
    pipe: &'a OwnedFd,
    capture: StreamCapture,
    open: bool,
}

impl Stream<'_> {
    fn read_some(&mut self, buf: &mut [u8]) -> Result<(), SuperviseError> {
        match nix::unistd::read(self.pipe, buf) {
            Ok(0) => self.open = false,
            Ok(n) => self
                .capture
                .push(&buf[..n])
                .map_err(io("writing the agent's output"))?,
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(e) => return Err(os("reading the agent's output")(e)),
        }
        Ok(())
    }
}

fn watch(
    state: &mut State<'_>,
    sandbox: &Sandbox,
    signals: &SignalFd,
    limits: &Limits,
    started: Instant,
    stdout: StreamCapture,
    stderr: StreamCapture,
) -> Result<Supervised, SuperviseError> {
    let far = Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = started + Duration::from_secs(limits.wall_clock_seconds).min(far);
    let grace = Duration::from_secs(limits.grace_seconds).min(far);
    let mut out = Stream {
        pipe: &sandbox.stdout,
        capture: stdout,
        open: true,
    };
    let mut err = Stream {
        pipe: &sandbox.stderr,
        capture: stderr,
        open: true,
    };
    let mut stop: Option<StopReason> = None;
    let mut kill_at: Option<Instant> = None;
    let mut next_progress = started + PROGRESS_EVERY;
    let mut ended: Option<(AgentStatus, Instant)> = None;
    let mut buf = vec![0u8; READ_CHUNK];

    loop {
        let now = Instant::now();
        match ended {
            Some((_, at)) => {
                if (!out.open && !err.open) || now >= at + DRAIN_LIMIT {
                    break;
                }
            }
            None => {
                if stop.is_none() && now >= deadline {
                    stop = Some(StopReason::Deadline);
                    kill_at = Some(begin_stop(state, StopReason::Deadline, grace)?);
                }
                if kill_at.is_some_and(|k| now >= k) {
                    // SIGKILL to a PID namespace's init kills every process in the namespace.
                    let _ = kill(state.init, Signal::SIGKILL);
                    kill_at = None;
                }
            }
        }
        if now >= next_progress {
            state
                .events
                .emit(&RunnerEvent::Progress {
                    at_ms: now_ms(),
                    elapsed_ms: duration_ms(now.saturating_duration_since(started)),
                    stdout_bytes: out.capture.stored(),
                    stderr_bytes: err.capture.stored(),
                })
                .map_err(io("writing a progress event"))?;
            while next_progress <= now {
                next_progress += PROGRESS_EVERY;
            }
        }

        let mut wake = next_progress;
        match ended {
            Some((_, at)) => wake = wake.min(at + DRAIN_LIMIT),
            None => {
                if stop.is_none() {
                    wake = wake.min(deadline);
                }
                if let Some(k) = kill_at {
                    wake = wake.min(k);
                }
            }
        }
        // Round up, so we never wake a hair early and spin.
        let timeout = wake.saturating_duration_since(now) + Duration::from_millis(1);
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);

        let (sig_ready, out_ready, err_ready) = {
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            if out.open {
                fds.push(PollFd::new(out.pipe.as_fd(), PollFlags::POLLIN));
            }
            if err.open {
                fds.push(PollFd::new(err.pipe.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(os("waiting for the sandbox")(e)),
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            let mut it = ready.into_iter();
            let sig = it.next().unwrap_or(false);
            let o = out.open && it.next().unwrap_or(false);
            let e = err.open && it.next().unwrap_or(false);
            (sig, o, e)
        };

        if sig_ready {
            while let Some(info) = signals
                .read_signal()
                .map_err(os("reading the runner's signals"))?
            {
                let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
                let cancel = signo == libc::SIGTERM || signo == libc::SIGINT;
                if cancel && ended.is_none() && stop.is_none() {
                    stop = Some(StopReason::Cancelled);
                    kill_at = Some(begin_stop(state, StopReason::Cancelled, grace)?);
                }
                // SIGCHLD: handled by the reap below, which runs every iteration anyway.
            }
        }
        if out_ready {
            out.read_some(&mut buf)?;
        }
        if err_ready {
            err.read_some(&mut buf)?;
        }
        if ended.is_none()
            && let Some(status) = try_reap(state, &sandbox.status)?
        {
            state
                .events
                .emit(&RunnerEvent::Exited {
                    at_ms: now_ms(),
                    code: status.exit_code(),
                    signal: status.signal(),
                })
                .map_err(io("writing the exited event"))?;
            ended = Some((status, Instant::now()));
        }
    }

    let Some((status, _)) = ended else {
        return Err(SuperviseError::Io {
            context: "the supervision loop ended before the sandbox",
            source: std::io::Error::other("internal error"),
        });
    };
    Ok(Supervised {
        status,
        stop,
        stdout: out.capture.finish().map_err(io("syncing stdout.log"))?,
        stderr: err.capture.finish().map_err(io("syncing stderr.log"))?,
    })
}

/// Log the stop and SIGTERM the sandbox; returns when SIGKILL is due.
fn begin_stop(
    state: &mut State<'_>,
    reason: StopReason,
    grace: Duration,
) -> Result<Instant, SuperviseError> {
    state
        .events
        .emit(&RunnerEvent::Stopping {
            at_ms: now_ms(),
            reason,
        })
        .map_err(io("writing the stopping event"))?;
    // The init forwards it to every other process in the sandbox.
    let _ = kill(state.init, Signal::SIGTERM);
    Ok(Instant::now() + grace)
}

/// If the init has exited, reap it and return how the agent ended: the status the init
/// reported, or — when the init was killed before the agent exited — the init's own death.
fn try_reap(
    state: &mut State<'_>,
    status_pipe: &OwnedFd,
) -> Result<Option<AgentStatus>, SuperviseError> {
    let init_status = match waitpid(state.init, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, code)) => AgentStatus::Exited(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => AgentStatus::Signaled(sig as i32),
        Ok(_) => return Ok(None),
        Err(Errno::EINTR) => return Ok(None),
        Err(e) => return Err(os("waiting for the sandbox init")(e)),
    };
    state.reaped = true;
    let mut raw = [0u8; 4];
    let reported = match nix::unistd::read(status_pipe, &mut raw) {
        Ok(4) => AgentStatus::from_raw_wait_status(i32::from_ne_bytes(raw)),
        _ => None,
    };
    Ok(Some(reported.unwrap_or(init_status)))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
