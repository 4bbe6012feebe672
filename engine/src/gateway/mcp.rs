//! The MCP gateway, agent side: Streamable HTTP at `/mcp` (JSON-RPC 2.0, protocol versions
//! 2025-11-25, 2025-06-18 and 2025-03-26, `Mcp-Session-Id` sessions kept in the database).
//!
//! - `initialize` opens a session bound to the run whose credential made it; every later request
//!   needs the session, and the same run's credential.
//! - `tools/list` is the union of the tenant's upstream servers' tools, named
//!   `<server>_<tool>`, filtered by the tool-access policy (action `list`).
//! - `tools/call` is decided by the tool-access policy (action `call`): `permit` forwards it
//!   upstream ([`super::upstream`]); `deny` answers a tool result with `isError: true` naming the
//!   reasons (agents show it to their model, which can adapt); `escalate` parks the call: an
//!   update to the run's workflow (`ask_tool_approval`) starts the call's `Approval` child and
//!   answers once it exists, the gateway waits on the child's result (a long poll), a member of
//!   the policy's group approves or rejects it (API, CLI, Slack, Jira), and the call is then
//!   forwarded or refused. While parked the answer is an SSE stream carrying progress
//!   notifications (when the client sent a `progressToken`). A retried call (same run, tool and
//!   arguments) re-attaches to its parked row, so a gateway restart loses no decision.
//! - Prompts, resources, completion and `logging/setLevel`: [`features`], decided and carried
//!   out like tool calls.
//! - A forwarded call whose client takes `text/event-stream` is answered as a stream: the
//!   server's notifications for it (progress by the client's own token, [`super::rpc::Interim`];
//!   messages on the call's own HTTP stream), then its response.
//! - Every call is recorded (ledger and journal) before its answer is released.
//!
//! Requests that cannot be routed get a JSON-RPC error with an HTTP status: malformed JSON
//! (400, -32700), not a JSON-RPC request (400, -32600), no session (400), unknown session (404),
//! no or bad run credential (401), over 1 MiB (413).

mod batch;
mod features;

use super::config::McpServer;
use super::json::raw as to_raw;
use super::obligations::{self, Site};
use super::rpc::{CANCELLED, Interim, ServerRequest};
use super::upstream::{Caller, UpstreamError};
use super::{AuthFailure, CallDecision, CallRecord, Gateway, RunIdentity, sha256_hex};
use crate::audit::canonical_string;
use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cogward_policy_abi::{Effect, Request, kinds};
use cogward_protocol::approval::{ApprovalOutcome, ApprovalResult, tool_call_workflow_id};
use cogward_protocol::spec::{
    ApprovalDecision, ApprovalVerdict, ToolApprovalAsked, ToolApprovalRequest,
};
use cogward_workflows::{AgentRun, Approval};
use features::Listing;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use temporalio_client::errors::WorkflowUpdateError;
use temporalio_client::{WorkflowExecuteUpdateOptions, WorkflowGetResultOptions};
use tokio::sync::{mpsc, oneshot, watch};

/// Largest JSON-RPC message accepted.
pub const MCP_BODY_LIMIT: usize = 1024 * 1024;
/// Protocol versions spoken, newest first.
pub const PROTOCOL_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];
const SESSION_HEADER: &str = "mcp-session-id";
/// How often a parked call checks its client is still there, and sends it progress.
const CLIENT_CHECK: Duration = Duration::from_millis(250);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

pub fn router() -> Router<Arc<Gateway>> {
    Router::new()
        .route(
            "/mcp",
            post(handle_post).get(handle_get).delete(handle_delete),
        )
        .layer(DefaultBodyLimit::max(MCP_BODY_LIMIT))
}

/// A JSON-RPC error answer, with the HTTP status it travels with.
struct RpcError {
    status: StatusCode,
    id: Value,
    code: i64,
    message: String,
}

fn rpc_error(status: StatusCode, id: &Value, code: i64, message: impl Into<String>) -> RpcError {
    RpcError {
        status,
        id: id.clone(),
        code,
        message: message.into(),
    }
}

impl RpcError {
    /// The JSON-RPC error message itself.
    fn body(&self) -> Value {
        json!({"jsonrpc": "2.0", "id": self.id,
               "error": {"code": self.code, "message": self.message}})
    }
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

fn rpc_result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A JSON-RPC response carrying `result` exactly as it is (a server's result, unchanged).
fn rpc_result_raw(id: &Value, result: &RawValue) -> Box<RawValue> {
    let text = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{}}}"#, result.get());
    RawValue::from_string(text).unwrap_or_else(|_| to_raw(&json!({"jsonrpc": "2.0", "id": id})))
}

fn authenticate_error(e: AuthFailure) -> RpcError {
    match e {
        AuthFailure::Credential(e) => rpc_error(
            StatusCode::UNAUTHORIZED,
            &Value::Null,
            -32001,
            format!("cogward: {e}"),
        ),
        AuthFailure::Internal(e) => {
            tracing::error!(error = %format!("{e:#}"), "MCP request refused: credential check failed");
            rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &Value::Null,
                -32603,
                "cogward: internal error",
            )
        }
    }
}

/// A request from a browser origin not allowed (DNS rebinding: a page the agent's user opened
/// reaching the gateway on loopback) is refused before anything else.
fn origin_refused(gw: &Gateway, headers: &HeaderMap) -> Option<Response> {
    let origin = headers.get(axum::http::header::ORIGIN)?;
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    let allowed = origin
        .to_str()
        .is_ok_and(|o| origin_allowed(&gw.config.mcp_allowed_origins, o, host));
    (!allowed).then(|| {
        rpc_error(
            StatusCode::FORBIDDEN,
            &Value::Null,
            -32600,
            "cogward: requests from this Origin are not allowed",
        )
        .into_response()
    })
}

/// Whether a request carrying `Origin: origin` (and `Host: host`) may reach MCP: an origin
/// listed in `mcp_allowed_origins`, or a loopback page of this very endpoint — the Origin's
/// authority is the Host's, and both are loopback. A rebinding page's requests carry its own
/// name in `Host`, and another local origin (another port, `localhost` for `127.0.0.1`) differs,
/// so both are refused.
fn origin_allowed(listed: &[String], origin: &str, host: Option<&str>) -> bool {
    if listed.iter().any(|a| a == origin) {
        return true;
    }
    let Some(host) = host else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    /// (host, port) of an authority, with the scheme's port when it names none.
    fn split<'a>(authority: &'a str, default_port: &'a str) -> Option<(&'a str, &'a str)> {
        if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
            return None;
        }
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') == h.ends_with(']')) => {
                p.bytes().all(|b| b.is_ascii_digit()).then_some((h, p))
            }
            _ => Some((authority, default_port)),
        }
    }
    fn loopback(host: &str) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
    match (split(authority, default_port), split(host, default_port)) {
        (Some((oh, op)), Some((hh, hp))) => {
            loopback(oh) && loopback(hh) && oh.eq_ignore_ascii_case(hh) && op == hp
        }
        _ => false,
    }
}

