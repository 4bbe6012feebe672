//! Telling approvers: each stage of an approval (a run's gate, a parked tool call) is posted to
//! Slack as an interactive message (Block Kit, approve/reject buttons whose value names the
//! subject, answered at `/v1/callbacks/slack`) and filed in Jira as an issue labelled for the
//! subject (its transition answered at `/v1/callbacks/jira`); once the approval ends the messages
//! are updated and the issues commented with the outcome. Activities of the `Approval` workflow.
//!
//! Slack's Web API answers HTTP 200 with `{"ok": false, "error": ...}` on failure; `ratelimited`
//! is retried after its `Retry-After` (a few times), anything else is given up on. Telling
//! never holds a decision up and never fails the run: a message that could not be posted is
//! logged and said in the activity's result, and the run can still be decided through the API.
//! An activity retried after a worker crash may post twice.

use cogward_protocol::approval::{ApprovalSubject, GateNotice, OutcomeNotice, Posted};
use serde_json::{Value, json};
use std::time::Duration;

/// Slack's Web API as the engine posts to it.
#[derive(Debug, Clone)]
pub struct SlackPoster {
    /// `https://slack.com/api` (a fake's URL in tests).
    pub api_url: String,
    /// The bot token (`xoxb-…`).
    pub token: String,
    /// The channel (an id) requests are posted to.
    pub channel: String,
}

/// Jira Cloud's REST API v3 as the engine files requests there.
#[derive(Debug, Clone)]
pub struct JiraPoster {
    /// `https://your-site.atlassian.net` (a fake's URL in tests).
    pub base_url: String,
    /// Basic auth: the account's email and an API token.
    pub user: String,
    pub token: String,
    pub project_key: String,
    pub issue_type: String,
}

/// The HTTP client a post goes out with: no call to a vendor may hold a notice up long.
fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())
}

/// Atlassian Document Format: one paragraph of `text`.
fn adf(text: &str) -> Value {
    json!({"type": "doc", "version": 1,
           "content": [{"type": "paragraph", "content": [{"type": "text", "text": text}]}]})
}

impl JiraPoster {
    async fn call(&self, path: &str, body: &Value) -> Result<Value, String> {
        let http = client()?;
        let url = format!("{}{path}", self.base_url.trim_end_matches('/'));
        let resp = http
            .post(&url)
            .basic_auth(&self.user, Some(&self.token))
            .json(body)
            .send()
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!("{path}: HTTP {status}: {answer}"));
        }
        Ok(answer)
    }

    /// File the run's request as an issue labelled for it (a transition of it decides the
    /// run, `/v1/callbacks/jira`); the issue's key.
    pub async fn post(&self, notice: &GateNotice) -> Result<String, String> {
        let body = json!({"fields": {
            "project": {"key": self.project_key},
            "issuetype": {"name": self.issue_type},
            "summary": notice.request.subject.title(),
            "description": adf(&gate_text(notice)),
            "labels": [notice.label()],
        }});
        let answer = self.call("/rest/api/3/issue", &body).await?;
        answer["key"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("issue create: no key in {answer}"))
    }

    /// Comment the outcome on the issue.
    pub async fn comment(&self, key: &str, text: &str) -> Result<(), String> {
        let path = format!("/rest/api/3/issue/{key}/comment");
        self.call(&path, &json!({"body": adf(text)}))
            .await
            .map(|_| ())
    }
}

/// Where requests are posted.
#[derive(Debug, Clone, Default)]
pub struct Posters {
    pub slack: Option<SlackPoster>,
    pub jira: Option<JiraPoster>,
}

/// Most `ratelimited` answers waited out before a call is given up on.
const RATE_LIMIT_RETRIES: u32 = 3;
/// Longest `Retry-After` waited.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

impl SlackPoster {
    /// Call a Web API method; its answer when `ok`, else the error code.
    async fn call(&self, method: &str, body: &Value) -> Result<Value, String> {
        let http = client()?;
        let url = format!("{}/{method}", self.api_url.trim_end_matches('/'));
        for attempt in 0..=RATE_LIMIT_RETRIES {
            let resp = http
                .post(&url)
                .bearer_auth(&self.token)
                .json(body)
                .send()
                .await
                .map_err(|e| format!("{method}: {e}"))?;
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
            let answer: Value = resp
                .json()
                .await
                .map_err(|e| format!("{method}: not JSON: {e}"))?;
            if answer["ok"] == true {
                return Ok(answer);
            }
            let error = answer["error"]
                .as_str()
                .unwrap_or("unknown_error")
                .to_string();
            if error != "ratelimited" || attempt == RATE_LIMIT_RETRIES {
                return Err(format!("{method}: {error}"));
            }
            let wait = retry_after
                .unwrap_or(Duration::from_secs(1))
                .min(MAX_RETRY_AFTER);
            tokio::time::sleep(wait).await;
        }
        Err(format!("{method}: ratelimited"))
    }

