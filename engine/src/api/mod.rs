//! The HTTP API (axum): one router per feature, one error type, tests call [`app`] without a
//! socket.

pub mod auth;
pub mod error;
pub mod policies;
pub mod runs;

use crate::db::Db;
use crate::gateway::Gateway;
use crate::ledger::Ledger;
use crate::mirror::MirrorWake;
use crate::policy::Policies;
use auth::Tokens;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use temporalio_client::Client;

/// Largest request body accepted, in bytes (documented in docs/api.md).
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub client: Client,
    pub db: Db,
    pub ledger: Ledger,
    pub tokens: Arc<Tokens>,
    pub mirror_wake: MirrorWake,
    pub policies: Arc<Policies>,
    pub gateway: Arc<Gateway>,
}

impl FromRef<AppState> for Arc<Gateway> {
    fn from_ref(state: &AppState) -> Self {
        state.gateway.clone()
    }
}

impl FromRef<AppState> for Arc<Tokens> {
    fn from_ref(state: &AppState) -> Self {
        state.tokens.clone()
    }
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"ok": true})) }),
        )
        .merge(runs::router())
        .merge(policies::router())
        .merge(crate::gateway::model::router())
        .merge(crate::gateway::mcp::router())
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
