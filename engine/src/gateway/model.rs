//! The model gateway: Anthropic Messages (`/gw/<provider>/v1/messages`) and OpenAI Chat
//! Completions and Responses (`/gw/<provider>/v1/chat/completions`, `.../v1/responses`),
//! streaming included, forwarded to the configured provider with the engine's key.
//!
//! Per call: the run's credential; the body parsed strictly and the model name normalised;
//! then, under the tenant's admission lock, the model-access policy (a `pin_model` obligation
//! rewrites the model), the price, the budget policy with what the run and its tenant have used
//! so far (from the journal, reservations of calls in flight included) and this call's
//! reservation, and the intent recorded — all before anything is forwarded. Then, detached from
//! the client, the provider; token counts from its usage fields (at least the reservation when
//! they are missing or cut short), cost from the configured prices; the outcome settled
//! (ledger, else the spool) before the response is released: for a stream, before the terminal
//! event (`message_stop`, `[DONE]`, `response.completed`) is passed on.

use super::config::normalize_model;
use super::config::{Provider, Wire};
use super::obligations::{self, Site};
use super::{AuthFailure, CallDecision, CallRecord, Gateway, Reservation, RunIdentity, sha256_hex};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cogward_policy_abi::{Effect, Request, kinds};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Largest model request accepted (conversations with their context), in bytes.
pub const MODEL_BODY_LIMIT: usize = 32 * 1024 * 1024;
/// Largest non-streamed provider response passed on, in bytes.
const RESPONSE_LIMIT: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Messages,
    ChatCompletions,
    Responses,
}

impl Endpoint {
    fn wire(self) -> Wire {
        match self {
            Endpoint::Messages => Wire::Anthropic,
            Endpoint::ChatCompletions | Endpoint::Responses => Wire::Openai,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Endpoint::Messages => "/v1/messages",
            Endpoint::ChatCompletions => "/v1/chat/completions",
            Endpoint::Responses => "/v1/responses",
        }
    }

    /// (input, output) tokens from a usage-bearing object: a whole response, or the object a
    /// stream event carries it in.
    fn usage(self, v: &Value) -> Option<(u64, u64)> {
        let u = v.get("usage").filter(|u| u.is_object())?;
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        Some(match self {
            Endpoint::Messages => (
                n("input_tokens") + n("cache_creation_input_tokens") + n("cache_read_input_tokens"),
                n("output_tokens"),
            ),
            Endpoint::ChatCompletions => (n("prompt_tokens"), n("completion_tokens")),
            Endpoint::Responses => (n("input_tokens"), n("output_tokens")),
        })
    }
}

pub fn router() -> Router<Arc<Gateway>> {
    let route = |endpoint: Endpoint| {
        post(
            move |State(gw): State<Arc<Gateway>>,
                  Path(provider): Path<String>,
                  headers: HeaderMap,
                  body: Result<Bytes, BytesRejection>| async move {
                handle(gw, endpoint, provider, headers, body).await
            },
        )
    };
    Router::new()
        .route("/gw/{provider}/v1/messages", route(Endpoint::Messages))
        .route(
            "/gw/{provider}/v1/chat/completions",
            route(Endpoint::ChatCompletions),
        )
        .route("/gw/{provider}/v1/responses", route(Endpoint::Responses))
        .layer(DefaultBodyLimit::max(MODEL_BODY_LIMIT))
}

/// The gateway's answer to a path it does not serve, in the format of the provider the path
/// names.
pub async fn unknown_path(State(gw): State<Arc<Gateway>>, uri: axum::http::Uri) -> Response {
    let provider = uri
        .path()
        .strip_prefix("/gw/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|name| gw.config.providers.get(name));
    let wire = provider.map_or(Wire::Openai, |p| p.wire);
    provider_error(
        wire,
        StatusCode::NOT_FOUND,
        "not_found_error",
        format!("cogward: the gateway serves no {}", uri.path()),
    )
}

/// An error in the provider's own format, so the agent's SDK reports it as it would the
/// provider's.
fn provider_error(
    wire: Wire,
    status: StatusCode,
    kind: &str,
    message: impl Into<String>,
) -> Response {
    let message = message.into();
    let body = match wire {
        Wire::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
        Wire::Openai => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": kind}})
        }
    };
    (status, axum::Json(body)).into_response()
}

