//! Approvals from Slack and Jira: their callbacks, as the vendors send and sign them (the
//! senders here are ours, speaking Slack's interactive-payload form encoding and Jira's webhook
//! JSON, signed exactly as each documents), against a real stack. Tried as an approver, an
//! attacker and a replaying proxy would.

use crate::RUN_TIMEOUT;
use crate::stack::{SmallDisk, Stack, StackOptions};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

const SLACK_SECRET: &str = "e2e-slack-signing-secret";
const SLACK_BOT_TOKEN: &str = "xoxb-e2e-bot-token";
const JIRA_SECRET: &str = "e2e-jira-webhook-secret";

fn hmac_hex(key: &str, data: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// A vendor's API out of reach here, as a local stand-in speaking its wire format
/// ([`Fake::slack`], [`Fake::jira`]): its URL, and every call it took, in order.
struct Fake {
    url: String,
    calls: Calls,
}

type Calls = std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>;

async fn fake_slack_method(
    axum::extract::State(calls): axum::extract::State<Calls>,
    axum::extract::Path(method): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(format!("Bearer {SLACK_BOT_TOKEN}").as_str()) {
        return axum::Json(json!({"ok": false, "error": "invalid_auth"})).into_response();
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return axum::Json(json!({"ok": false, "error": "invalid_json"})).into_response();
    };
    let mut calls = calls.lock().unwrap();
    let limited_before = calls.iter().any(|(m, _)| m == "ratelimited");
    if method == "chat.postMessage" && !limited_before {
        calls.push(("ratelimited".into(), body));
        let answer = axum::Json(json!({"ok": false, "error": "ratelimited"}));
        return ([("retry-after", "1")], answer).into_response();
    }
    let answer = match method.as_str() {
        "chat.postMessage" => {
            let ts = format!("1700000000.{:06}", calls.len());
            json!({"ok": true, "channel": body["channel"], "ts": ts,
                   "message": {"text": body["text"], "blocks": body["blocks"]}})
        }
        "chat.update" => {
            let posted = calls.iter().any(|(m, b)| {
                m == "chat.postMessage" && b["ts"] == body["ts"] && b["channel"] == body["channel"]
            });
            if posted {
                json!({"ok": true, "channel": body["channel"], "ts": body["ts"], "text": body["text"]})
            } else {
                json!({"ok": false, "error": "message_not_found"})
            }
        }
        _ => json!({"ok": false, "error": "unknown_method"}),
    };
    let mut recorded = body;
    if method == "chat.postMessage" {
        recorded["ts"] = answer["ts"].clone();
    }
    calls.push((method, recorded));
    axum::Json(answer).into_response()
}

impl Fake {
    /// Slack's Web API, as far as cogward uses it (`chat.postMessage`, `chat.update`): bearer
    /// bot token, JSON bodies, HTTP 200 with `ok`; its first post is `ratelimited` (with
    /// `Retry-After`), as Slack answers a burst.
    async fn slack() -> Fake {
        let calls: Calls = Default::default();
        let app = axum::Router::new()
            .route("/api/{method}", axum::routing::post(fake_slack_method))
            .with_state(calls.clone());
        Fake::serve(app, "/api", calls).await
    }

    /// Jira Cloud's REST API v3, as far as cogward uses it (issue create, comment): Basic auth
    /// (email and API token), JSON bodies, `201` answers, 404 for an unknown issue.
    async fn jira() -> Fake {
        let calls: Calls = Default::default();
        let app = axum::Router::new()
            .route("/rest/api/3/issue", axum::routing::post(fake_jira_issue))
            .route(
                "/rest/api/3/issue/{key}/comment",
                axum::routing::post(fake_jira_comment),
            )
            .with_state(calls.clone());
        Fake::serve(app, "", calls).await
    }

    /// Serve `app` on a port of its own; the fake, its base URL ending in `path`.
    async fn serve(app: axum::Router, path: &str, calls: Calls) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake { url, calls }
    }

    /// The calls of `method` (`chat.update`, Jira's `issue`, ...) taken so far, waiting (up to
    /// 30 s) until there are `n`.
    async fn calls_of(&self, method: &str, n: usize) -> Vec<Value> {
        for _ in 0..300 {
            let got: Vec<Value> = self
                .calls
                .lock()
                .unwrap()
                .iter()
                .filter(|(m, _)| m == method)
                .map(|(_, b)| b.clone())
                .collect();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!(
            "fewer than {n} {method} calls: {:?}",
            self.calls.lock().unwrap()
        );
    }
}

const JIRA_USER: &str = "cogward@example.com";
const JIRA_API_TOKEN: &str = "e2e-jira-api-token";

async fn fake_jira_issue(
    axum::extract::State(calls): axum::extract::State<Calls>,
    headers: axum::http::HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !fake_jira_authorized(&headers) {
        return axum::http::StatusCode::UNAUTHORIZED.into_response();
    }
    let mut calls = calls.lock().unwrap();
    let key = format!("OPS-{}", calls.len() + 1);
    let mut recorded = body;
    recorded["key"] = json!(key);
    calls.push(("issue".into(), recorded));
    let answer = json!({"id": "10001", "key": key, "self": format!("https://example.atlassian.net/rest/api/3/issue/{key}")});
    (axum::http::StatusCode::CREATED, axum::Json(answer)).into_response()
}

async fn fake_jira_comment(
    axum::extract::State(calls): axum::extract::State<Calls>,
    axum::extract::Path(key): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !fake_jira_authorized(&headers) {
        return axum::http::StatusCode::UNAUTHORIZED.into_response();
    }
    let mut calls = calls.lock().unwrap();
    if !calls
        .iter()
        .any(|(m, b)| m == "issue" && b["key"] == key.as_str())
    {
        let error = json!({"errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}});
        return (axum::http::StatusCode::NOT_FOUND, axum::Json(error)).into_response();
    }
    let mut recorded = body;
    recorded["key"] = json!(key);
    calls.push(("comment".into(), recorded));
    (
        axum::http::StatusCode::CREATED,
        axum::Json(json!({"id": "10100"})),
    )
        .into_response()
}

fn fake_jira_authorized(headers: &axum::http::HeaderMap) -> bool {
    use base64::Engine;
    let expected =
        base64::engine::general_purpose::STANDARD.encode(format!("{JIRA_USER}:{JIRA_API_TOKEN}"));
    headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(format!("Basic {expected}").as_str())
}

/// A stack whose approval channels are Slack (posting to `slack_api`) and Jira (filing at
/// `jira_url`), their users mapped to the stack's principals (`approver`, `lead`, `ci`;
/// `U_NOBODY` to nobody).
fn stack(dir: &std::path::Path, slack_api: &str, jira_url: &str) -> Stack {
    stack_on(dir, slack_api, jira_url, None)
}

fn stack_on(
    dir: &std::path::Path,
    slack_api: &str,
    jira_url: &str,
    database_url: Option<String>,
) -> Stack {
    let channels = dir.join("channels.json");
    std::fs::write(
        &channels,
        json!({
            "slack": {"signing_secret_env": "E2E_SLACK_SECRET",
                      "api_url": slack_api, "bot_token_env": "E2E_SLACK_BOT_TOKEN", "channel": "C0APPROVALS",
                      "users": {"U_APPROVER": "approver", "U_LEAD": "lead", "U_CI": "ci"}},
            "jira": {"webhook_secret_env": "E2E_JIRA_SECRET",
                     "base_url": jira_url, "user_email": JIRA_USER, "api_token_env": "E2E_JIRA_API_TOKEN",
                     "project_key": "OPS", "issue_type": "Task",
                     "users": {"5b10a2844c20165700ede21g": "lead", "5b10ac8d82e05b22cc7d4ef5": "approver"},
                     "approve_status": "Approved", "reject_status": "Rejected"}
        })
        .to_string(),
    )
    .unwrap();
    Stack::start(StackOptions {
        env: vec![
            (
                "COGWARD_CHANNELS_CONFIG".into(),
                channels.display().to_string(),
            ),
            ("E2E_SLACK_SECRET".into(), SLACK_SECRET.into()),
            ("E2E_SLACK_BOT_TOKEN".into(), SLACK_BOT_TOKEN.into()),
            ("E2E_JIRA_API_TOKEN".into(), JIRA_API_TOKEN.into()),
            ("E2E_JIRA_SECRET".into(), JIRA_SECRET.into()),
        ],
        database_url,
        ..Default::default()
    })
    .unwrap()
}

/// Slack's interactive callback for a button click: the `block_actions` payload, form-encoded
/// as Slack posts it, and its signature headers.
fn slack_click(
    user: &str,
    action: &str,
    value: &str,
    ts: i64,
    secret: &str,
) -> (Vec<u8>, Vec<(String, String)>) {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "team_id": "T0E2E"},
        "api_app_id": "A0E2E", "token": "deprecated-verification-token",
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C0E2E"},
        "trigger_id": "1.2.3", "team": {"id": "T0E2E", "domain": "e2e"},
        "channel": {"id": "C0E2E", "name": "approvals"},
        "message": {"type": "message", "ts": "1700000000.000100", "text": "approve?"},
        "response_url": "https://hooks.slack.com/actions/T0E2E/1/abc",
        "actions": [{"action_id": action, "block_id": "decision", "type": "button",
                     "value": value, "action_ts": "1700000001.000200",
                     "text": {"type": "plain_text", "text": action}}],
        "state": {"values": {}}
    });
    let body = serde_urlencoded::to_string([("payload", payload.to_string())])
        .unwrap()
        .into_bytes();
    let mut signed = format!("v0:{ts}:").into_bytes();
    signed.extend_from_slice(&body);
    let headers = vec![
        (
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        ),
        ("x-slack-request-timestamp".into(), ts.to_string()),
        (
            "x-slack-signature".into(),
            format!("v0={}", hmac_hex(secret, &signed)),
        ),
    ];
    (body, headers)
}