/// The agent session's standalone stream: what its session-scoped servers send outside any
/// call (resource updates, log messages), and an SSE comment every [`KEEPALIVE`] so that idle
/// connections stay open.
async fn handle_get(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Some(refused) = origin_refused(&gw, &headers) {
        return refused;
    }
    let run = match gw.authenticate(&headers).await {
        Ok(r) => r,
        Err(e) => return authenticate_error(e).into_response(),
    };
    let takes_stream = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !takes_stream {
        return rpc_error(
            StatusCode::NOT_ACCEPTABLE,
            &Value::Null,
            -32600,
            "cogward: GET /mcp is a stream: Accept: text/event-stream",
        )
        .into_response();
    }
    let session = match session(&gw, &headers, &run, &Value::Null).await {
        Ok((id, _)) => id,
        Err(e) => return e.into_response(),
    };
    let mut notes = gw.upstreams.attach_stream(&session);
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                note = notes.recv() => match note {
                    Some(note) => AgentStream::event(&note),
                    None => break,
                },
                _ = tokio::time::sleep(KEEPALIVE) => Bytes::from_static(b": keepalive\n\n"),
            };
            if tx.send(Ok(event)).await.is_err() {
                break;
            }
        }
    });
    crate::sse::event_stream(rx)
}

/// How often an idle standalone stream gets an SSE comment.
const KEEPALIVE: Duration = Duration::from_secs(15);

async fn handle_delete(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Some(refused) = origin_refused(&gw, &headers) {
        return refused;
    }
    let run = match gw.authenticate(&headers).await {
        Ok(r) => r,
        Err(e) => return authenticate_error(e).into_response(),
    };
    match session(&gw, &headers, &run, &Value::Null).await {
        Ok((id, _)) => {
            let _ = sqlx::query("DELETE FROM mcp_sessions WHERE session_id = $1")
                .bind(&id)
                .execute(&gw.db.pool)
                .await;
            if let Ok(mut s) = gw.sessions.lock() {
                s.remove(&id);
            }
            gw.upstreams.close_session(&id);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn handle_post(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(refused) = origin_refused(&gw, &headers) {
        return refused;
    }
    match dispatch(&gw, &headers, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(
    gw: &Arc<Gateway>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, RpcError> {
    let run = gw.authenticate(headers).await.map_err(authenticate_error)?;
    let body = body.map_err(|e| {
        rpc_error(
            e.status(),
            &Value::Null,
            -32600,
            format!("cogward: {}", e.body_text()),
        )
    })?;
    let message: Value = super::json::parse_strict(&body).map_err(|e| {
        rpc_error(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            -32700,
            format!("cogward: parse error: {e}"),
        )
    })?;
    if message.is_array() {
        return batch::dispatch(gw, headers, &run, &body).await;
    }
    one(gw, headers, &run, &message, &body, false).await
}

/// Answer one message (`body` as the agent wrote it, `message` parsed), alone or in a batch.
async fn one(
    gw: &Arc<Gateway>,
    headers: &HeaderMap,
    run: &RunIdentity,
    message: &Value,
    body: &[u8],
    in_batch: bool,
) -> Result<Response, RpcError> {
    let Some(obj) = message.as_object() else {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            &Value::Null,
            -32600,
            "cogward: a message is one JSON-RPC object, or on MCP 2025-03-26 an array of them",
        ));
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0")
        || !(id.is_null() || id.is_string() || id.is_i64() || id.is_u64())
    {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            &id,
            -32600,
            "cogward: not a JSON-RPC 2.0 message",
        ));
    }
    let Some(method) = obj.get("method").and_then(Value::as_str) else {
        // The agent's answer to a server request relayed to it (only on the session it was
        // asked on, of its own run), else a response to a request we never sent, or garbage:
        // accepted, and otherwise ignored.
        let session_id = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok());
        if let Some(relay) = id.as_str()
            && let Ok(mut relays) = gw.relays.lock()
            && relays
                .get(relay)
                .is_some_and(|(r, s, _)| *r == run.run_id && Some(s.as_str()) == session_id)
            && let Some((_, _, answer)) = relays.remove(relay)
            && let Ok(raw) = RawValue::from_string(String::from_utf8_lossy(body).into_owned())
        {
            // As the agent wrote it.
            let _ = answer.send(raw);
        }
        return Ok(StatusCode::ACCEPTED.into_response());
    };
    if !obj.contains_key("id") {
        // Notifications (initialized, ...): nothing to answer; a cancellation is for one of
        // the session's own requests.
        if method == "notifications/cancelled"
            && let Some(params) = obj.get("params")
        {
            let (session, _) = session(gw, headers, run, &id).await?;
            cancel_request(gw, &session, params);
        }
        // The agent's roots changed: its own upstream sessions hear it.
        if method == "notifications/roots/list_changed" {
            let (session, _) = session(gw, headers, run, &id).await?;
            gw.upstreams.notify_session(&session, method).await;
        }
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    let params = obj.get("params").cloned().unwrap_or(Value::Null);
    // A forwarded request is answered as a stream (its notifications, then its response) when
    // the client takes one.
    let sse = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if method == "initialize" {
        if in_batch {
            return Err(rpc_error(
                StatusCode::BAD_REQUEST,
                &id,
                -32600,
                "cogward: initialize cannot be part of a batch",
            ));
        }
        return initialize(gw, run, &id, &params).await;
    }
    let (session, info) = session(gw, headers, run, &id).await?;
    let caller = Caller {
        run_id: run.run_id.clone(),
        session: Some(session.clone()),
        capabilities: info.capabilities,
        log_level: info.log_level,
    };
    if let Some(v) = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        && !PROTOCOL_VERSIONS.contains(&v)
    {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            &id,
            -32600,
            format!(
                "cogward: unsupported MCP-Protocol-Version {v:?}; supported: {}",
                PROTOCOL_VERSIONS.join(", ")
            ),
        ));
    }
    let req = Req {
        gw,
        run,
        id: &id,
        params: &params,
        body,
        sse,
        session: &session,
        caller: &caller,
    };
    let answer = match method {
        "ping" => rpc_result(&id, json!({})),
        "tools/list" => rpc_result(
            &id,
            json!({"tools": features::listing(gw, run, &caller, Listing::TOOLS).await}),
        ),
        "tools/call" => return call_tool(&req).await,
        other => {
            if let Some(answer) = features::dispatch(&req, other).await {
                return answer;
            }
            return Ok(rpc_error(
                StatusCode::OK,
                &id,
                -32601,
                format!("Method not found: {other}"),
            )
            .into_response());
        }
    };
    Ok(reply(sse, &to_raw(&answer)))
}

/// An answer of ours: JSON, or for a client that takes streams a stream of that one message
/// (as the servers behind the gateway answer).
fn reply(sse: bool, message: &RawValue) -> Response {
    if !sse {
        return axum::Json(message).into_response();
    }
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Ok(AgentStream::event(message)));
    crate::sse::event_stream(rx)
}

