//! The operator API's HTTP surface (axum): its state, its authentication (`auth`), its one error
//! type (`error`, RFC 9457 problems), and the router composed of each service's routes (runs,
//! approvals and their callbacks, policies). Tests call [`app`] without a socket. It never
//! imports the gateway, which has its own listener (`gateway::app`).

pub mod auth;
pub mod error;

use crate::audit::Ledger;
use crate::audit::mirror::MirrorWake;
use crate::db::Db;
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
    pub channels: Arc<crate::approvals::callbacks::Channels>,
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
        .merge(crate::runs::routes::router())
        .merge(crate::runs::events::router())
        .merge(crate::runs::evidence::router())
        .merge(crate::approvals::router())
        .merge(crate::approvals::callbacks::router())
        .merge(crate::policy::routes::router())
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
