//! The agent-CLI runtimes: how Claude Code and Codex CLI are started, unmodified, in the
//! sandbox. Each gets a command line, an environment and configuration files in its private
//! `HOME` (never in `work/`, so they are not part of the agent's diff) such that:
//!
//! - its model traffic goes to the model gateway (Anthropic Messages for Claude Code, OpenAI
//!   Responses for Codex) with the run's credential as its API key;
//! - its MCP client talks to the MCP gateway with the run's credential (read from the
//!   environment by the CLI itself: no file holds it), and only when the task names servers;
//! - every vendor-traffic opt-out it has is set (the sandbox holds regardless: nothing but the
//!   gateway ports is reachable);
//! - its own nested sandbox is off: ours forbids nested namespaces and `unshare`, which is what
//!   theirs is built from, and ours already confines the whole process tree (see
//!   docs/threat-model.md).
//!
//! The CLIs are installed by `scripts/setup.sh` from `agents/package-lock.json` (pinned by
//! integrity hash) into [`AgentClis::dir`], which the sandbox binds read-only.

use cogward_protocol::spec::{AgentTask, RuntimeSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where the agent's work directory is in the sandbox (its cwd).
pub const WORK: &str = cogward_runner::sandbox::fs_view::WORK_MOUNT;
/// Where the agent's private home is in the sandbox (the runner's `HOME`).
pub const HOME: &str = cogward_runner::sandbox::fs_view::HOME_MOUNT;
/// The name the agent's MCP client knows the gateway by: tools reach Claude Code's model as
/// `mcp__cogward__<server>_<tool>` and Codex's as the `mcp__cogward` namespace.
pub const MCP_SERVER_NAME: &str = "cogward";

/// Where the agent CLIs are installed (an npm prefix: `<dir>/node_modules/...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentClis {
    pub dir: PathBuf,
}

/// One agent CLI's package and the executable it runs (relative to the install prefix).
struct Cli {
    runtime: &'static str,
    package: &'static str,
    executable: &'static str,
}

const CLAUDE_CODE: Cli = Cli {
    runtime: "claude-code",
    package: "node_modules/@anthropic-ai/claude-code",
    // The platform package's binary itself: it does not depend on the package's postinstall.
    executable: "node_modules/@anthropic-ai/claude-code-linux-x64/claude",
};

const CODEX: Cli = Cli {
    runtime: "codex",
    package: "node_modules/@openai/codex",
    executable: "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex",
};

/// Codex's built-in model catalog (`codex debug models`), written beside the installation by
/// `scripts/setup.sh`: a model it does not know gets an entry of its own (see
/// [`codex_model_catalog`]).
pub const CODEX_MODELS: &str = "codex-models.json";

/// What the runner is asked to start for an agent-CLI runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub home_files: BTreeMap<String, String>,
    /// Host paths the sandbox binds read-only (the CLI's installation).
    pub read_only: Vec<String>,
}

impl AgentClis {
    fn cli(runtime: &RuntimeSpec) -> Option<(&'static Cli, &AgentTask)> {
        match runtime {
            RuntimeSpec::Command(_) => None,
            RuntimeSpec::ClaudeCode(task) => Some((&CLAUDE_CODE, task)),
            RuntimeSpec::Codex(task) => Some((&CODEX, task)),
        }
    }

