//! What an `AgentRun`'s history says: `run.submitted`, `run.admission` with its policy decision,
//! `run.approval` (the gate's decision) and `run.tool_approval` (each parked tool call's), the
//! runner's `run.evidence` and `run.finished`; and the run's status for the `runs` index.

use crate::history::{AppEntry, Derivation, Ending, Index, RunIndex, ending, first_payload};
use cogward_protocol::activities::RunActivities;
use cogward_protocol::approval::{ApprovalOutcome, GATE_ID_PREFIX};
use cogward_protocol::audit::{
    AuditBody, Decided, RunAdmission, RunApproval, RunFinished, RunSubmitted, RunToolApproval,
};
use cogward_protocol::spec::{
    Admission, ApprovalVerdict, RunInput, RunStatus, RunSummary, RunnerEvidence,
};
use serde_json::Value;
use std::collections::HashMap;
use temporalio_common::ActivityDefinition;
use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes;
use temporalio_common::protos::temporal::api::history::v1::{
    HistoryEvent, MarkerRecordedEventAttributes,
};

pub struct RunDerivation {
    /// Scheduled event id → activity type name.
    activity_types: HashMap<i64, String>,
    admission: Option<Admission>,
    index: RunIndex,
}

impl Default for RunDerivation {
    fn default() -> Self {
        Self {
            activity_types: HashMap::new(),
            admission: None,
            index: RunIndex {
                status: RunStatus::Pending,
                reason: None,
                summary: None,
            },
        }
    }
}

impl Derivation for RunDerivation {
    fn apply(&mut self, ev: &HistoryEvent) -> Vec<AppEntry> {
        let Some(attributes) = ev.attributes.as_ref() else {
            return Vec::new();
        };
        self.track_status(ev, attributes);
        match attributes {
            Attributes::WorkflowExecutionStartedEventAttributes(a) => {
                let Some(input) = first_payload::<RunInput>(&a.input) else {
                    return Vec::new();
                };
                vec![
                    RunSubmitted {
                        spec_sha256: input.spec.digest(),
                        requires_approval: input.spec.requires_approval,
                        run_id: input.run_id,
                        agent: input.spec.agent,
                        tenant: input.spec.tenant,
                        submitted_by: input.submitted_by,
                    }
                    .entry(),
                ]
            }
            Attributes::ActivityTaskScheduledEventAttributes(a) => {
                if let Some(t) = &a.activity_type {
                    self.activity_types.insert(ev.event_id, t.name.clone());
                }
                Vec::new()
            }
            Attributes::MarkerRecordedEventAttributes(a) if is_admission(a) => {
                let Some(admission) = first_payload::<Admission>(&a.details.get("result").cloned())
                else {
                    return Vec::new();
                };
                let mut entries = admission.decision.ledger_entries();
                entries.insert(
                    0,
                    RunAdmission {
                        verdict: admission.verdict,
                        reasons: admission.reasons.clone(),
                        approval_group: admission.approval_group.clone(),
                        spec_sha256: admission.spec_sha256.clone(),
                        limits: admission.limits,
                    }
                    .entry(),
                );
                self.admission = Some(admission);
                entries
            }
            Attributes::ActivityTaskCompletedEventAttributes(a)
                if self.is(a.scheduled_event_id, RunActivities::start_runner.name()) =>
            {
                first_payload::<RunnerEvidence>(&a.result)
                    .map(|e| e.entry())
                    .into_iter()
                    .collect()
            }
            Attributes::ChildWorkflowExecutionCompletedEventAttributes(a) => {
                let id = a
                    .workflow_execution
                    .as_ref()
                    .map(|w| w.workflow_id.as_str());
                let outcome = first_payload::<ApprovalOutcome>(&a.result);
                id.zip(outcome)
                    .and_then(|(id, outcome)| approval_entry(id, &outcome))
                    .into_iter()
                    .collect()
            }
            Attributes::WorkflowExecutionCompletedEventAttributes(a) => {
                first_payload::<RunSummary>(&a.result)
                    .map(|s| {
                        RunFinished {
                            status: s.status,
                            reason: s.reason,
                        }
                        .entry()
                    })
                    .into_iter()
                    .collect()
            }
            _ => match ending(ev) {
                Some(_) => vec![
                    RunFinished {
                        status: self.index.status,
                        reason: self.index.reason.clone(),
                    }
                    .entry(),
                ],
                None => Vec::new(),
            },
        }
    }

