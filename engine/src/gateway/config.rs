//! The gateway's configuration file (`COGWARD_GATEWAY_CONFIG`, JSON): model providers, their
//! prices, tenants' tiers, and the MCP servers each tenant's agents may reach. Documented in
//! docs/operations.md; `examples/gateway.json` is a complete one.

use anyhow::{Context, Result};
use cogward_policy_sdk::glob_match;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// By name; the name is the path segment agents use (`/gw/<name>/v1/...`) and the
    /// `provider` the model-access policy sees.
    #[serde(default)]
    pub providers: BTreeMap<String, Provider>,
    /// USD per million tokens, first match wins (globs over the normalised, lowercase model
    /// name); a call to a model without a price is refused (price it at 0 to make it free).
    #[serde(default)]
    pub prices: Vec<Price>,
    /// A call's input is reserved at one token per this many request bytes (a conservative
    /// estimate: English text is ~4 bytes per token).
    #[serde(default = "default_input_bytes_per_token")]
    pub input_bytes_per_token: u64,
    /// The output ceiling set on an OpenAI request that names none (and reserved for it).
    #[serde(default = "default_max_output_tokens")]
    pub default_max_output_tokens: u64,
    /// Tenant → tier for the model-access policy (`"*"`: every other tenant; default
    /// `standard`).
    #[serde(default)]
    pub tiers: BTreeMap<String, String>,
    /// Where this gateway runs, for the model-access policy's residency rules.
    #[serde(default = "default_region")]
    pub region: String,
    /// Upper bound of a throttle obligation's delay honoured before a call, in milliseconds.
    #[serde(default = "default_max_throttle_ms")]
    pub max_throttle_ms: u64,
    /// The MCP servers (the catalog's connectors) agents reach through `/mcp`.
    #[serde(default)]
    pub mcp_servers: Vec<McpServer>,
    /// When an upstream MCP server counts as down, and for how long.
    #[serde(default)]
    pub breaker: Breaker,
    /// Browser origins allowed to call `/mcp` (agents send no `Origin`; a request that carries
    /// one not listed is refused, against DNS rebinding).
    #[serde(default)]
    pub mcp_allowed_origins: Vec<String>,
    /// How long past the longest upstream timeout a call still `pending` counts as abandoned (its
    /// process died between forwarding and recording): it is then settled `outcome_unknown`,
    /// charged its reservation.
    #[serde(default = "default_abandoned_grace")]
    pub abandoned_call_grace_seconds: u64,
    /// How long an escalated tool call waits for its approval before it is refused.
    #[serde(default = "default_tool_approval_timeout")]
    pub tool_approval_timeout_seconds: u64,
}

fn default_abandoned_grace() -> u64 {
    60
}

fn default_input_bytes_per_token() -> u64 {
    2
}

fn default_max_output_tokens() -> u64 {
    4096
}

fn default_tool_approval_timeout() -> u64 {
    3600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    /// The namespace of its tools (`<name>_<tool>` to agents, `<name>.<tool>` to policies):
    /// 1-32 characters of `[A-Za-z0-9-]`.
    pub name: String,
    /// Tenants (globs) whose agents may reach it.
    #[serde(default = "every_tenant")]
    pub tenants: Vec<String>,
    pub transport: McpTransport,
    /// `session`: one upstream session per agent session (the default for HTTP servers);
    /// `shared`: one connection (one process, for stdio) for every run (the default for stdio
    /// servers); `run`: one per run, closed when the run ends.
    #[serde(default)]
    pub scope: Option<McpScope>,
    /// A call's time limit, in seconds.
    #[serde(default = "default_call_timeout")]
    pub timeout_seconds: u64,
}

fn every_tenant() -> Vec<String> {
    vec!["*".into()]
}

