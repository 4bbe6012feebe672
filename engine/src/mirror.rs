//! The history mirror: copies every Temporal history event of every cogward run into the audit
//! ledger exactly once, with the application entries derived from them (submission, admission,
//! approval, runner evidence, verdict), and keeps the `runs` index current.
//!
//! Workflows never write their own history. The mirror resumes from the database after a
//! restart (`runs.mirrored_event_id`), and the ledger's unique key on (namespace, workflow id,
//! run id, event id) refuses a duplicate whichever engine tries to append it.

use crate::ledger::{EntryKind, Ledger, NewEntry};
use crate::runs::{MirrorCursor, MirrorUpdate, Runs};
use anyhow::{Context, Result};
use base64::Engine;
use cogward_activities::RunActivities;
use cogward_activities::approval::{ApprovalOutcome, GATE_ID_PREFIX};
use cogward_activities::spec::{
    Admission, ApprovalVerdict, RunId, RunInput, RunStatus, RunSummary, RunnerEvidence,
};
use cogward_workflows::AgentRun;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use temporalio_client::{Client, WorkflowFetchHistoryOptions};
use temporalio_common::protos::temporal::api::common::v1::Payloads;
use temporalio_common::protos::temporal::api::enums::v1::EventType;
use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes;
use temporalio_common::protos::temporal::api::history::v1::{
    HistoryEvent, MarkerRecordedEventAttributes,
};
use tokio::sync::mpsc;

pub struct Mirror {
    pub client: Client,
    pub ledger: Ledger,
    pub namespace: String,
    pub interval: Duration,
    /// Runs to look at now rather than at their next scheduled look.
    pub wake: mpsc::UnboundedReceiver<RunId>,
}

/// Asks the mirror to look at a run now (it finished, or a decision reached it).
#[derive(Clone)]
pub struct MirrorWake(mpsc::UnboundedSender<RunId>);

impl MirrorWake {
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<RunId>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    pub fn wake(&self, run_id: &RunId) {
        let _ = self.0.send(run_id.clone());
    }
}

/// When the mirror looks at a run: one interval after it first sees it, then every interval while
/// its history grows, backing off (up to this) while it does not, so many long-waiting runs cost
/// little. A wake-up for a run (it finished, a decision reached it) looks at it at once.
const MAX_IDLE_BACKOFF: Duration = Duration::from_secs(5);

/// Per run: (next look, current pause).
type Schedule = HashMap<RunId, (Instant, Duration)>;

impl Mirror {
    pub async fn run(mut self) {
        let mut schedule = Schedule::new();
        loop {
            if let Err(e) = self.sweep(&mut schedule).await {
                tracing::warn!(error = %format!("{e:#}"), "history mirror sweep failed; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                Some(run_id) = self.wake.recv() => {
                    let now = Instant::now();
                    schedule.insert(run_id, (now, self.interval));
                    while let Ok(run_id) = self.wake.try_recv() {
                        schedule.insert(run_id, (now, self.interval));
                    }
                }
            }
        }
    }

