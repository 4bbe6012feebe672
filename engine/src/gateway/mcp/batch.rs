//! JSON-RPC batches, which MCP 2025-03-26 has (and later versions removed): accepted only on a
//! session that negotiated 2025-03-26. Each message is answered as if it came alone — decided,
//! recorded, forwarded on its own — and the answers go back together: over one stream (every
//! message's notifications and response, as they come) to a client that takes streams, else as
//! one JSON array once every response is in. A batch of notifications and responses alone is
//! acknowledged (202).

use super::{AgentStream, RpcError, SessionInfo, one, rpc_error, session};
use crate::gateway::{Gateway, RunIdentity};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::Value;
use serde_json::value::RawValue;
use std::sync::Arc;

/// The most messages one batch may hold.
pub const MAX_BATCH: usize = 32;
/// The one protocol version with batches.
const BATCH_VERSION: &str = "2025-03-26";

pub async fn dispatch(
    gw: &Arc<Gateway>,
    headers: &HeaderMap,
    run: &RunIdentity,
    body: &[u8],
) -> Result<Response, RpcError> {
    let refused = |why: String| rpc_error(StatusCode::BAD_REQUEST, &Value::Null, -32600, why);
    let messages: Vec<Box<RawValue>> = serde_json::from_slice(body)
        .map_err(|e| refused(format!("cogward: not a batch of messages: {e}")))?;
    if messages.is_empty() {
        return Err(refused("cogward: an empty batch".into()));
    }
    if messages.len() > MAX_BATCH {
        return Err(refused(format!(
            "cogward: a batch holds at most {MAX_BATCH} messages, this one {}",
            messages.len()
        )));
    }
    let (
        _,
        SessionInfo {
            protocol_version, ..
        },
    ) = session(gw, headers, run, &Value::Null).await?;
    if protocol_version != BATCH_VERSION {
        return Err(refused(format!(
            "cogward: batches are part of MCP {BATCH_VERSION} only; this session speaks {protocol_version}"
        )));
    }
    let answers = futures::future::join_all(messages.iter().map(|m| async move {
        let parsed: Value = serde_json::from_str(m.get()).unwrap_or(Value::Null);
        match one(gw, headers, run, &parsed, m.get().as_bytes(), true).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        }
    }))
    .await;
    let answers: Vec<Response> = answers
        .into_iter()
        .filter(|r| r.status() != StatusCode::ACCEPTED)
        .collect();
    if answers.is_empty() {
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if sse {
        return Ok(merged(answers));
    }
    let mut array = Vec::new();
    for answer in answers {
        array.extend(messages_of(answer).await);
    }
    Ok(axum::Json(array).into_response())
}

fn is_stream(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/event-stream"))
}

/// One stream of every answer's events, as they come (each chunk of ours is one whole event).
fn merged(answers: Vec<Response>) -> Response {
    let streams = answers.into_iter().map(|resp| {
        if is_stream(&resp) {
            resp.into_body().into_data_stream().boxed()
        } else {
            let body = resp.into_body();
            futures::stream::once(async move {
                let json = axum::body::to_bytes(body, usize::MAX).await?;
                let message = RawValue::from_string(String::from_utf8_lossy(&json).into_owned())
                    .map_err(axum::Error::new)?;
                Ok(AgentStream::event(&message))
            })
            .boxed()
        }
    });
    let events = futures::stream::select_all(streams)
        .map(|chunk: Result<Bytes, axum::Error>| chunk.map_err(std::io::Error::other));
    let mut resp = Response::new(Body::from_stream(events));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    resp
}

/// The responses in an answer: its JSON body, or the responses on its stream (a parked call's
/// stream ends with its response; its progress is left out of a JSON answer).
async fn messages_of(resp: Response) -> Vec<Value> {
    let stream = is_stream(&resp);
    let Ok(bytes) = axum::body::to_bytes(resp.into_body(), usize::MAX).await else {
        return Vec::new();
    };
    if !stream {
        return serde_json::from_slice(&bytes).into_iter().collect();
    }
    let mut buf = String::from_utf8_lossy(&bytes).into_owned();
    let mut out = Vec::new();
    while let Some(event) = crate::sse::take_event(&mut buf) {
        if let Some(message) = event
            .data
            .and_then(|d| serde_json::from_str::<Value>(&d).ok())
            .filter(|m| m.get("id").is_some() && m.get("method").is_none())
        {
            out.push(message);
        }
    }
    out
}