fn refused_unrecorded(wire: Wire, e: &anyhow::Error) -> Response {
    tracing::error!(error = %format!("{e:#}"), "model call refused: its record could not be written");
    provider_error(
        wire,
        StatusCode::SERVICE_UNAVAILABLE,
        "api_error",
        "cogward: the call could not be recorded in the audit ledger, so it was refused",
    )
}

fn model_access_request(gw: &Gateway, run: &RunIdentity, provider: &str, model: &str) -> Request {
    run.request(
        kinds::MODEL_CALL,
        "call",
        json!({"provider": provider, "model": model}),
        json!({"tier": gw.config.tier(&run.tenant), "region": gw.config.region,
               "run_id": run.run_id}),
    )
}

async fn handle(
    gw: Arc<Gateway>,
    endpoint: Endpoint,
    provider_name: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let wire = endpoint.wire();
    let started = Instant::now();
    let run = match gw.authenticate(&headers).await {
        Ok(run) => run,
        Err(AuthFailure::Credential(e)) => {
            return provider_error(
                wire,
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                format!("cogward: {e}"),
            );
        }
        Err(AuthFailure::Internal(e)) => return refused_unrecorded(wire, &e),
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            return provider_error(
                wire,
                e.status(),
                "invalid_request_error",
                format!("cogward: {}", e.body_text()),
            );
        }
    };
    let Some(provider) = gw
        .config
        .providers
        .get(&provider_name)
        .filter(|p| p.wire == wire)
        .cloned()
    else {
        return provider_error(
            wire,
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("cogward: no provider {provider_name:?} speaking this API is configured"),
        );
    };
    let bad_request = |message: String| {
        provider_error(
            wire,
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("cogward: {message}"),
        )
    };
    let mut request = match super::json::parse_strict(&body) {
        Ok(v) if v.is_object() => v,
        Ok(_) => return bad_request("the request body is not a JSON object".into()),
        Err(e) => return bad_request(format!("the request body is not valid JSON: {e}")),
    };
    let Some(requested_model) = request
        .get("model")
        .and_then(Value::as_str)
        .map(normalize_model)
    else {
        return bad_request("`model` is required".into());
    };
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let max_output = match output_ceiling(&gw, endpoint, &mut request) {
        Ok(n) => n,
        Err(message) => return bad_request(message),
    };
    if stream && endpoint == Endpoint::ChatCompletions {
        // Without it a stream carries no usage, and the call could not be metered.
        request["stream_options"]["include_usage"] = Value::Bool(true);
    }
    let mut call = CallRecord::new(
        "model",
        &run,
        format!("{provider_name}/{requested_model}"),
        sha256_hex(&body),
        json!({"provider": provider_name, "requested_model": requested_model,
               "endpoint": endpoint.path(), "stream": stream}),
    );

    // The decision, its reservation and the intent's record are one step per tenant, so
    // concurrent calls cannot all spend the same headroom.
    let admission = gw.admission_lock(&run.tenant).await;
    let refused = decide(
        &gw,
        &run,
        &provider_name,
        &requested_model,
        body.len() as u64,
        max_output,
        stream,
        &mut call,
    )
    .await;
    match refused {
        Ok(Some((status, kind, message))) => {
            drop(admission);
            call.latency = started.elapsed();
            return match gw.record(&call).await {
                Ok(_) => {
                    let mut resp = provider_error(wire, status, kind, message);
                    mark(&mut resp, &call, None);
                    resp
                }
                Err(e) => refused_unrecorded(wire, &e),
            };
        }
        Ok(None) => {}
        Err(e) => return refused_unrecorded(wire, &e),
    }
    if let Err(e) = gw.record_intent(&mut call).await {
        return refused_unrecorded(wire, &e);
    }
    drop(admission);

    let model = call.detail["model"]
        .as_str()
        .unwrap_or(&requested_model)
        .to_string();
    request["model"] = Value::String(model.clone());
    let body = Bytes::from(serde_json::to_vec(&request).unwrap_or_default());
    // From here the call runs to its recorded outcome whether or not the client stays.
    let (reply, answer) = oneshot::channel();
    tokio::spawn(async move {
        if call.throttle_ms > 0 {
            tokio::time::sleep(Duration::from_millis(call.throttle_ms)).await;
        }
        forward(
            gw, &provider, endpoint, &headers, body, model, call, started, reply,
        )
        .await;
    });
    answer.await.unwrap_or_else(|_| {
        provider_error(
            wire,
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "cogward: the call's task ended without an answer",
        )
    })
}