    /// One pass over the runs not yet fully mirrored whose look is due: read their histories
    /// concurrently, then append everything new in one ledger batch and update the index in one
    /// transaction, so a pass costs two commits however many runs moved.
    async fn sweep(&self, schedule: &mut Schedule) -> Result<()> {
        let runs = Runs(self.ledger.db());
        let now = Instant::now();
        let pending = runs.mirror_pending().await?;
        let open: HashSet<&RunId> = pending.iter().map(|c| &c.run_id).collect();
        schedule.retain(|id, _| open.contains(id));
        let due: Vec<MirrorCursor> = pending
            .into_iter()
            .filter(|c| {
                let (next, _) = schedule
                    .entry(c.run_id.clone())
                    .or_insert((now + self.interval, self.interval));
                *next <= now
            })
            .collect();
        let read: Vec<(MirrorCursor, Result<Option<RunDelta>>)> = futures::stream::iter(due)
            .map(|c| async move {
                let delta = self.read_run(&c.run_id, c.mirrored_event_id).await;
                (c, delta)
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut entries = Vec::new();
        let mut updates = Vec::new();
        for (cursor, delta) in read {
            let pause = match &delta {
                Ok(Some(_)) => self.interval,
                _ => schedule
                    .get(&cursor.run_id)
                    .map_or(self.interval, |(_, p)| (*p * 2).min(MAX_IDLE_BACKOFF)),
            };
            schedule.insert(cursor.run_id.clone(), (now + pause, pause));
            match delta {
                Ok(Some(delta)) => {
                    entries.extend(delta.entries);
                    updates.push((cursor.run_id, delta.update));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(run_id = %cursor.run_id, error = %format!("{e:#}"), "reading run history failed");
                }
            }
        }
        if updates.is_empty() {
            return Ok(());
        }
        // The ledger first: the index's cursor never runs ahead of what is durable there.
        self.ledger.append(entries).await?;
        runs.apply_mirror(&updates).await
    }

    /// The ledger entries for the run's events after `after`, and what they say of the run;
    /// None if there are none.
    async fn read_run(&self, run_id: &RunId, after: i64) -> Result<Option<RunDelta>> {
        let handle = self.client.get_workflow_handle::<AgentRun>(run_id.as_str());
        let events: Vec<HistoryEvent> = match handle
            .fetch_history(WorkflowFetchHistoryOptions::default())
            .try_collect()
            .await
        {
            Ok(events) => events,
            Err(e) if crate::temporal::is_not_found(&e) => {
                // Submitted but not (yet) started: nothing to mirror.
                return Ok(None);
            }
            Err(e) => return Err(e).context("fetching history"),
        };
        let last = events.last().map_or(after, |e| e.event_id);
        let Some(first) = events.first().filter(|_| last > after) else {
            return Ok(None);
        };
        let temporal_run_id = match &first.attributes {
            Some(Attributes::WorkflowExecutionStartedEventAttributes(a)) => {
                a.original_execution_run_id.clone()
            }
            _ => String::new(),
        };
        let derived = Derivation::new(&events);
        let mut entries = Vec::new();
        for ev in events.iter().filter(|e| e.event_id > after) {
            let base = NewEntry {
                kind: EntryKind::History,
                namespace: self.namespace.clone(),
                workflow_id: run_id.to_string(),
                temporal_run_id: temporal_run_id.clone(),
                event_id: Some(ev.event_id),
                event_type: event_type_name(ev),
                body: history_body(ev),
            };
            entries.push(base.clone());
            for (event_type, body) in derived.app_entries(ev) {
                entries.push(NewEntry {
                    kind: EntryKind::App,
                    event_type: event_type.to_string(),
                    body,
                    ..base.clone()
                });
            }
        }
        let (status, reason, summary, done) = derived.status();
        Ok(Some(RunDelta {
            entries,
            update: MirrorUpdate {
                temporal_run_id,
                mirrored_event_id: last,
                status,
                reason,
                summary,
                done,
            },
        }))
    }
}

/// Every application entry a run's history implies, as `(event id, event type, body)`: what
/// the mirror wrote, and what `audit replay` checks the ledger's application entries against.
pub fn derived_app_entries(events: &[HistoryEvent]) -> Vec<(i64, &'static str, Value)> {
    let derived = Derivation::new(events);
    events
        .iter()
        .flat_map(|ev| {
            derived
                .app_entries(ev)
                .into_iter()
                .map(move |(t, body)| (ev.event_id, t, body))
        })
        .collect()
}

/// What one read of a run's history adds.
struct RunDelta {
    entries: Vec<NewEntry>,
    update: MirrorUpdate,
}

pub fn event_type_name(ev: &HistoryEvent) -> String {
    EventType::try_from(ev.event_type)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| format!("EVENT_TYPE_{}", ev.event_type))
}

/// A history entry's body: id, type, time and the event's exact protobuf bytes.
fn history_body(ev: &HistoryEvent) -> Value {
    let time = ev.event_time.as_ref().map(|t| {
        chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
            .unwrap_or_default()
    });
    let proto = ev.encode_to_vec();
    json!({
        "event_id": ev.event_id,
        "event_type": event_type_name(ev),
        "event_time": time,
        "proto_sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&proto)),
        "proto": base64::engine::general_purpose::STANDARD.encode(&proto),
    })
}

/// The activity type of a local activity's marker (`core_local_activity`, whose `data` detail
/// is JSON naming it).
fn local_activity_type(a: &MarkerRecordedEventAttributes) -> Option<&'static str> {
    if a.marker_name != "core_local_activity" {
        return None;
    }
    let data: Value = first_payload(&a.details.get("data").cloned())?;
    let name = data
        .get("activity_type")
        .or_else(|| data.get("activityType"))?
        .as_str()?;
    [RunActivities::admit.name()]
        .into_iter()
        .find(|known| *known == name)
}

