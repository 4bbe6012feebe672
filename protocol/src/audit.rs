//! The application events the audit ledger records, named in one place.
//!
//! A ledger entry is either a copy of a Temporal history event (its type is Temporal's name,
//! `EVENT_TYPE_ACTIVITY_TASK_COMPLETED`, …) or an application entry, whose type is one of these.
//! Producers (the workflows' derivations, the gateway, the policy store, the egress proxy, the
//! callbacks) and readers (`audit verify`, the approvals API, the runs index) name an event by
//! its variant, never by a string of their own; the string is what is stored and hashed, so a
//! variant's name never changes once released.
//!
//! The bodies are still JSON built at each producer (described in `docs/api.md` with the
//! endpoint or component that writes them); typing each body is not done yet.

use serde::{Deserialize, Serialize};
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

#[cfg(test)]
mod tests {
    use super::AuditEvent;

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
