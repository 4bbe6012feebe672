//! The gateway end to end: an agent in a real runner calls models through the gateway with
//! the credential its run was given; decisions, tokens and costs land in the ledger and the
//! journal; budgets throttle then deny; bad credentials and bad requests change nothing.
//!
//! The model provider is `tests/fakes/fake_provider.py`, a fake of a third party speaking the
//! Anthropic and OpenAI wire formats (streams and usage included); the gateway is configured
//! with it as it would be with the real one.

use crate::policies::count;
use crate::stack::{Stack, StackOptions, spec};
use cogward::db::Db;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The key the fake provider demands; the gateway sends it, the agent never sees it.
pub const PROVIDER_KEY: &str = "sk-fake-provider-key";

pub struct FakeProvider {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl FakeProvider {
    pub fn start(dir: &Path) -> FakeProvider {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fakes/fake_provider.py");
        let log = dir.join("provider.log");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", "0", "--api-key", PROVIDER_KEY, "--log"])
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the fake provider");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("fake provider banner");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("fake provider said {line:?}"))
            .to_string();
        FakeProvider { child, url, log }
    }

    /// The requests it received.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn gateway_config(provider_url: &str) -> Value {
    json!({
        "providers": {
            "anthropic": {"wire": "anthropic", "base_url": provider_url, "api_key_env": "FAKE_PROVIDER_KEY"},
            "openai": {"wire": "openai", "base_url": provider_url, "api_key_env": "FAKE_PROVIDER_KEY"}
        },
        "prices": [
            {"provider": "anthropic", "model": "claude-sonnet-4-5*", "input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0},
            {"provider": "openai", "model": "gpt-4o-mini", "input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.6}
        ],
        "tiers": {"*": "standard"},
        "region": "us"
    })
}

pub fn gateway_stack(provider: &FakeProvider, database_url: Option<String>) -> Stack {
    stack_with_gateway(
        gateway_config(&provider.url),
        StackOptions {
            database_url,
            ..Default::default()
        },
    )
}

/// A stack (as `options` say) whose gateway has `config`, with the fake provider's key.
pub fn stack_with_gateway(config: Value, options: StackOptions) -> Stack {
    Stack::start(StackOptions {
        gateway_config: Some(config),
        env: vec![("FAKE_PROVIDER_KEY".into(), PROVIDER_KEY.into())],
        ..options
    })
    .unwrap()
}

fn cli_ok(stack: &Stack, args: &[&str]) -> String {
    let (code, out, err) = stack.cli(&stack.tokens.ci, args).unwrap();
    assert_eq!(code, 0, "{args:?}: {out}\n{err}");
    out
}

/// Push built-in `builtin` with `data` as bundle `name` and bind it for `tenant`.
pub fn push_and_bind(
    stack: &Stack,
    builtin: &str,
    name: &str,
    kind: &str,
    tenant: &str,
    data: &Value,
) {
    let file = stack.dir.path().join(format!("{name}.json"));
    std::fs::write(&file, data.to_string()).unwrap();
    let out = cli_ok(
        stack,
        &[
            "policy",
            "push",
            &format!("builtin:{builtin}"),
            "--name",
            name,
            "--data",
            file.to_str().unwrap(),
        ],
    );
    assert!(out.contains(" version 1 "), "{out}");
    cli_ok(
        stack,
        &[
            "policy",
            "bind",
            "--tenant",
            tenant,
            "--kind",
            kind,
            "--name",
            name,
            "--version",
            "1",
        ],
    );
}

pub fn example_data(policy: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../wasm-policies/policies")
        .join(policy)
        .join("data.example.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Bind the built-in model-access and budget policies with their example data for acme.
pub fn bind_model_policies(stack: &Stack) {
    let access = example_data("model-access");
    push_and_bind(
        stack,
        "model-access",
        "models",
        "model.call",
        "acme",
        &access,
    );
    let budget = example_data("budget");
    push_and_bind(stack, "budget", "budget", "budget.spend", "acme", &budget);
}

/// The agent: Python's standard library only, using the variables the run was given.
const AGENT: &str = r#"
import json, os, urllib.request, urllib.error
def post(url, body, headers):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
a, o = os.environ["ANTHROPIC_BASE_URL"], os.environ["OPENAI_BASE_URL"]
ah = {"x-api-key": os.environ["ANTHROPIC_API_KEY"], "anthropic-version": "2023-06-01"}
oh = {"authorization": "Bearer " + os.environ["OPENAI_API_KEY"]}
msg = [{"role": "user", "content": "one two three"}]
calls = [
    ("messages", a + "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": msg}, ah),
    ("messages-stream", a + "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": msg, "stream": True}, ah),
    ("chat-stream", o + "/chat/completions", {"model": "gpt-4o-mini", "max_tokens": 3, "stream": True,
        "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": "a b"}]}, oh),
    ("responses", o + "/responses", {"model": "gpt-4o-mini", "max_output_tokens": 4, "input": "x y z w"}, oh),
    ("denied", a + "/v1/messages", {"model": "claude-opus-4-1", "max_tokens": 5, "messages": msg}, ah),
]
for name, url, body, headers in calls:
    status, text = post(url, body, headers)
    text = text.replace("\n", "|")
    print(name, status, text if len(text) < 900 else text[:450] + " ... " + text[-450:])
"#;

/// A command run whose agent calls models through the gateway: every call is in the ledger
/// with its decisions, tokens and cost; the provider saw the engine's key, never the run's
/// credential; `audit verify` passes and `policy replay` reproduces every decision.
pub async fn model_calls_from_a_run(stack: &Stack, provider: &FakeProvider) {
    bind_model_policies(stack);
    let (id, run) = stack
        .submit_until(
            &spec("acme", &["python3", "-c", AGENT]),
            &["succeeded", "failed"],
        )
        .await
        .unwrap();
    let stdout = std::fs::read_to_string(stack.run_dir(&id).join("stdout.log")).unwrap_or_default();
    assert_eq!(run["status"], "succeeded", "{run}\n{stdout}");
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            .to_string()
    };
    assert!(line("messages").starts_with("messages 200 "), "{stdout}");
    assert!(
        line("messages").contains(r#""output_tokens": 5"#),
        "{stdout}"
    );
    assert!(
        line("messages-stream").contains("event: message_stop"),
        "{stdout}"
    );
    assert!(line("chat-stream").contains("data: [DONE]"), "{stdout}");
    assert!(line("responses").starts_with("responses 200 "), "{stdout}");
    assert!(line("denied").starts_with("denied 403 "), "{stdout}");
    assert!(line("denied").contains("permission_error"), "{stdout}");

    // The provider got four calls (the denied one never reached it), each with its own key.
    let requests = provider.requests();
    assert_eq!(requests.len(), 4, "{requests:?}");
    for r in &requests {
        assert_eq!(r["api_key_ok"], true, "{r}");
    }

    let ledger = stack.wait_mirrored(&id).await.unwrap();
    let calls: Vec<Value> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "gateway.model_call")
        .map(|e| serde_json::from_str(e["body"].as_str().unwrap()).unwrap())
        .collect();
    let got: Vec<(String, String, u64, u64, String)> = calls
        .iter()
        .map(|c| {
            (
                c["target"].as_str().unwrap().to_string(),
                c["decision"].as_str().unwrap().to_string(),
                c["tokens"]["input"].as_u64().unwrap(),
                c["tokens"]["output"].as_u64().unwrap(),
                c["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let t = |target: &str, d: &str, i, o, outcome: &str| {
        (target.to_string(), d.to_string(), i, o, outcome.to_string())
    };
    assert_eq!(
        got,
        vec![
            t("anthropic/claude-sonnet-4-5", "permit", 3, 5, "ok"),
            t("anthropic/claude-sonnet-4-5", "permit", 3, 5, "ok"),
            t("openai/gpt-4o-mini", "permit", 2, 3, "ok"),
            t("openai/gpt-4o-mini", "permit", 4, 4, "ok"),
            t("anthropic/claude-opus-4-1", "deny", 0, 0, "denied"),
        ]
    );
    // 3 input tokens at $3/M and 5 output at $15/M.
    assert_eq!(calls[0]["cost_usd"], json!(0.000084));
    assert_eq!(calls[0]["policies"][0]["kind"], "model.call");
    assert_eq!(calls[0]["policies"][1]["kind"], "budget.spend");
    assert!(
        calls[0]["policies"][0]["policy"]["module_sha256"]
            .as_str()
            .unwrap()
            .len()
            == 64
    );
    assert!(
        !ledger.to_string().contains("cgw1."),
        "a run credential leaked into the ledger"
    );

    // The journal holds the same calls.
    let db = Db::connect(&stack.database_url).await.unwrap();
    let journal: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT decision, input_tokens, output_tokens FROM gateway_calls WHERE run_id = $1 ORDER BY at",
    )
    .bind(&id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(journal.len(), 5);
    assert_eq!(journal[2], ("permit".to_string(), 2, 3));

    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
    let out = cli_ok(stack, &["policy", "replay", &id]);
    // Admission, then 4 × (model access + budget) and 1 × model access.
    assert_eq!(
        out.lines().filter(|l| l.starts_with("same ")).count(),
        10,
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn model_calls_through_the_gateway_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let provider = FakeProvider::start(dir.path());
    let stack = gateway_stack(&provider, None);
    model_calls_from_a_run(&stack, &provider).await;
}

/// The run credential of `run_id`, minted as the worker does (under the installation's key
/// file: the test plays the part of the worker).
pub fn credential(stack: &Stack, run_id: &str) -> String {
    cogward::gateway::keys::KeyRing::open(stack.state_dir().join("gateway-keys.json"))
        .unwrap()
        .mint(run_id)
        .unwrap()
        .0
}

/// A client that opens a connection per request: after an oversized request the server closes
/// its connection, and a pooled client could send the next request on it.
pub fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// A run of tenant acme whose agent just sleeps, running: its id and its credential (the tests
/// then call the gateway as that agent would).
pub async fn running_run(stack: &Stack) -> (String, String) {
    let (id, _) = stack
        .submit_until(&spec("acme", &["sleep", "300"]), &["running"])
        .await
        .unwrap();
    let token = credential(stack, &id);
    (id, token)
}

async fn counts(db: &Db) -> (i64, i64) {
    (
        count(db, "SELECT COUNT(*) FROM gateway_calls").await,
        count(db, "SELECT COUNT(*) FROM ledger_entries WHERE kind = 'app'").await,
    )
}

/// Budgets throttle and then deny before the provider is called; bad credentials and bad
/// requests get clear errors in the provider's format and record nothing; a run that ended can
/// call nothing more.
#[tokio::test(flavor = "multi_thread")]
async fn budgets_throttle_then_deny_and_bad_calls_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let provider = FakeProvider::start(dir.path());
    let stack = gateway_stack(&provider, None);
    push_and_bind(
        &stack,
        "model-access",
        "models",
        "model.call",
        "acme",
        &example_data("model-access"),
    );
    let budget = json!({"tenants": {"acme": {"run_max_tokens": 400, "throttle_from": 0.5, "max_delay_ms": 300}}});
    push_and_bind(&stack, "budget", "tight", "budget.spend", "acme", &budget);
    let db = Db::connect(&stack.database_url).await.unwrap();
    let (id, token) = running_run(&stack).await;
    let http = fresh_connections();
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "w ".repeat(30)}]});
    let send = |key: Option<&str>, body: Vec<u8>, path: &str| {
        let mut req = http
            .post(stack.gw_url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        req.send()
    };

    // Bad input first: each refused with a clear error, nothing recorded, nothing forwarded.
    let before = counts(&db).await;
    // The installation's key id, another key.
    let key_id = token.split('.').nth(1).unwrap();
    let forged = cogward_activities::credential::mint(key_id, b"not the installation key", &id);
    let other_run = token.replace(&id, "run-0000000000000000000000000000");
    let ok_body = body.to_string().into_bytes();
    for (key, body, path, status, kind) in [
        (
            None,
            ok_body.clone(),
            "/gw/anthropic/v1/messages",
            401,
            "authentication_error",
        ),
        (
            Some(forged.as_str()),
            ok_body.clone(),
            "/gw/anthropic/v1/messages",
            401,
            "authentication_error",
        ),
        (
            Some(other_run.as_str()),
            ok_body.clone(),
            "/gw/anthropic/v1/messages",
            401,
            "authentication_error",
        ),
        (
            Some("sk-ant-real-looking"),
            ok_body.clone(),
            "/gw/anthropic/v1/messages",
            401,
            "authentication_error",
        ),
        (
            Some(token.as_str()),
            b"{not json".to_vec(),
            "/gw/anthropic/v1/messages",
            400,
            "invalid_request_error",
        ),
        (
            Some(token.as_str()),
            b"{}".to_vec(),
            "/gw/anthropic/v1/messages",
            400,
            "invalid_request_error",
        ),
        (
            Some(token.as_str()),
            ok_body.clone(),
            "/gw/nope/v1/messages",
            404,
            "not_found_error",
        ),
        (
            Some(token.as_str()),
            ok_body.clone(),
            "/gw/openai/v1/messages",
            404,
            "not_found_error",
        ),
        (
            Some(token.as_str()),
            vec![b' '; 33 << 20],
            "/gw/anthropic/v1/messages",
            413,
            "invalid_request_error",
        ),
    ] {
        let resp = send(key, body, path).await.unwrap();
        let got = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (got, v["error"]["type"].as_str()),
            (status, Some(kind)),
            "{path} {key:?}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("cogward: "),
            "{v}"
        );
    }
    assert_eq!(
        counts(&db).await,
        before,
        "a refused request changed something"
    );
    assert!(provider.requests().is_empty());

    // The budget: permitted, then throttled (the delay recorded), then denied with 429 before
    // the provider is called.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let resp = send(Some(&token), ok_body.clone(), "/gw/anthropic/v1/messages")
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("run_max_tokens"),
                "{v}"
            );
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(
        statuses[..statuses.len() - 1].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    let forwarded = provider.requests().len();
    assert_eq!(forwarded, statuses.len() - 1);
    let throttles: Vec<i64> = sqlx::query_scalar(
        "SELECT body FROM ledger_entries WHERE event_type = 'gateway.model_call' ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .iter()
    .map(|b: &String| {
        serde_json::from_str::<Value>(b).unwrap()["throttle_ms"]
            .as_i64()
            .unwrap()
    })
    .collect();
    assert_eq!(throttles.len(), statuses.len());
    assert_eq!(throttles[0], 0, "{throttles:?}");
    assert!(
        throttles.iter().any(|t| *t > 0),
        "never throttled: {throttles:?}"
    );
    assert_eq!(
        *throttles.last().unwrap(),
        0,
        "a denied call waits for nothing"
    );
    let denied: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM gateway_calls WHERE decision = 'deny'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(denied, 1);

    // Once the run has ended, its credential admits nothing.
    stack.cancel(&id).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let before = counts(&db).await;
    let resp = send(Some(&token), ok_body, "/gw/anthropic/v1/messages")
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has ended"),
        "{v}"
    );
    assert_eq!(counts(&db).await, before);
    assert_eq!(provider.requests().len(), forwarded);
}