fn first_payload<T: serde::de::DeserializeOwned>(p: &Option<Payloads>) -> Option<T> {
    let payload = p.as_ref()?.payloads.first()?;
    serde_json::from_slice(&payload.data).ok()
}

/// What an `Approval` child's outcome puts in the ledger: a gate's decision (`run.approval`,
/// none if it expired or was cancelled: the run's verdict says so), or a tool call's
/// (`run.tool_approval`, whatever its result). Every counted vote and every refused one, with
/// who, where and when.
fn approval_entry(id: &str, outcome: &ApprovalOutcome) -> Option<(&'static str, Value)> {
    let gate = id.starts_with(GATE_ID_PREFIX);
    let decision = outcome.decision();
    if gate && decision.is_none() {
        return None;
    }
    let mut body = json!({
        "approval_id": id,
        "result": outcome.result,
        "stage": outcome.stage,
        "votes": outcome.votes,
    });
    if !outcome.refused.is_empty() {
        body["refused"] = json!(outcome.refused);
    }
    if let Some(d) = decision {
        body["signal"] = json!(match d.verdict {
            ApprovalVerdict::Approved => "approve",
            ApprovalVerdict::Rejected => "reject",
        });
        body["approver"] = json!(d.approver);
        body["comment"] = json!(d.comment);
        body["channel"] = json!(d.channel);
    }
    Some((
        if gate {
            "run.approval"
        } else {
            "run.tool_approval"
        },
        body,
    ))
}

/// What a run's history says, read once per mirror pass.
struct Derivation<'a> {
    events: &'a [HistoryEvent],
    /// scheduled event id → activity type name
    activity_types: HashMap<i64, String>,
    /// The admission marker's event id and result, once decided.
    admission: Option<(i64, Admission)>,
}

impl<'a> Derivation<'a> {
    fn new(events: &'a [HistoryEvent]) -> Self {
        let activity_types = events
            .iter()
            .filter_map(|e| match &e.attributes {
                Some(Attributes::ActivityTaskScheduledEventAttributes(a)) => a
                    .activity_type
                    .as_ref()
                    .map(|t| (e.event_id, t.name.clone())),
                _ => None,
            })
            .collect();
        let admission = events.iter().find_map(|e| match &e.attributes {
            Some(Attributes::MarkerRecordedEventAttributes(a))
                if local_activity_type(a) == Some(RunActivities::admit.name()) =>
            {
                first_payload::<Admission>(&a.details.get("result").cloned())
                    .map(|admission| (e.event_id, admission))
            }
            _ => None,
        });
        Self {
            events,
            activity_types,
            admission,
        }
    }

    fn is(&self, scheduled_event_id: i64, activity: &str) -> bool {
        self.activity_types
            .get(&scheduled_event_id)
            .map(String::as_str)
            == Some(activity)
    }

    /// The application entries an event implies: usually none or one; an admission marker
    /// implies the admission, its policy decision and, if the policy faulted, a security event.
    fn app_entries(&self, ev: &HistoryEvent) -> Vec<(&'static str, Value)> {
        if let Some((event_id, admission)) = &self.admission
            && *event_id == ev.event_id
        {
            let mut entries = crate::policy::decision_entries(&admission.decision);
            let summary = json!({"verdict": admission.verdict, "reasons": admission.reasons,
                                 "approval_group": admission.approval_group,
                                 "spec_sha256": admission.spec_sha256, "limits": admission.limits});
            entries.insert(0, ("run.admission", summary));
            return entries;
        }
        self.app_entry(ev).into_iter().collect()
    }

