//! Decisions from where approvers are: Slack's interactive callbacks (`POST
//! /v1/callbacks/slack`) and Jira's admin webhooks (`POST /v1/callbacks/jira`). Neither carries
//! a cogward token: each is verified on its raw bytes before anything is parsed, as the vendor
//! signs it —
//!
//! - Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256(signing secret, "v0:{ts}:{body}")>` with
//!   `X-Slack-Request-Timestamp` within five minutes;
//! - Jira: `X-Hub-Signature: sha256=<hex HMAC-SHA256(webhook secret, body)>`; Jira signs no
//!   time, so each delivery's `X-Atlassian-Webhook-Identifier` is taken once;
//!
//! compared in constant time, and a delivery (Slack's signature, Jira's identifier) is taken
//! once (`callback_deliveries`, migration 0011): a replay is refused once its first delivery is
//! decided, asked to come again while that is in flight, and taken if that could not decide. The
//! channel's user is mapped to a cogward principal (the channel's `users`), which then decides
//! as it would through the API — the same checks (its role, tenant, group; never the
//! submitter), recorded with the channel. Every refusal is a `security.callback_refused` ledger
//! entry and changes nothing else.
//!
//! What a decision is about is in the message: a Slack button's `value`, a Jira issue's label,
//! `run:<run id>` (a run's gate) or `tool:<run id>:<call id>` (a parked tool call; in a Jira
//! label `cogward-run-<id>` / `cogward-tool-<run id>-<call id>`, labels having no colons).
//! A run waiting at its gate is posted to Slack (with these buttons) and filed in Jira (with
//! that label) by the workflow (`notify_approvers`), and both told the outcome; posting tool
//! calls' requests is not built yet.

use crate::audit::NewEntry;
use crate::http::AppState;
use crate::http::auth::Role;
use crate::http::error::{ApiError, problem};
use crate::runs::routes::DecisionBody;
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cogward_protocol::audit::{AuditBody, CallbackAsked, CallbackRefused};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use subtle::ConstantTimeEq;

/// How long a callback may take before its answer is given (Slack wants one within 3 s); the
/// decision goes on after it.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_millis(2500);

/// `channels.json`: the approval channels and their users.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelsFile {
    /// Each approving group's rule: how many must approve, whom to escalate to.
    #[serde(default)]
    groups: cogward_protocol::approval::GroupRules,
    #[serde(default)]
    slack: Option<SlackFile>,
    #[serde(default)]
    jira: Option<JiraFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlackFile {
    /// The environment variable holding the app's signing secret.
    signing_secret_env: String,
    /// Slack user id → cogward principal.
    users: BTreeMap<String, String>,
    /// Where runs waiting for approval are posted: the Web API, the bot token's variable and
    /// the channel id (both needed to post at all).
    #[serde(default = "slack_api")]
    api_url: String,
    #[serde(default)]
    bot_token_env: Option<String>,
    #[serde(default)]
    channel: Option<String>,
}