async fn initialize(
    gw: &Gateway,
    run: &RunIdentity,
    id: &Value,
    params: &Value,
) -> Result<Response, RpcError> {
    let asked = params
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let version = if PROTOCOL_VERSIONS.contains(&asked) {
        asked
    } else {
        PROTOCOL_VERSIONS[0]
    };
    let client = params
        .get("clientInfo")
        .map(|c| {
            format!(
                "{} {}",
                c["name"].as_str().unwrap_or("?"),
                c["version"].as_str().unwrap_or("?")
            )
        })
        .unwrap_or_default();
    let session_id = uuid::Uuid::new_v4().simple().to_string();
    let capabilities = params
        .get("capabilities")
        .filter(|c| c.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    sqlx::query(
        "INSERT INTO mcp_sessions (session_id, run_id, protocol_version, client, created_at, client_capabilities) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&session_id)
    .bind(&run.run_id)
    .bind(version)
    .bind(client.chars().take(200).collect::<String>())
    .bind(crate::now_rfc3339())
    .bind(capabilities.to_string())
    .execute(&gw.db.pool)
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "opening an MCP session");
        rpc_error(StatusCode::SERVICE_UNAVAILABLE, id, -32603, "cogward: could not open a session")
    })?;
    if let Ok(mut s) = gw.sessions.lock() {
        let info = SessionInfo {
            run_id: run.run_id.clone(),
            capabilities,
            protocol_version: version.to_string(),
            log_level: None,
        };
        s.insert(session_id.clone(), info);
    }
    let result = json!({
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": false}, "prompts": {"listChanged": false},
                         "resources": {"subscribe": true, "listChanged": false},
                         "completions": {}, "logging": {}},
        "serverInfo": {"name": "cogward-gateway", "version": env!("CARGO_PKG_VERSION")},
        "instructions": "Tools of this run, governed by cogward: every call is decided by policy and recorded.",
    });
    let mut resp = axum::Json(rpc_result(id, result)).into_response();
    if let Ok(v) = HeaderValue::from_str(&session_id) {
        resp.headers_mut().insert(SESSION_HEADER, v);
    }
    Ok(resp)
}

/// A server request relayed to an agent: the agent's run and session, and where its answer (the
/// agent's whole message, as written) goes.
pub type PendingRelay = (String, String, oneshot::Sender<Box<RawValue>>);

/// Fires an agent request's cancellation (with the agent's reason, or null).
pub type CancelSender = watch::Sender<Option<Value>>;

/// An agent request the agent may cancel (`notifications/cancelled` on its session, by the
/// request's id): registered while the job that carries it out lives.
struct Cancellable {
    gw: Arc<Gateway>,
    key: (String, String),
    rx: watch::Receiver<Option<Value>>,
}

impl Cancellable {
    fn register(gw: &Arc<Gateway>, session: &str, id: &Value) -> Option<Cancellable> {
        if id.is_null() {
            return None;
        }
        let key = (session.to_string(), id.to_string());
        let (tx, rx) = watch::channel(None);
        gw.cancels.lock().ok()?.insert(key.clone(), tx);
        Some(Cancellable {
            gw: gw.clone(),
            key,
            rx,
        })
    }

    fn is_cancelled(&self) -> bool {
        self.rx.borrow().is_some()
    }
}

impl Drop for Cancellable {
    fn drop(&mut self) {
        if let Ok(mut cancels) = self.gw.cancels.lock()
            && cancels
                .get(&self.key)
                .is_some_and(|tx| tx.subscribe().same_channel(&self.rx))
        {
            cancels.remove(&self.key);
        }
    }
}

/// The agent cancels its request `params.requestId` on `session`: the request's job, if it is
/// still in flight, is told.
fn cancel_request(gw: &Gateway, session: &str, params: &Value) {
    let key = (session.to_string(), params["requestId"].to_string());
    if let Ok(cancels) = gw.cancels.lock()
        && let Some(tx) = cancels.get(&key)
    {
        let reason = params.get("reason").cloned().unwrap_or(Value::Null);
        tx.send_replace(Some(reason));
    }
}

/// An agent's MCP session: its run, and what its client declared at `initialize`.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub run_id: String,
    pub capabilities: Value,
    /// The protocol version negotiated at `initialize`.
    pub protocol_version: String,
    /// The level it asked for with `logging/setLevel`.
    pub log_level: Option<String>,
}

/// The request's session (its id, and what was negotiated): it must exist and belong to the
/// credential's run.
async fn session(
    gw: &Gateway,
    headers: &HeaderMap,
    run: &RunIdentity,
    id: &Value,
) -> Result<(String, SessionInfo), RpcError> {
    let Some(session_id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return Err(rpc_error(
            StatusCode::BAD_REQUEST,
            id,
            -32600,
            "cogward: Mcp-Session-Id is required; initialize first",
        ));
    };
    let cached = gw
        .sessions
        .lock()
        .ok()
        .and_then(|s| s.get(session_id).cloned());
    let owner = match cached {
        Some(owner) => Some(owner),
        None => {
            let row: Option<(String, String, String, Option<String>)> = sqlx::query_as(
                "SELECT run_id, client_capabilities, protocol_version, log_level FROM mcp_sessions WHERE session_id = $1",
            )
            .bind(session_id)
            .fetch_optional(&gw.db.pool)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "reading an MCP session");
                rpc_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    id,
                    -32603,
                    "cogward: internal error",
                )
            })?;
            let owner =
                row.map(
                    |(run_id, capabilities, protocol_version, log_level)| SessionInfo {
                        run_id,
                        capabilities: serde_json::from_str(&capabilities)
                            .unwrap_or_else(|_| json!({})),
                        protocol_version,
                        log_level,
                    },
                );
            if let (Some(o), Ok(mut s)) = (&owner, gw.sessions.lock()) {
                s.insert(session_id.to_string(), o.clone());
            }
            owner
        }
    };
    match owner {
        Some(o) if o.run_id == run.run_id => Ok((session_id.to_string(), o)),
        _ => Err(rpc_error(
            StatusCode::NOT_FOUND,
            id,
            -32001,
            "cogward: unknown session; initialize a new one",
        )),
    }
}

/// A tool-access request; a `call` carries the call's arguments (policies may decide on them).
fn tool_request(
    run: &RunIdentity,
    action: &str,
    server: &str,
    tool: &str,
    arguments: Option<&Value>,
) -> Request {
    let mut resource = json!({"server": server, "tool": tool});
    if let Some(args) = arguments {
        resource["arguments"] = args.clone();
    }
    run.request(
        kinds::TOOL_CALL,
        action,
        resource,
        json!({"run_id": run.run_id}),
    )
}

/// The servers of the run's tenant that the run may use.
fn servers<'a>(gw: &'a Gateway, run: &'a RunIdentity) -> impl Iterator<Item = &'a McpServer> {
    gw.config
        .mcp_servers_for(&run.tenant)
        .filter(|s| run.may_use_server(&s.name))
}

/// The server and upstream tool (or prompt) an exposed name stands for, if the run may use
/// that server.
fn resolve<'a>(
    gw: &'a Gateway,
    run: &'a RunIdentity,
    name: &'a str,
) -> Option<(&'a McpServer, &'a str)> {
    let (server, tool) = name.split_once('_')?;
    let server = servers(gw, run).find(|s| s.name == server)?;
    (!tool.is_empty()).then_some((server, tool))
}

/// A request's params as the agent wrote them, each top-level member raw.
fn raw_params(body: &[u8]) -> super::json::Members {
    #[derive(serde::Deserialize)]
    struct Message {
        #[serde(default)]
        params: super::json::Members,
    }
    serde_json::from_slice::<Message>(body)
        .map(|m| m.params)
        .unwrap_or_default()
}

/// The decision on a call, machine-readable (a refusal's `_meta` or error `data`).
fn decision_meta(call: &CallRecord) -> Value {
    json!({"cogward/decision": call.decision.as_str(), "cogward/call_id": call.call_id,
           "cogward/outcome": call.outcome})
}

