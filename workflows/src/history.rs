//! What a cogward workflow's history means outside Temporal: the application entries each event
//! implies for the audit ledger, and the status an index shows for the workflow.
//!
//! Each workflow's derivation lives beside its definition (`agent_run::history`,
//! `approval::history`) and folds the history one event at a time, in order, so a follower that
//! has read up to some event continues from there without re-reading, and a follower that
//! restarts rebuilds the same state by folding the events it already mirrored. The history
//! mirror (`engine/src/audit/mirror.rs`) follows every workflow with a derivation here; `audit replay`
//! checks the ledger's application entries against the same derivation.

use cogward_protocol::audit::AuditEvent;
use cogward_protocol::spec::{RunStatus, RunSummary};
use serde_json::Value;
use temporalio_common::protos::temporal::api::common::v1::Payloads;
use temporalio_common::protos::temporal::api::enums::v1::EventType;
use temporalio_common::protos::temporal::api::history::v1::HistoryEvent;
use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes;

/// An application entry: its event type (`run.admission`, `approval.decided`, …) and body.
pub type AppEntry = (AuditEvent, Value);

/// One workflow type's reading of its history.
pub trait Derivation: Send {
    /// Fold the next event in; the application entries it implies (usually none or one).
    fn apply(&mut self, ev: &HistoryEvent) -> Vec<AppEntry>;

    /// What an index shows for the workflow after the events folded so far.
    fn index(&self) -> Index;
}

/// What an index keeps of a workflow, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Index {
    /// The workflow has no index of its own (an `Approval` is read live from Temporal).
    None,
    /// A run's row in the `runs` table.
    Run(Box<RunIndex>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunIndex {
    pub status: RunStatus,
    pub reason: Option<String>,
    pub summary: Option<RunSummary>,
}

/// The workflow types cogward follows, as Temporal names them.
pub const AGENT_RUN: &str = "AgentRun";
pub const APPROVAL: &str = "Approval";

/// A fresh derivation for a workflow type; None for a type cogward does not follow.
pub fn derivation(workflow_type: &str) -> Option<Box<dyn Derivation>> {
    match workflow_type {
        AGENT_RUN => Some(Box::<crate::agent_run::history::RunDerivation>::default()),
        APPROVAL => Some(Box::<crate::approval::history::ApprovalDerivation>::default()),
        _ => None,
    }
}

/// The workflow type a history starts with.
pub fn workflow_type(events: &[HistoryEvent]) -> Option<&str> {
    match events.first()?.attributes.as_ref()? {
        Attributes::WorkflowExecutionStartedEventAttributes(a) => {
            Some(a.workflow_type.as_ref()?.name.as_str())
        }
        _ => None,
    }
}

/// Every application entry a whole history implies, as `(event id, event type, body)`: what the
/// mirror wrote for it, and what `audit replay` checks the ledger against. None if the history's
/// workflow type has no derivation.
pub fn derive_all(events: &[HistoryEvent]) -> Option<Vec<(i64, AuditEvent, Value)>> {
    let mut derivation = derivation(workflow_type(events)?)?;
    let mut all = Vec::new();
    for ev in events {
        for (t, body) in derivation.apply(ev) {
            all.push((ev.event_id, t, body));
        }
    }
    Some(all)
}

/// A child workflow the event says was started: `(workflow id, workflow type)`.
pub fn child_started(ev: &HistoryEvent) -> Option<(&str, &str)> {
    match ev.attributes.as_ref()? {
        Attributes::ChildWorkflowExecutionStartedEventAttributes(a) => Some((
            a.workflow_execution.as_ref()?.workflow_id.as_str(),
            a.workflow_type.as_ref()?.name.as_str(),
        )),
        _ => None,
    }
}

/// The event types that close a workflow (no event follows one).
const CLOSING: [EventType; 6] = [
    EventType::WorkflowExecutionCompleted,
    EventType::WorkflowExecutionFailed,
    EventType::WorkflowExecutionTimedOut,
    EventType::WorkflowExecutionCanceled,
    EventType::WorkflowExecutionTerminated,
    EventType::WorkflowExecutionContinuedAsNew,
];

/// Whether the event closes its workflow.
pub fn closes(ev: &HistoryEvent) -> bool {
    EventType::try_from(ev.event_type).is_ok_and(|t| CLOSING.contains(&t))
}

/// Whether an event type, by the name the ledger's history entries give it
/// (`EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED`), closes its workflow.
pub fn closes_by_name(event_type: &str) -> bool {
    EventType::from_str_name(event_type).is_some_and(|t| CLOSING.contains(&t))
}

/// The first payload of an event's payloads, as JSON into `T`.
pub(crate) fn first_payload<T: serde::de::DeserializeOwned>(p: &Option<Payloads>) -> Option<T> {
    let payload = p.as_ref()?.payloads.first()?;
    serde_json::from_slice(&payload.data).ok()
}

/// Why a workflow that did not complete ended, from its closing event.
pub(crate) fn ending(ev: &HistoryEvent) -> Option<Ending> {
    Some(match ev.attributes.as_ref()? {
        Attributes::WorkflowExecutionFailedEventAttributes(a) => {
            Ending::Failed(a.failure.as_ref().map(|f| f.message.clone()))
        }
        Attributes::WorkflowExecutionTerminatedEventAttributes(a) => {
            Ending::Failed(Some(format!("terminated: {}", a.reason)))
        }
        Attributes::WorkflowExecutionTimedOutEventAttributes(_) => {
            Ending::Failed(Some("workflow timed out".into()))
        }
        Attributes::WorkflowExecutionCanceledEventAttributes(_) => Ending::Cancelled,
        _ => return None,
    })
}

pub(crate) enum Ending {
    Failed(Option<String>),
    Cancelled,
}

/// Recorded histories (`tests/histories/*.json`, as `temporal workflow show --output json`
/// writes them), for the derivations' unit tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn recorded(name: &str) -> Vec<HistoryEvent> {
    use temporalio_common::protos::temporal::api::history::v1::History;
    let path = format!("{}/tests/histories/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let history: History = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
    history.events
}

/// A recorded history's application entries, in order.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn recorded_entries(name: &str) -> Vec<AppEntry> {
    derive_all(&recorded(name))
        .unwrap()
        .into_iter()
        .map(|(_, t, b)| (t, b))
        .collect()
}

