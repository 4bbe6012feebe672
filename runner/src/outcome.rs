//! How the agent ended, and what the run's [`Outcome`] is: pure decisions.

use cogward_protocol::runner::{Outcome, StopReason};

/// How the agent process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentStatus {
    Exited(i32),
    Signaled(i32),
}

impl AgentStatus {
    /// Decode a raw `waitpid` status (as the sandbox's init reports it). `None` for a status
    /// that is neither an exit nor a death by signal (stopped/continued: never reported).
    pub fn from_raw_wait_status(raw: i32) -> Option<AgentStatus> {
        if libc::WIFEXITED(raw) {
            Some(AgentStatus::Exited(libc::WEXITSTATUS(raw)))
        } else if libc::WIFSIGNALED(raw) {
            Some(AgentStatus::Signaled(libc::WTERMSIG(raw)))
        } else {
            None
        }
    }

    pub fn exit_code(self) -> Option<i32> {
        match self {
            AgentStatus::Exited(code) => Some(code),
            AgentStatus::Signaled(_) => None,
        }
    }

    pub fn signal(self) -> Option<i32> {
        match self {
            AgentStatus::Exited(_) => None,
            AgentStatus::Signaled(sig) => Some(sig),
        }
    }
}

/// The run's outcome and its human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub detail: Option<String>,
}

/// A stop the runner initiated (deadline, cancellation) wins over how the agent then ended:
/// the agent may exit cleanly on SIGTERM, but the run still timed out or was cancelled. Then
/// the out-of-memory killer (`oom_kills` in the run's group): whatever the agent did after,
/// the run hit its memory limit.
pub fn decide(
    stop: Option<StopReason>,
    status: AgentStatus,
    wall_clock_seconds: u64,
    oom_kills: u64,
    memory_bytes: u64,
) -> Decision {
    let ended = describe_status(status);
    match stop {
        None if oom_kills > 0 => Decision {
            outcome: Outcome::OutOfMemory,
            detail: Some(format!(
                "the memory limit of {memory_bytes} bytes was reached: the out-of-memory killer ended {oom_kills} process(es); the agent {ended}"
            )),
        },
        Some(StopReason::Deadline) => Decision {
            outcome: Outcome::TimedOut,
            detail: Some(format!(
                "wall-clock deadline of {wall_clock_seconds} s passed; the agent {ended}"
            )),
        },
        Some(StopReason::Cancelled) => Decision {
            outcome: Outcome::Cancelled,
            detail: Some(format!("the run was cancelled; the agent {ended}")),
        },
        None => match status {
            AgentStatus::Exited(_) => Decision {
                outcome: Outcome::Exited,
                detail: None,
            },
            AgentStatus::Signaled(_) => Decision {
                outcome: Outcome::Signaled,
                detail: Some(format!("the agent {ended}")),
            },
        },
    }
}

fn describe_status(status: AgentStatus) -> String {
    match status {
        AgentStatus::Exited(code) => format!("exited with code {code}"),
        AgentStatus::Signaled(sig) => {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("unknown signal");
            let why = match sig {
                libc::SIGXCPU => " (CPU time limit)",
                libc::SIGKILL => {
                    " (killed: CPU hard limit, out of memory, or stopped by the runner)"
                }
                _ => "",
            };
            format!("was killed by signal {sig} {name}{why}")
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn raw_wait_statuses_decode() {
        assert_eq!(
            AgentStatus::from_raw_wait_status(3 << 8),
            Some(AgentStatus::Exited(3))
        );
        assert_eq!(
            AgentStatus::from_raw_wait_status(libc::SIGKILL),
            Some(AgentStatus::Signaled(libc::SIGKILL))
        );
        // Stopped by SIGSTOP: 0x137f.
        assert_eq!(AgentStatus::from_raw_wait_status(0x137f), None);
    }

    #[test]
    fn the_agent_own_ending_decides_when_nobody_stopped_it() {
        let d = decide(None, AgentStatus::Exited(2), 10, 0, 1);
        assert_eq!(d.outcome, Outcome::Exited);
        assert_eq!(d.detail, None);
        let d = decide(None, AgentStatus::Signaled(libc::SIGXCPU), 10, 0, 1);
        assert_eq!(d.outcome, Outcome::Signaled);
        assert!(d.detail.unwrap().contains("SIGXCPU"));
    }

    #[test]
    fn a_runner_stop_wins_over_the_agent_ending() {
        let d = decide(Some(StopReason::Deadline), AgentStatus::Exited(0), 5, 1, 1);
        assert_eq!(d.outcome, Outcome::TimedOut);
        assert!(d.detail.unwrap().contains("5 s"));
        let d = decide(
            Some(StopReason::Cancelled),
            AgentStatus::Signaled(libc::SIGTERM),
            5,
            0,
            1,
        );
        assert_eq!(d.outcome, Outcome::Cancelled);
    }

    #[test]
    fn an_oom_kill_is_the_outcome_whatever_the_agent_did_after() {
        for status in [AgentStatus::Signaled(libc::SIGKILL), AgentStatus::Exited(1)] {
            let d = decide(None, status, 5, 1, 64 << 20);
            assert_eq!(d.outcome, Outcome::OutOfMemory);
            assert!(d.detail.unwrap().contains("67108864 bytes"));
        }
    }
}
