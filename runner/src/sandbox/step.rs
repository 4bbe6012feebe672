//! The child's setup steps, and the fixed-size report of the first one that failed.
//!
//! After `clone` the child cannot allocate or format, so a failure crosses the setup pipe as
//! twelve bytes (step, errno, detail — the index of the failed filesystem-view entry) and the
//! runner turns it into words.

/// One setup step of the sandbox's init (before the agent exists) or of the agent process
/// (before `execve`). The discriminants are the wire format: append, never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    ParentDeathSignal = 1,
    CloseFds = 2,
    SetSession = 3,
    MountsPrivate = 4,
    Loopback = 6,
    Hostname = 7,
    SetGid = 8,
    SetUid = 9,
    InitSignals = 10,
    Fork = 11,
    AgentSignals = 12,
    Stdio = 13,
    CloseOnExec = 14,
    Chdir = 15,
    RlimitCpu = 16,
    RlimitAs = 17,
    RlimitNproc = 18,
    RlimitCore = 19,
    NoNewPrivs = 20,
    /// Not a sandbox failure: the agent's program could not be executed.
    Exec = 21,
    Egress = 22,
    FsIds = 23,
    FsStaging = 24,
    /// `detail` is the index of the entry in the plan's `fs_view`.
    FsOp = 25,
    FsDetachHost = 26,
    FsEnterRoot = 27,
    FsReadOnlyRoot = 28,
    Landlock = 29,
    Seccomp = 30,
    RlimitFsize = 31,
    RlimitNofile = 32,
    OpenWorkDir = 33,
}

const ALL_STEPS: [Step; 32] = [
    Step::ParentDeathSignal,
    Step::CloseFds,
    Step::SetSession,
    Step::MountsPrivate,
    Step::Loopback,
    Step::Hostname,
    Step::SetGid,
    Step::SetUid,
    Step::InitSignals,
    Step::Fork,
    Step::AgentSignals,
    Step::Stdio,
    Step::CloseOnExec,
    Step::Chdir,
    Step::RlimitCpu,
    Step::RlimitAs,
    Step::RlimitNproc,
    Step::RlimitCore,
    Step::NoNewPrivs,
    Step::Exec,
    Step::Egress,
    Step::FsIds,
    Step::FsStaging,
    Step::FsOp,
    Step::FsDetachHost,
    Step::FsEnterRoot,
    Step::FsReadOnlyRoot,
    Step::Landlock,
    Step::Seccomp,
    Step::RlimitFsize,
    Step::RlimitNofile,
    Step::OpenWorkDir,
];

impl Step {
    pub fn from_u32(n: u32) -> Option<Step> {
        ALL_STEPS.into_iter().find(|s| *s as u32 == n)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Step::ParentDeathSignal => "setting the parent-death signal of the sandbox init",
            Step::CloseFds => "closing inherited file descriptors",
            Step::SetSession => "starting a new session",
            Step::MountsPrivate => "making mounts private",
            Step::Loopback => "bringing up the sandbox loopback",
            Step::Hostname => "setting the sandbox hostname",
            Step::SetGid => "switching to the sandbox gid",
            Step::SetUid => "switching to the sandbox uid",
            Step::InitSignals => "setting up the sandbox init's signals",
            Step::Fork => "forking the agent process",
            Step::AgentSignals => "resetting the agent's signals",
            Step::Stdio => "connecting the agent's stdin/stdout/stderr",
            Step::CloseOnExec => "closing every other file descriptor on exec",
            Step::Chdir => "entering the work directory as the sandbox user",
            Step::RlimitCpu => "setting RLIMIT_CPU",
            Step::RlimitAs => "setting RLIMIT_AS",
            Step::RlimitNproc => "setting RLIMIT_NPROC",
            Step::RlimitCore => "setting RLIMIT_CORE",
            Step::NoNewPrivs => "setting no_new_privs",
            Step::Exec => "executing the agent's program",
            Step::Egress => "opening the gateway port on the sandbox loopback",
            Step::FsIds => "taking the sandbox user's ids for building its filesystem",
            Step::FsStaging => "preparing the staging root for the filesystem view",
            Step::FsOp => "building the filesystem view",
            Step::FsDetachHost => "detaching the host's filesystem from the view",
            Step::FsEnterRoot => "entering the filesystem view",
            Step::FsReadOnlyRoot => "making the view's root read-only",
            Step::Landlock => "applying the Landlock ruleset",
            Step::Seccomp => "installing the seccomp filter",
            Step::RlimitFsize => "setting RLIMIT_FSIZE",
            Step::RlimitNofile => "setting RLIMIT_NOFILE",
            Step::OpenWorkDir => "opening the work directory",
        }
    }
}

/// The first failed step, its errno, and a step-specific detail (0 when it has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildFailure {
    pub step: Step,
    pub errno: i32,
    pub detail: u32,
}

impl ChildFailure {
    pub const WIRE_SIZE: usize = 12;

    pub fn encode(self) -> [u8; Self::WIRE_SIZE] {
        let mut out = [0u8; Self::WIRE_SIZE];
        out[..4].copy_from_slice(&(self.step as u32).to_ne_bytes());
        out[4..8].copy_from_slice(&self.errno.to_ne_bytes());
        out[8..].copy_from_slice(&self.detail.to_ne_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<ChildFailure> {
        let word = |at: usize| -> Option<[u8; 4]> { bytes.get(at..at + 4)?.try_into().ok() };
        Some(ChildFailure {
            step: Step::from_u32(u32::from_ne_bytes(word(0)?))?,
            errno: i32::from_ne_bytes(word(4)?),
            detail: u32::from_ne_bytes(word(8)?),
        })
    }
}

impl std::fmt::Display for ChildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.step.describe(),
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_step_round_trips() {
        for step in ALL_STEPS {
            let f = ChildFailure {
                step,
                errno: 13,
                detail: 7,
            };
            assert_eq!(ChildFailure::decode(&f.encode()), Some(f));
        }
    }

    #[test]
    fn short_or_unknown_reports_are_rejected() {
        assert_eq!(ChildFailure::decode(&[1, 0, 0]), None);
        let mut bytes = ChildFailure {
            step: Step::Exec,
            errno: 2,
            detail: 0,
        }
        .encode();
        bytes[..4].copy_from_slice(&999u32.to_ne_bytes());
        assert_eq!(ChildFailure::decode(&bytes), None);
    }

    #[test]
    fn failures_read_as_words() {
        let f = ChildFailure {
            step: Step::Seccomp,
            errno: libc::EPERM,
            detail: 0,
        };
        assert!(f.to_string().starts_with("installing the seccomp filter"));
    }
}