/// The body of the first entry of `event_type`.
#[cfg(test)]
pub(crate) fn entry<'a>(entries: &'a [AppEntry], event_type: &str) -> &'a Value {
    &entries
        .iter()
        .find(|(t, _)| t.as_str() == event_type)
        .unwrap_or_else(|| panic!("no {event_type} in {entries:?}"))
        .1
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Every recorded history, by name.
    pub(crate) const RECORDED: &[&str] = &[
        "run-gated",
        "approval-gate",
        "approval-tool",
        "run-expired",
        "approval-expired",
    ];

    /// Every entry derived from the recorded histories, event name and body, is what builds
    /// before the typed bodies derived (`tests/histories/entries/`, written by the build before
    /// them): the stored bytes, which the chain hashes, never change shape.
    #[test]
    fn derived_bodies_are_stored_exactly_as_released() {
        for name in RECORDED {
            let path = format!(
                "{}/tests/histories/entries/{name}.json",
                env!("CARGO_MANIFEST_DIR")
            );
            let released: Vec<Value> =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let derived: Vec<Value> = recorded_entries(name)
                .iter()
                .map(|(t, b)| serde_json::json!({"event_type": t.as_str(), "body": b}))
                .collect();
            assert_eq!(derived, released, "{name}");
        }
    }

    #[test]
    fn a_follower_resumed_anywhere_appends_exactly_what_an_uninterrupted_one_does() {
        for name in RECORDED {
            let events = recorded(name);
            let whole = derive_all(&events).expect("a followed workflow type");
            assert!(!whole.is_empty(), "{name}: no entries derived");
            for cut in 0..events.len() {
                // A restarted follower folds what it mirrored before, then appends the rest.
                let mut resumed = derivation(workflow_type(&events).unwrap()).unwrap();
                for ev in &events[..cut] {
                    resumed.apply(ev);
                }
                let appended: Vec<_> = events[cut..]
                    .iter()
                    .flat_map(|ev| {
                        resumed
                            .apply(ev)
                            .into_iter()
                            .map(|(t, b)| (ev.event_id, t, b))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let expected: Vec<_> = whole
                    .iter()
                    .filter(|(id, _, _)| *id >= events[cut].event_id)
                    .cloned()
                    .collect();
                assert_eq!(appended, expected, "{name} resumed at event {cut}");
            }
        }
    }

    #[test]
    fn only_cogward_workflows_are_followed_and_only_closing_events_close() {
        assert!(derivation("SomeoneElsesWorkflow").is_none());
        let events = recorded("run-gated");
        assert_eq!(workflow_type(&events), Some(AGENT_RUN));
        let closing: Vec<_> = events.iter().filter(|e| closes(e)).collect();
        assert_eq!(closing.len(), 1);
        assert!(closes_by_name("EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED"));
        assert!(!closes_by_name("EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED"));
        assert_eq!(closing[0].event_id, events.last().unwrap().event_id);
        let children: Vec<_> = events.iter().filter_map(child_started).collect();
        assert_eq!(
            children.len(),
            2,
            "the gate and the tool call: {children:?}"
        );
        assert!(children.iter().all(|(_, t)| *t == APPROVAL));
    }
}
