//! The types that cross crates: the run spec a pipeline submits, the workflow's input, status and
//! outcome, and the evidence an activity returns. Defined once here, serde-versioned.
//!
//! Everything here travels through Temporal history, so it carries ids, digests and evidence
//! references, never transcripts or artifacts themselves.

use crate::runner::{ProfileName, RunnerResult};
use cogward_policy_abi::Decision;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;

/// The only run spec version this build accepts.
pub const RUN_SPEC_VERSION: u32 = 1;

/// What a CI/CD pipeline submits (`POST /v1/runs`). Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub spec_version: u32,
    /// Registered agent name.
    pub agent: String,
    pub tenant: String,
    pub runtime: RuntimeSpec,
    /// Passed to the agent as the JSON document in `COGWARD_INPUTS`.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: RunLimits,
    #[serde(default)]
    pub requires_approval: bool,
    /// How long the approval gate waits before the run ends `expired`.
    #[serde(default = "default_approval_timeout")]
    pub approval_timeout_seconds: u64,
    /// How many distinct approvers the gate needs (2: the two-person rule). A spec can only
    /// raise what the approving group's rule asks for (`channels.json` `groups`), never lower it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub approvals_required: u32,
    /// Same tenant + key → the same run, never a second one.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The isolation profile the agent runs in (`standard`, `strict`; `microvm` is reserved).
    /// The run-admission policy decides which a tenant may use. Left out of the serialised
    /// spec when `standard`, so digests of specs without it do not change.
    #[serde(default, skip_serializing_if = "ProfileName::is_standard")]
    pub sandbox_profile: ProfileName,
    /// Secret references the agent gets as files in `/secrets` (resolved for the run's tenant
    /// at run start; only names and digests are ever recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Egress profiles the agent may reach through the egress proxy (the run-admission policy
    /// decides which a tenant may use); none means nothing beyond the gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
    /// What `work/` starts as besides the runtime's own files: a checkout of a repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<Workspace>,
}

/// A run's starting work directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Workspace {
    /// A git checkout (detached) of `ref` of one of the repositories the engine offers
    /// (`--repositories-dir`: `<dir>/<repository>` or `<dir>/<repository>.git`). The run's
    /// diff is then against that commit, as `git diff` spells it.
    Git(GitWorkspace),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitWorkspace {
    pub repository: String,
    /// A branch, tag or commit of the repository (`HEAD` by default).
    #[serde(default = "default_git_ref", rename = "ref")]
    pub git_ref: String,
}

fn default_git_ref() -> String {
    "HEAD".into()
}

impl GitWorkspace {
    fn validate(&self) -> Result<(), SpecError> {
        check_name("workspace.git.repository", &self.repository)?;
        let r = &self.git_ref;
        let ok = !r.is_empty()
            && r.len() <= 200
            && !r.starts_with('-')
            && !r.contains("..")
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
        if !ok {
            return Err(SpecError {
                field: "workspace.git.ref",
                message: "must be 1-200 characters of [A-Za-z0-9._/-], not starting with '-' \
                          and without '..'"
                    .into(),
            });
        }
        Ok(())
    }
}

/// Most egress profiles one run may name.
pub const MAX_EGRESS_PROFILES: usize = 16;

/// Most secret references one run may name.
pub const MAX_SECRETS: usize = 32;

fn default_approval_timeout() -> u64 {
    3600
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Most distinct approvers a spec may ask for.
pub const MAX_APPROVALS_REQUIRED: u32 = 5;

/// The agent runtime: any program, or one of the agent CLIs cogward knows how to govern
/// (started non-interactively in the sandbox, its model and MCP traffic at the gateway).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum RuntimeSpec {
    /// Any program with arguments.
    Command(CommandRuntime),
    /// Claude Code (`claude -p`), model traffic on the Anthropic Messages wire.
    ClaudeCode(AgentTask),
    /// Codex CLI (`codex exec`), model traffic on the OpenAI Responses wire.
    Codex(AgentTask),
}

/// A plain program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRuntime {
    /// Program and arguments.
    pub command: Vec<String>,
}

/// What an agent CLI is asked to do, and with what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTask {
    /// The task, as the CLI's prompt.
    pub prompt: String,
    /// The model, as the gateway's providers and prices name it.
    pub model: String,
    /// The gateway's MCP servers (catalog names) the agent may use; none means no MCP at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_servers: Vec<String>,
    /// Claude Code only: the built-in tools it may use without asking (`Bash`, `Edit`,
    /// `Write`, `Read`, ...). MCP tools are decided by the gateway's tool-access policy, so
    /// every tool of `mcp_servers` is offered and each call decided there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_tools: Vec<String>,
    /// Claude Code only: most agentic turns (`--max-turns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
}

