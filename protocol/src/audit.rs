//! The application events the audit ledger records, named in one place.
//!
//! A ledger entry is either a copy of a Temporal history event (its type is Temporal's name,
//! `EVENT_TYPE_ACTIVITY_TASK_COMPLETED`, …) or an application entry, whose type is one of these.
//! Producers (the workflows' derivations, the gateway, the policy store, the egress proxy, the
//! callbacks) and readers (`audit verify`, the approvals API, the runs index) name an event by
//! its variant, never by a string of their own; the string is what is stored and hashed, so a
//! variant's name never changes once released.
//!
//! Every event's body is typed here, one struct per event, each implementing [`AuditBody`]
//! (which names its event, so a body cannot be stored under another's name) and serialising
//! exactly as the ledger has always stored it: the entry's hash covers those bytes, so a field's
//! name or presence never changes once released. The gateway's call outcomes share one shape
//! over three events ([`GatewayCall`], with a newtype per event; an abandoned call settled
//! `outcome_unknown` has the smaller [`GatewayCallSettled`]).

use crate::approval::{ApprovalRequest, ApprovalResult, Vote};
use crate::spec::{
    AdmissionVerdict, DecisionRecord, PolicyRef, RunId, RunLimits, RunStatus, RunnerEvidence,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

macro_rules! audit_events {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// An application event's type, as the ledger stores it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum AuditEvent {
            $($(#[$doc])* #[serde(rename = $name)] $variant,)*
        }

        impl AuditEvent {
            /// Every event, in declaration order.
            pub const ALL: &[AuditEvent] = &[$(AuditEvent::$variant,)*];

            /// The name stored in the ledger's `event_type` column.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(AuditEvent::$variant => $name,)*
                }
            }

            /// The event a stored name denotes; `None` for a Temporal event type or a name this
            /// build does not know.
            pub fn parse(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(AuditEvent::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

audit_events! {
    /// A run was accepted: spec digest, tenant, agent, who submitted it.
    RunSubmitted = "run.submitted",
    /// The run-admission policy's verdict.
    RunAdmission = "run.admission",
    /// A run's gate was decided (its `Approval`'s outcome as the run saw it).
    RunApproval = "run.approval",
    /// An escalated tool call was decided.
    RunToolApproval = "run.tool_approval",
    /// The runner's evidence: outcome, digests, the evidence store's index.
    RunEvidence = "run.evidence",
    /// The run ended: status and summary.
    RunFinished = "run.finished",
    /// An `Approval` was asked: subject, tenant, requester, reasons, chain, count.
    ApprovalRequested = "approval.requested",
    /// Where a stage's request was posted (Slack, Jira), or why not.
    ApprovalPosted = "approval.posted",
    /// A stage's deadline passed and the next group was asked.
    ApprovalEscalated = "approval.escalated",
    /// The approval was decided: result, approver, channel, every vote and refusal.
    ApprovalDecided = "approval.decided",
    /// The approval ended undecided (expired, cancelled, terminated).
    ApprovalEnded = "approval.ended",
    /// One policy decision record (what `cogward policy replay` re-evaluates).
    PolicyDecision = "policy.decision",
    /// A policy bundle was pushed.
    PolicyPushed = "policy.pushed",
    /// A bundle was bound to a (tenant, agent, kind).
    PolicyBound = "policy.bound",
    /// A gateway call's intent, durable before it is forwarded.
    GatewayCallIntent = "gateway.call_intent",
    /// A tool call's outcome.
    GatewayToolCall = "gateway.tool_call",
    /// Another MCP request's outcome.
    GatewayMcpRequest = "gateway.mcp_request",
    /// A model call's outcome.
    GatewayModelCall = "gateway.model_call",
    /// An upstream's circuit breaker opened.
    GatewayBreakerOpened = "gateway.breaker_opened",
    /// It closed again.
    GatewayBreakerClosed = "gateway.breaker_closed",
    /// A connection through the egress proxy.
    EgressConnection = "egress.connection",
    /// A policy module faulted (trap, fuel, bad output); its decision was deny.
    SecurityPolicyFault = "security.policy_fault",
    /// A pushed bundle was refused.
    SecurityPolicyRejected = "security.policy_rejected",
    /// The egress proxy refused a connection.
    SecurityEgressDenied = "security.egress_denied",
    /// A Slack or Jira callback was refused (signature, replay, unmapped user, …).
    SecurityCallbackRefused = "security.callback_refused",
}

impl AuditEvent {
    /// A security event (what an alert watches for).
    pub fn is_security(self) -> bool {
        self.as_str().starts_with("security.")
    }
}

impl fmt::Display for AuditEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The typed body of one application event.
pub trait AuditBody: Serialize {
    /// The event this body is stored as.
    const EVENT: AuditEvent;

    /// The event and the body as the ledger stores it.
    fn entry(&self) -> (AuditEvent, Value) {
        (Self::EVENT, body_of(self))
    }
}

macro_rules! audit_body {
    ($($body:ty => $event:ident,)*) => {
        $(impl AuditBody for $body {
            const EVENT: AuditEvent = AuditEvent::$event;
        })*
    };
}

/// `run.submitted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSubmitted {
    pub run_id: RunId,
    pub agent: String,
    pub tenant: String,
    pub submitted_by: String,
    pub spec_sha256: String,
    pub requires_approval: bool,
}

/// `run.admission` (the decision record itself is the `policy.decision` entry beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunAdmission {
    pub verdict: AdmissionVerdict,
    pub reasons: Vec<String>,
    pub approval_group: Option<String>,
    pub spec_sha256: String,
    pub limits: RunLimits,
}

/// `run.approval` (a gate's decision) and `run.tool_approval` (a parked call's approval, however
/// it ended): the same shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunApproval {
    pub approval_id: String,
    pub result: ApprovalResult,
    pub stage: usize,
    pub votes: Vec<Vote>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<(Vote, String)>,
    /// Present when a person decided.
    #[serde(flatten)]
    pub decided: Option<Decided>,
}

/// `run.tool_approval`: a [`RunApproval`] of a tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunToolApproval(pub RunApproval);

/// Who decided an approval, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decided {
    /// `approve` or `reject`.
    pub signal: String,
    pub approver: String,
    pub comment: Option<String>,
    pub channel: Option<String>,
}

