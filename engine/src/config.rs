//! Flags and environment → one typed configuration.

use clap::Args;
use cogward_protocol::runner::{IdRange, SandboxProfile};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct EngineConfig {
    /// Where cogward keeps its state: run directories, the SQLite ledger, the dev server's data.
    #[arg(
        long,
        env = "COGWARD_STATE_DIR",
        default_value = ".cogward",
        global = true
    )]
    pub state_dir: PathBuf,
    /// sqlite://FILE or postgres://... (default: sqlite://<state-dir>/cogward.db).
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Temporal frontend address.
    #[arg(
        long,
        env = "COGWARD_TEMPORAL_ADDRESS",
        default_value = "http://127.0.0.1:7233",
        global = true
    )]
    pub temporal: String,
    #[arg(
        long,
        env = "COGWARD_NAMESPACE",
        default_value = "default",
        global = true
    )]
    pub namespace: String,
    /// Address the API listens on.
    #[arg(
        long,
        env = "COGWARD_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,
    /// JSON file of API principals (default: <state-dir>/tokens.json).
    #[arg(long, env = "COGWARD_TOKENS_FILE", global = true)]
    pub tokens_file: Option<PathBuf>,
    /// The cogward-runner binary (default: next to this executable).
    #[arg(long, env = "COGWARD_RUNNER_BIN", global = true)]
    pub runner_bin: Option<PathBuf>,
    /// How often the history mirror looks for new events, in milliseconds.
    #[arg(
        long,
        env = "COGWARD_MIRROR_INTERVAL_MS",
        default_value_t = 250,
        global = true
    )]
    pub mirror_interval_ms: u64,
    /// Fuel per policy decision (a deterministic step budget; 0 turns metering off).
    #[arg(
        long,
        env = "COGWARD_POLICY_FUEL",
        default_value_t = 10_000_000,
        global = true
    )]
    pub policy_fuel: u64,
    /// Wall-clock deadline per policy call, in milliseconds.
    #[arg(
        long,
        env = "COGWARD_POLICY_DEADLINE_MS",
        default_value_t = 100,
        global = true
    )]
    pub policy_deadline_ms: u64,
    /// Linear memory cap per policy instance, in MiB.
    #[arg(
        long,
        env = "COGWARD_POLICY_MEMORY_MB",
        default_value_t = 64,
        global = true
    )]
    pub policy_memory_mb: usize,
    /// The gateway's configuration: providers, prices, tiers (default:
    /// <state-dir>/gateway.json; absent means no providers).
    #[arg(long, env = "COGWARD_GATEWAY_CONFIG", global = true)]
    pub gateway_config: Option<PathBuf>,
    /// The ledger checkpoint signing key (default: <state-dir>/ledger-signing-key.json, created
    /// 0600 on first use).
    #[arg(long, env = "COGWARD_LEDGER_SIGNING_KEY", global = true)]
    pub ledger_signing_key: Option<PathBuf>,
    /// Where signed checkpoints are appended (default: <state-dir>/checkpoints.jsonl).
    #[arg(long, env = "COGWARD_CHECKPOINT_FILE", global = true)]
    pub checkpoint_file: Option<PathBuf>,
    /// How often `serve` signs a checkpoint while the ledger grows, in seconds (0: never).
    #[arg(
        long,
        env = "COGWARD_CHECKPOINT_INTERVAL_S",
        default_value_t = 300,
        global = true
    )]
    pub checkpoint_interval_s: u64,
    /// How long runs' evidence is kept in the evidence store after they finish, in days (0:
    /// forever); `serve` sweeps hourly.
    #[arg(
        long,
        env = "COGWARD_EVIDENCE_RETENTION_DAYS",
        default_value_t = 90,
        global = true
    )]
    pub evidence_retention_days: u64,
    /// The key file run credentials are minted under (default: <state-dir>/gateway-keys.json,
    /// created 0600 on first use; see docs/operations.md for rotation).
    #[arg(long, env = "COGWARD_GATEWAY_KEYS", global = true)]
    pub gateway_keys: Option<PathBuf>,
    /// Address the gateway listens on (its own listener: model providers' APIs and MCP, nothing
    /// of the operator API).
    #[arg(
        long,
        env = "COGWARD_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8082",
        global = true
    )]
    pub gateway_listen: SocketAddr,
    /// `host:port` runners forward their sandbox's gateway port to (default: the gateway's
    /// listen address, loopback if it listens on every interface).
    #[arg(long, env = "COGWARD_GATEWAY_ADDRESS", global = true)]
    pub gateway_address: Option<String>,
    /// Secrets runs may reference, per tenant (default: <state-dir>/secrets.json; the
    /// environment's `COGWARD_SECRET__<TENANT>__<NAME>` serve as well).
    #[arg(long, env = "COGWARD_SECRETS_FILE", global = true)]
    pub secrets_file: Option<PathBuf>,
    /// Address the egress proxy listens on (runners forward their sandbox's proxy port here).
    #[arg(
        long,
        env = "COGWARD_EGRESS_LISTEN",
        default_value = "127.0.0.1:8081",
        global = true
    )]
    pub egress_listen: SocketAddr,
    /// Egress profiles and name mappings of this installation, added to the built-in catalog
    /// (default: <state-dir>/egress.json; absent means the catalog alone).
    #[arg(long, env = "COGWARD_EGRESS_CONFIG", global = true)]
    pub egress_config: Option<PathBuf>,
    /// Largest file an agent may write (RLIMIT_FSIZE), in MiB.
    #[arg(
        long,
        env = "COGWARD_SANDBOX_MAX_FILE_MB",
        default_value_t = 1024,
        global = true
    )]
    pub sandbox_max_file_mb: u64,
    /// Host ids sandboxes map to, `FIRST-LAST` (inclusive): each live run leases one of its own.
    #[arg(
        long,
        env = "COGWARD_SANDBOX_IDS",
        default_value = "100000-109999",
        value_parser = parse_id_range,
        global = true
    )]
    pub sandbox_ids: IdRange,
    /// Where runners lease sandbox ids (one per host: every engine on it must share it).
    #[arg(
        long,
        env = "COGWARD_SANDBOX_LEASE_DIR",
        default_value = cogward_protocol::runner::DEFAULT_LEASE_DIR,
        global = true
    )]
    pub sandbox_lease_dir: String,
    /// Extra host paths agents see read-only at the same place (`:`-separated; a runtime's own
    /// install directory, say). Each must exist, or runs end `sandbox_failed`.
    #[arg(
        long,
        env = "COGWARD_SANDBOX_READ_ONLY",
        value_delimiter = ':',
        global = true
    )]
    pub sandbox_read_only: Vec<String>,
    /// Where the agent CLIs of the `claude-code` and `codex` runtimes are installed (an npm
    /// prefix; `scripts/setup.sh` installs them there from `agents/package-lock.json`).
    #[arg(
        long,
        env = "COGWARD_AGENTS_DIR",
        default_value = "/opt/cogward-tools/agents",
        global = true
    )]
    pub agents_dir: PathBuf,
    /// The git repositories a run's `workspace` may check out, by name: `<dir>/<name>` or
    /// `<dir>/<name>.git` (default: `<state-dir>/repositories`). cogward reads them and never
    /// writes them; keeping them current (`git fetch` of a mirror) is the operator's.
    #[arg(long, env = "COGWARD_REPOSITORIES_DIR", global = true)]
    pub repositories_dir: Option<PathBuf>,
    /// The approval channels whose callbacks decide (Slack, Jira; default
    /// `<state-dir>/channels.json`, none if absent).
    #[arg(long, env = "COGWARD_CHANNELS_CONFIG", global = true)]
    pub channels_config: Option<PathBuf>,
}