/// The output tokens the request may produce: its own maximum, or (for the OpenAI APIs, where
/// it is optional) the configured default, written into the request so the provider keeps to
/// what was reserved.
fn output_ceiling(gw: &Gateway, endpoint: Endpoint, request: &mut Value) -> Result<u64, String> {
    let keys: &[&str] = match endpoint {
        Endpoint::Messages => &["max_tokens"],
        Endpoint::ChatCompletions => &["max_completion_tokens", "max_tokens"],
        Endpoint::Responses => &["max_output_tokens"],
    };
    for key in keys {
        match request.get(*key) {
            None | Some(Value::Null) => {}
            Some(v) => {
                return v
                    .as_u64()
                    .ok_or_else(|| format!("`{key}` must be a non-negative integer"));
            }
        }
    }
    let ceiling = gw.config.default_max_output_tokens.max(1);
    if endpoint == Endpoint::Messages {
        // Required by the API: the provider refuses the request itself.
        return Ok(ceiling);
    }
    request[keys[0]] = Value::from(ceiling);
    Ok(ceiling)
}

/// Decide the call: model access, then budget. `Some((status, error type, message))` when it
/// is refused; `None` when it may go ahead (with `call.throttle_ms` to wait first,
/// `call.detail.model` the model to call and `call.reserved` what it holds).
#[allow(clippy::too_many_arguments)]
async fn decide(
    gw: &Gateway,
    run: &RunIdentity,
    provider: &str,
    requested_model: &str,
    body_len: u64,
    max_output: u64,
    stream: bool,
    call: &mut CallRecord,
) -> anyhow::Result<Option<(StatusCode, &'static str, String)>> {
    let mut model = requested_model.to_string();
    let access = gw
        .policies
        .decide_request(model_access_request(gw, run, provider, &model))
        .await?;
    let site = Site::ModelCall { streaming: stream };
    // A version pin is the access decision's obligation: applied before pricing and budget.
    if let Ok(p) = obligations::plan([&access.decision], site, 0)
        && let Some(pin) = p.pin_model
    {
        model = normalize_model(&pin);
    }
    let effect = access.decision.effect;
    call.reasons = access.decision.reasons.clone();
    call.decisions.push(access);
    call.detail["model"] = Value::String(model.clone());
    call.target = format!("{provider}/{model}");
    if effect != Effect::Permit {
        let why = call.reasons.join("; ");
        return Ok(Some((
            StatusCode::FORBIDDEN,
            "permission_error",
            format!("cogward: model call denied by policy: {why}"),
        )));
    }
    let estimated_input = body_len.div_ceil(gw.config.input_bytes_per_token.max(1));
    let Some(estimated_cost) =
        gw.config
            .cost_micro_usd(provider, &model, estimated_input, max_output)
    else {
        call.reasons
            .push(format!("no price is configured for {provider}/{model}"));
        return Ok(Some((
            StatusCode::FORBIDDEN,
            "permission_error",
            format!(
                "cogward: model {model} of provider {provider} has no configured price, so its \
                 calls cannot be metered (an operator can price it at 0 to make it free)"
            ),
        )));
    };

    let budget = gw
        .decide_budget(
            run,
            json!({"run": run.run_id, "provider": provider, "model": model}),
            estimated_input + max_output,
            estimated_cost,
        )
        .await?;
    call.reasons.extend(budget.decision.reasons.iter().cloned());
    let planned = obligations::plan(
        call.decisions
            .iter()
            .map(|d| &d.decision)
            .chain([&budget.decision]),
        site,
        gw.config.max_throttle_ms,
    );
    let refusal = match planned {
        Err(why) => {
            call.reasons.push(why.clone());
            Some((
                StatusCode::FORBIDDEN,
                "permission_error",
                format!("cogward: model call denied: {why}"),
            ))
        }
        Ok(plan) if plan.effect != Effect::Permit => Some((
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("cogward: budget: {}", budget.decision.reasons.join("; ")),
        )),
        Ok(plan) => {
            call.decision = CallDecision::Permit;
            call.throttle_ms = plan.throttle_ms;
            call.redact = plan.redact;
            None
        }
    };
    call.decisions.push(budget);
    call.reserved = Reservation {
        input_tokens: estimated_input,
        output_tokens: max_output,
        cost_micro_usd: estimated_cost,
    };
    Ok(refusal)
}