/// Most MCP servers one agent task may name.
pub const MAX_MCP_SERVERS: usize = 16;
/// Longest task prompt accepted (bytes).
pub const MAX_PROMPT_BYTES: usize = 64 * 1024;

impl RuntimeSpec {
    /// The runtime's name, as the run-admission policy sees it.
    pub fn name(&self) -> &'static str {
        match self {
            RuntimeSpec::Command(_) => "command",
            RuntimeSpec::ClaudeCode(_) => "claude-code",
            RuntimeSpec::Codex(_) => "codex",
        }
    }

    /// The agent CLI's task, if the runtime is one.
    pub fn task(&self) -> Option<&AgentTask> {
        match self {
            RuntimeSpec::Command(_) => None,
            RuntimeSpec::ClaudeCode(t) | RuntimeSpec::Codex(t) => Some(t),
        }
    }

    fn validate(&self) -> Result<(), SpecError> {
        let err = |field, message: &str| {
            Err(SpecError {
                field,
                message: message.into(),
            })
        };
        let task = match self {
            RuntimeSpec::Command(CommandRuntime { command }) => {
                if command.is_empty() || command[0].is_empty() {
                    return err("runtime.command", "must name a program");
                }
                if command.iter().any(|s| s.contains('\0')) {
                    return err("runtime.command", "must not contain NUL bytes");
                }
                return Ok(());
            }
            RuntimeSpec::ClaudeCode(task) => task,
            RuntimeSpec::Codex(task) => {
                if !task.allowed_tools.is_empty() {
                    return err(
                        "runtime.allowed_tools",
                        "Codex CLI has no tool allowlist (its shell and patch tools are governed by the sandbox)",
                    );
                }
                if task.max_turns.is_some() {
                    return err(
                        "runtime.max_turns",
                        "Codex CLI has no turn limit; bound the run with limits.wall_clock_seconds",
                    );
                }
                task
            }
        };
        if task.prompt.trim().is_empty() || task.prompt.len() > MAX_PROMPT_BYTES {
            return err("runtime.prompt", "must be 1-65536 bytes, not blank");
        }
        if task.prompt.contains('\0') {
            return err("runtime.prompt", "must not contain NUL bytes");
        }
        check_model(&task.model)?;
        let mut seen = std::collections::BTreeSet::new();
        for name in &task.mcp_servers {
            check_name("runtime.mcp_servers", name)?;
            if !seen.insert(name) {
                return err("runtime.mcp_servers", "names a server twice");
            }
        }
        if task.mcp_servers.len() > MAX_MCP_SERVERS {
            return err("runtime.mcp_servers", "at most 16 MCP servers per run");
        }
        for tool in &task.allowed_tools {
            let ok = !tool.is_empty()
                && tool.len() <= 200
                && tool.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'*' | b':')
                });
            if !ok {
                return err(
                    "runtime.allowed_tools",
                    "each must be 1-200 characters of [A-Za-z0-9_.:*-] (a tool name, not a pattern with arguments)",
                );
            }
        }
        if task.max_turns == Some(0) {
            return err("runtime.max_turns", "must be greater than zero");
        }
        Ok(())
    }
}

/// Model names: 1-128 characters of `[A-Za-z0-9._:/@-]` (passed to a CLI's `--model`).
fn check_model(model: &str) -> Result<(), SpecError> {
    let ok = !model.is_empty()
        && model.len() <= 128
        && !model.starts_with('-')
        && model.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'@')
        });
    if ok {
        Ok(())
    } else {
        Err(SpecError {
            field: "runtime.model",
            message: "must be 1-128 characters of [A-Za-z0-9._:/@-], not starting with '-'".into(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunLimits {
    pub cpu_seconds: u64,
    pub memory_mb: u64,
    pub max_processes: u64,
    pub wall_clock_seconds: u64,
    pub grace_seconds: u64,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            cpu_seconds: 60,
            memory_mb: 1024,
            max_processes: 64,
            wall_clock_seconds: 600,
            grace_seconds: 5,
        }
    }
}

/// A spec error a submitter can fix; `field` names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

/// Names (agents, tenants, inputs, policies): 1-64 characters of `[A-Za-z0-9._-]`.
pub fn check_name(field: &'static str, value: &str) -> Result<(), SpecError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SpecError {
            field,
            message: "must be 1-64 characters of [A-Za-z0-9._-]".into(),
        })
    }
}

