//! Replay a run's workflow history, rebuilt from the ledger alone, against this build's
//! `AgentRun` code. It shows the ledger holds the exact history (every event's protobuf bytes),
//! and, before a new worker build goes out, that it still decides recorded runs the same way.

use super::Ledger;
use anyhow::{Context, Result, bail};
use base64::Engine;
use cogward_workflows::{AgentRun, Approval};
use prost::Message;
use temporalio_client::WorkflowHistory;
use temporalio_common::protos::temporal::api::history::v1::{History, HistoryEvent};
use temporalio_sdk::workflow_replayer::{WorkflowReplayer, WorkflowReplayerOptions};

/// The run's history events, decoded from its `history` ledger entries in chain order.
pub async fn history_from_ledger(ledger: &Ledger, run_id: &str) -> Result<Vec<HistoryEvent>> {
    let mut events = Vec::new();
    for entry in ledger.entries_for_workflow(run_id).await? {
        if entry.kind != "history" {
            continue;
        }
        let body: serde_json::Value = serde_json::from_str(&entry.body)
            .with_context(|| format!("ledger entry {}", entry.seq))?;
        let proto = body["proto"]
            .as_str()
            .with_context(|| format!("ledger entry {} has no event bytes", entry.seq))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(proto)
            .with_context(|| format!("ledger entry {}", entry.seq))?;
        events.push(
            HistoryEvent::decode(bytes.as_slice())
                .with_context(|| format!("ledger entry {}", entry.seq))?,
        );
    }
    if events.is_empty() {
        bail!("no history of workflow {run_id} in the ledger");
    }
    Ok(events)
}

/// Check the run's application entries derived from its history (admission, approval and its
/// approver, tool approvals, evidence, verdict) against the history events they came from, as
/// the ledger holds them: an entry edited (and the chain recomputed) differs from what its event
/// implies; an entry added or removed has no counterpart. The problems found, by seq.
pub async fn check_app_entries(
    ledger: &Ledger,
    run_id: &str,
    events: &[HistoryEvent],
) -> Result<Vec<String>> {
    use std::collections::BTreeMap;
    let mut expected: BTreeMap<(i64, String), serde_json::Value> =
        crate::audit::mirror::derived_app_entries(events)?
            .into_iter()
            .map(|(id, t, body)| ((id, t.to_string()), body))
            .collect();
    let mut problems = Vec::new();
    for entry in ledger.entries_for_workflow(run_id).await? {
        let Some(event_id) = entry.event_id.filter(|_| entry.kind == "app") else {
            continue;
        };
        let key = (event_id, entry.event_type.clone());
        match expected.remove(&key) {
            Some(body) if super::canonical_string(&body) == entry.body => {}
            Some(body) => problems.push(format!(
                "entry {} ({} of event {event_id}) differs from what its history event implies:                  ledger {} / history {}",
                entry.seq,
                entry.event_type,
                entry.body,
                super::canonical_string(&body)
            )),
            None => problems.push(format!(
                "entry {} ({} of event {event_id}) is implied by no history event",
                entry.seq, entry.event_type
            )),
        }
    }
    for ((event_id, event_type), _) in expected {
        problems.push(format!(
            "{event_type} of history event {event_id} is missing from the ledger"
        ));
    }
    Ok(problems)
}

/// Replay `events` against this build's workflow of their type (`AgentRun`, `Approval`); an
/// error names the nondeterminism.
pub async fn replay_events(events: Vec<HistoryEvent>) -> Result<()> {
    let options = WorkflowReplayerOptions::new()
        .register_workflow::<AgentRun>()
        .context("registering AgentRun")?
        .register_workflow::<Approval>()
        .context("registering Approval")?
        .build();
    let replayer = WorkflowReplayer::new(options)?;
    replayer
        .replay_workflow(WorkflowHistory::from(History { events }))
        .await?;
    Ok(())
}