    fn app_entry(&self, ev: &HistoryEvent) -> Option<(&'static str, Value)> {
        match ev.attributes.as_ref()? {
            Attributes::WorkflowExecutionStartedEventAttributes(a) => {
                let input: RunInput = first_payload(&a.input)?;
                Some((
                    "run.submitted",
                    json!({
                        "run_id": input.run_id,
                        "agent": input.spec.agent,
                        "tenant": input.spec.tenant,
                        "submitted_by": input.submitted_by,
                        "spec_sha256": input.spec.digest(),
                        "requires_approval": input.spec.requires_approval,
                    }),
                ))
            }
            Attributes::ActivityTaskCompletedEventAttributes(a)
                if self.is(a.scheduled_event_id, RunActivities::start_runner.name()) =>
            {
                let evidence: RunnerEvidence = first_payload(&a.result)?;
                Some(("run.evidence", serde_json::to_value(evidence).ok()?))
            }
            Attributes::ChildWorkflowExecutionCompletedEventAttributes(a) => {
                let id = &a.workflow_execution.as_ref()?.workflow_id;
                let outcome: ApprovalOutcome = first_payload(&a.result)?;
                approval_entry(id, &outcome)
            }
            Attributes::WorkflowExecutionCompletedEventAttributes(a) => {
                let summary: RunSummary = first_payload(&a.result)?;
                Some((
                    "run.finished",
                    json!({"status": summary.status, "reason": summary.reason}),
                ))
            }
            Attributes::WorkflowExecutionFailedEventAttributes(a) => Some((
                "run.finished",
                json!({"status": RunStatus::Failed, "reason": a.failure.as_ref().map(|f| f.message.clone())}),
            )),
            Attributes::WorkflowExecutionTerminatedEventAttributes(a) => Some((
                "run.finished",
                json!({"status": RunStatus::Failed, "reason": format!("terminated: {}", a.reason)}),
            )),
            Attributes::WorkflowExecutionTimedOutEventAttributes(_) => Some((
                "run.finished",
                json!({"status": RunStatus::Failed, "reason": "workflow timed out"}),
            )),
            Attributes::WorkflowExecutionCanceledEventAttributes(_) => Some((
                "run.finished",
                json!({"status": RunStatus::Cancelled, "reason": null}),
            )),
            _ => None,
        }
    }

    /// The run's status as its history shows it: (status, reason, final summary, closed).
    fn status(&self) -> (RunStatus, Option<String>, Option<RunSummary>, bool) {
        let mut status = RunStatus::Pending;
        for ev in self.events {
            match ev.attributes.as_ref() {
                Some(Attributes::StartChildWorkflowExecutionInitiatedEventAttributes(a))
                    if a.workflow_id.starts_with(GATE_ID_PREFIX) =>
                {
                    status = RunStatus::AwaitingApproval
                }
                Some(Attributes::ActivityTaskScheduledEventAttributes(_))
                    if self.is(ev.event_id, RunActivities::start_runner.name()) =>
                {
                    status = RunStatus::Running
                }
                Some(Attributes::WorkflowExecutionCompletedEventAttributes(a)) => {
                    let summary: Option<RunSummary> = first_payload(&a.result);
                    return match summary {
                        Some(s) => (s.status, s.reason.clone(), Some(s), true),
                        None => (
                            RunStatus::Failed,
                            Some("unreadable result".into()),
                            None,
                            true,
                        ),
                    };
                }
                Some(Attributes::WorkflowExecutionFailedEventAttributes(a)) => {
                    let reason = a.failure.as_ref().map(|f| f.message.clone());
                    return (RunStatus::Failed, reason, None, true);
                }
                Some(Attributes::WorkflowExecutionTerminatedEventAttributes(a)) => {
                    return (
                        RunStatus::Failed,
                        Some(format!("terminated: {}", a.reason)),
                        None,
                        true,
                    );
                }
                Some(Attributes::WorkflowExecutionTimedOutEventAttributes(_)) => {
                    return (
                        RunStatus::Failed,
                        Some("workflow timed out".into()),
                        None,
                        true,
                    );
                }
                Some(Attributes::WorkflowExecutionCanceledEventAttributes(_)) => {
                    return (RunStatus::Cancelled, None, None, true);
                }
                _ => {}
            }
        }
        // While the gate is open, say whose approval a policy escalation asks for.
        let reason = self
            .admission
            .as_ref()
            .filter(|_| status == RunStatus::AwaitingApproval)
            .and_then(|(_, a)| {
                let group = a.approval_group.as_ref()?;
                Some(format!(
                    "needs approval from group {group}: {}",
                    a.reasons.join("; ")
                ))
            });
        (status, reason, None, false)
    }
}