impl RunSpec {
    /// Structural checks that need no configuration (the admission activity applies the
    /// configured ceilings on top).
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.spec_version != RUN_SPEC_VERSION {
            return Err(SpecError {
                field: "spec_version",
                message: format!(
                    "unsupported version {}, expected {RUN_SPEC_VERSION}",
                    self.spec_version
                ),
            });
        }
        check_name("agent", &self.agent)?;
        check_name("tenant", &self.tenant)?;
        self.runtime.validate()?;
        if let Some(Workspace::Git(git)) = &self.workspace {
            git.validate()?;
        }
        if self.inputs.values().any(|s| s.contains('\0')) {
            return Err(SpecError {
                field: "inputs",
                message: "must not contain NUL bytes".into(),
            });
        }
        for key in self.inputs.keys() {
            check_name("inputs", key)?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for name in &self.secrets {
            check_name("secrets", name)?;
            if name.bytes().all(|b| b == b'.') || !seen.insert(name) {
                return Err(SpecError {
                    field: "secrets",
                    message: format!("{name:?} is not a usable file name, or is named twice"),
                });
            }
        }
        let mut profiles = std::collections::BTreeSet::new();
        for name in &self.egress {
            check_name("egress", name)?;
            if !profiles.insert(name) {
                return Err(SpecError {
                    field: "egress",
                    message: format!("{name:?} is named twice"),
                });
            }
        }
        if self.egress.len() > MAX_EGRESS_PROFILES {
            return Err(SpecError {
                field: "egress",
                message: format!("at most {MAX_EGRESS_PROFILES} egress profiles per run"),
            });
        }
        if self.secrets.len() > MAX_SECRETS {
            return Err(SpecError {
                field: "secrets",
                message: format!("at most {MAX_SECRETS} secrets per run"),
            });
        }
        let l = &self.limits;
        for (field, v) in [
            ("limits.cpu_seconds", l.cpu_seconds),
            ("limits.memory_mb", l.memory_mb),
            ("limits.max_processes", l.max_processes),
            ("limits.wall_clock_seconds", l.wall_clock_seconds),
        ] {
            if v == 0 {
                return Err(SpecError {
                    field,
                    message: "must be greater than zero".into(),
                });
            }
        }
        if self.requires_approval && self.approval_timeout_seconds == 0 {
            return Err(SpecError {
                field: "approval_timeout_seconds",
                message: "must be greater than zero".into(),
            });
        }
        if self.approvals_required > MAX_APPROVALS_REQUIRED {
            return Err(SpecError {
                field: "approvals_required",
                message: format!("must be at most {MAX_APPROVALS_REQUIRED}"),
            });
        }
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > 200)
        {
            return Err(SpecError {
                field: "idempotency_key",
                message: "must be 1-200 characters".into(),
            });
        }
        Ok(())
    }

    /// sha256 of the spec's canonical JSON (serde field order, no whitespace).
    pub fn digest(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(bytes))
    }
}

/// A run's id: the Temporal workflow id of its `AgentRun`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl RunId {
    /// With an idempotency key the id is derived from (tenant, key), so a resubmission lands on
    /// the same workflow id and Temporal itself refuses a second run.
    pub fn for_submission(tenant: &str, idempotency_key: Option<&str>, fresh: &str) -> Self {
        match idempotency_key {
            Some(key) => {
                let mut h = Sha256::new();
                h.update(tenant.as_bytes());
                h.update([0]);
                h.update(key.as_bytes());
                RunId(format!("run-{}", &hex::encode(h.finalize())[..26]))
            }
            None => RunId(format!("run-{fresh}")),
        }
    }

    /// Ids we hand out are `run-` + lowercase hex or uuid characters; anything else is refused
    /// before it reaches Temporal or a file path.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("run-")?;
        let ok = !rest.is_empty()
            && rest.len() <= 64
            && rest.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        ok.then(|| RunId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `AgentRun` workflow's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInput {
    pub run_id: RunId,
    pub spec: RunSpec,
    /// The authenticated principal that submitted the run.
    pub submitted_by: String,
}

/// Where a run is, and how it ended. Terminal states never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Pending,
    AwaitingApproval,
    Running,
    Succeeded,
    Failed,
    Rejected,
    Expired,
    Cancelled,
    Denied,
}