    fn index(&self) -> Index {
        let mut index = self.index.clone();
        // While the gate is open, say whose approval a policy escalation asks for.
        if index.status == RunStatus::AwaitingApproval
            && let Some(a) = &self.admission
            && let Some(group) = &a.approval_group
        {
            index.reason = Some(format!(
                "needs approval from group {group}: {}",
                a.reasons.join("; ")
            ));
        }
        Index::Run(Box::new(index))
    }
}

impl RunDerivation {
    fn is(&self, scheduled_event_id: i64, activity: &str) -> bool {
        self.activity_types
            .get(&scheduled_event_id)
            .map(String::as_str)
            == Some(activity)
    }

    /// The run's status as its history shows it so far.
    fn track_status(&mut self, ev: &HistoryEvent, attributes: &Attributes) {
        let index = &mut self.index;
        if index.status.is_terminal() {
            return;
        }
        match attributes {
            Attributes::StartChildWorkflowExecutionInitiatedEventAttributes(a)
                if a.workflow_id.starts_with(GATE_ID_PREFIX) =>
            {
                index.status = RunStatus::AwaitingApproval;
            }
            Attributes::ActivityTaskScheduledEventAttributes(a)
                if a.activity_type.as_ref().map(|t| t.name.as_str())
                    == Some(RunActivities::start_runner.name()) =>
            {
                index.status = RunStatus::Running;
            }
            Attributes::WorkflowExecutionCompletedEventAttributes(a) => {
                match first_payload::<RunSummary>(&a.result) {
                    Some(s) => {
                        index.status = s.status;
                        index.reason = s.reason.clone();
                        index.summary = Some(s);
                    }
                    None => {
                        index.status = RunStatus::Failed;
                        index.reason = Some("unreadable result".into());
                    }
                }
            }
            _ => match ending(ev) {
                Some(Ending::Failed(reason)) => {
                    index.status = RunStatus::Failed;
                    index.reason = reason;
                }
                Some(Ending::Cancelled) => {
                    index.status = RunStatus::Cancelled;
                    index.reason = None;
                }
                None => {}
            },
        }
    }
}

/// Whether a marker is the admission's local activity (`core_local_activity`, whose `data`
/// detail is JSON naming the activity type).
fn is_admission(a: &MarkerRecordedEventAttributes) -> bool {
    if a.marker_name != "core_local_activity" {
        return false;
    }
    let Some(data) = first_payload::<Value>(&a.details.get("data").cloned()) else {
        return false;
    };
    data.get("activity_type")
        .or_else(|| data.get("activityType"))
        .and_then(Value::as_str)
        == Some(RunActivities::admit.name())
}