/// Headers naming the call (and the provider's id of its answer), for the agent's logs and
/// for support.
fn mark(resp: &mut Response, call: &CallRecord, provider_request_id: Option<HeaderValue>) {
    let headers = resp.headers_mut();
    if let Some(id) = provider_request_id {
        headers.insert("x-cogward-provider-request-id", id);
    }
    if let Ok(v) = HeaderValue::from_str(&call.call_id) {
        headers.insert("x-cogward-call-id", v);
    }
    headers.insert(
        "x-cogward-decision",
        HeaderValue::from_static(call.decision.as_str()),
    );
}

/// Forward a call whose intent is recorded, settle its outcome, and send the answer to
/// `reply` (whose receiver is gone when the client hung up: the outcome is then
/// `client_gone`, still recorded and charged).
#[allow(clippy::too_many_arguments)]
async fn forward(
    gw: Arc<Gateway>,
    provider: &Provider,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Bytes,
    model: String,
    mut call: CallRecord,
    started: Instant,
    reply: oneshot::Sender<Response>,
) {
    let wire = endpoint.wire();
    let url = format!(
        "{}{}",
        provider.base_url.trim_end_matches('/'),
        endpoint.path()
    );
    let mut req = gw
        .http()
        .post(url)
        .timeout(Duration::from_secs(provider.timeout_seconds))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body);
    for name in [
        "anthropic-version",
        "anthropic-beta",
        "openai-beta",
        "accept",
    ] {
        if let Some(v) = headers.get(name) {
            req = req.header(name, v);
        }
    }
    if let Some(key) = provider
        .api_key_env
        .as_ref()
        .and_then(|v| std::env::var(v).ok())
    {
        req = match wire {
            Wire::Anthropic => req.header("x-api-key", key),
            Wire::Openai => req.bearer_auth(key),
        };
    }
    let tokens = Tokens {
        gw: gw.clone(),
        provider: call.detail["provider"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        model,
    };
    let sent = Instant::now();
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            // Refused at connect: the provider saw nothing. Otherwise it may have billed.
            let billed = !e.is_connect();
            let message = format!("cogward: the provider could not be reached: {e}");
            let outcome = "upstream_unreachable";
            call.upstream_latency = sent.elapsed();
            upstream_failed(
                &gw, call, &tokens, billed, started, wire, outcome, message, reply,
            )
            .await;
            return;
        }
    };
    call.upstream_latency = sent.elapsed();
    let status = resp.status();
    call.upstream_status = Some(status.as_u16());
    call.outcome = if status.is_success() {
        "ok"
    } else {
        "upstream_error"
    }
    .into();
    let request_id = provider_request_id(resp.headers());
    if let Some(id) = &request_id {
        call.detail["provider_request_id"] = Value::String(id.to_str().unwrap_or_default().into());
    }
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let streaming = content_type
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if streaming && !call.redact.is_empty() {
        // Asked for a JSON answer it could redact, the provider streamed: nothing is passed on.
        let message = "cogward: the provider streamed an answer a redact obligation applies to";
        let outcome = "obligation_unenforceable";
        upstream_failed(
            &gw,
            call,
            &tokens,
            true,
            started,
            wire,
            outcome,
            message.into(),
            reply,
        )
        .await;
        return;
    }
    if streaming {
        let mut out = relay_stream(gw, endpoint, resp, call.clone(), tokens, started);
        mark(&mut out, &call, request_id);
        let _ = reply.send(out);
        return;
    }
    let bytes = match read_capped(resp, RESPONSE_LIMIT).await {
        Ok(b) => b,
        Err(e) => {
            let message = format!("cogward: reading the provider's response: {e}");
            let outcome = "upstream_error";
            upstream_failed(
                &gw, call, &tokens, true, started, wire, outcome, message, reply,
            )
            .await;
            return;
        }
    };
    let parsed = serde_json::from_slice::<Value>(&bytes).ok();
    let usage = parsed.as_ref().and_then(|v| endpoint.usage(v));
    let bytes = match parsed {
        Some(mut v) if !call.redact.is_empty() => {
            let applied = obligations::redact(&mut v, &call.redact);
            call.detail["redacted"] = json!(applied);
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        }
        _ => bytes,
    };
    // An error answer with no usage was not billed.
    let complete = usage.is_some() || !status.is_success();
    tokens.charge(&mut call, usage.unwrap_or_default(), complete);
    if reply.is_closed() {
        call.outcome = "client_gone".into();
    }
    call.latency = started.elapsed();
    if let Err(e) = gw.settle(&call).await {
        let _ = reply.send(refused_unrecorded(wire, &e));
        return;
    }
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    mark(&mut out, &call, request_id);
    let _ = reply.send(out);
}