/// `run.finished`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFinished {
    pub status: RunStatus,
    pub reason: Option<String>,
}

/// `approval.posted`: where a stage's request went (Slack channel and `ts`, Jira key), or why
/// it did not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalPosted {
    pub stage: usize,
    pub slack: Option<(String, String)>,
    pub jira: Option<String>,
    pub errors: Vec<String>,
}

/// `approval.escalated`: the stage now asked, and its group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalEscalated {
    pub stage: usize,
    pub group: Option<String>,
}

/// `approval.decided`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalDecided {
    pub result: ApprovalResult,
    pub stage: usize,
    pub approver: Option<String>,
    pub channel: Option<String>,
    pub votes: Vec<Vote>,
    pub refused: Vec<(Vote, String)>,
}

/// `approval.ended`: ended undecided (`failed`, `cancelled`, `terminated`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalEnded {
    pub result: String,
    pub reason: Option<String>,
}

/// `gateway.call_intent`: a call about to be forwarded, durable before it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayCallIntent {
    pub call_id: String,
    pub run_id: String,
    pub tenant: String,
    pub agent: String,
    /// `model`, `tool` or `mcp`.
    pub kind: String,
    pub target: String,
    pub args_sha256: String,
    pub decision: String,
    pub reasons: Vec<String>,
    /// The event its outcome will be recorded as.
    pub outcome_event: AuditEvent,
    /// What it holds against its budgets until its outcome.
    pub reserved: Reserved,
}

/// Tokens and cost a call in flight holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reserved {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// A gateway call's outcome: the body of `gateway.tool_call`, `gateway.mcp_request` and
/// `gateway.model_call` (each its own newtype, [`GatewayToolCall`] and the others).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayCall {
    pub call_id: String,
    pub run_id: String,
    pub tenant: String,
    pub agent: String,
    pub target: String,
    pub args_sha256: String,
    pub decision: String,
    pub reasons: Vec<String>,
    /// Each policy that decided it.
    pub policies: Vec<PolicyApplied>,
    pub outcome: String,
    pub upstream_status: Option<u16>,
    pub latency_us: u64,
    pub upstream_latency_us: u64,
    pub throttle_ms: u64,
    pub tokens: Tokens,
    pub cost_usd: f64,
    /// Call-kind specifics (endpoint, streaming, the parked call's approval, …).
    pub detail: Value,
}