/// What an `Approval` child's outcome puts in the run's ledger: a gate's decision
/// (`run.approval`, none if it expired or was cancelled: the run's verdict says so), or a tool
/// call's (`run.tool_approval`, whatever its result). Every counted vote and every refused one,
/// with who, where and when.
fn approval_entry(id: &str, outcome: &ApprovalOutcome) -> Option<AppEntry> {
    let gate = id.starts_with(GATE_ID_PREFIX);
    let decision = outcome.decision();
    if gate && decision.is_none() {
        return None;
    }
    let body = RunApproval {
        approval_id: id.to_string(),
        result: outcome.result,
        stage: outcome.stage,
        votes: outcome.votes.clone(),
        refused: outcome.refused.clone(),
        decided: decision.map(|d| Decided {
            signal: match d.verdict {
                ApprovalVerdict::Approved => "approve",
                ApprovalVerdict::Rejected => "reject",
            }
            .to_string(),
            approver: d.approver,
            comment: d.comment,
            channel: d.channel,
        }),
    };
    Some(if gate {
        body.entry()
    } else {
        RunToolApproval(body).entry()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::history::{derive_all, entry, recorded, recorded_entries};
    use serde_json::json;
    use temporalio_common::protos::temporal::api::enums::v1::EventType;
    use temporalio_common::protos::temporal::api::history::v1::WorkflowExecutionTerminatedEventAttributes;

    /// The statuses the index shows as the history is folded, each once, in order.
    fn statuses(events: &[HistoryEvent]) -> (Vec<RunStatus>, RunIndex) {
        let mut derivation = RunDerivation::default();
        let mut seen = Vec::new();
        for ev in events {
            derivation.apply(ev);
            let Index::Run(index) = derivation.index() else {
                panic!("a run has a run index")
            };
            if seen.last() != Some(&index.status) {
                seen.push(index.status);
            }
        }
        let Index::Run(last) = derivation.index() else {
            unreachable!()
        };
        (seen, *last)
    }

    #[test]
    fn a_gated_run_approved_from_slack_with_a_tool_call_approved_from_jira() {
        let entries = recorded_entries("run-gated");
        let types: Vec<&str> = entries.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            types,
            [
                "run.submitted",
                "run.admission",
                "policy.decision",
                "run.approval",
                "run.tool_approval",
                "run.evidence",
                "run.finished"
            ]
        );
        let gate = entry(&entries, "run.approval");
        assert_eq!(
            (&gate["signal"], &gate["approver"], &gate["channel"]),
            (&json!("approve"), &json!("approver"), &json!("slack")),
            "{gate}"
        );
        assert!(gate["votes"][0]["at"].is_string(), "{gate}");
        let tool = entry(&entries, "run.tool_approval");
        assert_eq!(
            (&tool["result"], &tool["channel"]),
            (&json!("approved"), &json!("jira")),
            "{tool}"
        );
        assert!(
            tool["approval_id"]
                .as_str()
                .unwrap()
                .starts_with("approval-tool-")
        );
        assert_eq!(entry(&entries, "run.finished")["status"], "succeeded");
        assert_eq!(entry(&entries, "run.submitted")["requires_approval"], true);
    }

    #[test]
    fn the_index_follows_a_run_from_its_gate_through_its_runner_to_its_verdict() {
        let (seen, last) = statuses(&recorded("run-gated"));
        assert_eq!(
            seen,
            [
                RunStatus::Pending,
                RunStatus::AwaitingApproval,
                RunStatus::Running,
                RunStatus::Succeeded
            ]
        );
        let summary = last.summary.expect("the final summary");
        assert_eq!(summary.status, RunStatus::Succeeded);
        assert_eq!(summary.tool_approvals.len(), 1);
    }

    #[test]
    fn a_run_whose_gate_expired_has_no_approval_entry_and_ends_expired() {
        let entries = recorded_entries("run-expired");
        assert!(
            entries.iter().all(|(t, _)| t.as_str() != "run.approval"),
            "{entries:?}"
        );
        assert_eq!(entry(&entries, "run.finished")["status"], "expired");
        let (seen, last) = statuses(&recorded("run-expired"));
        assert_eq!(
            seen,
            [
                RunStatus::Pending,
                RunStatus::AwaitingApproval,
                RunStatus::Expired
            ]
        );
        assert!(last.summary.is_some());
    }

    #[test]
    fn a_run_terminated_at_its_gate_ends_failed_with_the_operators_reason() {
        let mut events = recorded("run-gated");
        let cut = events
            .iter()
            .position(|e| {
                matches!(
                    e.attributes,
                    Some(Attributes::StartChildWorkflowExecutionInitiatedEventAttributes(_))
                )
            })
            .unwrap();
        events.truncate(cut + 1);
        let (seen, _) = statuses(&events);
        assert_eq!(seen.last(), Some(&RunStatus::AwaitingApproval));
        events.push(HistoryEvent {
            event_id: events.last().unwrap().event_id + 1,
            event_type: EventType::WorkflowExecutionTerminated as i32,
            attributes: Some(Attributes::WorkflowExecutionTerminatedEventAttributes(
                WorkflowExecutionTerminatedEventAttributes {
                    reason: "stuck".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        });
        let (seen, last) = statuses(&events);
        assert_eq!(seen.last(), Some(&RunStatus::Failed));
        assert_eq!(last.reason.as_deref(), Some("terminated: stuck"));
        let derived = derive_all(&events).unwrap();
        let (_, t, finished) = derived.last().unwrap();
        assert_eq!(
            (t.as_str(), finished),
            (
                "run.finished",
                &json!({"status": "failed", "reason": "terminated: stuck"})
            )
        );
    }
}
