//! The history mirror: copies every Temporal history event of every cogward workflow (runs,
//! approvals, and any workflow type with a derivation in `cogward_workflows::history`) into the
//! audit ledger exactly once, with the application entries that workflow's own derivation says
//! each event implies, and keeps the workflow's index (a run's row in `runs`) current.
//!
//! Workflows never write their own history. Each followed workflow has a cursor row
//! (`mirror_cursors`: the last mirrored event id, and whether its history is closed and fully
//! copied). A run's row is written with the run; a child's (an approval) in the same transaction
//! as the parent's event that started it. One follower task per open workflow reads its history
//! page by page with Temporal's long poll (`wait_new_event`): each page continues from the last,
//! so nothing is read twice while the engine lives; a restarted engine folds the events it
//! already mirrored through the derivation (to rebuild its state) and appends only what follows.
//! The ledger's unique key on (namespace, workflow id, run id, event id) refuses a duplicate
//! whichever engine tries to append it.

use crate::audit::{EntryKind, Ledger, NewEntry};
use crate::db::Db;
use anyhow::{Context, Result, bail};
use base64::Engine;
use cogward_protocol::audit::AuditEvent;
use cogward_workflows::history::{self, Index};
use prost::Message;
use serde_json::{Value, json};
use sqlx::Row;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use temporalio_client::Client;
use temporalio_client::grpc::WorkflowService;
use temporalio_client::tonic::IntoRequest;
use temporalio_common::protos::temporal::api::common::v1::WorkflowExecution;
use temporalio_common::protos::temporal::api::enums::v1::EventType;
use temporalio_common::protos::temporal::api::history::v1::HistoryEvent;
use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes;
use temporalio_common::protos::temporal::api::workflowservice::v1::GetWorkflowExecutionHistoryRequest;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub struct Mirror {
    pub client: Client,
    pub ledger: Ledger,
    pub namespace: String,
    /// How often the mirror looks for workflows to follow that it does not follow yet, and
    /// retries one whose follower failed.
    pub interval: Duration,
    pub wake: MirrorWake,
}

/// Asks the mirror to look for new workflows to follow now (a run was submitted).
#[derive(Clone, Default)]
pub struct MirrorWake(Arc<Notify>);