/// A tool result of our own (refusals), with the decision machine-readable in `_meta`.
fn refusal(text: String, call: &CallRecord) -> Answer {
    Answer::Result(to_raw(
        &json!({"content": [{"type": "text", "text": text}], "isError": true,
                "_meta": decision_meta(call)}),
    ))
}

/// The JSON-RPC error code of a request the gateway refused (policy, budget, approval) on a
/// method other than `tools/call` (whose refusals are tool results the model can read).
const REFUSED: i64 = -32003;

/// A request being answered: who asks, and what they said.
#[derive(Clone, Copy)]
struct Req<'a> {
    gw: &'a Arc<Gateway>,
    run: &'a RunIdentity,
    id: &'a Value,
    params: &'a Value,
    /// The message as the agent wrote it.
    body: &'a [u8],
    /// The client takes a stream as the answer.
    sse: bool,
    /// The agent's MCP session.
    session: &'a str,
    /// Whom the request goes upstream for: the run, the session, what its client declared.
    caller: &'a Caller,
}

async fn call_tool(r: &Req<'_>) -> Result<Response, RpcError> {
    let (gw, run, id, params, body) = (r.gw.clone(), r.run, r.id, r.params, r.body);
    let started = Instant::now();
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Err(rpc_error(
            StatusCode::OK,
            id,
            -32602,
            "Invalid params: `name` is required",
        ));
    };
    let arguments = match params.get("arguments") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => {
            return Err(rpc_error(
                StatusCode::OK,
                id,
                -32602,
                "Invalid params: `arguments` must be an object",
            ));
        }
    };
    let Some((server, tool)) = resolve(&gw, run, name) else {
        return Err(rpc_error(
            StatusCode::OK,
            id,
            -32602,
            format!("Unknown tool: {name}"),
        ));
    };
    let known = match gw.upstreams.tools(server, r.caller).await {
        Ok(tools) => tools
            .iter()
            .any(|t| t.get("name").and_then(Value::as_str) == Some(tool)),
        // The server is down: let the call through to the decision and the breaker's answer.
        Err(_) => true,
    };
    if !known {
        return Err(rpc_error(
            StatusCode::OK,
            id,
            -32602,
            format!("Unknown tool: {name}"),
        ));
    }
    let args_value = Value::Object(arguments.clone().unwrap_or_default());
    let full_name = format!("{}.{tool}", server.name);
    let decision = decide(
        &gw,
        id,
        tool_request(run, "call", &server.name, tool, Some(&args_value)),
    )
    .await?;
    let call = CallRecord::new(
        "tool",
        run,
        full_name,
        sha256_hex(canonical_string(&args_value).as_bytes()),
        json!({"server": server.name, "tool": tool, "name": name}),
    );
    // The params as the agent wrote them (the arguments are the object the policy decided: the
    // strict parser refused a key given twice), but for the tool's name on its server.
    let mut upstream_params = raw_params(body);
    upstream_params.insert("name".into(), to_raw(&json!(tool)));
    if arguments.is_none() {
        upstream_params.remove("arguments");
    }
    let params = serde_json::value::to_raw_value(&upstream_params)
        .map_err(|e| rpc_error(StatusCode::OK, id, -32602, format!("Invalid params: {e}")))?;
    let job = CallJob::new(r, server, "tools/call", params, started);
    carry_out(job, call, decision).await
}

/// Decide a request; a failure to decide as the JSON-RPC answer.
async fn decide(
    gw: &Gateway,
    id: &Value,
    request: Request,
) -> Result<super::DecisionRecord, RpcError> {
    gw.policies.decide_request(request).await.map_err(|e| {
        tracing::error!(error = %format!("{e:#}"), "deciding an MCP request");
        rpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            id,
            -32603,
            "cogward: the call could not be decided",
        )
    })
}

/// The client's `progressToken` in a request's params, if it sent one.
fn params_progress_token(params: &Value) -> Option<Value> {
    params
        .get("_meta")
        .and_then(|m| m.get("progressToken"))
        .cloned()
}

/// Carry out a decided use (a tool call, a prompt get, a resource read, a completion): a
/// permit is recorded, forwarded and its outcome recorded (a tool call also against the run's
/// budget); a deny is recorded and refused; an escalation parks until a human decides.
async fn carry_out(
    job: CallJob,
    mut call: CallRecord,
    decision: super::DecisionRecord,
) -> Result<Response, RpcError> {
    let gw = job.gw.clone();
    let run = call.run.clone();
    let id = job.id.clone();
    call.reasons = decision.decision.reasons.clone();
    let planned = obligations::plan(
        [&decision.decision],
        Site::ToolCall,
        gw.config.max_throttle_ms,
    );
    call.decisions.push(decision);
    let (effect, group) = match planned {
        Ok(plan) => {
            call.throttle_ms = plan.throttle_ms;
            call.redact = plan.redact;
            (plan.effect, plan.approval_group)
        }
        Err(why) => {
            call.reasons.push(why);
            (Effect::Deny, None)
        }
    };
    match effect {
        Effect::Permit => {
            // A tool call counts against the run's budget (its call ceiling) when one is
            // bound; then deciding it and recording the intent are one step per tenant.
            let undecided = |e: anyhow::Error| {
                tracing::error!(error = %format!("{e:#}"), "deciding a tool call's budget");
                rpc_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &id,
                    -32603,
                    "cogward: the call could not be decided",
                )
            };
            let budgeted = job.method == "tools/call"
                && gw
                    .policies
                    .is_bound(&run.tenant, &run.agent, kinds::BUDGET)
                    .await
                    .map_err(undecided)?;
            let admission = match budgeted {
                true => Some(gw.admission_lock(&run.tenant).await),
                false => None,
            };
            if budgeted
                && let Some(refused) = over_budget(&gw, &run, &mut call).await.map_err(undecided)?
            {
                drop(admission);
                let answer = job.refuse(refused, &call);
                return Ok(reply(job.sse, &job.finish(&mut call, answer).await?));
            }
            call.decision = CallDecision::Permit;
            job.record_intent(&mut call).await?;
            drop(admission);
            // From here the call runs to its recorded outcome whether or not the client stays.
            if job.sse {
                let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                let agent = AgentStream {
                    tx,
                    progress_token: job.progress_token.clone(),
                    offset: 0,
                };
                tokio::spawn(async move {
                    let result = job.forward(&mut call, Some(&agent)).await;
                    if agent.tx.is_closed() && !job.cancelled() {
                        call.outcome = "client_gone".into();
                    }
                    let message = match job.finish(&mut call, result).await {
                        Ok(m) => m,
                        Err(e) => to_raw(&e.body()),
                    };
                    // A cancelled request gets no response: its stream just ends.
                    if !job.cancelled() {
                        agent.send(&message).await;
                    }
                });
                return Ok(crate::sse::event_stream(rx));
            }
            let (reply, answer) = oneshot::channel();
            tokio::spawn(async move {
                let result = job.forward(&mut call, None).await;
                if reply.is_closed() && !job.cancelled() {
                    call.outcome = "client_gone".into();
                }
                let _ = reply.send(job.finish(&mut call, result).await);
            });
            let answer = answer.await.map_err(|_| {
                rpc_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &id,
                    -32603,
                    "cogward: the call's task ended without an answer",
                )
            })??;
            Ok(axum::Json(answer).into_response())
        }
        Effect::Deny => {
            let text = format!(
                "cogward: call to {} denied by policy: {}",
                call.target,
                call.reasons.join("; ")
            );
            let answer = job.refuse(text, &call);
            Ok(reply(job.sse, &job.finish(&mut call, answer).await?))
        }
        Effect::Escalate => {
            call.decision = CallDecision::Escalate;
            Ok(park(gw.clone(), job, call, group))
        }
    }
}