fn default_call_timeout() -> u64 {
    120
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum McpTransport {
    /// A program the gateway starts and speaks to over stdin/stdout.
    Stdio {
        command: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// A Streamable HTTP endpoint (`http://host:port/mcp`).
    Http { url: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum McpScope {
    Shared,
    Run,
    Session,
}

impl McpServer {
    /// The server's scope, as configured or by its transport: an HTTP session costs the server
    /// a handshake, a stdio one a process.
    pub fn scope(&self) -> McpScope {
        self.scope.unwrap_or(match self.transport {
            McpTransport::Http { .. } => McpScope::Session,
            McpTransport::Stdio { .. } => McpScope::Shared,
        })
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    /// Consecutive failed calls (transport errors, timeouts) that open the circuit.
    pub failures: u32,
    /// How long an open circuit refuses calls before one is let through to try again.
    pub cooldown_seconds: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            failures: 5,
            cooldown_seconds: 30,
        }
    }
}

fn default_region() -> String {
    "us".into()
}

fn default_max_throttle_ms() -> u64 {
    30_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Wire {
    /// Anthropic Messages API (`/v1/messages`).
    Anthropic,
    /// OpenAI Chat Completions and Responses (`/v1/chat/completions`, `/v1/responses`).
    Openai,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub wire: Wire,
    /// E.g. `https://api.anthropic.com`; the agent's path (`/v1/messages`) is appended.
    pub base_url: String,
    /// The environment variable holding the provider's API key (read by the engine; agents
    /// never see it).
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
}

fn default_timeout() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub provider: String,
    /// A glob over the model name (`*`, `?`).
    pub model: String,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
}

impl GatewayConfig {
    /// Read `path`; a missing file is the empty configuration (no providers, no servers).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let config: Self = serde_json::from_slice(&bytes)
            .with_context(|| format!("gateway configuration {}", path.display()))?;
        for (name, p) in &config.providers {
            anyhow::ensure!(
                p.base_url.starts_with("http://") || p.base_url.starts_with("https://"),
                "provider {name}: base_url must be an http(s) URL"
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &config.mcp_servers {
            anyhow::ensure!(
                !s.name.is_empty()
                    && s.name.len() <= 32
                    && s.name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                "MCP server {:?}: a name is 1-32 characters of [A-Za-z0-9-]",
                s.name
            );
            anyhow::ensure!(
                names.insert(&s.name),
                "MCP server {} is declared twice",
                s.name
            );
            match &s.transport {
                McpTransport::Stdio { command, .. } => anyhow::ensure!(
                    !command.is_empty(),
                    "MCP server {}: stdio needs a command",
                    s.name
                ),
                McpTransport::Http { url } => anyhow::ensure!(
                    url.starts_with("http://") || url.starts_with("https://"),
                    "MCP server {}: url must be http(s)",
                    s.name
                ),
            }
        }
        Ok(config)
    }

    /// After how long a `pending` call cannot be in flight any more: the longest provider or
    /// MCP server timeout, plus the grace.
    pub fn abandoned_after(&self) -> std::time::Duration {
        let longest = self
            .providers
            .values()
            .map(|p| p.timeout_seconds)
            .chain(self.mcp_servers.iter().map(|s| s.timeout_seconds))
            .max()
            .unwrap_or(0);
        // A throttled call waits before it is forwarded.
        let throttle = self.max_throttle_ms.div_ceil(1000);
        std::time::Duration::from_secs(longest + throttle + self.abandoned_call_grace_seconds)
    }

    pub fn tier(&self, tenant: &str) -> &str {
        self.tiers
            .get(tenant)
            .or_else(|| self.tiers.get("*"))
            .map_or("standard", String::as_str)
    }

    /// The MCP servers `tenant`'s agents may reach.
    pub fn mcp_servers_for<'a>(&'a self, tenant: &'a str) -> impl Iterator<Item = &'a McpServer> {
        self.mcp_servers
            .iter()
            .filter(move |s| s.tenants.iter().any(|t| glob_match(t, tenant)))
    }

    /// Cost in micro-USD of a call's tokens; `None` for an unpriced model.
    pub fn cost_micro_usd(
        &self,
        provider: &str,
        model: &str,
        input: u64,
        output: u64,
    ) -> Option<u64> {
        let p = self
            .prices
            .iter()
            .find(|p| p.provider == provider && glob_match(&normalize_model(&p.model), model))?;
        // USD per million tokens = micro-USD per token.
        Some(
            (input as f64 * p.input_usd_per_mtok + output as f64 * p.output_usd_per_mtok).round()
                as u64,
        )
    }
}

/// A model name as policy, pricing and forwarding all see it: trimmed and lowercase (provider
/// model ids are lowercase; `CLAUDE-SONNET-4-5 ` is the same model).
pub fn normalize_model(name: &str) -> String {
    name.trim().to_ascii_lowercase()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prices_match_by_glob_and_unpriced_models_have_no_price() {
        let config: GatewayConfig = serde_json::from_value(serde_json::json!({
            "prices": [
                {"provider": "anthropic", "model": "claude-sonnet-*", "input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0},
                {"provider": "anthropic", "model": "*", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 1.0}
            ],
            "tiers": {"acme": "premium"}
        }))
        .unwrap();
        assert_eq!(
            config.cost_micro_usd("anthropic", "claude-sonnet-4-5", 1000, 100),
            Some(4500)
        );
        assert_eq!(
            config.cost_micro_usd("anthropic", "claude-haiku", 10, 10),
            Some(20)
        );
        assert_eq!(config.cost_micro_usd("openai", "gpt-4o", 1000, 1000), None);
        assert_eq!(normalize_model(" CLAUDE-Sonnet-4-5"), "claude-sonnet-4-5");
        assert_eq!(config.tier("acme"), "premium");
        assert_eq!(config.tier("globex"), "standard");
    }
}