/// The provider's id of its answer (`request-id` from Anthropic, `x-request-id` from OpenAI).
fn provider_request_id(headers: &reqwest::header::HeaderMap) -> Option<HeaderValue> {
    ["request-id", "x-request-id"]
        .iter()
        .find_map(|h| headers.get(*h))
        .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
}

/// Settle a call the provider failed (`outcome`; `billed` when the provider may have billed
/// it, so it is charged its reservation) and answer `reply` 502 with `message`.
#[allow(clippy::too_many_arguments)]
async fn upstream_failed(
    gw: &Arc<Gateway>,
    mut call: CallRecord,
    tokens: &Tokens,
    billed: bool,
    started: Instant,
    wire: Wire,
    outcome: &str,
    message: String,
    reply: oneshot::Sender<Response>,
) {
    if billed {
        tokens.charge(&mut call, (0, 0), false);
    }
    call.outcome = if reply.is_closed() {
        "client_gone"
    } else {
        outcome
    }
    .to_string();
    call.latency = started.elapsed();
    let resp = match gw.settle(&call).await {
        Ok(()) => provider_error(wire, StatusCode::BAD_GATEWAY, "api_error", message),
        Err(e) => refused_unrecorded(wire, &e),
    };
    let _ = reply.send(resp);
}

/// Turns usage into the call's tokens and cost.
struct Tokens {
    gw: Arc<Gateway>,
    provider: String,
    model: String,
}

impl Tokens {
    /// Charge the call what the provider reported (`complete`), or, when the usage is missing
    /// or partial (no usage in the answer, a cut stream, a client gone), at least what it
    /// reserved.
    fn charge(&self, call: &mut CallRecord, observed: (u64, u64), complete: bool) {
        let (input, output) = if complete {
            observed
        } else {
            call.detail["usage"] = Value::String("reserved".into());
            (
                observed.0.max(call.reserved.input_tokens),
                observed.1.max(call.reserved.output_tokens),
            )
        };
        call.input_tokens = input;
        call.output_tokens = output;
        call.cost_micro_usd = self
            .gw
            .config
            .cost_micro_usd(&self.provider, &self.model, input, output)
            .unwrap_or(call.reserved.cost_micro_usd);
    }
}

async fn read_capped(mut resp: reqwest::Response, cap: usize) -> anyhow::Result<Bytes> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        anyhow::ensure!(
            out.len() + chunk.len() <= cap,
            "the response exceeds {cap} bytes"
        );
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// Where a complete SSE event (through its blank line) ends in `buf`.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Read one SSE event's usage into `usage` (stream usage is cumulative); true when it is the
/// stream's terminal event.
fn observe_event(endpoint: Endpoint, event: &[u8], usage: &mut Option<(u64, u64)>) -> bool {
    let text = String::from_utf8_lossy(event);
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("\n");
    if data.trim() == "[DONE]" {
        return endpoint == Endpoint::ChatCompletions;
    }
    let Ok(v) = serde_json::from_str::<Value>(&data) else {
        return false;
    };
    let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
    let mut take = |source: &Value, keep_input: bool| {
        if let Some((input, output)) = endpoint.usage(source) {
            let before = usage.map_or(0, |u| u.0);
            let input = if keep_input && input == 0 {
                before
            } else {
                input
            };
            *usage = Some((input, output));
        }
    };
    match endpoint {
        Endpoint::Messages => match kind {
            "message_start" => take(&v["message"], false),
            // Output tokens so far; input only when the delta restates it.
            "message_delta" => take(&v, true),
            "message_stop" | "error" => return true,
            _ => {}
        },
        Endpoint::ChatCompletions => take(&v, false),
        Endpoint::Responses => {
            if matches!(
                kind,
                "response.completed" | "response.incomplete" | "response.failed"
            ) {
                take(&v["response"], false);
                return true;
            }
        }
    }
    false
}