/// The bound budget's refusal of a permitted tool call (its text), if the call does not fit
/// (the run's call ceiling); the decision joins the call's.
async fn over_budget(
    gw: &Gateway,
    run: &RunIdentity,
    call: &mut CallRecord,
) -> anyhow::Result<Option<String>> {
    let resource = json!({"run": run.run_id, "tool": call.target});
    let budget = gw.decide_budget(run, resource, 0, 0).await?;
    let planned = obligations::plan(
        [&budget.decision],
        Site::ToolCall,
        gw.config.max_throttle_ms,
    );
    let reasons = budget.decision.reasons.clone();
    call.decisions.push(budget);
    match planned {
        Ok(plan) if plan.effect == Effect::Permit => {
            call.throttle_ms = call.throttle_ms.max(plan.throttle_ms);
            Ok(None)
        }
        Ok(_) => {
            call.reasons.extend(reasons.iter().cloned());
            Ok(Some(format!(
                "cogward: call to {} refused by the budget: {}",
                call.target,
                reasons.join("; ")
            )))
        }
        Err(why) => {
            call.reasons.push(why.clone());
            Ok(Some(format!(
                "cogward: call to {} refused: {why}",
                call.target
            )))
        }
    }
}

/// What a forwarded request answers with: a result, or a JSON-RPC error object.
enum Answer {
    Result(Box<RawValue>),
    Error(Value),
}

/// A decided call on its way: forward it, record it, answer it.
struct CallJob {
    gw: Arc<Gateway>,
    server: McpServer,
    /// The upstream request: `tools/call`, `prompts/get`, `resources/read`, ...
    method: &'static str,
    /// Its params, as the upstream gets them.
    params: Box<RawValue>,
    id: Value,
    started: Instant,
    /// Answer as a stream: the request's notifications, then its response.
    sse: bool,
    /// The agent's `progressToken`, if it sent one.
    progress_token: Option<Value>,
    /// Whom it goes upstream for; what the agent's client declared (which server requests it
    /// can be relayed).
    caller: Caller,
    /// The agent's cancellation of the request, if it sends one.
    cancel: Option<Cancellable>,
}

/// How many messages an agent's stream holds before the call waits for the agent to read.
const STREAM_BUFFER: usize = 64;
/// Server requests of one call waiting to be relayed; more are answered with an error.
const RELAYS_PER_CALL: usize = 4;

/// An agent's SSE answer in the making.
struct AgentStream {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    /// The agent's own progress token, which its notifications carry.
    progress_token: Option<Value>,
    /// Added to the upstream's progress (and total): the gateway's own progress came first
    /// (a parked call), and progress must increase.
    offset: u64,
}

impl AgentStream {
    /// Send one message; false when the agent is gone.
    async fn send(&self, message: &RawValue) -> bool {
        self.tx.send(Ok(Self::event(message))).await.is_ok()
    }

    /// Send an interim message if the stream has room: a call never waits for its agent to
    /// read (its outcome is recorded whatever the agent does); false when it was not sent.
    fn offer(&self, message: &RawValue) -> bool {
        self.tx.try_send(Ok(Self::event(message))).is_ok()
    }

    fn event(message: &RawValue) -> Bytes {
        Bytes::from(format!("event: message\ndata: {}\n\n", message.get()))
    }

    /// An upstream notification as the agent gets it (its own token, the offset applied, a
    /// log message or progress text withheld from a call whose result is redacted), or `None`.
    fn relayed(&self, note: &RawValue, redacted: bool) -> Option<Box<RawValue>> {
        /// As far as choosing needs: only progress is edited.
        #[derive(serde::Deserialize)]
        struct Note {
            method: String,
        }
        let method = serde_json::from_str::<Note>(note.get()).ok()?.method;
        match method.as_str() {
            "notifications/progress" => {
                let mut v: Value = serde_json::from_str(note.get()).ok()?;
                let params = v.get_mut("params")?.as_object_mut()?;
                params.insert("progressToken".into(), self.progress_token.clone()?);
                if redacted {
                    params.remove("message");
                }
                if self.offset > 0 {
                    for key in ["progress", "total"] {
                        if let Some(n) = params.get(key).and_then(Value::as_f64) {
                            params.insert(key.into(), json!(n + self.offset as f64));
                        }
                    }
                }
                Some(to_raw(&v))
            }
            "notifications/message" if redacted => None,
            // The server's cancellations are of its own requests, under its ids: mapped to the
            // agent's by the relay that holds them, never passed on as they are.
            "notifications/cancelled" => None,
            _ => Some(note.to_owned()),
        }
    }
}

impl CallJob {
    /// The job of request `r`: `method` with `params` to `server`.
    fn new(
        r: &Req<'_>,
        server: &McpServer,
        method: &'static str,
        params: Box<RawValue>,
        started: Instant,
    ) -> CallJob {
        CallJob {
            gw: r.gw.clone(),
            server: server.clone(),
            method,
            params,
            id: r.id.clone(),
            started,
            sse: r.sse,
            progress_token: params_progress_token(r.params),
            caller: r.caller.clone(),
            cancel: Cancellable::register(r.gw, r.session, r.id),
        }
    }