    /// Post the run's request; the message's channel and `ts`.
    pub async fn post(&self, notice: &GateNotice) -> Result<(String, String), String> {
        let text = gate_text(notice);
        let value = notice.request.subject.reference();
        let button = |action: &str, label: &str, style: &str| {
            json!({"type": "button", "action_id": action, "style": style, "value": value,
                   "text": {"type": "plain_text", "text": label}})
        };
        let blocks = json!([
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "actions", "block_id": "cogward-decision",
             "elements": [button("approve", "Approve", "primary"), button("reject", "Reject", "danger")]}
        ]);
        let answer = self
            .call(
                "chat.postMessage",
                &json!({"channel": self.channel, "text": text, "blocks": blocks}),
            )
            .await?;
        let channel = answer["channel"]
            .as_str()
            .unwrap_or(&self.channel)
            .to_string();
        let ts = answer["ts"]
            .as_str()
            .ok_or("chat.postMessage: no ts in the answer")?
            .to_string();
        Ok((channel, ts))
    }

    /// Replace the posted message with the outcome (its buttons go).
    pub async fn update(&self, channel: &str, ts: &str, text: &str) -> Result<(), String> {
        let blocks = json!([{"type": "section", "text": {"type": "mrkdwn", "text": text}}]);
        self.call(
            "chat.update",
            &json!({"channel": channel, "ts": ts, "text": text, "blocks": blocks}),
        )
        .await
        .map(|_| ())
    }
}

fn gate_text(n: &GateNotice) -> String {
    let r = &n.request;
    let what = match &r.subject {
        ApprovalSubject::RunGate { run_id } => format!("Run `{run_id}`"),
        ApprovalSubject::ToolCall {
            run_id,
            tool,
            args_sha256,
            ..
        } => format!("Tool call `{tool}` (arguments sha256 `{args_sha256}`) of run `{run_id}`"),
    };
    let mut text = format!(
        "{what} of agent `{}` for tenant `{}` (submitted by {}) waits for approval",
        r.agent, r.tenant, r.requested_by
    );
    if let Some(group) = n.group() {
        text.push_str(&format!(" from group `{group}`"));
    }
    if r.required > 1 {
        text.push_str(&format!(" ({} distinct approvers)", r.required));
    }
    if n.stage > 0 {
        text.push_str(" (escalated: the previous group did not decide in time)");
    }
    if !r.reasons.is_empty() {
        text.push_str(&format!(": {}", r.reasons.join("; ")));
    }
    text
}

/// Tell the approvers of a run at its gate, wherever configured.
pub async fn tell_gate(posters: &Posters, notice: &GateNotice) -> Posted {
    let mut posted = Posted::default();
    if let Some(slack) = &posters.slack {
        match slack.post(notice).await {
            Ok(message) => posted.slack = Some(message),
            Err(e) => posted.errors.push(e),
        }
    }
    if let Some(jira) = &posters.jira {
        match jira.post(notice).await {
            Ok(key) => posted.jira = Some(key),
            Err(e) => posted.errors.push(e),
        }
    }
    for error in &posted.errors {
        tracing::warn!(subject = %notice.request.subject.reference(), %error, "the approval request could not be posted");
    }
    posted
}

/// Tell what was posted the gate's outcome: the Slack message replaced, the Jira issue
/// commented.
pub async fn tell_outcome(posters: &Posters, notice: &OutcomeNotice) {
    let text = format!("{}: {}", notice.subject.described(), notice.outcome);
    if let (Some(slack), Some((channel, ts))) = (&posters.slack, &notice.posted.slack)
        && let Err(error) = slack.update(channel, ts, &text).await
    {
        tracing::warn!(subject = %notice.subject.reference(), %error, "the Slack message could not be updated");
    }
    if let (Some(jira), Some(key)) = (&posters.jira, &notice.posted.jira)
        && let Err(error) = jira.comment(key, &text).await
    {
        tracing::warn!(subject = %notice.subject.reference(), %error, "the Jira issue could not be commented");
    }
}