    /// The installed version of the runtime's CLI, or why it cannot be started here.
    pub fn version(&self, runtime: &RuntimeSpec) -> Result<Option<String>, String> {
        let Some((cli, _)) = Self::cli(runtime) else {
            return Ok(None);
        };
        let exe = self.dir.join(cli.executable);
        if !exe.is_file() {
            return Err(format!(
                "{} is not installed here ({} is missing; scripts/setup.sh installs it)",
                cli.runtime,
                exe.display()
            ));
        }
        let manifest = self.dir.join(cli.package).join("package.json");
        let version = std::fs::read(&manifest)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["version"].as_str().map(str::to_string))
            .ok_or_else(|| format!("{} has no readable version", manifest.display()))?;
        Ok(Some(version))
    }

    /// The launch of `runtime` if it is an agent CLI (`None` for a plain command). `gateway` is
    /// the gateway's base URL as the agent sees it, `None` when the engine runs without one: the
    /// CLI then has nowhere to send its model calls, and the run fails as the CLI reports it.
    /// `wall_clock_seconds` bounds how long the CLI waits for an MCP call (an escalated one
    /// waits for its human for as long as the run may live).
    pub fn launch(
        &self,
        runtime: &RuntimeSpec,
        gateway: Option<&str>,
        wall_clock_seconds: u64,
    ) -> Result<Option<Launch>, String> {
        let Some((cli, task)) = Self::cli(runtime) else {
            return Ok(None);
        };
        self.version(runtime)?;
        let exe = self.dir.join(cli.executable).display().to_string();
        let mut launch = match runtime {
            RuntimeSpec::ClaudeCode(_) => claude_code(&exe, task, gateway, wall_clock_seconds),
            _ => {
                let path = self.dir.join(CODEX_MODELS);
                let models = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .filter(|v| v["models"].as_array().is_some_and(|m| !m.is_empty()))
                    .ok_or_else(|| {
                        format!(
                            "codex: {} is missing or empty (scripts/setup.sh writes it with `codex debug models`)",
                            path.display()
                        )
                    })?;
                codex(&exe, task, gateway, &models, wall_clock_seconds)
            }
        };
        launch.read_only.push(self.dir.display().to_string());
        Ok(Some(launch))
    }
}

/// How long a CLI may take to connect to the MCP gateway (its first connection starts the
/// upstream servers).
const MCP_STARTUP_SECONDS: u64 = 60;