/// Pass a provider's event stream through as it arrives, reading usage on the way; the outcome
/// is settled before the terminal event is passed on, and if it cannot be, an error event takes
/// the terminal event's place. A stream whose usage is missing or cut short (the client gone,
/// the provider's stream broken) is charged at least its reservation.
fn relay_stream(
    gw: Arc<Gateway>,
    endpoint: Endpoint,
    mut resp: reqwest::Response,
    mut call: CallRecord,
    tokens: Tokens,
    started: Instant,
) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(32);
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        let mut usage: Option<(u64, u64)> = None;
        let settle =
            async |call: &mut CallRecord, usage: Option<(u64, u64)>, outcome: Option<&str>| {
                let complete = outcome.is_none() && usage.is_some();
                tokens.charge(call, usage.unwrap_or_default(), complete);
                if let Some(o) = outcome {
                    call.outcome = o.to_string();
                }
                call.latency = started.elapsed();
                gw.settle(call).await
            };
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    while let Some(end) = event_end(&buf) {
                        let event: Vec<u8> = buf.drain(..end).collect();
                        if observe_event(endpoint, &event, &mut usage) {
                            let gone = tx.is_closed().then_some("client_gone");
                            let last = match settle(&mut call, usage, gone).await {
                                Ok(()) => event,
                                Err(e) => {
                                    tracing::error!(error = %format!("{e:#}"), "streamed model call could not be recorded");
                                    stream_error_event(endpoint.wire())
                                }
                            };
                            let _ = tx.send(Ok(Bytes::from(last))).await;
                            return;
                        }
                        if tx.send(Ok(Bytes::from(event))).await.is_err() {
                            let _ = settle(&mut call, usage, Some("client_gone")).await;
                            return;
                        }
                    }
                }
                Ok(None) | Err(_) => {
                    let recorded = settle(&mut call, usage, Some("stream_incomplete")).await;
                    if !buf.is_empty() && recorded.is_ok() {
                        let _ = tx.send(Ok(Bytes::from(std::mem::take(&mut buf)))).await;
                    }
                    return;
                }
            }
        }
    });
    let mut out = crate::sse::event_stream(rx);
    *out.status_mut() = status;
    out
}

fn stream_error_event(wire: Wire) -> Vec<u8> {
    let message = "cogward: the call could not be recorded in the audit ledger";
    match wire {
        Wire::Anthropic => format!(
            "event: error\ndata: {}\n\n",
            json!({"type": "error", "error": {"type": "api_error", "message": message}})
        ),
        Wire::Openai => format!(
            "data: {}\n\n",
            json!({"error": {"message": message, "type": "api_error", "param": null, "code": "api_error"}})
        ),
    }
    .into_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_read_from_each_wire_format() {
        let m = json!({"usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 7}});
        assert_eq!(Endpoint::Messages.usage(&m), Some((15, 7)));
        let c = json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}});
        assert_eq!(Endpoint::ChatCompletions.usage(&c), Some((3, 4)));
        let r = json!({"usage": {"input_tokens": 2, "output_tokens": 9}});
        assert_eq!(Endpoint::Responses.usage(&r), Some((2, 9)));
        assert_eq!(
            Endpoint::ChatCompletions.usage(&json!({"usage": null})),
            None
        );
    }

    #[test]
    fn stream_events_accumulate_usage_and_find_the_terminal_event() {
        let mut u = None;
        let start = br#"event: message_start
data: {"type":"message_start","message":{"usage":{"input_tokens":12,"output_tokens":1}}}

"#;
        assert!(!observe_event(Endpoint::Messages, start, &mut u));
        let delta = b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":30}}\n\n";
        assert!(!observe_event(Endpoint::Messages, delta, &mut u));
        assert_eq!(u, Some((12, 30)));
        assert!(observe_event(
            Endpoint::Messages,
            b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            &mut u
        ));

        let mut u = None;
        let chunk =
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6}}\n\n";
        assert!(!observe_event(Endpoint::ChatCompletions, chunk, &mut u));
        assert!(observe_event(
            Endpoint::ChatCompletions,
            b"data: [DONE]\n\n",
            &mut u
        ));
        assert_eq!(u, Some((5, 6)));

        let mut u = None;
        let done = b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":1,\"output_tokens\":2}}}\n\n";
        assert!(observe_event(Endpoint::Responses, done, &mut u));
        assert_eq!(u, Some((1, 2)));
    }

    #[test]
    fn events_split_at_blank_lines() {
        assert_eq!(event_end(b"data: a\n\ndata: b"), Some(9));
        assert_eq!(event_end(b"data: a\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: a\n"), None);
    }
}