/// Jira's `jira:issue_updated` webhook for a status transition of an issue labelled for the
/// run, signed with `X-Hub-Signature`, with its delivery identifier.
fn jira_transition(
    account: &str,
    run: &str,
    to: &str,
    delivery: &str,
    secret: &str,
) -> (Vec<u8>, Vec<(String, String)>) {
    let body = json!({
        "timestamp": 1700000000000u64, "webhookEvent": "jira:issue_updated",
        "issue_event_type_name": "issue_generic",
        "user": {"accountId": account, "displayName": "Approver", "active": true},
        "issue": {"id": "10001", "key": "OPS-7", "self": "https://example.atlassian.net/rest/api/3/issue/10001",
                  "fields": {"summary": "Approve run", "labels": [format!("cogward-run-{run}")],
                             "status": {"name": to}}},
        "changelog": {"id": "10400", "items": [{"field": "status", "fieldtype": "jira",
                      "fieldId": "status", "from": "1", "fromString": "Waiting", "to": "2", "toString": to}]}
    })
    .to_string()
    .into_bytes();
    let headers = vec![
        ("content-type".into(), "application/json".into()),
        (
            "x-hub-signature".into(),
            format!("sha256={}", hmac_hex(secret, &body)),
        ),
        ("x-atlassian-webhook-identifier".into(), delivery.into()),
    ];
    (body, headers)
}

