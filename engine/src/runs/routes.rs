//! `/v1/runs`: submit, read, list, approve, reject, cancel, history.

use crate::audit::LedgerEntry;
use crate::http::AppState;
use crate::http::auth::{Principal, Role};
use crate::http::error::{ApiError, ApiJson, ApiQuery, optional_json, problem};
use crate::runs::{RunFilter, RunRecord, Runs};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use cogward_protocol::approval;
use cogward_protocol::spec::{RunId, RunInput, RunSpec, RunStatus, RunSummary};
use cogward_workflows::{AgentRun, TASK_QUEUE};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use temporalio_client::errors::WorkflowStartError;
use temporalio_client::{
    WorkflowCancelOptions, WorkflowDescribeOptions, WorkflowGetResultOptions,
    WorkflowIdReusePolicy, WorkflowQueryOptions, WorkflowStartOptions,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/runs", post(submit).get(list))
        .route("/v1/runs/{id}", get(show))
        .route("/v1/runs/{id}/approve", post(approve))
        .route("/v1/runs/{id}/reject", post(reject))
        .route("/v1/runs/{id}/cancel", post(cancel))
        .route("/v1/runs/{id}/history", get(history))
        .route("/v1/runs/{id}/tool-calls", get(tool_calls))
}

/// A run as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunView {
    pub run_id: RunId,
    pub tenant: String,
    pub agent: String,
    pub status: RunStatus,
    pub reason: Option<String>,
    pub submitted_by: String,
    pub idempotency_key: Option<String>,
    pub spec_sha256: String,
    pub created_at: String,
    pub updated_at: String,
    pub summary: Option<RunSummary>,
}

impl From<RunRecord> for RunView {
    fn from(r: RunRecord) -> Self {
        Self {
            run_id: r.run_id,
            tenant: r.tenant,
            agent: r.agent,
            status: r.status,
            reason: r.reason,
            submitted_by: r.submitted_by,
            idempotency_key: r.idempotency_key,
            spec_sha256: r.spec_sha256,
            created_at: r.created_at,
            updated_at: r.updated_at,
            summary: r.summary,
        }
    }
}

fn parse_run_id(id: &str) -> Result<RunId, ApiError> {
    RunId::parse(id).ok_or_else(|| {
        problem(
            StatusCode::BAD_REQUEST,
            "invalid_run_id",
            format!("{id:?} is not a run id"),
        )
    })
}

/// The run `id`, if it exists and `principal` may act on its tenant: another tenant's run is
/// not found, exactly as one that does not exist.
pub(super) async fn load(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<RunRecord, ApiError> {
    let run_id = parse_run_id(id)?;
    Runs(&state.db)
        .get(&run_id)
        .await?
        .filter(|r| principal.may_act_on(&r.tenant))
        .ok_or_else(|| {
            problem(
                StatusCode::NOT_FOUND,
                "run_not_found",
                format!("no run {run_id}"),
            )
        })
}

async fn submit(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(spec): ApiJson<RunSpec>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    principal.require(Role::Submit)?;
    spec.validate().map_err(|e| {
        problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_spec",
            e.to_string(),
        )
    })?;
    principal.require_tenant(&spec.tenant)?;
    // Nothing is recorded for a run Temporal cannot take now.
    let client = state.client()?;
    let fresh = uuid::Uuid::new_v4().simple().to_string();
    let run_id = RunId::for_submission(&spec.tenant, spec.idempotency_key.as_deref(), &fresh);
    let now = crate::now_rfc3339();
    let record = RunRecord {
        run_id: run_id.clone(),
        tenant: spec.tenant.clone(),
        agent: spec.agent.clone(),
        idempotency_key: spec.idempotency_key.clone(),
        spec_sha256: spec.digest(),
        spec: spec.clone(),
        submitted_by: principal.name.clone(),
        status: RunStatus::Pending,
        reason: None,
        summary: None,
        temporal_run_id: None,
        created_at: now.clone(),
        updated_at: now,
    };
    let (stored, created) = Runs(&state.db).insert_or_get(&record).await?;
    if !created && stored.spec_sha256 != record.spec_sha256 {
        return Err(problem(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            format!(
                "idempotency key already used by run {} with a different spec",
                stored.run_id
            ),
        ));
    }
    // Start (or find) the workflow. Safe to repeat: the workflow id is the run id, and Temporal
    // refuses a second execution with it.
    let input = RunInput {
        run_id: run_id.clone(),
        spec: stored.spec.clone(),
        submitted_by: stored.submitted_by.clone(),
    };
    let options = WorkflowStartOptions::new(TASK_QUEUE, run_id.to_string())
        .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
        .build();
    match client.start_workflow(AgentRun::run, input, options).await {
        Ok(_) => {}
        Err(WorkflowStartError::AlreadyStarted { .. }) => {}
        Err(e) => {
            // Leave no run behind that never started, but only when that is certain: Temporal
            // unreachable (the request never got there), or Temporal saying the workflow does
            // not exist. A start that timed out may have happened; the mirror must follow it.
            let unreachable = matches!(&e, WorkflowStartError::Rpc(status) if status.code() == tonic::Code::Unavailable);
            let never_started = unreachable
                || client
                    .get_workflow_handle::<AgentRun>(run_id.as_str())
                    .describe(WorkflowDescribeOptions::default())
                    .await
                    .is_err_and(|e| crate::temporal::is_not_found(&e));
            if created && never_started {
                Runs(&state.db).forget(&run_id).await?;
            }
            tracing::error!(run_id = %run_id, error = %e, "starting the AgentRun workflow failed");
            return Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporal_unavailable",
                if never_started {
                    "Temporal did not accept the run; nothing was recorded, submit again"
                } else {
                    "Temporal did not confirm the run; submit again with the same idempotency key to find it"
                },
            ));
        }
    }
    tracing::info!(run_id = %run_id, agent = %spec.agent, tenant = %spec.tenant, created, "run submitted");
    state.mirror_wake.wake();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(stored.into())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowParams {
    /// Long-poll: wait up to this many seconds for the run to finish.
    #[serde(default)]
    wait: Option<u64>,
}