fn slack_api() -> String {
    "https://slack.com/api".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct JiraFile {
    /// The environment variable holding the webhook's secret.
    webhook_secret_env: String,
    /// Jira `accountId` → cogward principal.
    users: BTreeMap<String, String>,
    /// The statuses a transition to approves, or rejects.
    approve_status: String,
    reject_status: String,
    /// Where runs waiting for approval are filed as issues (all of `base_url`, `user_email`,
    /// `api_token_env` and `project_key` needed to file at all).
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    user_email: Option<String>,
    #[serde(default)]
    api_token_env: Option<String>,
    #[serde(default)]
    project_key: Option<String>,
    #[serde(default = "task")]
    issue_type: String,
}

fn task() -> String {
    "Task".into()
}

/// The approval channels, their secrets resolved.
#[derive(Debug, Default)]
pub struct Channels {
    slack: Option<(SlackFile, Vec<u8>)>,
    jira: Option<(JiraFile, Vec<u8>)>,
    /// Where approvals are posted.
    pub posters: cogward_activities::notify::Posters,
    /// Each approving group's rule (`groups`).
    pub group_rules: cogward_protocol::approval::GroupRules,
}

impl Channels {
    /// Read `path` (none: no channels) and the secrets it names from the environment.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let file: ChannelsFile = serde_json::from_str(&text)
            .with_context(|| format!("parsing channels file {}", path.display()))?;
        let secret = |var: &str| -> anyhow::Result<Vec<u8>> {
            let value = std::env::var(var)
                .with_context(|| format!("{}: {var} is not set", path.display()))?;
            anyhow::ensure!(!value.is_empty(), "{}: {var} is empty", path.display());
            Ok(value.into_bytes())
        };
        let mut posters = cogward_activities::notify::Posters::default();
        let slack = match file.slack {
            Some(s) => {
                let key = secret(&s.signing_secret_env)?;
                if let (Some(token_env), Some(channel)) = (&s.bot_token_env, &s.channel) {
                    posters.slack = Some(cogward_activities::notify::SlackPoster {
                        api_url: s.api_url.clone(),
                        token: String::from_utf8_lossy(&secret(token_env)?).into_owned(),
                        channel: channel.clone(),
                    });
                }
                Some((s, key))
            }
            None => None,
        };
        let jira = match file.jira {
            Some(j) => {
                let key = secret(&j.webhook_secret_env)?;
                if let (Some(base_url), Some(user), Some(token_env), Some(project_key)) =
                    (&j.base_url, &j.user_email, &j.api_token_env, &j.project_key)
                {
                    posters.jira = Some(cogward_activities::notify::JiraPoster {
                        base_url: base_url.clone(),
                        user: user.clone(),
                        token: String::from_utf8_lossy(&secret(token_env)?).into_owned(),
                        project_key: project_key.clone(),
                        issue_type: j.issue_type.clone(),
                    });
                }
                Some((j, key))
            }
            None => None,
        };
        Ok(Self {
            slack,
            jira,
            posters,
            group_rules: file.groups,
        })
    }
}

mod deliveries;
mod jira;
mod slack;

use deliveries::{give_back, settle};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/callbacks/slack", post(slack::callback))
        .route("/v1/callbacks/jira", post(jira::callback))
}