async fn post(
    stack: &Stack,
    path: &str,
    (body, headers): &(Vec<u8>, Vec<(String, String)>),
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(stack.url(path))
        .body(body.clone());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn refusals(stack: &Stack) -> Vec<String> {
    let db = cogward::db::Db::connect(&stack.database_url).await.unwrap();
    let bodies: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM ledger_entries WHERE event_type = 'security.callback_refused' ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    bodies
        .iter()
        .map(|b| {
            let v: Value = serde_json::from_str(b).unwrap();
            format!(
                "{} {}",
                v["channel"].as_str().unwrap(),
                v["code"].as_str().unwrap()
            )
        })
        .collect()
}

/// A run's gate approved from a Slack button by a mapped approver, after a forged signature, a
/// stale timestamp, an unmapped user, a user without the approve role and the run's own
/// submitter were each refused; the click replayed is refused. Another run rejected by a Jira
/// transition; a forged or unidentified delivery, a replayed one and a transition to another
/// status decide nothing. Each refusal is in the ledger; approvals carry their channel. Each
/// request is posted to (fake) Slack with its buttons, through a rate limit, and filed in (fake)
/// Jira labelled for its run; the message is updated and the issue commented with the outcome.
#[tokio::test(flavor = "multi_thread")]
async fn runs_are_decided_from_slack_and_jira_and_forged_or_replayed_callbacks_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let fake_slack = Fake::slack().await;
    let fake_jira = Fake::jira().await;
    let stack = stack(dir.path(), &fake_slack.url, &fake_jira.url);
    let a = stack
        .gated_run(&stack.tokens.lead, json!({}))
        .await
        .unwrap();
    // The request was posted (after Slack's rate limit) with the buttons the approver clicks.
    let posted = fake_slack.calls_of("chat.postMessage", 1).await;
    let message = &posted[0];
    assert_eq!(message["channel"], "C0APPROVALS", "{message}");
    assert!(message["text"].as_str().unwrap().contains(&a), "{message}");
    let buttons = &message["blocks"][1]["elements"];
    let value = buttons[0]["value"].as_str().unwrap().to_string();
    assert_eq!(value, format!("run:{a}"), "{message}");
    assert_eq!(
        (
            buttons[0]["action_id"].as_str(),
            buttons[1]["action_id"].as_str()
        ),
        (Some("approve"), Some("reject"))
    );
    let now = chrono::Utc::now().timestamp();
    let slack = "/v1/callbacks/slack";
    for (what, click, status) in [
        (
            "forged",
            slack_click("U_APPROVER", "approve", &value, now, "not the secret"),
            401,
        ),
        (
            "stale",
            slack_click("U_APPROVER", "approve", &value, now - 600, SLACK_SECRET),
            401,
        ),
        (
            "unmapped",
            slack_click("U_NOBODY", "approve", &value, now, SLACK_SECRET),
            403,
        ),
        (
            "no approve role",
            slack_click("U_CI", "approve", &value, now, SLACK_SECRET),
            403,
        ),
        (
            "the submitter",
            slack_click("U_LEAD", "approve", &value, now, SLACK_SECRET),
            403,
        ),
    ] {
        let (got, body) = post(&stack, slack, &click).await;
        assert_eq!(got, status, "{what}: {body}");
        assert_eq!(
            stack.run(&a).await.unwrap()["status"],
            "awaiting_approval",
            "{what}"
        );
    }
    let click = slack_click("U_APPROVER", "approve", &value, now, SLACK_SECRET);
    let (got, body) = post(&stack, slack, &click).await;
    assert_eq!(got, 200, "{body}");
    let (got, _) = post(&stack, slack, &click).await;
    assert_eq!(got, 409, "a replayed click");
    stack
        .wait_status(&a, &["succeeded"], RUN_TIMEOUT)
        .await
        .unwrap();
    // The message now says who decided, where; its buttons are gone.
    let updated = fake_slack.calls_of("chat.update", 1).await;
    assert_eq!(updated[0]["ts"], message["ts"], "{updated:?}");
    assert_eq!(
        updated[0]["text"],
        format!("Run `{a}`: approved by approver (slack)")
    );
    assert_eq!(
        updated[0]["blocks"].as_array().unwrap().len(),
        1,
        "{updated:?}"
    );
    let entries = stack.wait_mirrored(&a).await.unwrap();
    let approval = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "run.approval")
        .unwrap_or_else(|| panic!("no approval entry: {entries}"));
    let body: Value = serde_json::from_str(approval["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        (
            body["approver"].as_str(),
            body["channel"].as_str(),
            body["signal"].as_str()
        ),
        (Some("approver"), Some("slack"), Some("approve")),
        "{approval}"
    );

    // Jira: the run of ci's, rejected by lead's transition.
    let b = stack.gated_run(&stack.tokens.ci, json!({})).await.unwrap();
    // Filed in Jira too: an issue labelled for the run, its description in ADF.
    let issues = fake_jira.calls_of("issue", 2).await;
    let issue = issues
        .iter()
        .find(|i| i["fields"]["labels"] == json!([format!("cogward-run-{b}")]))
        .unwrap_or_else(|| panic!("no issue for {b}: {issues:?}"));
    assert_eq!(issue["fields"]["project"]["key"], "OPS", "{issue}");
    assert_eq!(issue["fields"]["description"]["type"], "doc", "{issue}");
    let jira = "/v1/callbacks/jira";
    let lead = "5b10a2844c20165700ede21g";
    let forged = jira_transition(lead, &b, "Rejected", "d-1", "not the secret");
    assert_eq!(post(&stack, jira, &forged).await.0, 401);
    let mut unidentified = jira_transition(lead, &b, "Rejected", "", JIRA_SECRET);
    unidentified
        .1
        .retain(|(k, _)| k != "x-atlassian-webhook-identifier");
    assert_eq!(post(&stack, jira, &unidentified).await.0, 401);
    let moved = jira_transition(lead, &b, "In Progress", "d-2", JIRA_SECRET);
    assert_eq!(
        post(&stack, jira, &moved).await.0,
        204,
        "another status decides nothing"
    );
    assert_eq!(stack.run(&b).await.unwrap()["status"], "awaiting_approval");
    let reject = jira_transition(lead, &b, "Rejected", "d-3", JIRA_SECRET);
    let (got, body) = post(&stack, jira, &reject).await;
    assert_eq!(got, 200, "{body}");
    assert_eq!(post(&stack, jira, &reject).await.0, 409, "a redelivery");
    let run = stack
        .wait_status(&b, &["rejected"], RUN_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(run["summary"]["approval"]["channel"], "jira", "{run}");
    assert_eq!(run["summary"]["approval"]["approver"], "lead", "{run}");
    let updated = fake_slack.calls_of("chat.update", 2).await;
    assert_eq!(
        updated[1]["text"],
        format!("Run `{b}`: rejected by lead (jira)")
    );
    let comments = fake_jira.calls_of("comment", 2).await;
    let texts: Vec<(&str, &str)> = comments
        .iter()
        .map(|c| {
            (
                c["key"].as_str().unwrap(),
                c["body"]["content"][0]["content"][0]["text"]
                    .as_str()
                    .unwrap(),
            )
        })
        .collect();
    let on_b = format!("Run `{b}`: rejected by lead (jira)");
    assert!(
        texts.contains(&(issue["key"].as_str().unwrap(), on_b.as_str())),
        "{texts:?}"
    );

    assert_eq!(
        refusals(&stack).await,
        [
            "slack bad_signature",
            "slack stale_request",
            "slack unknown_approver",
            "slack forbidden",
            "slack decision_refused",
            "slack replayed",
            "jira bad_signature",
            "jira bad_signature",
            "jira replayed",
        ]
    );
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
}

