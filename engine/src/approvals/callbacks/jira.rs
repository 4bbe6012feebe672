//! Jira's admin webhooks: `jira:issue_updated` with a status change in `changelog.items`, signed
//! `X-Hub-Signature: sha256=HMAC-SHA256(webhook secret, raw body)`; Jira signs no time, so a
//! delivery is its `X-Atlassian-Webhook-Identifier`, taken once.

use super::deliveries::take_once;
use super::{Asked, Refused, decide, header, hmac_hex, mapped, refuse, refused, same, subject};
use crate::http::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

pub(super) async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let asked = match verify_jira(&state, &headers, &body).await {
        Ok(Some(asked)) => asked,
        // A change that decides nothing (another field, another status): acknowledged.
        Ok(None) => return StatusCode::NO_CONTENT.into_response(),
        Err(r) => return refuse(&state, "jira", r, None).await,
    };
    decide(state, asked).await
}

async fn verify_jira(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<Asked>, Refused> {
    let unauthorized = |detail: &str| refused(StatusCode::UNAUTHORIZED, "bad_signature", detail);
    let Some((jira, secret)) = &state.channels.jira else {
        return Err(refused(
            StatusCode::NOT_FOUND,
            "channel_not_configured",
            "Jira is not an approval channel here",
        ));
    };
    let signature = header(headers, "x-hub-signature")
        .and_then(|s| s.strip_prefix("sha256="))
        .ok_or_else(|| unauthorized("no sha256 X-Hub-Signature"))?;
    if !same(signature, &hmac_hex(secret, &[body])) {
        return Err(unauthorized("the signature does not match the body"));
    }
    let delivery = header(headers, "x-atlassian-webhook-identifier")
        .filter(|d| !d.is_empty())
        .ok_or_else(|| unauthorized("no X-Atlassian-Webhook-Identifier"))?;
    let bad = |why: &str| refused(StatusCode::BAD_REQUEST, "bad_payload", why);
    let event: Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    if event["webhookEvent"] != "jira:issue_updated" {
        return Ok(None);
    }
    let status = event["changelog"]["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["field"] == "status"))
        .and_then(|i| i["toString"].as_str());
    let approve = match status {
        Some(s) if s == jira.approve_status => true,
        Some(s) if s == jira.reject_status => false,
        _ => return Ok(None),
    };
    let label = event["issue"]["fields"]["labels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|l| {
            if let Some(run) = l.strip_prefix("cogward-run-") {
                return subject(&format!("run:{run}"));
            }
            let rest = l.strip_prefix("cogward-tool-")?;
            // Run ids are `run-<hex>`: the call id follows the run id's hex.
            let (run, call) = rest.strip_prefix("run-")?.split_once('-')?;
            subject(&format!("tool:run-{run}:{call}"))
        });
    let (run_id, tool_call) = label.ok_or_else(|| bad("the issue names no cogward run"))?;
    let user = event["user"]["accountId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let principal = mapped(&jira.users, "Jira", &user)?;
    take_once(state, "jira", delivery).await?;
    Ok(Some(Asked {
        channel: "jira",
        delivery: delivery.to_string(),
        user,
        principal,
        approve,
        run_id,
        tool_call,
    }))
}
