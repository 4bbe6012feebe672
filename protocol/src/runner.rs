//! The contract between the `StartRunner` activity and the `cogward-runner` binary.
//!
//! The activity creates a run directory, writes [`RunnerRequest`] to `request.json` in it and
//! starts `cogward-runner exec --dir <run dir>` in its own session, so the runner outlives the
//! worker that started it. Everything the runner says goes to files in the run directory, never to
//! a pipe that dies with the worker:
//!
//! | file            | written by | meaning                                                         |
//! |-----------------|------------|-----------------------------------------------------------------|
//! | `request.json`  | activity   | what to run ([`RunnerRequest`])                                 |
//! | `lock`          | runner     | held (`flock`, exclusive) for the runner's whole life           |
//! | `started`       | runner     | created with `O_EXCL` just before the agent starts: at most once |
//! | `events.jsonl`  | runner     | one [`RunnerEvent`] per line, appended and flushed as they occur |
//! | `stdout.log`, `stderr.log` | runner | the agent's output (capped at `limits.max_output_bytes`) |
//! | `result.json`   | runner     | [`RunnerResult`], written atomically (tmp + rename) before the lock is released |
//! | `work/`         | runner     | the agent's working directory; every file left there is an artifact |
//! | `runner.log`    | runner     | the runner's own diagnostics                                    |

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of this protocol; the runner refuses a request with another one.
pub const PROTOCOL_VERSION: u32 = 3;

pub const REQUEST_FILE: &str = "request.json";
pub const LOCK_FILE: &str = "lock";
pub const STARTED_FILE: &str = "started";
pub const EVENTS_FILE: &str = "events.jsonl";
pub const STDOUT_FILE: &str = "stdout.log";
pub const STDERR_FILE: &str = "stderr.log";
pub const RESULT_FILE: &str = "result.json";
pub const WORK_DIR: &str = "work";
pub const RUNNER_LOG_FILE: &str = "runner.log";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerRequest {
    pub protocol: u32,
    pub run_id: String,
    /// Program and arguments; `argv[0]` is resolved against `PATH` from `env` (or the default).
    pub argv: Vec<String>,
    /// The agent's whole environment besides the runner's defaults (`PATH`, `HOME`, `LANG`,
    /// `COGWARD_RUN_ID`); nothing is inherited from the runner's own environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    pub sandbox: SandboxProfile,
    /// The sandbox's one way out: a port on its own loopback that the runner forwards to the
    /// gateway. Without it the sandbox reaches nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayEgress>,
    /// The sandbox's second way out, to cogward's egress proxy (HTTP CONNECT and plain HTTP to
    /// the destinations the run's egress profiles allow), by the same mechanism.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_proxy: Option<GatewayEgress>,
    /// Files written into `work/` before the agent starts, by relative path (the agent's MCP
    /// configuration, say). Paths are plain relative names: no `..`, no absolute paths.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// A git checkout `work/` starts as, before `files` are written over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkout: Option<Checkout>,
    /// Files written into the agent's private home (`HOME`, a tmpfs of its own, never an
    /// artifact) before it starts: an agent CLI's configuration. Same path rules as `files`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub home_files: BTreeMap<String, String>,
    /// Secrets delivered to the agent as files in `/secrets` (a tmpfs of its own, readable by
    /// its uid alone). Only names and digests are here: the values reach the runner on its
    /// standard input (a JSON object, name → value), never on disk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
}

/// A commit of a repository of the engine's, checked out (detached) as `work/`. Its `.git` is
/// the agent's to use; the engine never runs git in it (the run's diff is computed from the
/// engine's repository and the files the runner hashed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkout {
    /// An absolute path on the runner's host: a repository the engine trusts.
    pub repository: String,
    /// The full commit id.
    pub commit: String,
}

/// The git directory of a checkout, left out of the artifacts.
pub const GIT_DIR: &str = ".git";

impl RunnerRequest {
    /// The sandbox's ways out, in the order of its ports: the gateway, then the egress proxy.
    pub fn routes(&self) -> impl Iterator<Item = &GatewayEgress> {
        self.gateway.iter().chain(&self.egress_proxy)
    }
}

/// A secret by reference: its name and the sha256 of its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub name: String,
    pub sha256: String,
}

/// Where the agent finds its secrets, one file per name.
pub const SECRETS_DIR: &str = "/secrets";