/// One policy's part in a gateway call's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyApplied {
    pub kind: String,
    pub effect: String,
    pub policy: Option<PolicyRef>,
    pub request_sha256: String,
}

/// Tokens a call used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
}

/// `gateway.tool_call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GatewayToolCall(pub GatewayCall);

/// `gateway.mcp_request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GatewayMcpRequest(pub GatewayCall);

/// `gateway.model_call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GatewayModelCall(pub GatewayCall);

impl GatewayCall {
    /// The entry of this outcome as `event` (a `gateway.*` outcome event; any other is recorded
    /// as a model call, as [`GatewayModelCall`]).
    pub fn entry_as(self, event: AuditEvent) -> (AuditEvent, Value) {
        match event {
            AuditEvent::GatewayToolCall => GatewayToolCall(self).entry(),
            AuditEvent::GatewayMcpRequest => GatewayMcpRequest(self).entry(),
            _ => GatewayModelCall(self).entry(),
        }
    }
}

/// The outcome of a call whose gateway process died between forwarding it and recording what
/// happened, settled `outcome_unknown` and charged its reservation: a smaller body under the
/// same outcome events as [`GatewayCall`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayCallSettled {
    pub call_id: String,
    pub run_id: String,
    pub tenant: String,
    pub agent: String,
    pub target: String,
    pub args_sha256: String,
    pub decision: String,
    pub outcome: String,
    pub tokens: Tokens,
    pub cost_usd: f64,
    pub detail: Value,
}

impl GatewayCallSettled {
    /// The entry of this outcome as `event` (a `gateway.*` outcome event; any other is
    /// recorded as a model call).
    pub fn entry_as(&self, event: AuditEvent) -> (AuditEvent, Value) {
        let event = match event {
            AuditEvent::GatewayToolCall | AuditEvent::GatewayMcpRequest => event,
            _ => AuditEvent::GatewayModelCall,
        };
        (event, body_of(self))
    }
}

/// `gateway.breaker_opened`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerOpened {
    pub server: String,
    pub consecutive_failures: u32,
    pub cooldown_seconds: u64,
    pub last_error: String,
}

/// `gateway.breaker_closed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerClosed {
    pub server: String,
}

/// `policy.pushed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyPushed {
    pub name: String,
    pub version: i64,
    pub module_sha256: String,
    pub data_sha256: String,
    pub module_stored: bool,
    pub tests_passed: usize,
    pub by: String,
}

/// `security.policy_rejected`: a pushed bundle refused, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRejected {
    pub name: String,
    pub module_sha256: String,
    pub size_bytes: usize,
    pub reason: String,
    pub by: String,
}

/// `policy.bound`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyBound {
    pub tenant: String,
    pub agent: String,
    pub kind: String,
    pub name: String,
    pub version: i64,
    pub bound_by: String,
    pub bound_at: String,
}

/// `security.policy_fault`: a module trapped, ran out of fuel or time, or answered garbage; its
/// decision was deny (the decision record is the `policy.decision` beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyFault {
    pub kind: String,
    pub policy: Option<PolicyRef>,
    pub request_sha256: String,
    pub fault: Value,
}

/// `egress.connection`: a connection the egress proxy made for a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EgressConnection {
    /// What the agent asked for (host, port, URL).
    pub destination: Value,
    /// The address the proxy resolved, pinned and connected to.
    pub address: String,
    /// The egress profile that allowed it.
    pub profile: String,
    pub method: String,
    /// `connected` or `connect_failed`.
    pub outcome: String,
    pub run_id: String,
    pub tenant: String,
    pub agent: String,
}

/// `security.egress_denied`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EgressDenied {
    pub destination: Value,
    pub reason: String,
    /// The run's egress profiles, none of which allowed it.
    pub profiles: Vec<String>,
    pub run_id: String,
    pub tenant: String,
    pub agent: String,
}

/// `security.callback_refused`: a Slack or Jira callback refused, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackRefused {
    /// `slack` or `jira`.
    pub channel: String,
    /// The refusal's code (`bad_signature`, `replayed`, `unknown_approver`, …).
    pub code: String,
    pub reason: String,
    /// What the callback asked, once it was verified far enough to tell.
    #[serde(flatten)]
    pub asked: Option<CallbackAsked>,
}

