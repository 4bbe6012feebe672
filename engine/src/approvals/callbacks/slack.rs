//! Slack's interactive callbacks: `block_actions` payloads, form-encoded, signed
//! `v0=HMAC-SHA256(signing secret, "v0:{timestamp}:{raw body}")` within five minutes; a delivery
//! is its signature.

use super::deliveries::take_once;
use super::{Asked, Refused, decide, header, hmac_hex, mapped, refuse, refused, same, subject};
use crate::http::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;
use std::collections::BTreeMap;

/// How far a Slack request's timestamp may be from now.
const SLACK_WINDOW_SECONDS: i64 = 300;
pub(super) async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let asked = match verify_slack(&state, &headers, &body).await {
        Ok(asked) => asked,
        Err(r) => return refuse(&state, "slack", r, None).await,
    };
    decide(state, asked).await
}

async fn verify_slack(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Asked, Refused> {
    let unauthorized = |detail: &str| refused(StatusCode::UNAUTHORIZED, "bad_signature", detail);
    let Some((slack, secret)) = &state.channels.slack else {
        return Err(refused(
            StatusCode::NOT_FOUND,
            "channel_not_configured",
            "Slack is not an approval channel here",
        ));
    };
    let ts = header(headers, "x-slack-request-timestamp")
        .and_then(|t| t.parse::<i64>().ok())
        .ok_or_else(|| unauthorized("no X-Slack-Request-Timestamp"))?;
    let signature = header(headers, "x-slack-signature")
        .and_then(|s| s.strip_prefix("v0="))
        .ok_or_else(|| unauthorized("no v0 X-Slack-Signature"))?;
    let expected = hmac_hex(secret, &[format!("v0:{ts}:").as_bytes(), body]);
    if !same(signature, &expected) {
        return Err(unauthorized("the signature does not match the body"));
    }
    if (chrono::Utc::now().timestamp() - ts).abs() > SLACK_WINDOW_SECONDS {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            "stale_request",
            format!("the request's timestamp {ts} is more than {SLACK_WINDOW_SECONDS} s from now"),
        ));
    }
    let form: BTreeMap<String, String> = serde_urlencoded::from_bytes(body)
        .map_err(|e| refused(StatusCode::BAD_REQUEST, "bad_payload", e.to_string()))?;
    let payload: Value = form
        .get("payload")
        .and_then(|p| serde_json::from_str(p).ok())
        .ok_or_else(|| refused(StatusCode::BAD_REQUEST, "bad_payload", "no JSON `payload`"))?;
    let bad = |why: &str| refused(StatusCode::BAD_REQUEST, "bad_payload", why);
    if payload["type"] != "block_actions" {
        return Err(bad("not a block_actions payload"));
    }
    let action = &payload["actions"][0];
    let approve = match action["action_id"].as_str() {
        Some("approve") => true,
        Some("reject") => false,
        _ => return Err(bad("the action is neither approve nor reject")),
    };
    let (run_id, tool_call) = action["value"]
        .as_str()
        .and_then(subject)
        .ok_or_else(|| bad("the button's value names no run or tool call"))?;
    let user = payload["user"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let principal = mapped(&slack.users, "Slack", &user)?;
    take_once(state, "slack", signature).await?;
    Ok(Asked {
        channel: "slack",
        delivery: signature.to_string(),
        user,
        principal,
        approve,
        run_id,
        tool_call,
    })
}