impl MirrorWake {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// How soon the mirror looks again for a workflow that is to be followed but has not started
/// (its submission is under way), and how rarely at most.
const NOT_STARTED_FIRST_PAUSE: Duration = Duration::from_millis(50);
const NOT_STARTED_MAX_PAUSE: Duration = Duration::from_secs(5);

/// A followed workflow, as its cursor row has it.
#[derive(Debug, Clone)]
struct Cursor {
    workflow_id: String,
    workflow_type: String,
    mirrored_event_id: i64,
}

impl Mirror {
    pub async fn run(self) {
        let shared = Arc::new(self);
        let mut followers: HashMap<String, JoinHandle<()>> = HashMap::new();
        loop {
            followers.retain(|_, task| !task.is_finished());
            match open_cursors(shared.ledger.db()).await {
                Ok(cursors) => {
                    for cursor in cursors {
                        if followers.contains_key(&cursor.workflow_id) {
                            continue;
                        }
                        let id = cursor.workflow_id.clone();
                        let mirror = shared.clone();
                        followers.insert(
                            id.clone(),
                            tokio::spawn(async move {
                                if let Err(e) = mirror.follow(cursor).await {
                                    tracing::warn!(workflow_id = %id, error = %format!("{e:#}"),
                                                   "mirroring history failed; resuming from the ledger's cursor");
                                    // Not at once: whatever failed (Temporal, the database) may
                                    // need a moment.
                                    tokio::time::sleep(mirror.interval * 4).await;
                                }
                            }),
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "reading the mirror's cursors failed; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(shared.interval) => {}
                _ = shared.wake.0.notified() => {}
            }
        }
    }

    /// Follow one workflow's history until it is closed and copied (or no longer to be
    /// followed: a submission Temporal never took).
    async fn follow(&self, cursor: Cursor) -> Result<()> {
        let Some(mut derivation) = history::derivation(&cursor.workflow_type) else {
            bail!("no derivation for workflow type {:?}", cursor.workflow_type);
        };
        let mut mirrored = cursor.mirrored_event_id;
        let mut temporal_run_id = String::new();
        let mut closed = false;
        let mut token = Vec::new();
        let mut not_started = NOT_STARTED_FIRST_PAUSE;
        loop {
            let (events, next) = match self.page(&cursor.workflow_id, &token).await {
                Ok(page) => page,
                Err(e) if crate::temporal::is_not_found(&e) => {
                    // Submitted but not (yet) started: nothing to mirror. Look again, less and
                    // less often, while the workflow is still to be followed (a submission
                    // Temporal certainly never took is forgotten).
                    if !is_open(self.ledger.db(), &cursor.workflow_id).await? {
                        return Ok(());
                    }
                    tokio::time::sleep(not_started).await;
                    not_started = (not_started * 2).min(NOT_STARTED_MAX_PAUSE);
                    continue;
                }
                Err(e) => return Err(e).context("reading history"),
            };
            let mut page = Page::default();
            for ev in &events {
                if let Some(Attributes::WorkflowExecutionStartedEventAttributes(a)) = &ev.attributes
                {
                    temporal_run_id = a.original_execution_run_id.clone();
                }
                closed |= history::closes(ev);
                let app = derivation.apply(ev);
                if ev.event_id <= mirrored {
                    continue;
                }
                page.add(self, &cursor.workflow_id, &temporal_run_id, ev, app);
            }
            let end = next.is_empty();
            if end && !closed {
                bail!("history ended without closing its workflow");
            }
            if page.last.is_some() || end {
                mirrored = page.last.unwrap_or(mirrored);
                self.record(
                    &cursor,
                    &temporal_run_id,
                    mirrored,
                    end,
                    page,
                    derivation.index(),
                )
                .await?;
            }
            if end {
                return Ok(());
            }
            token = next;
        }
    }

    /// The next page of a workflow's history after `token` (the first with none), waiting for a
    /// new event if there is none yet; and the token for the one after (empty: the history is
    /// closed and this was its last page).
    async fn page(
        &self,
        workflow_id: &str,
        token: &[u8],
    ) -> Result<(Vec<HistoryEvent>, Vec<u8>), temporalio_client::tonic::Status> {
        let request = GetWorkflowExecutionHistoryRequest {
            namespace: self.namespace.clone(),
            execution: Some(WorkflowExecution {
                workflow_id: workflow_id.to_string(),
                run_id: String::new(),
            }),
            next_page_token: token.to_vec(),
            wait_new_event: true,
            ..Default::default()
        };
        let response = WorkflowService::get_workflow_execution_history(
            &mut self.client.clone(),
            request.into_request(),
        )
        .await?
        .into_inner();
        Ok((
            response.history.map(|h| h.events).unwrap_or_default(),
            response.next_page_token,
        ))
    }

    /// Make a page durable: its entries in the ledger first (the cursor never runs ahead of
    /// what is there), then in one transaction the cursor, the workflow's index and the cursors
    /// of the children it started.
    async fn record(
        &self,
        cursor: &Cursor,
        temporal_run_id: &str,
        mirrored: i64,
        done: bool,
        page: Page,
        index: Index,
    ) -> Result<()> {
        self.ledger.append(page.entries).await?;
        let mut tx = self.ledger.db().write().await?;
        sqlx::query(
            // Never backwards: another engine's mirror may have copied further already.
            "UPDATE mirror_cursors SET temporal_run_id = $1, \
             mirrored_event_id = CASE WHEN mirrored_event_id > $2 THEN mirrored_event_id ELSE $2 END, \
             done = CASE WHEN done = 1 THEN 1 ELSE $3 END WHERE workflow_id = $4",
        )
        .bind(temporal_run_id)
        .bind(mirrored)
        .bind(i64::from(done))
        .bind(&cursor.workflow_id)
        .execute(tx.conn())
        .await?;
        match index {
            Index::Run(index) => {
                crate::runs::apply_index(tx.conn(), &cursor.workflow_id, temporal_run_id, &index)
                    .await?
            }
            Index::None => {}
        }
        for (id, workflow_type) in &page.children {
            follow(tx.conn(), id, workflow_type).await?;
        }
        tx.commit().await?;
        if !page.children.is_empty() {
            self.wake.wake();
        }
        Ok(())
    }
}

/// What one page of a history adds.
#[derive(Default)]
struct Page {
    entries: Vec<NewEntry>,
    /// Children it started that the mirror follows: (workflow id, type).
    children: Vec<(String, String)>,
    last: Option<i64>,
}

impl Page {
    fn add(
        &mut self,
        mirror: &Mirror,
        workflow_id: &str,
        temporal_run_id: &str,
        ev: &HistoryEvent,
        app: Vec<history::AppEntry>,
    ) {
        let base = NewEntry {
            kind: EntryKind::History,
            namespace: mirror.namespace.clone(),
            workflow_id: workflow_id.to_string(),
            temporal_run_id: temporal_run_id.to_string(),
            event_id: Some(ev.event_id),
            event_type: event_type_name(ev),
            body: history_body(ev),
        };
        self.entries.push(base.clone());
        for (event_type, body) in app {
            self.entries.push(NewEntry {
                kind: EntryKind::App,
                event_type: event_type.to_string(),
                body,
                ..base.clone()
            });
        }
        if let Some((id, workflow_type)) = history::child_started(ev)
            && history::derivation(workflow_type).is_some()
        {
            self.children
                .push((id.to_string(), workflow_type.to_string()));
        }
        self.last = Some(ev.event_id);
    }
}

/// Start following a workflow (nothing if it is followed already).
pub async fn follow(
    conn: &mut sqlx::AnyConnection,
    workflow_id: &str,
    workflow_type: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO mirror_cursors (workflow_id, workflow_type, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(workflow_id)
    .bind(workflow_type)
    .bind(crate::now_rfc3339())
    .execute(conn)
    .await?;
    Ok(())
}

/// Stop following a workflow Temporal never started.
pub async fn unfollow(conn: &mut sqlx::AnyConnection, workflow_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM mirror_cursors WHERE workflow_id = $1 AND mirrored_event_id = 0")
        .bind(workflow_id)
        .execute(conn)
        .await?;
    Ok(())
}

async fn is_open(db: &Db, workflow_id: &str) -> Result<bool> {
    let open: Option<i64> =
        sqlx::query_scalar("SELECT done FROM mirror_cursors WHERE workflow_id = $1")
            .bind(workflow_id)
            .fetch_optional(&db.pool)
            .await?;
    Ok(open == Some(0))
}

async fn open_cursors(db: &Db) -> Result<Vec<Cursor>> {
    let rows = sqlx::query(
        "SELECT workflow_id, workflow_type, mirrored_event_id FROM mirror_cursors \
         WHERE done = 0 ORDER BY created_at",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Cursor {
                workflow_id: r.try_get("workflow_id")?,
                workflow_type: r.try_get("workflow_type")?,
                mirrored_event_id: r.try_get("mirrored_event_id")?,
            })
        })
        .collect()
}

/// Every application entry a workflow's history implies, as `(event id, event type, body)`:
/// what the mirror wrote, and what `audit replay` checks the ledger's application entries
/// against.
pub fn derived_app_entries(events: &[HistoryEvent]) -> Result<Vec<(i64, AuditEvent, Value)>> {
    history::derive_all(events).with_context(|| {
        format!(
            "the history's workflow type {:?} is not one cogward follows",
            history::workflow_type(events)
        )
    })
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