fn claude_code(exe: &str, task: &AgentTask, base: Option<&str>, wall_clock: u64) -> Launch {
    let mut env = BTreeMap::new();
    env.insert(
        "MCP_TIMEOUT".to_string(),
        (MCP_STARTUP_SECONDS * 1000).to_string(),
    );
    env.insert(
        "MCP_TOOL_TIMEOUT".to_string(),
        (wall_clock * 1000).to_string(),
    );
    // Print mode otherwise starts the task while the MCP servers still connect, and blocking
    // mode waits only 5 s by default: the model's first tool calls then find no such tool
    // (measured: a loaded machine, a gateway whose upstream server starts on first use). The
    // task starts with its tools, within the startup limit.
    env.insert(
        "MCP_CONNECTION_NONBLOCKING".to_string(),
        "false".to_string(),
    );
    env.insert(
        "MCP_CONNECT_TIMEOUT_MS".to_string(),
        (MCP_STARTUP_SECONDS * 1000).to_string(),
    );
    for name in [
        "DISABLE_TELEMETRY",
        "DISABLE_ERROR_REPORTING",
        "DISABLE_AUTOUPDATER",
        "DISABLE_BUG_COMMAND",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
    ] {
        env.insert(name.to_string(), "1".to_string());
    }
    let mut argv: Vec<String> = [
        exe,
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--no-session-persistence",
        "--model",
        &task.model,
        "--permission-mode",
        "acceptEdits",
        // Only the servers configured here: never a `.mcp.json` the work directory brings.
        "--strict-mcp-config",
    ]
    .map(str::to_string)
    .to_vec();
    let mut allowed = task.allowed_tools.clone();
    let mut home_files = BTreeMap::new();
    if let Some(base) = base.filter(|_| !task.mcp_servers.is_empty()) {
        // Claude Code expands the variable itself: the file holds no secret.
        let config = serde_json::json!({"mcpServers": {MCP_SERVER_NAME: {
            "type": "http",
            "url": format!("{base}/mcp"),
            "headers": {"Authorization": "Bearer ${COGWARD_RUN_TOKEN}"},
        }}});
        home_files.insert(".cogward/mcp.json".to_string(), config.to_string());
        argv.extend(["--mcp-config".into(), format!("{HOME}/.cogward/mcp.json")]);
        // Every tool the gateway offers may be called: the gateway's tool-access policy
        // decides each call, and the CLI reports a refusal as the tool's error.
        allowed.push(format!("mcp__{MCP_SERVER_NAME}"));
    }
    if !allowed.is_empty() {
        argv.extend(["--allowedTools".into(), allowed.join(",")]);
    }
    if let Some(turns) = task.max_turns {
        argv.extend(["--max-turns".into(), turns.to_string()]);
    }
    // After `--`, the prompt is the prompt even if it looks like an option.
    argv.extend(["--".into(), task.prompt.clone()]);
    Launch {
        argv,
        env,
        home_files,
        ..Launch::default()
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn codex(
    exe: &str,
    task: &AgentTask,
    base: Option<&str>,
    models: &serde_json::Value,
    wall_clock: u64,
) -> Launch {
    let codex_home = format!("{HOME}/.codex");
    let mut home_files = BTreeMap::new();
    let catalog = codex_model_catalog(models, &task.model).map(|catalog| {
        home_files.insert(".codex/models.json".to_string(), catalog);
        format!(
            "model_catalog_json = {}\n",
            toml_string(&format!("{codex_home}/models.json"))
        )
    });
    let mut config = format!(
        "model = {model}\n\
         model_provider = \"cogward\"\n\
         approval_policy = \"never\"\n\
         sandbox_mode = \"danger-full-access\"\n\
         check_for_update_on_startup = false\n\
         {catalog}\
         \n\
         [analytics]\nenabled = false\n\n\
         [feedback]\nenabled = false\n\n\
         [features]\nplugins = false\napps = false\n\n\
         [model_providers.cogward]\n\
         name = \"cogward gateway\"\n\
         base_url = {base_url}\n\
         env_key = \"OPENAI_API_KEY\"\n\
         wire_api = \"responses\"\n\
         request_max_retries = 0\n\
         stream_max_retries = 0\n",
        model = toml_string(&task.model),
        catalog = catalog.unwrap_or_default(),
        base_url = toml_string(&format!(
            "{}/gw/openai/v1",
            base.unwrap_or("http://127.0.0.1:9")
        )),
    );
    if let Some(base) = base.filter(|_| !task.mcp_servers.is_empty()) {
        config.push_str(&format!(
            "\n[mcp_servers.{MCP_SERVER_NAME}]\nurl = {}\nbearer_token_env_var = \"COGWARD_RUN_TOKEN\"\n\
             startup_timeout_sec = {MCP_STARTUP_SECONDS}\ntool_timeout_sec = {wall_clock}\n\
             required = true\n",
            toml_string(&format!("{base}/mcp"))
        ));
    }
    home_files.insert(".codex/config.toml".to_string(), config);
    let mut env = BTreeMap::new();
    env.insert("CODEX_HOME".to_string(), codex_home);
    let argv = [
        exe,
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--ephemeral",
        "--sandbox",
        "danger-full-access",
        "--",
        &task.prompt,
    ]
    .map(str::to_string)
    .to_vec();
    Launch {
        argv,
        env,
        home_files,
        ..Launch::default()
    }
}

/// Codex only offers a model its catalog knows. For a model of its built-in catalog, none is
/// written (`None`); for another (a gateway's own name for a model), a catalog of that one
/// model, its entry made from a built-in one on the plain Responses wire, with MCP tools
/// offered directly (not behind a client-side search tool).
fn codex_model_catalog(models: &serde_json::Value, model: &str) -> Option<String> {
    let known = models["models"].as_array()?;
    if known.iter().any(|m| m["slug"] == model) {
        return None;
    }
    // The plain Responses wire (the gateway's), not the "lite" variant some entries ask for.
    let mut entry = known
        .iter()
        .find(|m| m["use_responses_lite"] != true)
        .or(known.first())?
        .clone();
    entry["slug"] = model.into();
    entry["display_name"] = model.into();
    entry["supports_search_tool"] = false.into();
    entry["use_responses_lite"] = false.into();
    entry["upgrade"] = serde_json::Value::Null;
    Some(serde_json::json!({"models": [entry]}).to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn task(mcp: &[&str]) -> AgentTask {
        AgentTask {
            prompt: "fix the bug".into(),
            model: "m-1".into(),
            mcp_servers: mcp.iter().map(|s| s.to_string()).collect(),
            allowed_tools: vec!["Bash".into(), "Edit".into()],
            max_turns: Some(5),
        }
    }

    #[test]
    fn claude_code_is_pointed_at_the_gateway_with_no_secret_in_its_files() {
        let l = claude_code(
            "/opt/claude",
            &task(&["everything"]),
            Some("http://127.0.0.1:7480"),
            600,
        );
        assert_eq!(l.argv[0], "/opt/claude");
        let joined = l.argv.join(" ");
        assert!(joined.contains("--strict-mcp-config"));
        assert!(joined.contains("--allowedTools Bash,Edit,mcp__cogward"));
        assert!(joined.contains("--max-turns 5"));
        assert!(joined.contains("--mcp-config /home/agent/.cogward/mcp.json"));
        assert!(joined.ends_with("-- fix the bug"));
        let config = &l.home_files[".cogward/mcp.json"];
        assert!(config.contains("http://127.0.0.1:7480/mcp"));
        assert!(config.contains("${COGWARD_RUN_TOKEN}"));
        assert_eq!(l.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"], "1");
        assert_eq!(l.env["MCP_TOOL_TIMEOUT"], "600000");
        assert_eq!(l.env["MCP_CONNECTION_NONBLOCKING"], "false");
        assert_eq!(l.env["MCP_CONNECT_TIMEOUT_MS"], "60000");
        // No MCP servers named: no MCP configuration at all.
        let l = claude_code(
            "/opt/claude",
            &task(&[]),
            Some("http://127.0.0.1:7480"),
            600,
        );
        assert!(l.home_files.is_empty());
        assert!(!l.argv.join(" ").contains("mcp__"));
    }

    #[test]
    fn codex_gets_its_config_in_its_home_and_its_own_sandbox_off() {
        let builtin =
            serde_json::json!({"models": [{"slug": "gpt-5.5", "supports_search_tool": true}]});
        let l = codex(
            "/opt/codex",
            &task(&["everything"]),
            Some("http://127.0.0.1:7480"),
            &builtin,
            600,
        );
        assert_eq!(l.env["CODEX_HOME"], "/home/agent/.codex");
        let config = &l.home_files[".codex/config.toml"];
        assert!(config.contains("base_url = \"http://127.0.0.1:7480/gw/openai/v1\""));
        assert!(config.contains("wire_api = \"responses\""));
        assert!(config.contains("[mcp_servers.cogward]"));
        assert!(config.contains("bearer_token_env_var = \"COGWARD_RUN_TOKEN\""));
        assert!(config.contains("tool_timeout_sec = 600"));
        // The task starts with its MCP tools (or not at all).
        assert!(config.contains("required = true"));
        assert!(
            l.argv
                .windows(2)
                .any(|w| w == ["--sandbox", "danger-full-access"])
        );
        assert_eq!(l.argv.last().unwrap(), "fix the bug");
        // A prompt is one argument, whatever it contains.
        let mut t = task(&[]);
        t.prompt = "--help; rm -rf /".into();
        let l = codex("/opt/codex", &t, None, &builtin, 600);
        assert_eq!(l.argv[l.argv.len() - 2..], ["--", "--help; rm -rf /"]);
        assert!(!l.home_files[".codex/config.toml"].contains("mcp_servers"));
    }
}