/// A callback refused: why, for the ledger and the answer.
struct Refused {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

fn refused(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Refused {
    Refused {
        status,
        code,
        detail: detail.into(),
    }
}

/// What a verified callback asks: who, which way, about what.
struct Asked {
    channel: &'static str,
    /// The delivery taken ([`take_once`]).
    delivery: String,
    /// The channel's user, and the principal it maps to.
    user: String,
    principal: String,
    approve: bool,
    run_id: String,
    tool_call: Option<String>,
}

fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> String {
    // HMAC takes a key of any length: the error cannot happen (and an empty answer matches no
    // signature).
    let Ok(mut mac) = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key) else {
        return String::new();
    };
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// `run:<id>` or `tool:<run id>:<call id>`.
fn subject(text: &str) -> Option<(String, Option<String>)> {
    if let Some(run) = text.strip_prefix("run:") {
        return (!run.is_empty()).then(|| (run.to_string(), None));
    }
    let (run, call) = text.strip_prefix("tool:")?.split_once(':')?;
    (!run.is_empty() && !call.is_empty()).then(|| (run.to_string(), Some(call.to_string())))
}

/// The cogward principal a channel's user is.
fn mapped(users: &BTreeMap<String, String>, channel: &str, user: &str) -> Result<String, Refused> {
    users.get(user).cloned().ok_or_else(|| {
        refused(
            StatusCode::FORBIDDEN,
            "unknown_approver",
            format!("{channel} user {user:?} is no cogward principal"),
        )
    })
}

/// Decide as the mapped principal, as the API would; answer within Slack's time (the decision
/// goes on if it takes longer).
async fn decide(state: AppState, asked: Asked) -> Response {
    let Some(principal) = state.tokens.by_name(&asked.principal) else {
        let r = refused(
            StatusCode::FORBIDDEN,
            "unknown_approver",
            format!(
                "{} maps to {:?}, who is no principal here",
                asked.user, asked.principal
            ),
        );
        return refuse_taken(&state, &asked, r).await;
    };
    if principal.require(Role::Approve).is_err() {
        let r = refused(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{} may not approve", asked.principal),
        );
        return refuse_taken(&state, &asked, r).await;
    }
    let body = DecisionBody {
        comment: Some(format!("from {} user {}", asked.channel, asked.user)),
        tool_call: asked.tool_call.clone(),
    };
    let (channel, delivery) = (asked.channel, asked.delivery.clone());
    let deciding = state.clone();
    let (run_id, approve) = (asked.run_id.clone(), asked.approve);
    // The decision runs to its end whatever the channel is told meanwhile; if it could not be
    // made (Temporal unreachable, say) the delivery is given back, so that the vendor's retry of
    // it is not taken for a replay.
    let task = tokio::spawn(async move {
        let decided = crate::runs::routes::decide(
            deciding.clone(),
            principal,
            run_id,
            body,
            approve,
            channel,
        )
        .await;
        match &decided {
            Err(ApiError(p)) if p.status >= 500 => give_back(&deciding, channel, &delivery).await,
            _ => settle(&deciding, channel, &delivery).await,
        }
        decided
    });
    match tokio::time::timeout(ANSWER_WITHIN, task).await {
        Ok(Ok(Ok(_))) => StatusCode::OK.into_response(),
        Ok(Ok(Err(ApiError(p)))) => {
            let r = Refused {
                status: StatusCode::from_u16(p.status).unwrap_or(StatusCode::FORBIDDEN),
                code: "decision_refused",
                detail: format!("{}: {}", p.code, p.detail),
            };
            refuse(&state, asked.channel, r, about(&asked)).await
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "a callback's decision failed");
            give_back(&state, asked.channel, &asked.delivery).await;
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        // Still deciding. Slack wants its answer now (an approver whose click is lost clicks
        // again: a new delivery); Jira redelivers what is not answered 2xx, and a redelivery
        // after the decision is made is a replay, refused harmlessly.
        Err(_) if asked.channel == "slack" => StatusCode::OK.into_response(),
        Err(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "still_deciding",
            "the decision is not made yet; redeliver",
        )
        .into_response(),
    }
}

fn about(asked: &Asked) -> Option<CallbackAsked> {
    Some(CallbackAsked {
        user: asked.user.clone(),
        principal: asked.principal.clone(),
        run_id: asked.run_id.clone(),
        tool_call: asked.tool_call.clone(),
        approve: asked.approve,
    })
}

/// Refuse a delivery already taken: settled for good once its refusal is recorded, given back
/// (for its redelivery to be refused and recorded then) if it could not be.
async fn refuse_taken(state: &AppState, asked: &Asked, r: Refused) -> Response {
    if record(state, asked.channel, &r, about(asked)).await {
        settle(state, asked.channel, &asked.delivery).await;
        problem(r.status, r.code, r.detail).into_response()
    } else {
        give_back(state, asked.channel, &asked.delivery).await;
        unrecorded()
    }
}

/// Record the refusal (`security.callback_refused`) and answer it. A refusal that cannot be
/// recorded (a full disk, the database down) is answered 503 instead, nothing decided, so that
/// the vendor's redelivery is refused again and recorded: no refusal goes unrecorded.
async fn refuse(
    state: &AppState,
    channel: &str,
    r: Refused,
    asked: Option<CallbackAsked>,
) -> Response {
    if record(state, channel, &r, asked).await {
        problem(r.status, r.code, r.detail).into_response()
    } else {
        unrecorded()
    }
}

/// Append the refusal's `security.callback_refused` entry; whether it is in the ledger.
async fn record(
    state: &AppState,
    channel: &str,
    r: &Refused,
    asked: Option<CallbackAsked>,
) -> bool {
    tracing::warn!(channel, code = r.code, detail = %r.detail, "callback refused");
    let (event, body) = CallbackRefused {
        channel: channel.to_string(),
        code: r.code.to_string(),
        reason: r.detail.clone(),
        asked,
    }
    .entry();
    let entry = NewEntry::app(
        &state.namespace,
        format!("callbacks/{channel}"),
        event,
        body,
    );
    match state.ledger.append(vec![entry]).await {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "recording a refused callback");
            false
        }
    }
}

/// The answer to a refusal that could not be recorded.
fn unrecorded() -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the refusal could not be recorded; nothing was decided; redeliver",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_signatures_are_computed_as_slack_documents() {
        // Slack's documented example (api.slack.com/authentication/verifying-requests-from-slack).
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let ts = "1531420618";
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = hmac_hex(secret, &[format!("v0:{ts}:").as_bytes(), body.as_bytes()]);
        assert_eq!(
            sig,
            "a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
        );
    }

    #[test]
    fn subjects_name_a_gate_or_a_tool_call() {
        assert_eq!(subject("run:run-1"), Some(("run-1".into(), None)));
        assert_eq!(
            subject("tool:run-1:call-9"),
            Some(("run-1".into(), Some("call-9".into())))
        );
        for bad in ["run:", "tool:run-1", "tool::x", "other:1", ""] {
            assert_eq!(subject(bad), None, "{bad}");
        }
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