    /// Has the agent cancelled the request?
    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(Cancellable::is_cancelled)
    }

    /// Record the call's intent; an error (nothing may be forwarded) as the JSON-RPC answer.
    async fn record_intent(&self, call: &mut CallRecord) -> Result<(), RpcError> {
        self.gw.record_intent(call).await.map_err(|e| {
            tracing::error!(error = %format!("{e:#}"), "MCP call refused: its intent could not be recorded");
            rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &self.id,
                -32603,
                "cogward: the call could not be recorded in the audit ledger, so it was not forwarded",
            )
        })
    }

    /// The gateway's refusal: for a tool, a tool result the model reads (and can adapt to);
    /// otherwise a JSON-RPC error ([`REFUSED`]).
    fn refuse(&self, text: String, call: &CallRecord) -> Answer {
        match self.method {
            "tools/call" => refusal(text, call),
            _ => Answer::Error(
                json!({"code": REFUSED, "message": text, "data": decision_meta(call)}),
            ),
        }
    }

    /// Forward the call (after the throttle its decision asks for), its notifications to the
    /// agent's stream meanwhile; the result with the redactions applied, the server's own
    /// error, or our refusal when the upstream failed.
    async fn forward(&self, call: &mut CallRecord, agent: Option<&AgentStream>) -> Answer {
        if call.throttle_ms > 0 {
            tokio::time::sleep(Duration::from_millis(call.throttle_ms)).await;
        }
        let started = Instant::now();
        // A request carrying a progress token claims it on the upstream connection (another
        // run's progress never reaches it), streamed or not.
        let (sink, mut notes) = mpsc::channel::<Box<RawValue>>(STREAM_BUFFER);
        let (requests, mut server_requests) = mpsc::channel::<ServerRequest>(RELAYS_PER_CALL);
        let interim = Some(Interim {
            sink,
            progress_token: self.progress_token.as_ref().map(Value::to_string),
            requests: agent.is_some().then_some(requests),
            cancel: self.cancel.as_ref().map(|c| c.rx.clone()),
        });
        let request = self.gw.upstreams.request(
            &self.server,
            &self.caller,
            self.method,
            self.params.clone(),
            interim,
        );
        let redacted = !call.redact.is_empty();
        let (run, target) = (&call.run, call.target.as_str());
        let relay = async {
            let mut relayed = 0u64;
            loop {
                tokio::select! {
                    note = notes.recv() => {
                        let Some(note) = note else { break };
                        if let Some(agent) = agent
                            && let Some(message) = agent.relayed(&note, redacted)
                            && agent.offer(&message)
                        {
                            relayed += 1;
                        }
                    }
                    Some(r) = server_requests.recv() => {
                        if let Some(agent) = agent {
                            self.relay(run, target, agent, r).await;
                        }
                    }
                }
            }
            relayed
        };
        let (answer, relayed) = tokio::join!(request, relay);
        if relayed > 0 {
            call.detail["notifications"] = json!(relayed);
        }
        call.upstream_latency = started.elapsed();
        if self.cancelled() {
            // The server has been told; whatever it did is in its answer no more.
            call.outcome = "cancelled".into();
            return Answer::Error(
                json!({"code": CANCELLED, "message": "cogward: the request was cancelled"}),
            );
        }
        match answer {
            Ok(result) => {
                call.outcome = "ok".into();
                let mut v: Value = serde_json::from_str(result.get()).unwrap_or(Value::Null);
                if self.method == "tools/call" {
                    call.detail["is_error"] =
                        v.get("isError").cloned().unwrap_or(Value::Bool(false));
                }
                if call.redact.is_empty() {
                    // As the server wrote it.
                    return Answer::Result(result);
                }
                let applied = obligations::redact(&mut v, &call.redact);
                call.detail["redacted"] = json!(applied);
                Answer::Result(to_raw(&v))
            }
            Err(e) => {
                call.outcome = match e {
                    UpstreamError::CircuitOpen(_) => "circuit_open",
                    UpstreamError::Failed { .. } | UpstreamError::Refused { .. } => {
                        "upstream_error"
                    }
                }
                .into();
                match e {
                    // The server's own error, to the agent as it was (but for a tool, whose
                    // model reads a tool result).
                    UpstreamError::Refused {
                        code,
                        message,
                        data,
                        ..
                    } if self.method != "tools/call" => {
                        call.detail["error_code"] = json!(code);
                        let mut error = json!({"code": code, "message": message});
                        if let Some(data) = data {
                            error["data"] = data;
                        }
                        Answer::Error(error)
                    }
                    e => self.refuse(format!("cogward: {e}"), call),
                }
            }
        }
    }

    /// Relay a server's request within this call (`origin`, a tool call say) to the agent, if
    /// its client declared the feature and tool-access permits it (action `sample`, `elicit` or
    /// `roots` on `sampling:server.tool`, `elicitation:server.tool`, `roots:server.tool`); its
    /// intent recorded before it
    /// reaches the agent and its outcome before the server has the answer
    /// (`gateway.mcp_request`). Otherwise the server gets an error saying why.
    async fn relay(&self, run: &RunIdentity, origin: &str, agent: &AgentStream, r: ServerRequest) {
        let ServerRequest {
            method,
            message,
            answer: reply,
            cancelled,
        } = r;
        let (action, feature) = match method.as_str() {
            "sampling/createMessage" => ("sample", "sampling"),
            "roots/list" => ("roots", "roots"),
            _ => ("elicit", "elicitation"),
        };
        let error = |code: i64, message: String| Err(json!({"code": code, "message": message}));
        if self.caller.capabilities.get(feature).is_none() {
            let why = format!("cogward: the agent's client does not support {feature}");
            let _ = reply.send(error(-32601, why));
            return;
        }
        let tool = origin.split_once('.').map_or(origin, |(_, t)| t);
        let server = &self.server.name;
        let resource = json!({"server": server, "tool": tool});
        let request = run.request(
            kinds::TOOL_CALL,
            action,
            resource.clone(),
            json!({"run_id": run.run_id}),
        );
        let decision = match self.gw.policies.decide_request(request).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "deciding a relayed request");
                let _ = reply.send(error(
                    -32603,
                    "cogward: the request could not be decided".into(),
                ));
                return;
            }
        };
        let params: Value = serde_json::from_str::<Value>(message.get())
            .map(|m| m["params"].clone())
            .unwrap_or(Value::Null);
        let mut call = CallRecord::new(
            "mcp",
            run,
            format!("{feature}:{server}.{tool}"),
            sha256_hex(canonical_string(&params).as_bytes()),
            json!({"method": method, "server": server, "tool": tool, "origin": origin}),
        );
        call.reasons = decision.decision.reasons.clone();
        let effect = decision.decision.effect;
        call.decisions.push(decision);
        let started = Instant::now();
        let answer = if effect != Effect::Permit {
            // An escalation cannot wait here: the server waits on the call's stream.
            call.outcome = "denied".into();
            let why = format!(
                "cogward: {feature} for {origin} denied by policy: {}",
                call.reasons.join("; ")
            );
            error(REFUSED, why)
        } else {
            call.decision = CallDecision::Permit;
            if let Err(e) = self.gw.record_intent(&mut call).await {
                tracing::error!(error = %format!("{e:#}"), "a relay's intent could not be recorded");
                let why = "cogward: the request could not be recorded".into();
                return drop(reply.send(error(-32603, why)));
            }
            self.ask_agent(agent, &message, cancelled, &mut call).await
        };
        call.latency = started.elapsed();
        if let Err(e) = self.gw.settle(&call).await {
            tracing::error!(error = %format!("{e:#}"), "a relay's outcome could not be recorded");
            return drop(reply.send(error(
                -32603,
                "cogward: the answer could not be recorded".into(),
            )));
        }
        let _ = reply.send(answer);
    }

    /// Send the server's request to the agent under an id of ours and wait for its answer
    /// (the server's time limit); the answer for the server.
    async fn ask_agent(
        &self,
        agent: &AgentStream,
        request: &RawValue,
        cancelled: oneshot::Receiver<Value>,
        call: &mut CallRecord,
    ) -> Result<Box<RawValue>, Value> {
        let relay_id = format!("cw-{}", uuid::Uuid::new_v4().simple());
        let (tx, rx) = oneshot::channel();
        if let Ok(mut relays) = self.gw.relays.lock() {
            let session = self.caller.session.clone().unwrap_or_default();
            relays.insert(relay_id.clone(), (call.run.run_id.clone(), session, tx));
        }
        let mut message = super::json::members(request).unwrap_or_default();
        message.insert("id".into(), to_raw(&json!(relay_id)));
        let message =
            serde_json::value::to_raw_value(&message).unwrap_or_else(|_| to_raw(&json!({})));
        let limit = Duration::from_secs(self.server.timeout_seconds);
        // An agent that stops reading holds nothing up past the server's limit.
        let sent = tokio::time::timeout(limit, agent.send(&message)).await;
        let answer = if !sent.unwrap_or(false) {
            call.outcome = "client_gone".into();
            None
        } else {
            tokio::select! {
                answer = tokio::time::timeout(limit, rx) => match answer {
                    Ok(Ok(answer)) => Some(answer),
                    Ok(Err(_)) | Err(_) => {
                        call.outcome = "timeout".into();
                        None
                    }
                },
                // The server no longer wants the answer: the agent hears so, under our id.
                Ok(mut params) = cancelled => {
                    call.outcome = "cancelled_by_server".into();
                    params["requestId"] = json!(relay_id);
                    agent.offer(&to_raw(&json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                                "params": params})));
                    None
                }
            }
        };
        if let Ok(mut relays) = self.gw.relays.lock() {
            relays.remove(&relay_id);
        }
        let Some(answer) = answer else {
            return Err(
                json!({"code": -32603, "message": format!("cogward: the agent's client did not answer ({})", call.outcome)}),
            );
        };
        let mut answer = super::json::members(&answer).unwrap_or_default();
        if let Some(result) = answer.remove("result") {
            call.outcome = "ok".into();
            if let Ok(r) = serde_json::from_str::<Value>(result.get())
                && let Some(action) = r.get("action")
            {
                call.detail["action"] = action.clone();
            }
            return Ok(result);
        }
        call.outcome = "refused_by_client".into();
        Err(answer
            .get("error")
            .and_then(|e| serde_json::from_str(e.get()).ok())
            .unwrap_or_else(|| json!({"code": -32603, "message": "cogward: the agent's answer had neither result nor error"})))
    }

    /// Settle the call's outcome; the JSON-RPC answer, or an error when the outcome is not
    /// durable.
    async fn finish(
        &self,
        call: &mut CallRecord,
        answer: Answer,
    ) -> Result<Box<RawValue>, RpcError> {
        call.latency = self.started.elapsed();
        self.gw.settle(call).await.map_err(|e| {
            tracing::error!(error = %format!("{e:#}"), "MCP call refused: its record could not be written");
            rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &self.id,
                -32603,
                "cogward: the call could not be recorded in the audit ledger, so it was refused",
            )
        })?;
        Ok(match answer {
            Answer::Result(result) => rpc_result_raw(&self.id, &result),
            Answer::Error(error) => {
                to_raw(&json!({"jsonrpc": "2.0", "id": self.id, "error": error}))
            }
        })
    }
}