/// A callback that arrives while Temporal is down is answered 5xx, so the vendor redelivers it;
/// the redeliveries of that very delivery (same Jira identifier) are not refused as replays
/// while it is undecided, and the run is decided once, from Jira, when Temporal is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_callback_that_could_not_decide_is_taken_again_when_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let fake_slack = Fake::slack().await;
    let fake_jira = Fake::jira().await;
    let mut stack = stack(dir.path(), &fake_slack.url, &fake_jira.url);
    let id = stack.gated_run(&stack.tokens.ci, json!({})).await.unwrap();
    stack.temporal.kill9();
    let approve = jira_transition(
        "5b10ac8d82e05b22cc7d4ef5",
        &id,
        "Approved",
        "d-retry",
        JIRA_SECRET,
    );
    let (got, body) = post(&stack, "/v1/callbacks/jira", &approve).await;
    assert!(got >= 500, "{got} {body}");
    // Redelivered while that is undecided: not a replay, come again.
    let (got, body) = post(&stack, "/v1/callbacks/jira", &approve).await;
    assert_eq!(got, 503, "{body}");
    assert_eq!(body["code"], "still_deciding", "{body}");
    stack.temporal.kill9_and_restart().unwrap();
    // Redelivered until taken: while the first is in flight it is "come again" (5xx); once
    // it is decided (the first, its decision retried until Temporal answered, or this one),
    // it is a replay.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (got, body) = post(&stack, "/v1/callbacks/jira", &approve).await;
        if got == 200 || got == 409 {
            break;
        }
        assert!(got >= 500, "the redelivery was refused: {got} {body}");
        assert!(std::time::Instant::now() < deadline, "never decided");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let run = stack
        .wait_status(&id, &["succeeded"], RUN_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(run["summary"]["approval"]["channel"], "jira", "{run}");
    assert_eq!(
        post(&stack, "/v1/callbacks/jira", &approve).await.0,
        409,
        "once decided, the delivery is a replay"
    );
}

