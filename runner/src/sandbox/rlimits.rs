//! Resource limits: decided from [`Limits`] as plain data, applied in the agent process just
//! before `execve` (so the sandbox's init, which is runner code, is not bound by them).

use cogward_protocol::runner::Limits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// RLIMIT_CPU
    Cpu,
    /// RLIMIT_AS
    AddressSpace,
    /// RLIMIT_NPROC
    Processes,
    /// RLIMIT_CORE
    CoreDump,
    /// RLIMIT_FSIZE
    FileSize,
    /// RLIMIT_NOFILE
    OpenFiles,
}

impl LimitKind {
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Cpu => "RLIMIT_CPU",
            LimitKind::AddressSpace => "RLIMIT_AS",
            LimitKind::Processes => "RLIMIT_NPROC",
            LimitKind::CoreDump => "RLIMIT_CORE",
            LimitKind::FileSize => "RLIMIT_FSIZE",
            LimitKind::OpenFiles => "RLIMIT_NOFILE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RlimitSetting {
    pub kind: LimitKind,
    pub soft: u64,
    pub hard: u64,
}

/// The limits the agent runs under.
///
/// - CPU: SIGXCPU at `cpu_seconds` (soft), SIGKILL one second later (hard), so an agent may
///   catch SIGXCPU to flush its state but can never run past the hard limit.
/// - RLIMIT_NPROC counts per user *in the sandbox's own user namespace*, so it bounds this
///   sandbox (its init included) without being shared with other sandboxes on the same host uid.
/// - RLIMIT_AS is a backstop at four times the run's memory: the memory limit itself is the
///   control group's (actual use, tmpfs included, with the OOM kill recorded), since runtimes
///   such as V8 reserve far more address space than they use.
/// - No core dumps: they would land in `work/` as artifacts and can hold secrets.
/// - RLIMIT_FSIZE: a write past `max_file_bytes` fails (`EFBIG`; SIGXFSZ, which kills by
///   default), so a single file cannot fill the disk.
/// - RLIMIT_NOFILE bounds descriptors, so connections and files held open are bounded too.
pub fn decide(limits: &Limits) -> [RlimitSetting; 6] {
    [
        RlimitSetting {
            kind: LimitKind::Cpu,
            soft: limits.cpu_seconds,
            hard: limits.cpu_seconds.saturating_add(1),
        },
        RlimitSetting {
            kind: LimitKind::AddressSpace,
            soft: limits.memory_bytes.saturating_mul(4),
            hard: limits.memory_bytes.saturating_mul(4),
        },
        RlimitSetting {
            kind: LimitKind::Processes,
            soft: limits.max_processes,
            hard: limits.max_processes,
        },
        RlimitSetting {
            kind: LimitKind::CoreDump,
            soft: 0,
            hard: 0,
        },
        RlimitSetting {
            kind: LimitKind::FileSize,
            soft: limits.max_file_bytes,
            hard: limits.max_file_bytes,
        },
        RlimitSetting {
            kind: LimitKind::OpenFiles,
            soft: limits.max_open_files,
            hard: limits.max_open_files,
        },
    ]
}

/// Apply `settings` to the calling process. Async-signal-safe: no allocation.
#[cfg(target_os = "linux")]
pub fn apply(settings: &[RlimitSetting]) -> Result<(), (LimitKind, nix::errno::Errno)> {
    use nix::sys::resource::{Resource, setrlimit};
    for s in settings {
        let resource = match s.kind {
            LimitKind::Cpu => Resource::RLIMIT_CPU,
            LimitKind::AddressSpace => Resource::RLIMIT_AS,
            LimitKind::Processes => Resource::RLIMIT_NPROC,
            LimitKind::CoreDump => Resource::RLIMIT_CORE,
            LimitKind::FileSize => Resource::RLIMIT_FSIZE,
            LimitKind::OpenFiles => Resource::RLIMIT_NOFILE,
        };
        setrlimit(resource, s.soft, s.hard).map_err(|e| (s.kind, e))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn limits_map_to_rlimits() {
        let limits = Limits {
            cpu_seconds: 5,
            memory_bytes: 1 << 30,
            max_processes: 32,
            wall_clock_seconds: 60,
            grace_seconds: 2,
            max_output_bytes: 1024,
            max_file_bytes: 1 << 20,
            max_open_files: 256,
        };
        let s = decide(&limits);
        assert_eq!(
            s.map(|s| (s.kind, s.soft, s.hard)),
            [
                (LimitKind::Cpu, 5, 6),
                (LimitKind::AddressSpace, 4 << 30, 4 << 30),
                (LimitKind::Processes, 32, 32),
                (LimitKind::CoreDump, 0, 0),
                (LimitKind::FileSize, 1 << 20, 1 << 20),
                (LimitKind::OpenFiles, 256, 256),
            ]
        );
    }

    #[test]
    fn cpu_hard_limit_does_not_overflow() {
        let limits = Limits {
            cpu_seconds: u64::MAX,
            memory_bytes: 1,
            max_processes: 1,
            wall_clock_seconds: 1,
            grace_seconds: 0,
            max_output_bytes: 0,
            max_file_bytes: 1,
            max_open_files: 1,
        };
        assert_eq!(decide(&limits)[0].hard, u64::MAX);
    }
}