/// `FIRST-LAST`, inclusive, not including 0.
fn parse_id_range(s: &str) -> Result<IdRange, String> {
    let (first, last) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not FIRST-LAST"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|e| format!("{v:?} in {s:?}: {e}"))
    };
    let (first, last) = (parse(first)?, parse(last)?);
    if first == 0 || last < first || last == u32::MAX {
        return Err(format!(
            "{s:?}: FIRST must be above 0 and LAST at least FIRST"
        ));
    }
    Ok(IdRange {
        first,
        count: last - first + 1,
    })
}

impl EngineConfig {
    pub fn sandbox_profile(&self) -> SandboxProfile {
        SandboxProfile {
            // Each run's own, from its spec (set by the StartRunner activity).
            name: Default::default(),
            host_ids: self.sandbox_ids,
            lease_dir: self.sandbox_lease_dir.clone(),
            read_only: self
                .sandbox_read_only
                .iter()
                .filter(|p| !p.is_empty())
                .cloned()
                .collect(),
        }
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.state_dir.join("cogward.db").display()))
    }

    pub fn tokens_file(&self) -> PathBuf {
        self.tokens_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("tokens.json"))
    }

    pub fn runner_bin(&self) -> PathBuf {
        self.runner_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("cogward-runner")))
                .unwrap_or_else(|| PathBuf::from("cogward-runner"))
        })
    }

    pub fn policy_limits(&self) -> cogward_policy_host::Limits {
        cogward_policy_host::Limits {
            fuel: (self.policy_fuel > 0).then_some(self.policy_fuel),
            deadline: Duration::from_millis(self.policy_deadline_ms.max(1)),
            memory_bytes: self.policy_memory_mb.max(1) << 20,
            ..Default::default()
        }
    }

    pub fn egress_config(&self) -> PathBuf {
        self.egress_config
            .clone()
            .unwrap_or_else(|| self.state_dir.join("egress.json"))
    }

    pub fn channels_config(&self) -> PathBuf {
        self.channels_config
            .clone()
            .unwrap_or_else(|| self.state_dir.join("channels.json"))
    }

    pub fn repositories_dir(&self) -> PathBuf {
        self.repositories_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("repositories"))
    }

    pub fn secrets_file(&self) -> PathBuf {
        self.secrets_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("secrets.json"))
    }

    pub fn gateway_config(&self) -> PathBuf {
        self.gateway_config
            .clone()
            .unwrap_or_else(|| self.state_dir.join("gateway.json"))
    }

    pub fn ledger_signing_key(&self) -> PathBuf {
        self.ledger_signing_key
            .clone()
            .unwrap_or_else(|| self.state_dir.join("ledger-signing-key.json"))
    }

    pub fn checkpoint_file(&self) -> PathBuf {
        self.checkpoint_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("checkpoints.jsonl"))
    }

    pub fn gateway_keys(&self) -> PathBuf {
        self.gateway_keys
            .clone()
            .unwrap_or_else(|| self.state_dir.join("gateway-keys.json"))
    }

    pub fn gateway_address(&self) -> String {
        self.gateway_address.clone().unwrap_or_else(|| {
            let mut addr = self.gateway_listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            addr.to_string()
        })
    }

    pub fn mirror_interval(&self) -> Duration {
        Duration::from_millis(self.mirror_interval_ms.max(10))
    }
}
