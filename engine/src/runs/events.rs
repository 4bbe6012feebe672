//! `/v1/runs/{id}/events`: an agent CLI's run events ([`AgentEvent`]), normalised from its
//! output in the run directory. As JSON (what is there now), or with `?follow=true` as a
//! server-sent event stream that goes on while the run is live and ends with an `end` event
//! carrying its status. Each event has a sequence number (`seq`, from 1); `?after=N` (or an
//! SSE client's `Last-Event-ID`) resumes after it.
//!
//! The run directory is on the worker's host: the API serves events where it runs beside the
//! worker (`serve --worker`, `dev`); see docs/operations.md.

use crate::http::AppState;
use crate::http::auth::{Principal, Role};
use crate::http::error::{ApiError, ApiQuery, problem};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cogward_activities::agent_events::{AgentEvent, Normaliser, OutputFormat};
use cogward_protocol::runner::{RESULT_FILE, STDOUT_FILE};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/runs/{id}/events", get(events))
}

/// How often a followed run's output is read again.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How often a followed stream carries a keep-alive comment when nothing happens.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(default)]
    pub follow: bool,
    /// Only events after this sequence number.
    #[serde(default)]
    pub after: u64,
}

/// One event with its place in the run's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequencedEvent {
    pub seq: u64,
    #[serde(flatten)]
    pub event: AgentEvent,
}

/// `GET /v1/runs/{id}/events` without `follow`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsView {
    pub run_id: String,
    pub runtime: String,
    /// Whether the agent has finished (no event will be added).
    pub complete: bool,
    pub events: Vec<SequencedEvent>,
}

/// Reads a run's stdout as it grows and normalises each complete line.
struct Tail {
    path: std::path::PathBuf,
    offset: u64,
    partial: Vec<u8>,
    normaliser: Normaliser,
    seq: u64,
}

impl Tail {
    /// Events in what was appended since the last read.
    fn read(&mut self) -> std::io::Result<Vec<SequencedEvent>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(Vec::new());
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        let mut out = Vec::new();
        for line in String::from_utf8_lossy(&complete).lines() {
            for event in self.normaliser.push(line) {
                self.seq += 1;
                out.push(SequencedEvent {
                    seq: self.seq,
                    event,
                });
            }
        }
        Ok(out)
    }
}

async fn events(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    principal.require(Role::Read)?;
    let record = super::routes::load(&state, &principal, &id).await?;
    let runtime = record.spec.runtime.name().to_string();
    let format = OutputFormat::of(&record.spec.runtime).ok_or_else(|| {
        problem(
            StatusCode::CONFLICT,
            "no_run_events",
            format!(
                "run {} has runtime {runtime}: only agent-CLI runtimes have run events (its output is its stdout.log)",
                record.run_id
            ),
        )
    })?;
    let dir = state.state_dir.join("runs").join(record.run_id.as_str());
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(query.after);
    let mut tail = Tail {
        path: dir.join(STDOUT_FILE),
        offset: 0,
        partial: Vec::new(),
        normaliser: Normaliser::new(format),
        seq: 0,
    };
    let finished = |dir: &std::path::Path| dir.join(RESULT_FILE).exists();
    if !query.follow {
        let complete = finished(&dir) || record.status.is_terminal();
        let events = read_events(&mut tail)?
            .into_iter()
            .filter(|e| e.seq > after)
            .collect();
        return Ok(Json(EventsView {
            run_id: record.run_id.to_string(),
            runtime,
            complete,
            events,
        })
        .into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let run_id = record.run_id.clone();
    tokio::spawn(async move {
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            // Whether the agent had finished before this read: then the read saw all it wrote.
            let done = finished(&dir) || run_ended(&state, &run_id).await;
            let batch = match read_events(&mut tail) {
                Ok(b) => b,
                Err(_) => {
                    tracing::warn!(run_id = %run_id, "a run's events became unreadable");
                    return;
                }
            };
            for e in batch.into_iter().filter(|e| e.seq > after) {
                let data = serde_json::to_string(&e).unwrap_or_default();
                let frame = format!("id: {}\nevent: run_event\ndata: {data}\n\n", e.seq);
                if tx.send(Ok(Bytes::from(frame))).await.is_err() {
                    return;
                }
                quiet_since = tokio::time::Instant::now();
            }
            if done {
                // The agent is done; the run's verdict follows within moments (the mirror
                // records it from history): give it a few seconds to say so.
                let mut status = None;
                for _ in 0..50 {
                    status = crate::runs::Runs(&state.db)
                        .get(&run_id)
                        .await
                        .ok()
                        .flatten()
                        .map(|r| r.status);
                    if status.is_some_and(|s| s.is_terminal()) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let status = status.map(|s| s.to_string());
                let data = serde_json::json!({"run_id": run_id, "status": status});
                let _ = tx
                    .send(Ok(Bytes::from(format!("event: end\ndata: {data}\n\n"))))
                    .await;
                return;
            }
            if quiet_since.elapsed() >= KEEP_ALIVE {
                if tx
                    .send(Ok(Bytes::from_static(b": alive\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
                quiet_since = tokio::time::Instant::now();
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    });
    Ok(crate::sse::event_stream(rx))
}

fn read_events(tail: &mut Tail) -> Result<Vec<SequencedEvent>, ApiError> {
    tail.read().map_err(|e| {
        problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "run_events_unreadable",
            format!("reading the run's output: {e}"),
        )
    })
}

/// Whether the run is over as far as the API knows (a run that never started a runner has no
/// result file).
async fn run_ended(state: &AppState, run_id: &cogward_protocol::spec::RunId) -> bool {
    crate::runs::Runs(&state.db)
        .get(run_id)
        .await
        .ok()
        .flatten()
        .is_some_and(|r| r.status.is_terminal())
}
