//! Replay a run's workflow history, rebuilt from the ledger alone, against this build's
//! `AgentRun` code. It shows the ledger holds the exact history (every event's protobuf bytes),
//! and, before a new worker build goes out, that it still decides recorded runs the same way.

use super::Ledger;
use anyhow::{Context, Result, bail};
use base64::Engine;
use cogward_workflows::AgentRun;
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
        bail!("no history of run {run_id} in the ledger");
    }
    Ok(events)
}

/// Replay `events` against `AgentRun`; an error names the nondeterminism.
pub async fn replay_events(events: Vec<HistoryEvent>) -> Result<()> {
    let options = WorkflowReplayerOptions::new()
        .register_workflow::<AgentRun>()
        .context("registering AgentRun")?
        .build();
    let replayer = WorkflowReplayer::new(options)?;
    replayer
        .replay_workflow(WorkflowHistory::from(History { events }))
        .await?;
    Ok(())
}