impl RunStatus {
    pub const ALL: [RunStatus; 9] = [
        RunStatus::Pending,
        RunStatus::AwaitingApproval,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Rejected,
        RunStatus::Expired,
        RunStatus::Cancelled,
        RunStatus::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::AwaitingApproval => "awaiting_approval",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Rejected => "rejected",
            RunStatus::Expired => "expired",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Denied => "denied",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            RunStatus::Pending | RunStatus::AwaitingApproval | RunStatus::Running
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalVerdict {
    Approved,
    Rejected,
}

/// The approval decision the workflow acted on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalDecision {
    pub verdict: ApprovalVerdict,
    pub approver: String,
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionVerdict {
    Admit,
    /// Admitted once a human approves (the policy escalated).
    Escalate,
    Deny,
}

/// What the admission activity decided, with the limits the run gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Admission {
    pub verdict: AdmissionVerdict,
    pub reasons: Vec<String>,
    pub spec_sha256: String,
    pub limits: RunLimits,
    /// The group whose approval the policy requires (`escalate` with `require_approval`).
    #[serde(default)]
    pub approval_group: Option<String>,
    /// Who is asked, in turn, and how many must approve, when the run waits for approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::approval::ApprovalPlan>,
    /// The policy decision behind the verdict, as recorded in the ledger.
    pub decision: DecisionRecord,
}

/// Which stored policy made a decision: enough to fetch the exact module and data again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    pub name: String,
    pub version: i64,
    pub module_sha256: String,
    pub data_sha256: String,
}

/// One policy decision, as it travels through history into the ledger (`policy.decision`) and
/// as `cogward policy replay` re-evaluates it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// The request kind (`cogward_policy_abi::kinds`).
    pub kind: String,
    /// `None` when no policy is bound for the request (the decision is then `deny`).
    pub policy: Option<PolicyRef>,
    /// The request exactly as evaluated; its sha256 is `request_sha256`.
    pub request: serde_json::Value,
    pub request_sha256: String,
    pub decision: Decision,
    /// Set when the module failed (trap, fuel, deadline, memory, malformed output): the host's
    /// fault, and the decision is `deny`.
    #[serde(default)]
    pub fault: Option<serde_json::Value>,
    pub latency_us: u64,
}

impl DecisionRecord {
    /// The ledger entries the decision implies: `policy.decision` (the record `cogward policy
    /// replay` re-evaluates) and, if the module faulted, `security.policy_fault`.
    pub fn ledger_entries(&self) -> Vec<(crate::audit::AuditEvent, serde_json::Value)> {
        use crate::audit::AuditBody;
        let mut entries = vec![self.entry()];
        if let Some(fault) = &self.fault {
            entries.push(
                crate::audit::PolicyFault {
                    kind: self.kind.clone(),
                    policy: self.policy.clone(),
                    request_sha256: self.request_sha256.clone(),
                    fault: fault.clone(),
                }
                .entry(),
            );
        }
        entries
    }
}

/// What `StartRunner` returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunnerEvidence {
    /// The runner wrote its result.
    Finished(Box<RunnerResult>),
    /// The agent was started once, but its runner died without a result. Never re-run.
    Lost { detail: String },
    /// No runner was started: the run could not be given what it declared (a secret that is
    /// not configured, say). Retrying would not help.
    NotStarted { detail: String },
}

/// The workflow's result, and the summary its `status` query returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: RunId,
    pub agent: String,
    pub tenant: String,
    pub status: RunStatus,
    /// Why the run is where it is (denial reasons, cancellation reason, failure detail).
    pub reason: Option<String>,
    pub admission: Option<Admission>,
    pub approval: Option<ApprovalDecision>,
    pub evidence: Option<RunnerEvidence>,
    /// Tool calls the gateway parked for approval while the run was running, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_approvals: Vec<ToolApproval>,
}

/// Signal `request_tool_approval`: the gateway parked a tool call because the tool-access policy
/// escalated it. The call's arguments are identified by digest only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolApprovalRequest {
    pub call_id: String,
    /// `server.tool`.
    pub tool: String,
    pub args_sha256: String,
    /// The group whose member must decide (the policy's `require_approval`), if any.
    pub group: Option<String>,
    pub reasons: Vec<String>,
    /// `module_sha256:data_sha256` of the escalating policy: the approval is bound to it.
    #[serde(default)]
    pub policy: String,
    /// The escalation chain (first stage: `group`) and how many must approve.
    #[serde(default)]
    pub stages: Vec<crate::approval::Stage>,
    #[serde(default)]
    pub required: u32,
}

/// What `AgentRun::ask_tool_approval` answers the gateway: whether the call's `Approval` is
/// there to be waited on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "answer")]
pub enum ToolApprovalAsked {
    /// The call's `Approval` child has started (now or by an earlier ask): wait for its result.
    Started,
    /// The run is not running its agent (not yet, or no longer): nothing will decide the call.
    NotRunning,
    /// Temporal refused to start the child.
    NotStarted { detail: String },
}