/// How a parked call ended.
enum Parked {
    Decided(ApprovalDecision),
    Expired,
    RunEnded,
    /// The client went away before a decision it could use: the decision stays for its retry.
    ClientGone,
}

/// Park an escalated call until a human decides it; answer as an SSE stream (progress
/// notifications while waiting, then the response).
fn park(gw: Arc<Gateway>, job: CallJob, mut call: CallRecord, group: Option<String>) -> Response {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(STREAM_BUFFER);
    tokio::spawn(async move {
        let parked_at = Instant::now();
        let mut agent = AgentStream {
            tx: tx.clone(),
            progress_token: job.progress_token.clone(),
            offset: 0,
        };
        let progress = |elapsed: Duration| {
            let token = job.progress_token.clone();
            let tx = tx.clone();
            async move {
                match token {
                    Some(token) => {
                        let message = to_raw(
                            &json!({"jsonrpc": "2.0", "method": "notifications/progress",
                                    "params": {"progressToken": token, "progress": elapsed.as_secs(),
                                               "message": "cogward: awaiting approval"}}),
                        );
                        tx.send(Ok(AgentStream::event(&message))).await.is_ok()
                    }
                    // An SSE comment: the client ignores it, and the connection (and the
                    // sandbox's splice, which closes idle ones) sees it is alive.
                    None => tx
                        .send(Ok(Bytes::from_static(b": awaiting approval\n\n")))
                        .await
                        .is_ok(),
                }
            }
        };
        // A decision is for one execution: the first copy to claim it uses it, and a copy
        // that finds it claimed (or expired) parks as a new request.
        let mut reattach = true;
        // An agent that cancelled the call is gone for it too (the decision waits for a retry).
        let gone = || tx.is_closed() || job.cancelled();
        let waited = loop {
            match wait_for_decision(
                &gw,
                &job,
                &mut call,
                group.clone(),
                reattach,
                &progress,
                &gone,
            )
            .await
            {
                // A copy whose client has hung up must not use the decision up: its retry will.
                Ok(Parked::Decided(_)) if gone() => break Ok(Parked::ClientGone),
                Ok(Parked::Decided(d)) => match claim(&job.gw, &call).await {
                    Ok(true) => break Ok(Parked::Decided(d)),
                    Ok(false) => reattach = false,
                    Err(e) => break Err(e),
                },
                other => break other,
            }
        };
        let answer = match waited {
            Ok(Parked::Decided(d)) if d.verdict == ApprovalVerdict::Approved => {
                call.detail["approver"] = json!(d.approver);
                if let Err(e) = job.record_intent(&mut call).await {
                    agent.send(&to_raw(&e.body())).await;
                    return;
                }
                // The upstream's progress follows the gateway's own, which it must exceed.
                agent.offset = parked_at.elapsed().as_secs() + 1;
                let result = job.forward(&mut call, Some(&agent)).await;
                if call.outcome == "ok" {
                    call.outcome = "approved".into();
                }
                if tx.is_closed() && !job.cancelled() {
                    call.outcome = "client_gone".into();
                }
                result
            }
            Ok(Parked::Decided(d)) => {
                call.detail["approver"] = json!(d.approver);
                call.outcome = "rejected".into();
                job.refuse(
                    format!(
                        "cogward: call to {} rejected by {}",
                        call.target, d.approver
                    ),
                    &call,
                )
            }
            Ok(Parked::Expired) => {
                call.outcome = "approval_expired".into();
                job.refuse(
                    format!("cogward: call to {} was not approved in time", call.target),
                    &call,
                )
            }
            Ok(Parked::ClientGone) => {
                tracing::info!(run_id = %call.run.run_id, tool = %call.target,
                    "the client of a parked tool call went away; its decision waits for a retry");
                return;
            }
            Ok(Parked::RunEnded) => {
                call.outcome = "run_ended".into();
                job.refuse(
                    format!("cogward: the run ended before {} was approved", call.target),
                    &call,
                )
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "parking a tool call");
                let e = rpc_error(
                    StatusCode::OK,
                    &job.id,
                    -32603,
                    "cogward: the call could not be parked for approval",
                );
                agent.send(&to_raw(&e.body())).await;
                return;
            }
        };
        if let Some(call_id) = call.detail.get("parked_call_id").and_then(Value::as_str) {
            // Expired or the run ended: no later copy re-attaches to it.
            let _ = sqlx::query("UPDATE parked_tool_calls SET released = 1 WHERE call_id = $1")
                .bind(call_id)
                .execute(&job.gw.db.pool)
                .await;
        }
        let message = match job.finish(&mut call, answer).await {
            Ok(v) => v,
            Err(e) => to_raw(&e.body()),
        };
        if !job.cancelled() {
            agent.send(&message).await;
        }
    });
    crate::sse::event_stream(rx)
}