/// Who a refused callback came from and what it asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackAsked {
    /// The channel's user id.
    pub user: String,
    /// The cogward principal it maps to.
    pub principal: String,
    pub run_id: String,
    pub tool_call: Option<String>,
    pub approve: bool,
}

fn body_of<T: Serialize + ?Sized>(body: &T) -> Value {
    serde_json::to_value(body)
        .unwrap_or_else(|e| serde_json::json!({ "unserialisable_body": e.to_string() }))
}

audit_body! {
    BreakerOpened => GatewayBreakerOpened,
    BreakerClosed => GatewayBreakerClosed,
    PolicyPushed => PolicyPushed,
    PolicyRejected => SecurityPolicyRejected,
    PolicyBound => PolicyBound,
    PolicyFault => SecurityPolicyFault,
    EgressConnection => EgressConnection,
    EgressDenied => SecurityEgressDenied,
    CallbackRefused => SecurityCallbackRefused,
    DecisionRecord => PolicyDecision,
    GatewayCallIntent => GatewayCallIntent,
    GatewayToolCall => GatewayToolCall,
    GatewayMcpRequest => GatewayMcpRequest,
    GatewayModelCall => GatewayModelCall,
    RunSubmitted => RunSubmitted,
    RunAdmission => RunAdmission,
    RunApproval => RunApproval,
    RunToolApproval => RunToolApproval,
    RunnerEvidence => RunEvidence,
    RunFinished => RunFinished,
    ApprovalRequest => ApprovalRequested,
    ApprovalPosted => ApprovalPosted,
    ApprovalEscalated => ApprovalEscalated,
    ApprovalDecided => ApprovalDecided,
    ApprovalEnded => ApprovalEnded,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Each body typed here serialises to exactly what its producer stored before it was typed
    /// (the `json!` each built, with the same values): the chain hashes those bytes.
    #[test]
    fn bodies_serialise_as_their_producers_stored_them() {
        let stored = |e: (AuditEvent, Value)| (e.0.as_str(), e.1);
        let policy = PolicyRef {
            name: "p".into(),
            version: 2,
            module_sha256: "m".into(),
            data_sha256: "d".into(),
        };
        type Stored = (&'static str, Value);
        let cases: Vec<(Stored, Stored)> = vec![
            (
                stored(
                    BreakerOpened {
                        server: "s".into(),
                        consecutive_failures: 3,
                        cooldown_seconds: 30,
                        last_error: "e".into(),
                    }
                    .entry(),
                ),
                (
                    "gateway.breaker_opened",
                    json!({"server": "s", "consecutive_failures": 3, "cooldown_seconds": 30, "last_error": "e"}),
                ),
            ),
            (
                stored(BreakerClosed { server: "s".into() }.entry()),
                ("gateway.breaker_closed", json!({"server": "s"})),
            ),
            (
                stored(
                    PolicyPushed {
                        name: "p".into(),
                        version: 2,
                        module_sha256: "m".into(),
                        data_sha256: "d".into(),
                        module_stored: true,
                        tests_passed: 4,
                        by: "admin".into(),
                    }
                    .entry(),
                ),
                (
                    "policy.pushed",
                    json!({"name": "p", "version": 2, "module_sha256": "m", "data_sha256": "d", "module_stored": true, "tests_passed": 4, "by": "admin"}),
                ),
            ),
            (
                stored(
                    PolicyRejected {
                        name: "p".into(),
                        module_sha256: "m".into(),
                        size_bytes: 9,
                        reason: "r".into(),
                        by: "admin".into(),
                    }
                    .entry(),
                ),
                (
                    "security.policy_rejected",
                    json!({"name": "p", "module_sha256": "m", "size_bytes": 9, "reason": "r", "by": "admin"}),
                ),
            ),
            (
                stored(
                    PolicyBound {
                        tenant: "t".into(),
                        agent: "*".into(),
                        kind: "tool.access".into(),
                        name: "p".into(),
                        version: 2,
                        bound_by: "admin".into(),
                        bound_at: "now".into(),
                    }
                    .entry(),
                ),
                (
                    "policy.bound",
                    json!({"tenant": "t", "agent": "*", "kind": "tool.access", "name": "p", "version": 2, "bound_by": "admin", "bound_at": "now"}),
                ),
            ),
            (
                stored(
                    PolicyFault {
                        kind: "k".into(),
                        policy: Some(policy.clone()),
                        request_sha256: "r".into(),
                        fault: json!({"trap": "x"}),
                    }
                    .entry(),
                ),
                (
                    "security.policy_fault",
                    json!({"kind": "k", "policy": policy, "request_sha256": "r", "fault": {"trap": "x"}}),
                ),
            ),
            (
                stored(
                    EgressConnection {
                        destination: json!("h:443"),
                        address: "1.2.3.4:443".into(),
                        profile: "github".into(),
                        method: "CONNECT".into(),
                        outcome: "connected".into(),
                        run_id: "r".into(),
                        tenant: "t".into(),
                        agent: "a".into(),
                    }
                    .entry(),
                ),
                (
                    "egress.connection",
                    json!({"destination": "h:443", "address": "1.2.3.4:443", "profile": "github", "method": "CONNECT", "outcome": "connected", "run_id": "r", "tenant": "t", "agent": "a"}),
                ),
            ),
            (
                stored(
                    EgressDenied {
                        destination: json!("h:22"),
                        reason: "no".into(),
                        profiles: vec!["github".into()],
                        run_id: "r".into(),
                        tenant: "t".into(),
                        agent: "a".into(),
                    }
                    .entry(),
                ),
                (
                    "security.egress_denied",
                    json!({"destination": "h:22", "reason": "no", "profiles": ["github"], "run_id": "r", "tenant": "t", "agent": "a"}),
                ),
            ),
            (
                stored(
                    CallbackRefused {
                        channel: "jira".into(),
                        code: "bad_signature".into(),
                        reason: "no".into(),
                        asked: None,
                    }
                    .entry(),
                ),
                (
                    "security.callback_refused",
                    json!({"channel": "jira", "code": "bad_signature", "reason": "no"}),
                ),
            ),
            (
                stored(
                    CallbackRefused {
                        channel: "slack".into(),
                        code: "forbidden".into(),
                        reason: "no".into(),
                        asked: Some(CallbackAsked {
                            user: "U1".into(),
                            principal: "ci".into(),
                            run_id: "r".into(),
                            tool_call: None,
                            approve: true,
                        }),
                    }
                    .entry(),
                ),
                (
                    "security.callback_refused",
                    json!({"channel": "slack", "code": "forbidden", "reason": "no", "user": "U1", "principal": "ci", "run_id": "r", "tool_call": null, "approve": true}),
                ),
            ),
            (
                stored(
                    GatewayCallSettled {
                        call_id: "c".into(),
                        run_id: "r".into(),
                        tenant: "t".into(),
                        agent: "a".into(),
                        target: "x.y".into(),
                        args_sha256: "s".into(),
                        decision: "permit".into(),
                        outcome: "outcome_unknown".into(),
                        tokens: Tokens {
                            input: 1,
                            output: 2,
                        },
                        cost_usd: 0.5,
                        detail: json!({"usage": "reserved"}),
                    }
                    .entry_as(AuditEvent::GatewayToolCall),
                ),
                (
                    "gateway.tool_call",
                    json!({"call_id": "c", "run_id": "r", "tenant": "t", "agent": "a", "target": "x.y", "args_sha256": "s", "decision": "permit", "outcome": "outcome_unknown", "tokens": {"input": 1, "output": 2}, "cost_usd": 0.5, "detail": {"usage": "reserved"}}),
                ),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn every_name_parses_back_and_serializes_as_stored() {
        let mut names = std::collections::HashSet::new();
        for &e in AuditEvent::ALL {
            assert!(names.insert(e.as_str()), "{e} named twice");
            assert_eq!(AuditEvent::parse(e.as_str()), Some(e));
            assert_eq!(serde_json::to_value(e).ok(), Some(e.as_str().into()));
        }
        assert_eq!(AuditEvent::parse("EVENT_TYPE_TIMER_FIRED"), None);
        assert!(AuditEvent::SecurityCallbackRefused.is_security());
        assert!(!AuditEvent::GatewayToolCall.is_security());
    }
}
