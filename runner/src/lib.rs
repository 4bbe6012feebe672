//! `cogward-runner`: one ephemeral sandbox per agent run.
//!
//! The `StartRunner` activity writes a run directory and starts `cogward-runner exec --dir DIR`
//! in its own session. The runner talks back only through files in that directory — the
//! contract is `cogward_protocol::runner` (file table, request, events, result). In order, the runner:
//!
//! 1. blocks SIGTERM/SIGINT/SIGCHLD into a signalfd (a SIGTERM from then on is a cancellation
//!    to record, never a silent death), and takes the directory's `lock` (`flock`, exclusive,
//!    non-blocking; held for its whole life). Busy: exit [`exit_code::LOCK_BUSY`], touching
//!    nothing.
//! 2. exits 0 at once if `result.json` exists; otherwise sends its own output to `runner.log`.
//! 3. reads and validates `request.json` ([`request`]); refused: exit
//!    [`exit_code::BAD_REQUEST`], no `started`.
//! 4. leases a host id of its own for the run ([`lease`]), then **decides** the sandbox
//!    ([`sandbox::plan`]): argv, exact environment, program search, id maps, rlimits, the
//!    filesystem view, the Landlock ruleset, the seccomp program — plain data, unit-tested.
//! 5. writes the agent's files into a fresh, root-only `work/` and only then hands it to the
//!    leased id (a `work/` that cannot be prepared refuses the run, nothing started); claims
//!    `started` with `O_EXCL` ([`rundir`]). It exists already: a previous runner
//!    started the agent and died; exit [`exit_code::ALREADY_STARTED`] without starting it
//!    again. This is what makes the agent run at most once per run directory.
//! 6. **applies** the sandbox (`sandbox::launch`): `clone` into new user, PID, mount,
//!    network, UTS and IPC namespaces; the parent maps one id (1000 inside → the leased host
//!    id); the child (the sandbox's PID 1, a tiny init) builds the private root (`pivot_root`
//!    onto a tmpfs: read-only system paths, `work/` bound from a descriptor at `/work`, own
//!    `/tmp`, `/dev`, `/proc`), brings up its own loopback (no route out), drops to uid 1000,
//!    forks the agent, which sets its rlimits, `no_new_privs`, its Landlock domain and its
//!    seccomp filter and **execs** the program with exactly the planned environment. Any failed
//!    step ends in `sandbox_failed` (exit [`exit_code::SANDBOX_FAILED`]); there is no fallback
//!    to running unsandboxed.
//! 7. supervises ([`supervise`]): captures stdout/stderr (capped, hashed), appends events,
//!    stops the sandbox on the deadline or on SIGTERM (SIGTERM, then SIGKILL to the init
//!    after the grace — which kills every process in its PID namespace).
//! 8. builds the artifact manifest of `work/` ([`manifest`]), writes `result.json` atomically,
//!    appends `finished`, and exits 0 whatever the agent's own exit code.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod capture;
#[cfg(target_os = "linux")]
pub mod cgroup;
#[cfg(target_os = "linux")]
pub mod egress;
pub mod git;
pub mod lease;
pub mod manifest;
pub mod outcome;

pub mod request;
pub mod run;
pub mod rundir;
pub mod sandbox;
pub mod secrets;
#[cfg(target_os = "linux")]
pub mod supervise;

/// The runner's exit codes. Whenever `result.json` was written for a run the agent could be
/// started in, the code is [`OK`](exit_code::OK); the agent's own code is in the result.
pub mod exit_code {
    /// A result was written (or already existed).
    pub const OK: u8 = 0;
    /// `request.json` is missing, unreadable or refused; nothing was started.
    pub const BAD_REQUEST: u8 = 65;
    /// The runner itself failed (I/O on the run directory...).
    pub const INTERNAL: u8 = 70;
    /// The sandbox could not be built; `result.json` says `sandbox_failed`.
    pub const SANDBOX_FAILED: u8 = 71;
    /// Another process holds the run directory's lock; nothing was touched.
    pub const LOCK_BUSY: u8 = 75;
    /// `started` exists without a result: the agent was started once by a runner that died.
    /// It is never started again.
    pub const ALREADY_STARTED: u8 = 76;
}