/// Mediated egress: connections to `127.0.0.1:<port>` inside the sandbox are forwarded by the
/// runner to `upstream` (the gateway, in the host's network namespace). The listening socket is
/// created inside the sandbox's network namespace and handed to the runner, so nothing else of
/// the host's network is reachable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayEgress {
    /// `host:port` the runner connects to, in the host's network namespace.
    pub upstream: String,
    /// The port on the sandbox's loopback.
    pub port: u16,
    /// Connections open at once through the port; more are closed as they arrive.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// A connection whose first byte does not arrive within this is closed.
    #[serde(default = "default_first_byte_timeout")]
    pub first_byte_timeout_seconds: u64,
    /// A connection on which nothing moved either way for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// A line the runner sends the upstream before the agent's first byte (the egress proxy
    /// learns which run a connection is from: the agent cannot write it, only follow it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preamble: Option<String>,
}

impl GatewayEgress {
    /// Egress to `upstream` through `port`, with the default bounds.
    pub fn new(upstream: String, port: u16) -> Self {
        GatewayEgress {
            upstream,
            port,
            max_connections: default_max_connections(),
            first_byte_timeout_seconds: default_first_byte_timeout(),
            idle_timeout_seconds: default_idle_timeout(),
            preamble: None,
        }
    }
}

fn default_max_connections() -> u32 {
    64
}

fn default_first_byte_timeout() -> u64 {
    10
}

fn default_idle_timeout() -> u64 {
    300
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// RLIMIT_CPU, seconds of CPU time.
    pub cpu_seconds: u64,
    /// RLIMIT_AS, bytes of address space.
    pub memory_bytes: u64,
    /// RLIMIT_NPROC for the sandbox user.
    pub max_processes: u64,
    /// Wall-clock deadline from the agent's start; then SIGTERM, then SIGKILL after the grace.
    pub wall_clock_seconds: u64,
    /// Grace between SIGTERM and SIGKILL, on deadline and on cancellation.
    pub grace_seconds: u64,
    /// Output past this many bytes per stream is dropped (and counted as truncated).
    pub max_output_bytes: u64,
    /// RLIMIT_FSIZE: no file the agent writes grows past this.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// RLIMIT_NOFILE: descriptors the agent may hold open.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: u64,
}

fn default_max_file_bytes() -> u64 {
    1 << 30
}

fn default_max_open_files() -> u64 {
    1024
}

/// How the agent is isolated. Every sandbox gets the private filesystem view, Landlock and
/// seccomp; hardening arrives as new fields here and new stages in the runner, never as a
/// silent downgrade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxProfile {
    /// Which isolation profile the run was admitted with.
    #[serde(default)]
    pub name: ProfileName,
    /// Host ids the sandbox user maps to: each live run leases one of its own (uid = gid), so
    /// no two runs ever share an id. Unprivileged ids with no files of their own.
    pub host_ids: IdRange,
    /// Where the leases live: one `flock`ed file per id, shared by every runner on the host and
    /// released when a runner dies. Root-only.
    pub lease_dir: String,
    /// Extra host paths the agent sees read-only at the same place (a runtime's own install
    /// directory, say). Each must exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only: Vec<String>,
}

/// The isolation profiles a run spec may declare (and the run-admission policy may allow).
///
/// - `standard`: the private filesystem view, Landlock over it, seccomp, rlimits, no route out
///   but the gateway port; the agent may run TCP servers on its own loopback.
/// - `strict`: `standard`, plus Landlock's network rules and scopes (ABI 6 or later): TCP
///   connections only to the sandbox's egress ports, no TCP listening at all, no abstract unix
///   socket or signal outside the sandbox.
/// - `microvm`: reserved for a micro-VM runner this build does not have; a run declaring it is
///   refused (`sandbox_failed`), never run with less.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ProfileName {
    #[default]
    Standard,
    Strict,
    Microvm,
}

impl ProfileName {
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileName::Standard => "standard",
            ProfileName::Strict => "strict",
            ProfileName::Microvm => "microvm",
        }
    }

    pub fn is_standard(&self) -> bool {
        *self == ProfileName::Standard
    }
}

/// `count` consecutive ids from `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdRange {
    pub first: u32,
    pub count: u32,
}

/// The default lease directory (one per host: runners of every engine on it share the ids).
pub const DEFAULT_LEASE_DIR: &str = "/run/cogward/sandbox-ids";

impl Default for SandboxProfile {
    fn default() -> Self {
        Self {
            name: ProfileName::Standard,
            host_ids: IdRange {
                first: 100_000,
                count: 10_000,
            },
            lease_dir: DEFAULT_LEASE_DIR.to_string(),
            read_only: Vec::new(),
        }
    }
}

/// How the sandbox was built, as the result records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxEvidence {
    /// The profile it was built to.
    pub profile: ProfileName,
    /// The host id (uid = gid) this run leased.
    pub host_id: u32,
    /// The Landlock ABI the ruleset was built for.
    pub landlock_abi: u32,
    /// Rows of the seccomp rule table.
    pub seccomp_rules: u32,
    /// The run's control group (`v2:PATH` or `v1:PATH` of its memory group).
    pub cgroup: String,
    /// The secrets delivered, by name and digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
}

