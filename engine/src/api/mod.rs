//! The HTTP API (axum): one router per feature, one error type, tests call [`app`] without a
//! socket.

pub mod approvals;
pub mod auth;
pub mod callbacks;
pub mod error;
pub mod evidence;
pub mod policies;
pub mod run_events;
pub mod runs;

use crate::db::Db;
use crate::ledger::Ledger;
use crate::mirror::MirrorWake;
use crate::policy::Policies;
use auth::Tokens;
use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use temporalio_client::Client;

/// Largest request body accepted, in bytes (documented in docs/api.md).
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub temporal: crate::temporal::TemporalHandle,
    pub db: Db,
    pub ledger: Ledger,
    pub tokens: Arc<Tokens>,
    pub mirror_wake: MirrorWake,
    pub policies: Arc<Policies>,
    /// The Temporal namespace, the ledger namespace of what the API records itself.
    pub namespace: String,
    /// The engine's state directory (run directories live in `runs/`).
    pub state_dir: std::path::PathBuf,
    /// The approval channels (Slack, Jira) whose callbacks decide.
    pub channels: Arc<callbacks::Channels>,
}

impl FromRef<AppState> for Arc<Tokens> {
    fn from_ref(state: &AppState) -> Self {
        state.tokens.clone()
    }
}

impl AppState {
    /// The Temporal client, or 503 `temporal_unavailable` while it is not connected.
    pub fn client(&self) -> Result<Client, error::ApiError> {
        self.temporal.get().ok_or_else(|| {
            error::problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporal_unavailable",
                "Temporal is unreachable; retry later",
            )
        })
    }
}

/// The operator API: runs, approvals, policies, health. Not the gateway (`gateway::app`),
/// which this API never imports.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|State(state): State<AppState>| async move {
                Json(serde_json::json!({"ok": true, "temporal": state.temporal.get().is_some()}))
            }),
        )
        .merge(runs::router())
        .merge(approvals::router())
        .merge(run_events::router())
        .merge(evidence::router())
        .merge(policies::router())
        .merge(callbacks::router())
        .fallback(|| async {
            error::problem(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            error::problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