async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<ShowParams>,
) -> Result<Json<RunView>, ApiError> {
    principal.require(Role::Read)?;
    let record = load(&state, &principal, &id).await?;
    let wait = params.wait.unwrap_or(0).min(300);
    if wait == 0 || record.status.is_terminal() {
        return Ok(Json(record.into()));
    }
    let handle = state
        .client()?
        .get_workflow_handle::<AgentRun>(record.run_id.as_str());
    let result = tokio::time::timeout(
        Duration::from_secs(wait),
        handle.get_result(WorkflowGetResultOptions::default()),
    )
    .await;
    let mut view: RunView = record.into();
    if let Ok(Ok(summary)) = result {
        // The workflow's own verdict; the mirror records the same from history right after.
        view.status = summary.status;
        view.reason = summary.reason.clone();
        view.summary = Some(summary);
    }
    Ok(Json(view))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    status: Option<String>,
    agent: Option<String>,
    tenant: Option<String>,
    limit: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Vec<RunView>>, ApiError> {
    principal.require(Role::Read)?;
    let status = params
        .status
        .as_deref()
        .map(|s| {
            RunStatus::parse(s).ok_or_else(|| {
                problem(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("unknown status {s:?}"),
                )
            })
        })
        .transpose()?;
    let filter = RunFilter {
        status,
        agent: params.agent,
        tenant: params.tenant,
        limit: params.limit.unwrap_or(100).clamp(1, 1000),
    };
    let runs = Runs(&state.db).list(&filter).await?;
    Ok(Json(
        runs.into_iter()
            .filter(|r| principal.may_act_on(&r.tenant))
            .map(RunView::from)
            .collect(),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionBody {
    #[serde(default)]
    pub(crate) comment: Option<String>,
    /// Decide this parked tool call of the running agent instead of the run's start gate.
    #[serde(default)]
    pub(crate) tool_call: Option<String>,
}

/// Decide run `id`'s gate (or, with `body.tool_call`, one of its parked tool calls) as
/// `principal`, from `channel` (`api`, `slack`, `jira`): a vote on the subject's `Approval`.
pub(crate) async fn decide(
    state: AppState,
    principal: Principal,
    id: String,
    body: DecisionBody,
    approve: bool,
    channel: &str,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    principal.require(Role::Approve)?;
    let record = load(&state, &principal, &id).await?;
    let run_id = record.run_id.as_str();
    let approval = match &body.tool_call {
        Some(call) => approval::tool_call_workflow_id(run_id, call),
        None => approval::gate_workflow_id(run_id),
    };
    let voted = if record.status.is_terminal() {
        None
    } else {
        Some(
            crate::approvals::vote(
                &state,
                &principal,
                &approval,
                approve,
                body.comment,
                channel,
            )
            .await,
        )
    };
    // What the caller asked of the run does not exist, or no longer takes decisions.
    let unknown = match voted {
        Some(Ok(_)) => None,
        Some(Err(ApiError(p))) if p.code == "approval_not_found" => Some(true),
        Some(Err(ApiError(p))) if p.code == "approval_closed" => Some(false),
        Some(Err(e)) => return Err(e),
        None => Some(false),
    };
    if let Some(unknown) = unknown {
        return Err(match &body.tool_call {
            None => problem(
                StatusCode::CONFLICT,
                "not_awaiting_approval",
                format!(
                    "run {} is {}, not awaiting approval",
                    record.run_id, record.status
                ),
            ),
            Some(call) if unknown => problem(
                StatusCode::NOT_FOUND,
                "unknown_tool_call",
                format!("run {} has no parked tool call {call:?}", record.run_id),
            ),
            Some(_) => problem(
                StatusCode::CONFLICT,
                "not_running",
                format!(
                    "run {} is {}: its tool calls can no longer be decided",
                    record.run_id, record.status
                ),
            ),
        });
    }
    Ok((StatusCode::ACCEPTED, Json(record.into())))
}

/// The run's parked tool calls and their decisions, read live from the workflow (or from its
/// final summary once it ended).
async fn tool_calls(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    principal.require(Role::Read)?;
    let record = load(&state, &principal, &id).await?;
    let approvals = if record.status.is_terminal() {
        record.summary.map(|s| s.tool_approvals).unwrap_or_default()
    } else {
        state
            .client()?
            .get_workflow_handle::<AgentRun>(record.run_id.as_str())
            .query(AgentRun::status, (), WorkflowQueryOptions::default())
            .await
            .map_err(|e| {
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporal_unavailable",
                    format!(
                        "could not read run {}'s tool calls from Temporal: {e}",
                        record.run_id
                    ),
                )
            })?
            .map(|s| s.tool_approvals)
            .unwrap_or_default()
    };
    Ok(Json(
        serde_json::json!({"run_id": record.run_id, "tool_calls": approvals}),
    ))
}

async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    decide(state, principal, id, optional_json(&body)?, true, "api").await
}

async fn reject(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    decide(state, principal, id, optional_json(&body)?, false, "api").await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    principal.require(Role::Operate)?;
    let body: CancelBody = optional_json(&body)?;
    let record = load(&state, &principal, &id).await?;
    if record.status.is_terminal() {
        return Err(problem(
            StatusCode::CONFLICT,
            "run_finished",
            format!("run {} already ended {}", record.run_id, record.status),
        ));
    }
    let reason = body
        .reason
        .unwrap_or_else(|| "cancelled by operator".into());
    let reason = format!("{reason} (by {})", principal.name);
    let handle = state
        .client()?
        .get_workflow_handle::<AgentRun>(record.run_id.as_str());
    handle
        .cancel(
            WorkflowCancelOptions::builder()
                .reason(reason.clone())
                .build(),
        )
        .await
        .map_err(|e| {
            problem(
                StatusCode::CONFLICT,
                "run_finished",
                format!("run {} cannot be cancelled: {e}", record.run_id),
            )
        })?;
    tracing::info!(run_id = %record.run_id, %reason, "cancellation requested");
    Ok((StatusCode::ACCEPTED, Json(record.into())))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryView {
    pub run_id: RunId,
    pub status: RunStatus,
    /// True once the run's closing event is in the ledger.
    pub complete: bool,
    pub entries: Vec<LedgerEntry>,
}

async fn history(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<HistoryView>, ApiError> {
    principal.require(Role::Read)?;
    let record = load(&state, &principal, &id).await?;
    let entries = state
        .ledger
        .entries_for_workflow(record.run_id.as_str())
        .await?;
    let complete = entries.iter().any(LedgerEntry::closes_its_workflow);
    Ok(Json(HistoryView {
        run_id: record.run_id,
        status: record.status,
        complete,
        entries,
    }))
}