/// One line of `events.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunnerEvent {
    /// The sandbox is set up and the agent process exists.
    ///
    /// `pid` is the host pid of the sandbox's init (PID 1 of its PID namespace, the agent's
    /// parent): SIGTERM to it reaches every process in the sandbox, SIGKILL kills them all.
    Started { at_ms: u64, pid: i32 },
    /// Periodic progress while the agent runs (about once a second).
    Progress {
        at_ms: u64,
        elapsed_ms: u64,
        stdout_bytes: u64,
        stderr_bytes: u64,
    },
    /// The runner was asked to stop the agent (SIGTERM received, or deadline reached).
    Stopping { at_ms: u64, reason: StopReason },
    /// The agent's process is gone.
    Exited {
        at_ms: u64,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// `result.json` has been written.
    Finished { at_ms: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Cancelled,
    Deadline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The agent exited by itself; see `exit_code`.
    Exited,
    /// The agent was killed by a signal it did not ask for (e.g. RLIMIT_CPU's SIGXCPU/SIGKILL).
    Signaled,
    /// The wall-clock deadline passed.
    TimedOut,
    /// The runner received SIGTERM (run cancelled) and stopped the agent.
    Cancelled,
    /// The sandbox could not be set up; the agent never started.
    SandboxFailed,
    /// The run's memory limit was reached and the out-of-memory killer ended its processes.
    OutOfMemory,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamDigest {
    pub sha256: String,
    pub bytes: u64,
    pub truncated: bool,
}

/// The artifact manifest's file in the run directory: every file the agent left in `work/`
/// (up to the caps), as [`Manifest`]. It grows with the agent's work, so it never travels
/// through workflow history: the result carries its digest and counts ([`ArtifactsSummary`]).
pub const MANIFEST_FILE: &str = "manifest.json";
/// Most files a manifest lists, and most bytes it hashes in all; files beyond are counted, not
/// listed, and the manifest says `truncated`.
pub const MANIFEST_MAX_FILES: usize = 100_000;
pub const MANIFEST_MAX_HASHED_BYTES: u64 = 8 << 30;

/// `manifest.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Sorted by path.
    pub artifacts: Vec<Artifact>,
    /// Every regular file found, listed or not, and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Whether files were left out of `artifacts` (the caps).
    pub truncated: bool,
}

/// What the result (and so history and the ledger) says of the manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArtifactsSummary {
    /// The manifest's file name in the run directory.
    pub manifest: String,
    /// sha256 of that file's bytes.
    pub sha256: String,
    pub files: u64,
    pub bytes: u64,
    pub listed: u64,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Artifact {
    /// Path relative to `work/`, with `/` separators.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerResult {
    pub protocol: u32,
    pub run_id: String,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Human-readable detail for `sandbox_failed` and signals.
    pub detail: Option<String>,
    pub stdout: StreamDigest,
    pub stderr: StreamDigest,
    /// The artifact manifest, by digest (the list itself is [`MANIFEST_FILE`]).
    pub artifacts: ArtifactsSummary,
    /// How the sandbox was built (absent when it never was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxEvidence>,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    /// CPU time the agent's whole process tree used (user, system), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<CpuTime>,
    /// What the engine kept of the run in its evidence store, by digest. Filled in by the
    /// StartRunner activity after it read this result, never by the runner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<StoredEvidence>,
}

/// CPU time, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuTime {
    pub user: u64,
    pub system: u64,
}

/// A run's evidence as stored: the index's digest and every item's. Travels in history (and so
/// into the ledger); the items themselves stay in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredEvidence {
    /// sha256 of the run's index file in the store, which lists these items and every
    /// artifact (`work/<path>`) with its digest.
    pub index_sha256: String,
    /// The run's own items (manifest, diff, transcript, stdout, stderr, artifacts list).
    pub items: Vec<EvidenceItem>,
    /// Artifacts the index lists, and how many of them it stores (the rest by digest only).
    #[serde(default)]
    pub artifacts_listed: u64,
    #[serde(default)]
    pub artifacts_stored: u64,
}

/// One item of a run's evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceItem {
    /// `manifest`, `diff`, `transcript`, `stdout`, `stderr`, `artifacts`, or `work/<path>`.
    pub name: String,
    pub media_type: String,
    pub sha256: String,
    pub bytes: u64,
    /// Whether its bytes are in the store (an artifact too large for it is listed by digest).
    pub stored: bool,
}
