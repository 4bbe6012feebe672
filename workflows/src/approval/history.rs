//! What an `Approval`'s history says: `approval.requested` (subject, requester, reasons, the
//! chain of stages and how many must approve), `approval.posted` for each stage told (where: the
//! Slack message, the Jira issue, or why posting failed), `approval.escalated` when a later stage is asked, and
//! `approval.decided` with every counted and refused vote; `approval.ended` if it closed
//! without an outcome (failed, terminated, timed out).

use crate::history::{AppEntry, Derivation, Ending, Index, ending, first_payload};
use cogward_protocol::activities::RunActivities;
use cogward_protocol::approval::{ApprovalOutcome, ApprovalRequest};
use cogward_protocol::approval::{GateNotice, Posted};
use cogward_protocol::audit::{
    ApprovalDecided, ApprovalEnded, ApprovalEscalated, ApprovalPosted, AuditBody,
};
use std::collections::HashMap;
use temporalio_common::ActivityDefinition;
use temporalio_common::protos::temporal::api::history::v1::HistoryEvent;
use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes;

#[derive(Default)]
pub struct ApprovalDerivation {
    /// Scheduled event id of each `notify_approvers` → the stage it told.
    notices: HashMap<i64, usize>,
}

impl Derivation for ApprovalDerivation {
    fn apply(&mut self, ev: &HistoryEvent) -> Vec<AppEntry> {
        let entry = match ev.attributes.as_ref() {
            Some(Attributes::WorkflowExecutionStartedEventAttributes(a)) => {
                first_payload::<ApprovalRequest>(&a.input).map(|request| request.entry())
            }
            Some(Attributes::ActivityTaskScheduledEventAttributes(a))
                if a.activity_type.as_ref().map(|t| t.name.as_str())
                    == Some(RunActivities::notify_approvers.name()) =>
            {
                let notice = first_payload::<GateNotice>(&a.input);
                let stage = notice.as_ref().map_or(0, |n| n.stage);
                self.notices.insert(ev.event_id, stage);
                notice.filter(|n| n.stage > 0).map(|n| {
                    ApprovalEscalated {
                        stage: n.stage,
                        group: n.request.stages[n.stage].group.clone(),
                    }
                    .entry()
                })
            }
            Some(Attributes::ActivityTaskCompletedEventAttributes(a)) => {
                match self.notices.get(&a.scheduled_event_id) {
                    Some(stage) => first_payload::<Posted>(&a.result)
                        .filter(|p| p.slack.is_some() || p.jira.is_some() || !p.errors.is_empty())
                        .map(|p| {
                            ApprovalPosted {
                                stage: *stage,
                                slack: p.slack,
                                jira: p.jira,
                                errors: p.errors,
                            }
                            .entry()
                        }),
                    None => None,
                }
            }
            Some(Attributes::WorkflowExecutionCompletedEventAttributes(a)) => {
                first_payload::<ApprovalOutcome>(&a.result).map(|outcome| {
                    let decision = outcome.decision();
                    ApprovalDecided {
                        result: outcome.result,
                        stage: outcome.stage,
                        approver: decision.as_ref().map(|d| d.approver.clone()),
                        channel: decision.and_then(|d| d.channel),
                        votes: outcome.votes,
                        refused: outcome.refused,
                    }
                    .entry()
                })
            }
            _ => ending(ev).map(|e| {
                let (result, reason) = match e {
                    Ending::Failed(reason) => ("failed", reason),
                    Ending::Cancelled => ("cancelled", None),
                };
                ApprovalEnded {
                    result: result.to_string(),
                    reason,
                }
                .entry()
            }),
        };
        entry.into_iter().collect()
    }

    fn index(&self) -> Index {
        Index::None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::history::{entry, recorded_entries};
    use serde_json::{Value, json};

    #[test]
    fn a_gate_posted_to_slack_and_approved_there() {
        let entries = recorded_entries("approval-gate");
        let types: Vec<&str> = entries.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            types,
            ["approval.requested", "approval.posted", "approval.decided"]
        );
        let requested = entry(&entries, "approval.requested");
        assert_eq!(requested["subject"]["kind"], "run_gate", "{requested}");
        assert_eq!(requested["requested_by"], "ci");
        let posted = entry(&entries, "approval.posted");
        assert!(posted["slack"][1].is_string(), "the message's ts: {posted}");
        let decided = entry(&entries, "approval.decided");
        assert_eq!(
            (
                &decided["result"],
                &decided["approver"],
                &decided["channel"]
            ),
            (&json!("approved"), &json!("approver"), &json!("slack")),
            "{decided}"
        );
    }

    #[test]
    fn a_tool_call_filed_in_jira_and_approved_there() {
        let entries = recorded_entries("approval-tool");
        let requested = entry(&entries, "approval.requested");
        assert_eq!(requested["subject"]["kind"], "tool_call", "{requested}");
        assert!(
            requested["subject"]["args_sha256"].is_string(),
            "{requested}"
        );
        let posted = entry(&entries, "approval.posted");
        assert!(posted["jira"].is_string(), "the issue key: {posted}");
        let decided = entry(&entries, "approval.decided");
        assert_eq!(
            (&decided["result"], &decided["channel"]),
            (&json!("approved"), &json!("jira")),
            "{decided}"
        );
    }

    #[test]
    fn an_unanswered_approval_escalates_then_expires_keeping_the_votes_it_had() {
        let entries = recorded_entries("approval-expired");
        let escalated = entry(&entries, "approval.escalated");
        assert_eq!(
            escalated,
            &json!({"stage": 1, "group": "security"}),
            "{escalated}"
        );
        let decided = entry(&entries, "approval.decided");
        assert_eq!(decided["result"], "expired", "{decided}");
        assert_eq!(decided["approver"], Value::Null, "{decided}");
        assert_eq!(
            decided["votes"].as_array().map(Vec::len),
            Some(1),
            "{decided}"
        );
    }
}