/// The version of the policy that escalated the call (module and data digests): part of what
/// an approval is for.
fn escalating_policy(call: &CallRecord) -> String {
    call.decisions
        .last()
        .and_then(|d| d.policy.as_ref())
        .map(|p| format!("{}:{}", p.module_sha256, p.data_sha256))
        .unwrap_or_default()
}

/// When parked rows created before now stop counting (their approval has expired).
fn approval_cutoff(gw: &Gateway) -> String {
    let timeout = chrono::Duration::seconds(gw.config.tool_approval_timeout_seconds as i64);
    (chrono::Utc::now() - timeout).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Claim the decided parked row for this execution; false when another copy already used it or
/// it has expired.
async fn claim(gw: &Gateway, call: &CallRecord) -> anyhow::Result<bool> {
    let Some(parked) = call.detail.get("parked_call_id").and_then(Value::as_str) else {
        return Ok(false);
    };
    let claimed = sqlx::query(
        "UPDATE parked_tool_calls SET released = 1 WHERE call_id = $1 AND released = 0 \
         AND created_at >= $2",
    )
    .bind(parked)
    .bind(approval_cutoff(gw))
    .execute(&gw.db.pool)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}

/// Find (`reattach`) or create the parked row, tell the workflow, and wait for its decision.
async fn wait_for_decision<F, Fut>(
    gw: &Arc<Gateway>,
    job: &CallJob,
    call: &mut CallRecord,
    group: Option<String>,
    reattach: bool,
    progress: &F,
    gone: &(dyn Fn() -> bool + Sync),
) -> anyhow::Result<Parked>
where
    F: Fn(Duration) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let db = &job.gw.db;
    let run_id = call.run.run_id.clone();
    let policy = escalating_policy(call);
    let existing: Option<String> = if reattach {
        sqlx::query_scalar(
            "SELECT call_id FROM parked_tool_calls WHERE run_id = $1 AND tool = $2 \
             AND args_sha256 = $3 AND policy_sha256 = $4 AND released = 0 AND created_at >= $5 \
             ORDER BY created_at LIMIT 1",
        )
        .bind(&run_id)
        .bind(&call.target)
        .bind(&call.args_sha256)
        .bind(&policy)
        .bind(approval_cutoff(&job.gw))
        .fetch_optional(&db.pool)
        .await?
    } else {
        None
    };
    let parked_id = match existing {
        Some(id) => id,
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            sqlx::query(
                "INSERT INTO parked_tool_calls (call_id, run_id, tool, args_sha256, policy_sha256, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&id)
            .bind(&run_id)
            .bind(&call.target)
            .bind(&call.args_sha256)
            .bind(&policy)
            .bind(crate::now_rfc3339())
            .execute(&db.pool)
            .await?;
            id
        }
    };
    call.detail["parked_call_id"] = json!(parked_id);
    let client = gw
        .temporal
        .get()
        .context("Temporal is unreachable, so the call cannot be parked for approval")?;
    let plan = gw.group_rules.chain(
        group.as_deref(),
        job.gw.config.tool_approval_timeout_seconds,
        1,
    );
    // Every time, also on a re-attach (the update id is the call's, so a repeat is the same
    // update): the run starts the call's `Approval` child and answers once it has started, so
    // what follows waits on a workflow that exists.
    let asked = client
        .get_workflow_handle::<AgentRun>(run_id.as_str())
        .execute_update(
            AgentRun::ask_tool_approval,
            ToolApprovalRequest {
                call_id: parked_id.clone(),
                tool: call.target.clone(),
                args_sha256: call.args_sha256.clone(),
                group,
                reasons: call.reasons.clone(),
                policy,
                stages: plan.stages,
                required: plan.required,
            },
            WorkflowExecuteUpdateOptions::builder()
                .update_id(format!("ask-{parked_id}"))
                .build(),
        )
        .await;
    match asked {
        Ok(ToolApprovalAsked::Started) => {}
        Ok(ToolApprovalAsked::NotRunning) => return Ok(Parked::RunEnded),
        Ok(ToolApprovalAsked::NotStarted { detail }) => {
            anyhow::bail!("the call's approval could not start: {detail}")
        }
        // The run's workflow is closed (or gone), or closed before it answered.
        Err(WorkflowUpdateError::NotFound(_) | WorkflowUpdateError::Failed(_)) => {
            return Ok(Parked::RunEnded);
        }
        Err(e) => return Err(e.into()),
    }
    let approval =
        client.get_workflow_handle::<Approval>(tool_call_workflow_id(&run_id, &parked_id));
    let parked_at = Instant::now();
    // Temporal answers when the approval ends (a long poll, no polling of ours); meanwhile the
    // agent hears progress and the gateway notices it went away.
    let mut outcome = std::pin::pin!(approval.get_result(WorkflowGetResultOptions::default()));
    let mut last_progress: Option<Instant> = None;
    loop {
        if gone() {
            return Ok(Parked::ClientGone);
        }
        if last_progress.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
            last_progress = Some(Instant::now());
            if !progress(parked_at.elapsed()).await {
                return Ok(Parked::ClientGone);
            }
        }
        let outcome: ApprovalOutcome = tokio::select! {
            outcome = &mut outcome => outcome?,
            _ = tokio::time::sleep(CLIENT_CHECK) => continue,
        };
        return Ok(match (outcome.result, outcome.decision()) {
            (ApprovalResult::Approved | ApprovalResult::Rejected, Some(d)) => Parked::Decided(d),
            (ApprovalResult::Expired, _) => Parked::Expired,
            _ => Parked::RunEnded,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn only_listed_origins_and_same_origin_loopback_pages_reach_mcp() {
        let listed = ["https://console.example.com".to_string()];
        for (origin, host, ok) in [
            ("https://console.example.com", Some("gw.example.com"), true),
            // A page of this very endpoint on loopback.
            ("http://127.0.0.1:8082", Some("127.0.0.1:8082"), true),
            ("http://localhost:8082", Some("localhost:8082"), true),
            ("http://[::1]:8082", Some("[::1]:8082"), true),
            ("http://127.0.0.1", Some("127.0.0.1:80"), true),
            // DNS rebinding: the page's own name is in Host.
            ("http://evil.example.com", Some("evil.example.com"), false),
            (
                "http://evil.example.com:8082",
                Some("127.0.0.1:8082"),
                false,
            ),
            (
                "http://127.0.0.1:8082",
                Some("evil.example.com:8082"),
                false,
            ),
            // Another local origin.
            ("http://127.0.0.1:3000", Some("127.0.0.1:8082"), false),
            ("http://localhost:8082", Some("127.0.0.1:8082"), false),
            ("https://127.0.0.1:8082", Some("127.0.0.1:8082"), true),
            ("https://127.0.0.1", Some("127.0.0.1:80"), false),
            // Not origins at all.
            ("null", Some("127.0.0.1:8082"), false),
            ("file://127.0.0.1:8082", Some("127.0.0.1:8082"), false),
            ("http://127.0.0.1:8082/x", Some("127.0.0.1:8082"), false),
            ("http://user@127.0.0.1:8082", Some("127.0.0.1:8082"), false),
            ("http://127.0.0.1:8082", None, false),
        ] {
            assert_eq!(
                origin_allowed(&listed, origin, host),
                ok,
                "{origin} with Host {host:?}"
            );
        }
    }
}
