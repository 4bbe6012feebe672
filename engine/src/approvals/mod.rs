//! `/v1/approvals`: the `Approval` workflows (a run's gate, a parked tool call) — list the open
//! ones, show one (live, or its mirrored history from the ledger), approve or reject it. Every
//! channel decides through [`vote`]: the API here and at `/v1/runs/{id}/approve`, Slack and Jira
//! callbacks ([`callbacks`]).

pub mod callbacks;

use crate::audit::LedgerEntry;
use crate::http::AppState;
use crate::http::auth::{Principal, Role};
use crate::http::error::{ApiError, optional_json, problem};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use cogward_protocol::approval::{
    ApprovalRequest, Ballot, GATE_ID_PREFIX, Refusal, Vote, WORKFLOW_ID_PREFIX,
};
use cogward_protocol::audit::AuditEvent;
use cogward_protocol::spec::{ApprovalVerdict, RunId};
use cogward_workflows::{AgentRun, Approval};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use temporalio_client::errors::WorkflowUpdateError;
use temporalio_client::{
    WorkflowExecuteUpdateOptions, WorkflowListOptions, WorkflowQueryOptions, WorkflowSignalOptions,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/approvals", get(list))
        .route("/v1/approvals/{id}", get(show))
        .route("/v1/approvals/{id}/history", get(history))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/reject", post(reject))
}

/// An approval as the API shows it: its workflow id, whether it still takes decisions, and its
/// ballot (request, stage asked, votes, refused votes, result).
#[derive(Debug, Serialize, Deserialize)]
pub struct ApprovalView {
    pub approval_id: String,
    pub open: bool,
    #[serde(flatten)]
    pub ballot: Ballot,
}

/// Most open approvals listed at once.
const LIST_LIMIT: usize = 200;

async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<ApprovalView>>, ApiError> {
    principal.require(Role::Read)?;
    let client = state.client()?;
    let open: Vec<String> = client
        .list_workflows(
            "WorkflowType = 'Approval' AND ExecutionStatus = 'Running'",
            WorkflowListOptions::builder().limit(LIST_LIMIT).build(),
        )
        .map_ok(|w| w.id().to_string())
        .try_collect()
        .await
        .map_err(unavailable)?;
    let mut views = Vec::new();
    for id in open {
        if let Ok(ballot) = ballot(&state, &principal, &id).await {
            views.push(ApprovalView {
                approval_id: id,
                open: ballot.result.is_none(),
                ballot,
            });
        }
    }
    Ok(Json(views))
}

async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<ApprovalView>, ApiError> {
    principal.require(Role::Read)?;
    let ballot = ballot(&state, &principal, &id).await?;
    let open = ballot.result.is_none() && is_running(&state, &id).await?;
    Ok(Json(ApprovalView {
        approval_id: id,
        open,
        ballot,
    }))
}

/// An approval's ledger entries: its own history as mirrored, with what it implies.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApprovalHistoryView {
    pub approval_id: String,
    /// True once its closing event is in the ledger.
    pub complete: bool,
    pub entries: Vec<LedgerEntry>,
}