/// A delivery the engine took and then died on (kill -9 between recording it and signalling
/// the approval: the row left in flight, as such a crash leaves it) is taken again once its
/// lease has passed, and decides once; one still within its lease is asked to come again.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_left_in_flight_by_a_dead_engine_is_taken_again_and_decides_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake_slack = Fake::slack().await;
    let fake_jira = Fake::jira().await;
    let stack = stack(dir.path(), &fake_slack.url, &fake_jira.url);
    let id = stack.gated_run(&stack.tokens.ci, json!({})).await.unwrap();
    let db = cogward::db::Db::connect(&stack.database_url).await.unwrap();
    let at = |ago: i64| {
        (chrono::Utc::now() - chrono::Duration::seconds(ago))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    for (delivery, ago) in [("d-fresh", 1), ("d-abandoned", 120)] {
        sqlx::query(
            "INSERT INTO callback_deliveries (channel, delivery_id, received_at) VALUES ('jira', $1, $2)",
        )
        .bind(delivery)
        .bind(at(ago))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let transition = |delivery: &str| {
        jira_transition(
            "5b10ac8d82e05b22cc7d4ef5",
            &id,
            "Approved",
            delivery,
            JIRA_SECRET,
        )
    };
    let (got, body) = post(&stack, "/v1/callbacks/jira", &transition("d-fresh")).await;
    assert_eq!(
        (got, body["code"].as_str()),
        (503, Some("still_deciding")),
        "{body}"
    );
    let (got, body) = post(&stack, "/v1/callbacks/jira", &transition("d-abandoned")).await;
    assert_eq!(got, 200, "{body}");
    let run = stack
        .wait_status(&id, &["succeeded"], RUN_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(run["summary"]["approval"]["channel"], "jira", "{run}");
    let (got, _) = post(&stack, "/v1/callbacks/jira", &transition("d-abandoned")).await;
    assert_eq!(got, 409, "once decided, the delivery is a replay");
}

/// The database's disk fills up while approvers answer: a forged delivery whose refusal cannot
/// be recorded and a genuine one whose delivery cannot be recorded are each answered 503 with
/// nothing decided (no refusal unrecorded, no vote unaccounted for); once space is back their
/// redeliveries are refused (and recorded) and decide (once), and the chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_during_a_vote_decides_nothing_until_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path(), "24m");
    let fake_slack = Fake::slack().await;
    let fake_jira = Fake::jira().await;
    let stack = stack_on(
        dir.path(),
        &fake_slack.url,
        &fake_jira.url,
        Some(disk.sqlite_url()),
    );
    let id = stack.gated_run(&stack.tokens.ci, json!({})).await.unwrap();
    let approval = format!("approval-gate-{id}");
    let transition = |delivery: &str, secret: &str| {
        jira_transition(
            "5b10ac8d82e05b22cc7d4ef5",
            &id,
            "Approved",
            delivery,
            secret,
        )
    };

    let filler = disk.fill();
    // SQLite writes into the space its write-ahead log already has until that runs out: forged
    // deliveries (each refusal a ledger entry) until one cannot be recorded.
    let mut unrecorded = None;
    for i in 0..3000 {
        let forged = transition(&format!("d-forged-{i}"), "not-the-secret");
        match post(&stack, "/v1/callbacks/jira", &forged).await {
            (401, _) => {}
            (503, body) => {
                assert_eq!(body["code"], "storage_unavailable", "{body}");
                unrecorded = Some(forged);
                break;
            }
            (got, body) => panic!("a forged delivery on a full disk answered {got}: {body}"),
        }
    }
    let unrecorded = unrecorded.expect("the full disk recorded every refusal");
    let genuine = transition("d-genuine", JIRA_SECRET);
    let (got, body) = post(&stack, "/v1/callbacks/jira", &genuine).await;
    assert_eq!(
        (got, body["code"].as_str()),
        (503, Some("storage_unavailable")),
        "{body}"
    );
    let shown = stack.approval(&approval).await.unwrap();
    assert_eq!(shown["votes"], json!([]), "decided on a full disk: {shown}");
    assert_eq!(stack.run(&id).await.unwrap()["status"], "awaiting_approval");

    std::fs::remove_file(&filler).unwrap();
    let (got, body) = post(&stack, "/v1/callbacks/jira", &unrecorded).await;
    assert_eq!(
        (got, body["code"].as_str()),
        (401, Some("bad_signature")),
        "{body}"
    );
    let (got, body) = post(&stack, "/v1/callbacks/jira", &genuine).await;
    assert_eq!(got, 200, "{body}");
    let run = stack
        .wait_status(&id, &["succeeded"], RUN_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(run["summary"]["approval"]["channel"], "jira", "{run}");
    assert_eq!(run["summary"]["approval"]["approver"], "approver", "{run}");
    assert_eq!(post(&stack, "/v1/callbacks/jira", &genuine).await.0, 409);
    let shown = stack.approval(&approval).await.unwrap();
    assert_eq!(shown["votes"].as_array().map(Vec::len), Some(1), "{shown}");
    stack.wait_mirrored(&id).await.unwrap();
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
}
