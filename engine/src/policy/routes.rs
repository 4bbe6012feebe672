//! `/v1/policies`: push a bundle, list bundles and bindings, bind.

use crate::http::AppState;
use crate::http::auth::{Principal, Role};
use crate::http::error::{ApiError, ApiJson, problem};
use crate::policy::store::{Binding, Bundle};
use crate::policy::{PushError, PushRequest, Pushed};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{post, put};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cogward_policy_host::builtins::TestCase;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest policy push accepted (a module, base64, plus its data and tests), in bytes.
pub const PUSH_BODY_LIMIT: usize = 16 << 20;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/policies",
            post(push)
                .get(list)
                .layer(DefaultBodyLimit::max(PUSH_BODY_LIMIT)),
        )
        .route("/v1/policies/bindings", put(bind))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushBody {
    pub name: String,
    pub wasm_base64: String,
    pub data: Value,
    #[serde(default)]
    pub tests: Vec<TestCase>,
}

async fn push(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<PushBody>,
) -> Result<(StatusCode, Json<Pushed>), ApiError> {
    principal.require(Role::Operate)?;
    // Bundles are shared by every tenant (bindings choose them per tenant).
    if !principal.is_platform() {
        return Err(problem(
            StatusCode::FORBIDDEN,
            "forbidden_tenant",
            "pushing a policy bundle needs a platform operator ('*'); bind one for your tenant",
        ));
    }
    let wasm = B64.decode(body.wasm_base64.trim()).map_err(|e| {
        problem(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("wasm_base64: {e}"),
        )
    })?;
    let req = PushRequest {
        name: body.name,
        wasm,
        data: body.data,
        tests: body.tests,
    };
    match state
        .policies
        .push(req, &principal.name, &state.ledger)
        .await
    {
        Ok(pushed) => {
            let status = if pushed.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(pushed)))
        }
        Err(PushError::Rejected(reason)) => Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "policy_rejected",
            reason,
        )),
        Err(PushError::Internal(e)) => Err(e.into()),
    }
}

#[derive(Debug, Serialize)]
pub struct PolicyList {
    pub bundles: Vec<Bundle>,
    pub bindings: Vec<Binding>,
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<PolicyList>, ApiError> {
    principal.require(Role::Read)?;
    let store = state.policies.store();
    let bindings = store
        .bindings()
        .await?
        .into_iter()
        .filter(|b| {
            principal.is_platform()
                || (!b.tenant.contains(['*', '?']) && principal.may_act_on(&b.tenant))
        })
        .collect();
    Ok(Json(PolicyList {
        bundles: store.bundles().await?,
        bindings,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindBody {
    pub tenant: String,
    #[serde(default = "any")]
    pub agent: String,
    pub kind: String,
    pub name: String,
    pub version: i64,
}

fn any() -> String {
    "*".into()
}

async fn bind(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<BindBody>,
) -> Result<Json<Binding>, ApiError> {
    principal.require(Role::Operate)?;
    // A glob binds many tenants: only a platform operator may.
    let glob = body.tenant.contains(['*', '?']);
    if glob && !principal.is_platform() {
        return Err(problem(
            StatusCode::FORBIDDEN,
            "forbidden_tenant",
            format!(
                "binding tenant pattern {:?} needs a platform operator ('*')",
                body.tenant
            ),
        ));
    }
    principal.require_tenant(&body.tenant)?;
    let binding = Binding {
        tenant: body.tenant,
        agent: body.agent,
        kind: body.kind,
        name: body.name,
        version: body.version,
        bound_by: principal.name.clone(),
        bound_at: crate::now_rfc3339(),
    };
    state
        .policies
        .bind(binding.clone(), &state.ledger)
        .await
        .map_err(|e| problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_binding", e))?;
    Ok(Json(binding))
}