/// From the ledger alone (Temporal need not answer): the tenant is the one its mirrored request
/// names, and another tenant's approval is not found.
async fn history(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<ApprovalHistoryView>, ApiError> {
    principal.require(Role::Read)?;
    if !id.starts_with(WORKFLOW_ID_PREFIX) {
        return Err(not_found(&id));
    }
    let entries = state.ledger.entries_for_workflow(&id).await?;
    let tenant = entries
        .iter()
        .find(|e| e.kind == "app" && e.event_type == AuditEvent::ApprovalRequested.as_str())
        .and_then(|e| serde_json::from_str::<ApprovalRequest>(&e.body).ok())
        .map(|request| request.tenant);
    if !tenant.is_some_and(|t| principal.may_act_on(&t)) {
        return Err(not_found(&id));
    }
    let complete = entries.iter().any(LedgerEntry::closes_its_workflow);
    Ok(Json(ApprovalHistoryView {
        approval_id: id,
        complete,
        entries,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VoteBody {
    #[serde(default)]
    comment: Option<String>,
}

async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<ApprovalView>), ApiError> {
    decide(&state, &principal, &id, &body, true).await
}

async fn reject(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<ApprovalView>), ApiError> {
    decide(&state, &principal, &id, &body, false).await
}

async fn decide(
    state: &AppState,
    principal: &Principal,
    id: &str,
    body: &Bytes,
    approve: bool,
) -> Result<(StatusCode, Json<ApprovalView>), ApiError> {
    let body: VoteBody = optional_json(body)?;
    let view = vote(state, principal, id, approve, body.comment, "api").await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporal_unavailable",
        format!("could not read approvals from Temporal: {e}"),
    )
}

fn not_found(id: &str) -> ApiError {
    problem(
        StatusCode::NOT_FOUND,
        "approval_not_found",
        format!("no approval {id}"),
    )
}

/// How long a vote waits for a run to reach its gate (its admission is a local activity of at
/// most 10 s).
const GATE_WAIT: Duration = Duration::from_secs(15);

/// The approval's ballot, if it exists and `principal` may act on its tenant (another
/// tenant's approval is not found, exactly as one that does not exist).
pub(crate) async fn ballot(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> Result<Ballot, ApiError> {
    if !id.starts_with(WORKFLOW_ID_PREFIX) || id.len() > 300 {
        return Err(not_found(id));
    }
    let handle = state.client()?.get_workflow_handle::<Approval>(id);
    let query = || handle.query(Approval::state, (), WorkflowQueryOptions::default());
    let ballot = match query().await {
        Ok(ballot) => ballot,
        Err(e) if crate::temporal::is_not_found(&e) => {
            if !gate_started(state, principal, id).await? {
                return Err(not_found(id));
            }
            query().await.map_err(unavailable)?
        }
        Err(e) => return Err(unavailable(e)),
    };
    ballot
        .filter(|b| principal.may_act_on(&b.request.tenant))
        .ok_or_else(|| not_found(id))
}

/// Whether `id`, not found, is the gate of a run of `principal`'s tenants that has since asked
/// for it: a vote right after the submit asks the run (an update answered once the run has
/// started its gate or passed it) rather than retrying.
async fn gate_started(state: &AppState, principal: &Principal, id: &str) -> Result<bool, ApiError> {
    let Some(run_id) = id.strip_prefix(GATE_ID_PREFIX) else {
        return Ok(false);
    };
    let run = crate::runs::Runs(&state.db)
        .get(&RunId(run_id.to_string()))
        .await?;
    if !run.is_some_and(|r| principal.may_act_on(&r.tenant)) {
        return Ok(false);
    }
    let run = state.client()?.get_workflow_handle::<AgentRun>(run_id);
    let asked = run.execute_update(
        AgentRun::gate_asked,
        (),
        WorkflowExecuteUpdateOptions::default(),
    );
    match tokio::time::timeout(GATE_WAIT, asked).await {
        Ok(Ok(started)) => Ok(started),
        Ok(Err(WorkflowUpdateError::NotFound(_))) | Err(_) => Ok(false),
        Ok(Err(e)) => Err(unavailable(e)),
    }
}

async fn is_running(state: &AppState, id: &str) -> Result<bool, ApiError> {
    let description = state
        .client()?
        .get_workflow_handle::<Approval>(id)
        .describe(Default::default())
        .await
        .map_err(unavailable)?;
    Ok(description
        .raw_description
        .workflow_execution_info
        .as_ref()
        .is_some_and(|i| {
            i.status
            == temporalio_common::protos::temporal::api::enums::v1::WorkflowExecutionStatus::Running
                as i32
        }))
}

/// Decide approval `id` as `principal` from `channel`: the checks the workflow itself applies
/// (not the requester, a member of the group asked now, once per person, not yet decided), made
/// here first so that a refusal gets a clear answer; then the `decide` signal.
pub(crate) async fn vote(
    state: &AppState,
    principal: &Principal,
    id: &str,
    approve: bool,
    comment: Option<String>,
    channel: &str,
) -> Result<ApprovalView, ApiError> {
    principal.require(Role::Approve)?;
    let mut ballot = ballot(state, principal, id).await?;
    if let Err(why) = ballot.check(&principal.name, &principal.groups) {
        let (status, detail) = match why {
            Refusal::SelfApproval => (
                StatusCode::FORBIDDEN,
                "the requester cannot approve or reject their own request".to_string(),
            ),
            Refusal::NotInGroup => (
                StatusCode::FORBIDDEN,
                format!(
                    "{id} asks group {:?} now, and {:?} is not in it",
                    ballot.group().unwrap_or_default(),
                    principal.name
                ),
            ),
            Refusal::AlreadyVoted => (
                StatusCode::CONFLICT,
                format!("{:?} already decided on {id}", principal.name),
            ),
            Refusal::Decided => (StatusCode::CONFLICT, format!("{id} was already decided")),
        };
        return Err(problem(status, why.code(), detail));
    }
    let vote = Vote {
        approver: principal.name.clone(),
        groups: principal.groups.clone(),
        verdict: if approve {
            ApprovalVerdict::Approved
        } else {
            ApprovalVerdict::Rejected
        },
        comment,
        channel: channel.to_string(),
        at: crate::now_rfc3339(),
    };
    state
        .client()?
        .get_workflow_handle::<Approval>(id)
        .signal(
            Approval::decide,
            vote.clone(),
            WorkflowSignalOptions::default(),
        )
        .await
        .map_err(|e| {
            if crate::temporal::is_not_found(&e) || e.to_string().contains("completed") {
                problem(
                    StatusCode::CONFLICT,
                    "approval_closed",
                    format!("{id} no longer takes decisions (it expired or its run ended)"),
                )
            } else {
                unavailable(e)
            }
        })?;
    tracing::info!(approval = id, approver = %principal.name, approve, channel, "approval decision sent");
    let open = ballot.vote(vote).is_none();
    Ok(ApprovalView {
        approval_id: id.to_string(),
        open,
        ballot,
    })
}
