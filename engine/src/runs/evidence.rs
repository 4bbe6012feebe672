//! `/v1/runs/{id}/evidence`: a finished run's evidence (`cogward_activities::evidence`): the
//! items with their digests as the run's history records them, and each item's bytes, checked
//! against that digest before they are served.

use crate::http::AppState;
use crate::http::auth::{Principal, Role};
use crate::http::error::{ApiError, problem};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cogward_activities::evidence::{self, ReadError};
use cogward_protocol::runner::{EvidenceItem, StoredEvidence};
use cogward_protocol::spec::RunnerEvidence;
use serde::{Deserialize, Serialize};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/runs/{id}/evidence", get(list))
        .route("/v1/runs/{id}/evidence/{*name}", get(fetch))
}

/// `GET /v1/runs/{id}/evidence`: what history records, and every item (the run's own and its
/// artifacts, from the index checked against the recorded digest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvidenceView {
    pub run_id: String,
    pub index_sha256: String,
    pub items: Vec<EvidenceItem>,
}

/// The run's tenant and its evidence as recorded, or why there is none.
async fn recorded(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<(String, String, StoredEvidence), ApiError> {
    principal.require(Role::Read)?;
    let record = super::routes::load(state, principal, id).await?;
    let stored = match record.summary.as_ref().and_then(|s| s.evidence.as_ref()) {
        Some(RunnerEvidence::Finished(result)) => result.evidence.clone(),
        _ => None,
    };
    let stored = stored.ok_or_else(|| {
        problem(
            StatusCode::CONFLICT,
            "no_evidence",
            format!(
                "run {} has no stored evidence (it is {}, or its agent never ran)",
                record.run_id, record.status
            ),
        )
    })?;
    Ok((record.run_id.to_string(), record.tenant, stored))
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<EvidenceView>, ApiError> {
    let (run_id, tenant, stored) = recorded(&state, &principal, &id).await?;
    let root = evidence::root(&state.state_dir);
    let items = evidence::list_items(&root, &tenant, &run_id, &stored).map_err(read_problem)?;
    Ok(Json(EvidenceView {
        run_id,
        index_sha256: stored.index_sha256,
        items,
    }))
}

fn read_problem(e: ReadError) -> ApiError {
    let (status, kind) = match &e {
        ReadError::NoSuchItem(_) => (StatusCode::NOT_FOUND, "evidence_not_found"),
        ReadError::NotStored(_) => (StatusCode::CONFLICT, "evidence_not_stored"),
        ReadError::Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "evidence_corrupt"),
        ReadError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "evidence_unreadable"),
    };
    problem(status, kind, e.to_string())
}

async fn fetch(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (run_id, tenant, stored) = recorded(&state, &principal, &id).await?;
    let root = evidence::root(&state.state_dir);
    let bytes =
        evidence::read_item(&root, &tenant, &run_id, &stored, &name).map_err(read_problem)?;
    let media_type = stored
        .items
        .iter()
        .find(|i| i.name == name)
        .map_or("application/octet-stream", |i| i.media_type.as_str());
    let mut resp = bytes.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(media_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    Ok(resp)
}