/// A parked tool call as the workflow holds it: the request and, once made, the decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolApproval {
    #[serde(flatten)]
    pub request: ToolApprovalRequest,
    pub decision: Option<ApprovalDecision>,
    /// How its approval ended (`expired`, `cancelled` with no decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<crate::approval::ApprovalResult>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        serde_json::from_str(
            r#"{"spec_version":1,"agent":"a","tenant":"t","runtime":{"type":"command","command":["true"]}}"#,
        )
        .unwrap()
    }

    #[test]
    fn minimal_spec_parses_with_defaults() {
        let s = spec();
        assert_eq!(s.limits, RunLimits::default());
        assert!(!s.requires_approval);
        s.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<RunSpec>(
            r#"{"spec_version":1,"agent":"a","tenant":"t","runtime":{"type":"command","command":["true"]},"sudo":true}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = serde_json::from_str::<RunSpec>(
            r#"{"spec_version":1,"agent":"a","tenant":"t","runtime":{"type":"command","command":["true"],"x":1}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    fn agent_spec(runtime: &str) -> Result<RunSpec, serde_json::Error> {
        serde_json::from_str(&format!(
            r#"{{"spec_version":1,"agent":"a","tenant":"t","runtime":{runtime}}}"#
        ))
    }

    #[test]
    fn agent_cli_runtimes_parse_validate_and_refuse_what_they_cannot_honour() {
        let s = agent_spec(
            r#"{"type":"claude-code","prompt":"fix it","model":"claude-sonnet-4-5","mcp_servers":["everything"],"allowed_tools":["Bash","Edit"],"max_turns":8}"#,
        )
        .unwrap();
        s.validate().unwrap();
        assert_eq!(s.runtime.name(), "claude-code");
        assert_eq!(s.runtime.task().unwrap().mcp_servers, ["everything"]);
        let s = agent_spec(r#"{"type":"codex","prompt":"fix it","model":"gpt-5"}"#).unwrap();
        s.validate().unwrap();
        assert_eq!(s.runtime.name(), "codex");
        // The tag is not a field of the task, unknown fields are.
        let err = agent_spec(r#"{"type":"codex","prompt":"p","model":"m","sudo":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        for (runtime, field) in [
            (
                r#"{"type":"codex","prompt":"p","model":"m","allowed_tools":["Bash"]}"#,
                "runtime.allowed_tools",
            ),
            (
                r#"{"type":"codex","prompt":"p","model":"m","max_turns":3}"#,
                "runtime.max_turns",
            ),
            (
                r#"{"type":"claude-code","prompt":"  ","model":"m"}"#,
                "runtime.prompt",
            ),
            (
                r#"{"type":"claude-code","prompt":"p","model":"--dangerously-skip-permissions"}"#,
                "runtime.model",
            ),
            (
                r#"{"type":"claude-code","prompt":"p","model":"m","mcp_servers":["a","a"]}"#,
                "runtime.mcp_servers",
            ),
            (
                r#"{"type":"claude-code","prompt":"p","model":"m","mcp_servers":["../x"]}"#,
                "runtime.mcp_servers",
            ),
            (
                r#"{"type":"claude-code","prompt":"p","model":"m","allowed_tools":["Bash(rm -rf /)"]}"#,
                "runtime.allowed_tools",
            ),
            (
                r#"{"type":"claude-code","prompt":"p","model":"m","max_turns":0}"#,
                "runtime.max_turns",
            ),
        ] {
            let err = agent_spec(runtime).unwrap().validate().unwrap_err();
            assert_eq!(err.field, field, "{runtime}: {err}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let mut s = spec();
        s.agent = "../etc".into();
        assert_eq!(s.validate().unwrap_err().field, "agent");
        let mut s = spec();
        s.spec_version = 2;
        assert_eq!(s.validate().unwrap_err().field, "spec_version");
        let mut s = spec();
        s.runtime = RuntimeSpec::Command(CommandRuntime { command: vec![] });
        assert_eq!(s.validate().unwrap_err().field, "runtime.command");
        let mut s = spec();
        s.limits.cpu_seconds = 0;
        assert_eq!(s.validate().unwrap_err().field, "limits.cpu_seconds");
    }

    #[test]
    fn idempotent_ids_depend_on_tenant_and_key_only() {
        let a = RunId::for_submission("t", Some("k"), "x");
        let b = RunId::for_submission("t", Some("k"), "y");
        let c = RunId::for_submission("u", Some("k"), "x");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(RunId::parse(a.as_str()).is_some());
        assert!(RunId::parse("run-../../x").is_none());
        assert!(RunId::parse("wf-1").is_none());
    }
}
