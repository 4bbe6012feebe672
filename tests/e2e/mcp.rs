//! The MCP gateway end to end, with the official Python MCP client (`tests/clients/mcp_client.py`,
//! the `mcp` SDK) and the reference server `@modelcontextprotocol/server-everything` (over stdio,
//! started by the gateway): tools filtered by scope, calls decided, escalated calls approved or
//! rejected by a human — across a restart of the gateway —, bad requests refused, all in the
//! ledger.

use crate::gateway::{
    FakeProvider, bind_model_policies, fresh_connections, gateway_config, push_and_bind,
    running_run,
};
use crate::policies::count;
use crate::stack::{Stack, StackOptions, spec};
use cogward::db::Db;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What `scripts/setup.sh` installs; under CI it must be there.
fn tool(var: &str, default: &str) -> Option<String> {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_string());
    if std::path::Path::new(&path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide {var} (scripts/setup.sh installs it)"
    );
    eprintln!("{path} is missing: run scripts/setup.sh");
    None
}

pub fn mcp_python() -> Option<String> {
    tool("COGWARD_MCP_PYTHON", "/opt/cogward-tools/venv/bin/python")
}

pub fn everything_js() -> Option<String> {
    tool(
        "COGWARD_EVERYTHING_JS",
        "/opt/cogward-tools/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
    )
}

pub fn client_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/mcp_client.py")
}

/// The gateway's configuration with server-everything as MCP server `everything`.
pub fn mcp_gateway_config(provider_url: &str, everything: &str) -> Value {
    let mut config = gateway_config(provider_url);
    config["mcp_servers"] = json!([{
        "name": "everything",
        "transport": {"stdio": {"command": ["node", everything, "stdio"]}}
    }]);
    config["breaker"] = json!({"failures": 3, "cooldown_seconds": 2});
    config
}

/// acme's tool scope: echo and the long-running operation freely, get-sum only with a release
/// manager's approval, get-env never.
pub fn tool_access() -> Value {
    json!({"tenants": {"acme": {
        "default_scope": ["everything.echo", "everything.get-sum", "everything.trigger-long-running-operation"],
        "deny": ["everything.get-env"],
        "sensitive": [{"tools": ["everything.get-sum"], "group": "release-managers", "reason": "sums need a release manager"}]
    }}})
}

/// The provider stand-in and a stack whose gateway has server-everything as `everything`, with
/// acme's tool scope bound.
pub struct McpStack {
    pub stack: Stack,
    pub db: Db,
    pub provider: FakeProvider,
    _dir: tempfile::TempDir,
}

async fn mcp_stack(everything: &str, separate_worker: bool) -> McpStack {
    mcp_stack_with(everything, separate_worker, |_| {}).await
}

/// [`mcp_stack`], with the gateway configuration adjusted by `adjust` first.
pub async fn mcp_stack_with(
    everything: &str,
    separate_worker: bool,
    adjust: impl FnOnce(&mut Value),
) -> McpStack {
    let dir = tempfile::tempdir().unwrap();
    let provider = FakeProvider::start(dir.path());
    let mut config = mcp_gateway_config(&provider.url, everything);
    adjust(&mut config);
    let stack = crate::gateway::stack_with_gateway(
        config,
        StackOptions {
            separate_worker,
            ..Default::default()
        },
    );
    push_and_bind(
        &stack,
        "tool-access",
        "tools",
        "tool.call",
        "acme",
        &tool_access(),
    );
    let db = Db::connect(&stack.database_url).await.unwrap();
    McpStack {
        stack,
        db,
        provider,
        _dir: dir,
    }
}

/// Run the Python client: one session, `ops` in order; its output lines, parsed.
pub struct Client(Child);

impl Client {
    pub fn start(python: &str, url: &str, token: &str, ops: &Value) -> Client {
        Client(
            Command::new(python)
                .arg(client_script())
                .args(["--url", url, "--token", token])
                .arg(ops.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start the MCP client"),
        )
    }

    pub fn finish(self) -> Vec<Value> {
        let out = self.0.wait_with_output().expect("MCP client output");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| json!({"unparsed": l})))
            .collect()
    }
}

fn run_client(python: &str, url: &str, token: &str, ops: Value) -> Vec<Value> {
    Client::start(python, url, token, &ops).finish()
}

/// `initialize` over plain HTTP as `token`'s agent: the new session's id.
async fn open_session(http: &reqwest::Client, url: &str, token: &str, version: &str) -> String {
    let resp = http
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                      "params": {"protocolVersion": version, "capabilities": {},
                                 "clientInfo": {"name": "e2e", "version": "1"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string()
}

/// One JSON-RPC request in `session` as `token`'s agent: the answer.
async fn rpc(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    session: &str,
    message: Value,
) -> Value {
    http.post(url)
        .bearer_auth(token)
        .header("mcp-session-id", session)
        .json(&message)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `GET /v1/runs/{id}/tool-calls`: (status, body).
async fn tool_calls(stack: &Stack, run_id: &str) -> (u16, Value) {
    stack
        .call(
            reqwest::Method::GET,
            &format!("/v1/runs/{run_id}/tool-calls"),
            Some(&stack.tokens.ci),
            None,
        )
        .await
        .unwrap()
}

/// Wait until the run has more than `known` parked tool calls; the id of the next one. (An agent
/// CLI on a loaded 2-core machine can take over a minute to reach its escalated call.)
pub async fn parked_call(stack: &Stack, run_id: &str, known: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (status, v) = tool_calls(stack, run_id).await;
        if status == 200
            && let Some(calls) = v["tool_calls"].as_array()
            && calls.len() > known
        {
            return calls[known]["call_id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no parked tool call: {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn decide(
    stack: &Stack,
    token: &str,
    run_id: &str,
    verb: &str,
    call_id: &str,
) -> (u16, Value) {
    stack
        .call(
            reqwest::Method::POST,
            &format!("/v1/runs/{run_id}/{verb}"),
            Some(token),
            Some(
                json!({"tool_call": call_id, "comment": "e2e"})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await
        .unwrap()
}

fn op<'a>(lines: &'a [Value], name: &str, nth: usize) -> &'a Value {
    lines
        .iter()
        .filter(|l| l["op"] == "call" && l["name"] == name)
        .nth(nth)
        .unwrap_or_else(|| panic!("no call {name} #{nth} in {lines:?}"))
}

pub async fn tool_call_entries(db: &Db, run_id: &str) -> Vec<Value> {
    run_entries(db, run_id, "gateway.tool_call").await
}

/// "target outcome" of each of a run's ledger entries of `event_type`, in order.
pub async fn target_outcomes(db: &Db, run_id: &str, event_type: &str) -> Vec<String> {
    run_entries(db, run_id, event_type)
        .await
        .iter()
        .map(|v| {
            format!(
                "{} {}",
                v["target"].as_str().unwrap(),
                v["outcome"].as_str().unwrap()
            )
        })
        .collect()
}

/// The bodies of a run's ledger entries of `event_type`, in order.
pub async fn run_entries(db: &Db, run_id: &str, event_type: &str) -> Vec<Value> {
    let bodies: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM ledger_entries WHERE workflow_id = $1 AND event_type = $2 ORDER BY seq",
    )
    .bind(run_id)
    .bind(event_type)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    bodies
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_tools_through_the_gateway_scoped_decided_escalated_across_a_restart() {
    let (Some(python), Some(everything)) = (mcp_python(), everything_js()) else {
        return;
    };
    // Held whole: its provider and directory live as long as the test.
    let mut m = mcp_stack(&everything, true).await;
    let db = m.db.clone();
    let stack = &mut m.stack;
    let (id, token) = running_run(stack).await;
    let url = stack.gw_url("/mcp");

    // Scope: get-env is invisible, and refused when called anyway; unknown tools are errors.
    let lines = run_client(
        &python,
        &url,
        &token,
        json!([
            {"op": "list"},
            {"op": "call", "name": "everything_echo", "arguments": {"message": "hi"}},
            {"op": "call", "name": "everything_get-env", "arguments": {}},
            {"op": "call", "name": "everything_no-such-tool", "arguments": {}},
        ]),
    );
    assert_eq!(lines[0]["op"], "initialize", "{lines:?}");
    assert_eq!(lines[0]["protocol_version"], "2025-11-25");
    let tools: Vec<&str> = lines[1]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tools.contains(&"everything_echo") && tools.contains(&"everything_get-sum"),
        "{tools:?}"
    );
    assert!(!tools.iter().any(|t| t.contains("get-env")), "{tools:?}");
    assert_eq!(tools.len(), 3, "only the scope is listed: {tools:?}");
    let echo = op(&lines, "everything_echo", 0);
    assert_eq!(
        (echo["is_error"].as_bool(), echo["text"].as_str()),
        (Some(false), Some("Echo: hi")),
        "{echo}"
    );
    let env = op(&lines, "everything_get-env", 0);
    assert_eq!(env["is_error"], true, "{env}");
    assert!(
        env["text"].as_str().unwrap().contains("denied by policy"),
        "{env}"
    );
    assert_eq!(env["meta"]["cogward/decision"], "deny", "{env}");
    assert_eq!(
        op(&lines, "everything_no-such-tool", 0)["error"]["code"],
        -32602
    );

    // Escalation: the call waits; a non-member cannot decide; a release manager approves.
    let sum = |a: i64, b: i64| json!([{"op": "call", "name": "everything_get-sum", "arguments": {"a": a, "b": b}, "timeout": 120, "progress": true}]);
    let client = Client::start(&python, &url, &token, &sum(2, 40));
    let call_id = parked_call(stack, &id, 0).await;
    let (status, v) = decide(stack, &stack.tokens.lead, &id, "approve", &call_id).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("not_in_approval_group")),
        "{v}"
    );
    let (status, v) = decide(stack, &stack.tokens.approver, &id, "approve", &call_id).await;
    assert_eq!(status, 202, "{v}");
    let lines = client.finish();
    let got = op(&lines, "everything_get-sum", 0);
    assert_eq!(got["is_error"], false, "{lines:?}");
    assert!(got["text"].as_str().unwrap().contains("is 42"), "{got}");
    let (status, v) = decide(stack, &stack.tokens.approver, &id, "reject", &call_id).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("already_decided")),
        "{v}"
    );

    // Rejected.
    let client = Client::start(&python, &url, &token, &sum(1, 1));
    let call_id = parked_call(stack, &id, 1).await;
    assert_eq!(
        decide(stack, &stack.tokens.approver, &id, "reject", &call_id)
            .await
            .0,
        202
    );
    let lines = client.finish();
    let got = op(&lines, "everything_get-sum", 0);
    assert_eq!(got["is_error"], true, "{lines:?}");
    assert!(
        got["text"]
            .as_str()
            .unwrap()
            .contains("rejected by approver"),
        "{got}"
    );

    // Across a restart of the gateway: the parked call's client loses its connection; the
    // approval is given to the restarted gateway; the retried call (same arguments) re-attaches
    // to the parked call and completes once.
    let client = Client::start(&python, &url, &token, &sum(5, 5));
    let call_id = parked_call(stack, &id, 2).await;
    // A session opened before the restart.
    let http = reqwest::Client::new();
    let session = open_session(&http, &url, &token, "2025-06-18").await;
    stack.kill9_and_restart_serve().unwrap();
    let lines = client.finish();
    assert!(
        lines.iter().all(|l| l.get("is_error").is_none()),
        "the parked call should have lost its connection, not completed: {lines:?}"
    );
    assert_eq!(
        decide(stack, &stack.tokens.approver, &id, "approve", &call_id)
            .await
            .0,
        202
    );
    let lines = run_client(&python, &url, &token, sum(5, 5));
    let got = op(&lines, "everything_get-sum", 0);
    assert!(
        got["text"].as_str().unwrap_or_default().contains("is 10"),
        "{lines:?}"
    );
    let (_, v) = tool_calls(stack, &id).await;
    assert_eq!(
        v["tool_calls"].as_array().unwrap().len(),
        3,
        "the retry re-attached: {v}"
    );
    // The old session still works after the restart.
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let listed = rpc(&http, &url, &token, &session, list).await;
    assert_eq!(
        listed["result"]["tools"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );

    // Every call is in the ledger with its decision; the chain verifies.
    let entries = tool_call_entries(&db, &id).await;
    let summary: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["target"].as_str().unwrap().to_string(),
                e["decision"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let s = |t: &str, d: &str, o: &str| (t.to_string(), d.to_string(), o.to_string());
    assert_eq!(
        summary,
        vec![
            s("everything.echo", "permit", "ok"),
            s("everything.get-env", "deny", "denied"),
            s("everything.get-sum", "escalate", "approved"),
            s("everything.get-sum", "escalate", "rejected"),
            s("everything.get-sum", "escalate", "approved"),
        ]
    );
    assert_eq!(entries[2]["detail"]["approver"], "approver");
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
    // Each parked call asked the run with an update that answered once its approval existed;
    // the run's history, rebuilt from the ledger, replays on this build, updates and all.
    stack.cancel(&id).await.unwrap();
    stack.wait_mirrored(&id).await.unwrap();
    let updates = stack
        .temporal
        .history(&id)
        .unwrap()
        .into_iter()
        .filter(|(_, t)| t == "EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED")
        .count();
    assert!(updates >= 3, "{updates} updates answered");
    let (replayed, text) = stack.replay(&id).unwrap();
    assert!(replayed, "{text}");
}

/// Malformed JSON-RPC, batches, oversized messages, missing and unknown sessions, forged
/// credentials and another run's session get clear JSON-RPC errors and change nothing.
#[tokio::test(flavor = "multi_thread")]
async fn bad_mcp_requests_get_clear_errors_and_change_nothing() {
    let Some(everything) = everything_js() else {
        return;
    };
    let m = mcp_stack(&everything, false).await;
    let (stack, db) = (&m.stack, m.db.clone());
    let (id, token) = running_run(stack).await;
    let (_, other_token) = running_run(stack).await;
    let url = stack.gw_url("/mcp");
    let http = fresh_connections();
    let session = open_session(&http, &url, &token, "2025-11-25").await;
    let other_session = open_session(&http, &url, &other_token, "2025-11-25").await;
    let counts = || async {
        (
            count(&db, "SELECT COUNT(*) FROM gateway_calls").await,
            count(
                &db,
                "SELECT COUNT(*) FROM ledger_entries WHERE event_type LIKE 'gateway.%'",
            )
            .await,
            count(&db, "SELECT COUNT(*) FROM mcp_sessions").await,
        )
    };
    // A browser page on a rebinding name, or another local origin: refused whatever it
    // carries. A loopback page of this very endpoint (Origin = Host, both loopback) passes.
    let authority = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/mcp"))
        .unwrap()
        .to_string();
    let port = authority.rsplit_once(':').unwrap().1.to_string();
    for (origin, host, status) in [
        ("http://evil.example".to_string(), authority.clone(), 403),
        (
            "http://evil.example".to_string(),
            "evil.example".to_string(),
            403,
        ),
        (
            format!("http://{authority}"),
            "evil.example".to_string(),
            403,
        ),
        ("http://127.0.0.1:1".to_string(), authority.clone(), 403),
        (format!("http://localhost:{port}"), authority.clone(), 403),
        (format!("http://{authority}"), authority.clone(), 200),
    ] {
        let resp = http
            .post(&url)
            .bearer_auth(&token)
            .header("origin", &origin)
            .header("host", &host)
            .header("mcp-session-id", &session)
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "Origin {origin}, Host {host}");
    }
    let before = counts().await;
    let key_id = token.split('.').nth(1).unwrap();
    let forged = cogward_activities::credential::mint(key_id, b"another key", &id);
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": "everything_echo", "arguments": {"message": "x"}}})
    .to_string();
    // (what, credential, session, body, HTTP status, JSON-RPC code)
    type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Vec<u8>, u16, i64);
    let cases: Vec<Case> = vec![
        ("no credential", None, Some(&session), call.clone().into_bytes(), 401, -32001),
        ("forged credential", Some(&forged), Some(&session), call.clone().into_bytes(), 401, -32001),
        ("malformed JSON", Some(&token), Some(&session), b"{\"jsonrpc\": ".to_vec(), 400, -32700),
        ("a batch on 2025-11-25", Some(&token), Some(&session), format!("[{call}]").into_bytes(), 400, -32600),
        ("not JSON-RPC 2.0", Some(&token), Some(&session), br#"{"id": 1, "method": "tools/list"}"#.to_vec(), 400, -32600),
        ("no session", Some(&token), None, call.clone().into_bytes(), 400, -32600),
        ("unknown session", Some(&token), Some("0123456789abcdef"), call.clone().into_bytes(), 404, -32001),
        ("another run's session", Some(&token), Some(&other_session), call.clone().into_bytes(), 404, -32001),
        ("oversized", Some(&token), Some(&session), vec![b' '; 2 << 20], 413, -32600),
        ("unsupported method", Some(&token), Some(&session), br#"{"jsonrpc": "2.0", "id": 3, "method": "sampling/createMessage", "params": {}}"#.to_vec(), 200, -32601),
        ("a subscription on a shared server", Some(&token), Some(&session), br#"{"jsonrpc": "2.0", "id": 3, "method": "resources/subscribe", "params": {"uri": "demo://resource/static/document/architecture.md"}}"#.to_vec(), 200, -32601),
        ("arguments not an object", Some(&token), Some(&session),
         br#"{"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "everything_echo", "arguments": [1]}}"#.to_vec(), 200, -32602),
    ];
    for (what, credential, session, body, status, code) in cases {
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(c) = credential {
            req = req.bearer_auth(c);
        }
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        let resp = req.send().await.unwrap();
        let got = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (got, v["error"]["code"].as_i64()),
            (status, Some(code)),
            "{what}: {v}"
        );
        assert!(v["error"]["message"].is_string(), "{what}: {v}");
    }
    // The standalone stream: only as a stream, only in a session of the run's own.
    let resp = http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 406);
    for (session, status) in [(None, 400), (Some(&other_session), 404)] {
        let mut req = http
            .get(&url)
            .bearer_auth(&token)
            .header("accept", "text/event-stream");
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        assert_eq!(req.send().await.unwrap().status(), status);
    }
    assert_eq!(
        counts().await,
        before,
        "a refused request changed something"
    );
}

/// JSON-RPC batches on a 2025-03-26 session: each message decided, recorded and answered on its
/// own (a permitted call, a denied one, a listing, a notification), the answers together as a
/// JSON array or as one stream; `initialize` in a batch is refused alone; an empty batch, one
/// over 32 messages or with a key given twice is refused whole and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn batches_on_2025_03_26_are_answered_message_by_message() {
    let Some(everything) = everything_js() else {
        return;
    };
    let m = mcp_stack(&everything, false).await;
    let (stack, db) = (&m.stack, m.db.clone());
    let (id, token) = running_run(stack).await;
    let url = stack.gw_url("/mcp");
    let http = reqwest::Client::new();
    let session = open_session(&http, &url, &token, "2025-03-26").await;
    let post = |body: String, accept: &'static str| {
        http.post(&url)
            .bearer_auth(&token)
            .header("mcp-session-id", &session)
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(body)
            .send()
    };
    let call = |id: i64, tool: &str, message: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": tool, "arguments": {"message": message}}})
    };
    let batch = |base: i64| {
        json!([
            call(base, "everything_echo", "one of a batch"),
            call(base + 1, "everything_get-env", ""),
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": base + 2, "method": "tools/list"},
            {"jsonrpc": "2.0", "id": base + 3, "method": "initialize",
             "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                        "clientInfo": {"name": "e2e", "version": "1"}}}
        ])
        .to_string()
    };
    let by_id = |answers: Vec<Value>| {
        let mut m: std::collections::BTreeMap<i64, Value> = std::collections::BTreeMap::new();
        for a in answers {
            m.insert(a["id"].as_i64().unwrap(), a);
        }
        m
    };
    let check = |answers: &std::collections::BTreeMap<i64, Value>, base: i64| {
        assert_eq!(
            answers.keys().copied().collect::<Vec<_>>(),
            vec![base, base + 1, base + 2, base + 3],
            "{answers:?}"
        );
        let echo = &answers[&base]["result"];
        assert_eq!(echo["content"][0]["text"], "Echo: one of a batch", "{echo}");
        let env = &answers[&(base + 1)]["result"];
        assert_eq!(env["isError"], true, "{env}");
        assert_eq!(env["_meta"]["cogward/decision"], "deny", "{env}");
        assert!(answers[&(base + 2)]["result"]["tools"].is_array());
        assert_eq!(answers[&(base + 3)]["error"]["code"], -32600);
    };

    // As one JSON array.
    let resp = post(batch(1), "application/json").await.unwrap();
    assert_eq!(resp.status(), 200);
    let answers: Vec<Value> = resp.json().await.unwrap();
    check(&by_id(answers), 1);
    // As one stream.
    let resp = post(batch(11), "application/json, text/event-stream")
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let text = resp.text().await.unwrap();
    let answers: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    check(&by_id(answers), 11);
    // Notifications alone: acknowledged.
    let notes = json!([{"jsonrpc": "2.0", "method": "notifications/initialized"}]).to_string();
    assert_eq!(post(notes, "application/json").await.unwrap().status(), 202);
    let outcomes: Vec<String> = tool_call_entries(&db, &id)
        .await
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["target"].as_str().unwrap(),
                e["decision"].as_str().unwrap()
            )
        })
        .collect();
    let mut sorted = outcomes.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "everything.echo permit",
            "everything.echo permit",
            "everything.get-env deny",
            "everything.get-env deny"
        ],
        "{outcomes:?}"
    );

    let before = (
        count(&db, "SELECT COUNT(*) FROM gateway_calls").await,
        count(
            &db,
            "SELECT COUNT(*) FROM ledger_entries WHERE event_type LIKE 'gateway.%'",
        )
        .await,
    );
    let many = Value::Array(
        (0..33)
            .map(|i| call(100 + i, "everything_echo", "x"))
            .collect(),
    );
    for (what, body, code) in [
        ("empty", "[]".to_string(), -32600),
        ("33 messages", many.to_string(), -32600),
        (
            "a key twice",
            format!(
                r#"[{}, {{"jsonrpc": "2.0", "id": 9, "id": 10, "method": "tools/list"}}]"#,
                call(8, "everything_echo", "x")
            ),
            -32700,
        ),
    ] {
        let resp = post(body, "application/json").await.unwrap();
        assert_eq!(resp.status(), 400, "{what}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
    }
    assert_eq!(
        (
            count(&db, "SELECT COUNT(*) FROM gateway_calls").await,
            count(
                &db,
                "SELECT COUNT(*) FROM ledger_entries WHERE event_type LIKE 'gateway.%'"
            )
            .await,
        ),
        before,
        "a refused batch changed something"
    );
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
}

/// A command run whose agent, inside its sandbox, uses the official Python MCP client and the
/// model endpoints through the gateway (it knows only the variables its run was given): every
/// call is in the run's ledger with its decision and token counts, and the chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_in_a_runner_uses_mcp_and_models_through_the_gateway() {
    let (Some(python), Some(everything)) = (mcp_python(), everything_js()) else {
        return;
    };
    let m = mcp_stack(&everything, false).await;
    let stack = &m.stack;
    bind_model_policies(stack);

    // The client script travels in the run's inputs (the sandbox cannot read the repository).
    let ops = json!([
        {"op": "list"},
        {"op": "call", "name": "everything_echo", "arguments": {"message": "from the sandbox"}},
        {"op": "call", "name": "everything_get-env", "arguments": {}},
    ]);
    let agent = format!(
        "set -e\n\
         python3 -c 'import json, os; open(\"mcp_client.py\", \"w\").write(json.loads(os.environ[\"COGWARD_INPUTS\"])[\"client\"])'\n\
         {python} mcp_client.py --url \"$COGWARD_MCP_URL\" --token \"$COGWARD_RUN_TOKEN\" '{ops}'\n\
         curl -sS \"$ANTHROPIC_BASE_URL/v1/messages\" -H \"x-api-key: $ANTHROPIC_API_KEY\" \
           -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \
           -d '{{\"model\": \"claude-sonnet-4-5\", \"max_tokens\": 7, \"messages\": [{{\"role\": \"user\", \"content\": \"summarise the echo\"}}]}}'\n"
    );
    let mut s = spec("acme", &["sh", "-c", &agent]);
    s["inputs"] = json!({"client": std::fs::read_to_string(client_script()).unwrap()});
    let (id, run) = stack
        .submit_until(&s, &["succeeded", "failed"])
        .await
        .unwrap();
    let stdout = std::fs::read_to_string(stack.run_dir(&id).join("stdout.log")).unwrap_or_default();
    let stderr = std::fs::read_to_string(stack.run_dir(&id).join("stderr.log")).unwrap_or_default();
    assert_eq!(run["status"], "succeeded", "{run}\n{stdout}\n{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let echo = op(&lines, "everything_echo", 0);
    assert_eq!(echo["text"], "Echo: from the sandbox", "{stdout}");
    assert_eq!(
        op(&lines, "everything_get-env", 0)["is_error"],
        true,
        "{stdout}"
    );
    assert!(stdout.contains(r#""output_tokens": 7"#), "{stdout}");

    let ledger = stack.wait_mirrored(&id).await.unwrap();
    let bodies = |event_type: &str| crate::stack::app_bodies(&ledger, event_type);
    let tools = bodies("gateway.tool_call");
    let got: Vec<(&str, &str)> = tools
        .iter()
        .map(|t| {
            (
                t["target"].as_str().unwrap(),
                t["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("everything.echo", "permit"),
            ("everything.get-env", "deny")
        ]
    );
    assert_eq!(tools[0]["agent"], "e2e-agent");
    assert_eq!(tools[0]["policies"][0]["kind"], "tool.call");
    let models = bodies("gateway.model_call");
    assert_eq!(models.len(), 1, "{models:?}");
    // "summarise the echo": 3 words in, 7 tokens out (the fake provider's rule).
    assert_eq!(models[0]["tokens"], json!({"input": 3, "output": 7}));
    assert_eq!(models[0]["decision"], "permit");
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
}

/// server-everything over Streamable HTTP on `port`, killed on drop.
struct HttpEverything(Child);

impl HttpEverything {
    fn start(everything: &str, port: u16) -> HttpEverything {
        let child = Command::new("node")
            .args([everything, "streamableHttp"])
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server-everything");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "server-everything did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        HttpEverything(child)
    }
}

impl Drop for HttpEverything {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An upstream whose calls keep failing is opened for the cool-down (calls refused at once,
/// recorded), then tried again and closed when it answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_upstream_opens_its_circuit_and_closes_it_when_back() {
    let Some(everything) = everything_js() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let provider = FakeProvider::start(dir.path());
    let port = crate::stack::free_port();
    let mut config = mcp_gateway_config(&provider.url, &everything);
    config["mcp_servers"] = json!([{
        "name": "flaky", "tenants": ["acme"],
        "transport": {"http": {"url": format!("http://127.0.0.1:{port}/mcp")}},
        "timeout_seconds": 5
    }]);
    let stack = Stack::start(StackOptions {
        gateway_config: Some(config),
        ..Default::default()
    })
    .unwrap();
    let scope = json!({"tenants": {"acme": {"default_scope": ["flaky.echo"]}}});
    push_and_bind(&stack, "tool-access", "tools", "tool.call", "acme", &scope);
    let db = Db::connect(&stack.database_url).await.unwrap();
    let (id, token) = running_run(&stack).await;
    let url = stack.gw_url("/mcp");
    let http = reqwest::Client::new();
    let session = open_session(&http, &url, &token, "2025-11-25").await;
    let echo = || async {
        let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                          "params": {"name": "flaky_echo", "arguments": {"message": "up?"}}});
        let v = rpc(&http, &url, &token, &session, call).await;
        let outcome = v["result"]["_meta"]["cogward/outcome"]
            .as_str()
            .unwrap_or("ok")
            .to_string();
        (
            v["result"]["isError"].as_bool().unwrap_or(false),
            outcome,
            v,
        )
    };
    let breaker_entries = |event_type: &'static str| {
        let db = &db;
        async move {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger_entries WHERE workflow_id = 'gateway/flaky' AND event_type = $1")
                .bind(event_type)
                .fetch_one(&db.pool)
                .await
                .unwrap();
            n
        }
    };

    let server = HttpEverything::start(&everything, port);
    let (is_error, _, v) = echo().await;
    assert!(!is_error, "{v}");
    drop(server);
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        let (is_error, outcome, v) = echo().await;
        assert!(is_error, "{v}");
        outcomes.push(outcome.clone());
        if outcome == "circuit_open" {
            assert!(
                v["result"]["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .contains("circuit open"),
                "{v}"
            );
            break;
        }
    }
    assert_eq!(
        outcomes.last().map(String::as_str),
        Some("circuit_open"),
        "{outcomes:?}"
    );
    assert!(
        outcomes[..outcomes.len() - 1]
            .iter()
            .all(|o| o == "upstream_error"),
        "{outcomes:?}"
    );
    assert_eq!(breaker_entries("gateway.breaker_opened").await, 1);

    // Back, and after the cool-down the next call goes through and closes the circuit.
    let _server = HttpEverything::start(&everything, port);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (is_error, _, v) = echo().await;
    assert!(!is_error, "{v}");
    assert_eq!(breaker_entries("gateway.breaker_closed").await, 1);
    let outcomes: Vec<String> = tool_call_entries(&db, &id)
        .await
        .iter()
        .map(|e| e["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(outcomes.first().map(String::as_str), Some("ok"));
    assert_eq!(outcomes.last().map(String::as_str), Some("ok"));
    assert!(outcomes.iter().any(|o| o == "circuit_open"), "{outcomes:?}");
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
}

/// Processes whose environment holds `mark`.
fn processes_marked(mark: &str) -> usize {
    let needle = format!("COGWARD_TEST_MARK={mark}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .map(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
                .unwrap_or(false)
        })
        .count()
}

/// A stdio server scoped to runs: one process per run, started on its first use and stopped
/// once the run has ended.
#[tokio::test(flavor = "multi_thread")]
async fn a_per_run_server_lives_as_long_as_its_run() {
    let Some(everything) = everything_js() else {
        return;
    };
    let mark = uuid::Uuid::new_v4().simple().to_string();
    let m = mcp_stack_with(&everything, false, |config| {
        config["mcp_servers"][0]["scope"] = json!("run");
        config["mcp_servers"][0]["transport"]["stdio"]["env"] = json!({"COGWARD_TEST_MARK": mark});
    })
    .await;
    let stack = &m.stack;
    let url = stack.gw_url("/mcp");
    let http = reqwest::Client::new();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (id, token) = running_run(stack).await;
        let session = open_session(&http, &url, &token, "2025-11-25").await;
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                          "params": {"name": "everything_echo", "arguments": {"message": "mine"}}});
        let v = rpc(&http, &url, &token, &session, call).await;
        assert_eq!(v["result"]["content"][0]["text"], "Echo: mine", "{v}");
        runs.push(id);
    }
    assert_eq!(processes_marked(&mark), 2, "one server process per run");
    stack.cancel(&runs[0]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while processes_marked(&mark) != 1 {
        assert!(
            Instant::now() < deadline,
            "the ended run's server is still running"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `tools/call` over plain HTTP in `session`, waiting at most `timeout`: the answer's body
/// (JSON, or the SSE stream of a parked call), or `None` when it did not come in time.
async fn call_raw(
    url: &str,
    token: &str,
    session: &str,
    name: &str,
    arguments: Value,
    timeout: Duration,
) -> Option<String> {
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let resp = http
        .post(url)
        .bearer_auth(token)
        .header("mcp-session-id", session)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                      "params": {"name": name, "arguments": arguments}}))
        .send()
        .await
        .ok()?;
    resp.text().await.ok()
}

/// One approval is one execution: copies of an approved call sent afterwards park as new
/// requests instead of riding on it. And a tool call whose client hangs up still runs to its
/// recorded outcome (`client_gone`).
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_executes_once_and_a_hung_up_tool_call_is_recorded() {
    let Some(everything) = everything_js() else {
        return;
    };
    let m = mcp_stack(&everything, false).await;
    let (stack, db) = (&m.stack, m.db.clone());
    let (id, token) = running_run(stack).await;
    let url = stack.gw_url("/mcp");
    let session = open_session(&fresh_connections(), &url, &token, "2025-11-25").await;
    let args = json!({"a": 2, "b": 40});

    // The agent's client gives up while the call is parked; the approval comes later.
    let first = {
        let (url, token, session, args) =
            (url.clone(), token.clone(), session.clone(), args.clone());
        tokio::spawn(async move {
            call_raw(
                &url,
                &token,
                &session,
                "everything_get-sum",
                args,
                Duration::from_secs(2),
            )
            .await
        })
    };
    let parked = parked_call(stack, &id, 0).await;
    assert!(first.await.unwrap().is_none_or(|b| !b.contains("42")));
    // The gateway sees the hang-up within a poll of the parked call and leaves the decision
    // to come for a retry.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stack.serve_log().contains("its decision waits for a retry") {
        assert!(
            Instant::now() < deadline,
            "the parked call's hang-up was not noticed\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, v) = decide(stack, &stack.tokens.approver, &id, "approve", &parked).await;
    assert_eq!(status, 202, "{v}");

    // Five retries of the approved call at once: they re-attach to it, one executes, the
    // others park as new requests.
    let copies: Vec<_> = (0..5)
        .map(|_| {
            let (url, token, session, args) =
                (url.clone(), token.clone(), session.clone(), args.clone());
            tokio::spawn(async move {
                call_raw(
                    &url,
                    &token,
                    &session,
                    "everything_get-sum",
                    args,
                    Duration::from_secs(10),
                )
                .await
            })
        })
        .collect();
    let mut answered = 0;
    for copy in copies {
        if copy.await.unwrap().is_some_and(|body| body.contains("42")) {
            answered += 1;
        }
    }
    assert_eq!(answered, 1, "one approval, one execution");
    let executed = tool_call_entries(&db, &id)
        .await
        .into_iter()
        .filter(|e| e["target"] == "everything.get-sum" && e["outcome"] == "approved")
        .count();
    assert_eq!(executed, 1, "one approval, one execution");
    let (_, v) = tool_calls(stack, &id).await;
    assert!(
        v["tool_calls"].as_array().unwrap().len() >= 2,
        "the copies did not park as a new request: {v}"
    );

    // A long tool call whose client hangs up once the gateway has forwarded it (its intent is
    // recorded: a call dropped before that was never forwarded, and is not recorded).
    let long_call = {
        let (url, token, session) = (url.clone(), token.clone(), session.clone());
        tokio::spawn(async move {
            call_raw(
                &url,
                &token,
                &session,
                "everything_trigger-long-running-operation",
                json!({"duration": 3, "steps": 3}),
                Duration::from_secs(60),
            )
            .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(
        &db,
        "SELECT COUNT(*) FROM gateway_calls WHERE target = 'everything.trigger-long-running-operation' AND outcome = 'pending'",
    )
    .await
        == 0
    {
        assert!(Instant::now() < deadline, "the long call was never forwarded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    long_call.abort();
    assert!(
        long_call.await.is_err_and(|e| e.is_cancelled()),
        "the long operation answered before its client hung up"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = count(
            &db,
            "SELECT COUNT(*) FROM gateway_calls WHERE target = 'everything.trigger-long-running-operation' AND outcome = 'client_gone'",
        )
        .await;
        if n == 1 {
            break;
        }
        if Instant::now() >= deadline {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT outcome, decision FROM gateway_calls WHERE target = 'everything.trigger-long-running-operation'",
            )
            .fetch_all(&db.pool)
            .await
            .unwrap();
            panic!("the hung-up tool call was never recorded as client_gone: {rows:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let intents = count(
        &db,
        "SELECT COUNT(*) FROM ledger_entries WHERE event_type = 'gateway.call_intent'",
    )
    .await;
    assert_eq!(
        intents, 2,
        "the approved call and the long one each have an intent"
    );
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
}

/// A permit carrying `redact` has the field removed from the tool's result (recorded), and a
/// policy deciding on an argument's value denies the call before it is forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn redactions_and_argument_rules_are_enforced_on_tool_calls() {
    let Some(everything) = everything_js() else {
        return;
    };
    let m = mcp_stack(&everything, false).await;
    let (stack, db) = (&m.stack, m.db.clone());
    let mut data = tool_access();
    data["tenants"]["acme"]["arguments"] = json!([{"tools": ["everything.echo"], "pointer": "/message",
        "deny": ["*rm -rf*"], "reason": "destructive commands are not echoed"}]);
    data["tenants"]["acme"]["redact"] =
        json!([{"tools": ["everything.echo"], "fields": ["/content/0/text"]}]);
    push_and_bind(
        stack,
        "tool-access",
        "tools-obligations",
        "tool.call",
        "acme",
        &data,
    );
    // The API reuses a binding for a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (id, token) = running_run(stack).await;
    let url = stack.gw_url("/mcp");
    let http = fresh_connections();
    let session = open_session(&http, &url, &token, "2025-11-25").await;
    let echo = |message: &str| {
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": "everything_echo", "arguments": {"message": message}}})
    };

    let v = rpc(&http, &url, &token, &session, echo("the token is s3cr3t")).await;
    let text = v["result"]["content"][0]["text"].as_str().unwrap();
    assert_eq!(text, "[redacted by cogward]", "{v}");
    assert!(!v.to_string().contains("s3cr3t"), "{v}");

    let v = rpc(&http, &url, &token, &session, echo("now rm -rf / please")).await;
    assert_eq!(v["result"]["isError"], true, "{v}");
    let text = v["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("argument /message") && text.contains("destructive commands"),
        "{text}"
    );

    let entries = tool_call_entries(&db, &id).await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["outcome"], "ok");
    assert_eq!(entries[0]["detail"]["redacted"], json!(["/content/0/text"]));
    assert_eq!(entries[1]["decision"], "deny");
    // Only the permitted call was forwarded: it alone has an intent.
    let intents = count(
        &db,
        "SELECT COUNT(*) FROM ledger_entries WHERE event_type = 'gateway.call_intent'",
    )
    .await;
    assert_eq!(intents, 1);
}

/// Tool calls count against the run's call ceiling when a budget is bound: the call past it is
/// refused before it is forwarded, and recorded.
#[tokio::test(flavor = "multi_thread")]
async fn tool_calls_count_against_the_runs_call_ceiling() {
    let Some(everything) = everything_js() else {
        return;
    };
    let m = mcp_stack(&everything, false).await;
    let (stack, db) = (&m.stack, m.db.clone());
    let budget =
        json!({"tenants": {"acme": {"run_max_calls": 2, "throttle_from": 1.0, "max_delay_ms": 0}}});
    push_and_bind(stack, "budget", "calls", "budget.spend", "acme", &budget);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (id, token) = running_run(stack).await;
    let url = stack.gw_url("/mcp");
    let http = fresh_connections();
    let session = open_session(&http, &url, &token, "2025-11-25").await;
    let mut answers = Vec::new();
    for i in 0..3 {
        let v = rpc(
            &http,
            &url,
            &token,
            &session,
            json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                   "params": {"name": "everything_echo", "arguments": {"message": format!("m{i}")}}}),
        )
        .await;
        answers.push(v);
    }
    assert_eq!(
        answers[0]["result"]["content"][0]["text"], "Echo: m0",
        "{answers:?}"
    );
    assert_eq!(
        answers[1]["result"]["content"][0]["text"], "Echo: m1",
        "{answers:?}"
    );
    assert_eq!(answers[2]["result"]["isError"], true, "{answers:?}");
    let text = answers[2]["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("run_max_calls"), "{text}");
    let entries = tool_call_entries(&db, &id).await;
    let outcomes: Vec<&str> = entries
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["ok", "ok", "denied"]);
}

/// Prompts and resources through the gateway, with the official Python client: listings hold
/// only what the policy lets the agent see; a prompt get, a resource read and a completion are
/// decided on their own names (`prompt:server.name`, `resource:server:uri`), recorded before and
/// after they reach the server, refused with a JSON-RPC error naming the reasons, or parked for a
/// human; a URI is routed by listing or template, and never to another tenant's server even when
/// the request names it.
#[tokio::test(flavor = "multi_thread")]
async fn prompts_and_resources_are_decided_recorded_and_routed() {
    let (Some(python), Some(everything)) = (mcp_python(), everything_js()) else {
        return;
    };
    let m = mcp_stack_with(&everything, false, |config| {
        let servers = config["mcp_servers"].as_array_mut().unwrap();
        servers.push(json!({"name": "other", "tenants": ["globex"],
                            "transport": {"stdio": {"command": ["node", everything, "stdio"]}}}));
    })
    .await;
    let (stack, db) = (&m.stack, m.db.clone());
    let docs = "demo://resource/static/document";
    let access = json!({"tenants": {"acme": {
        "default_scope": ["everything.echo", "prompt:everything.simple-prompt",
                          "prompt:everything.args-prompt", "prompt:everything.completable-prompt",
                          format!("resource:everything:{docs}/*"),
                          "resource:everything:demo://resource/dynamic/text/*"],
        "deny": [format!("resource:everything:{docs}/instructions.md")],
        "sensitive": [{"tools": [format!("resource:everything:{docs}/features.md")],
                       "group": "release-managers", "reason": "the roadmap needs a release manager"}],
        "arguments": [{"tools": ["prompt:everything.args-prompt"], "pointer": "/city",
                       "deny": ["*Atlantis*"], "reason": "no myths"}]
    }}});
    push_and_bind(
        stack,
        "tool-access",
        "features",
        "tool.call",
        "acme",
        &access,
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (id, token) = running_run(stack).await;
    let ops = json!([
        {"op": "prompts"},
        {"op": "prompt", "name": "everything_simple-prompt"},
        {"op": "prompt", "name": "everything_args-prompt", "arguments": {"city": "Atlantis", "state": "Sea"}},
        {"op": "prompt", "name": "everything_resource-prompt", "arguments": {"resourceType": "Text", "resourceId": "1"}},
        {"op": "resources"},
        {"op": "read", "uri": format!("{docs}/architecture.md")},
        {"op": "read", "uri": format!("{docs}/instructions.md")},
        {"op": "read", "uri": "demo://resource/dynamic/text/7"},
        {"op": "read", "uri": "demo://resource/dynamic/blob/7"},
        {"op": "read", "uri": format!("{docs}/architecture.md"), "server": "other"},
        {"op": "complete", "prompt": "everything_completable-prompt",
         "argument": {"name": "department", "value": "E"}},
        {"op": "set_level", "level": "debug"},
    ]);
    let out = run_client(&python, &stack.gw_url("/mcp"), &token, ops);
    let dump = serde_json::to_string_pretty(&out).unwrap();
    assert_eq!(out.len(), 13, "{dump}");
    let prompts = out[1]["prompts"].as_array().expect(&dump);
    for name in [
        "everything_simple-prompt",
        "everything_args-prompt",
        "everything_completable-prompt",
    ] {
        assert!(prompts.contains(&json!(name)), "{name}: {dump}");
    }
    assert!(
        !prompts.contains(&json!("everything_resource-prompt")),
        "{dump}"
    );
    assert_eq!(
        out[2]["texts"],
        json!(["This is a simple prompt without arguments."]),
        "{dump}"
    );
    let refused = |line: &Value, why: &str| {
        assert_eq!(line["error"]["code"], -32003, "{dump}");
        let message = line["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{why}: {dump}");
    };
    refused(&out[3], "no myths");
    refused(&out[4], "outside agent e2e-agent's scope");
    let uris = out[5]["resources"].as_array().expect(&dump);
    assert!(
        uris.contains(&json!(format!("{docs}/architecture.md"))),
        "{dump}"
    );
    assert!(
        !uris.contains(&json!(format!("{docs}/instructions.md"))),
        "{dump}"
    );
    assert_eq!(
        out[5]["templates"],
        json!(["demo://resource/dynamic/text/{resourceId}"]),
        "{dump}"
    );
    assert!(
        out[6]["texts"][0]
            .as_str()
            .expect(&dump)
            .starts_with("# Everything Server"),
        "{dump}"
    );
    refused(&out[7], "denied in tenant acme");
    assert!(
        out[8]["texts"][0].as_str().expect(&dump).contains('7'),
        "{dump}"
    );
    refused(&out[9], "outside agent e2e-agent's scope");
    assert_eq!(
        out[10]["error"]["code"], -32002,
        "another tenant's server: {dump}"
    );
    assert!(
        out[11]["values"]
            .as_array()
            .expect(&dump)
            .contains(&json!("Engineering")),
        "{dump}"
    );
    assert_eq!(out[12]["level"], "debug", "{dump}");

    // A sensitive resource parks until a release manager approves it, then is read once.
    let sensitive = Client::start(
        &python,
        &stack.gw_url("/mcp"),
        &token,
        &json!([{"op": "read", "uri": format!("{docs}/features.md")}]),
    );
    let call = parked_call(stack, &id, 0).await;
    let (status, v) = decide(stack, &stack.tokens.approver, &id, "approve", &call).await;
    assert_eq!(status, 202, "{v}");
    let read = sensitive.finish();
    assert!(
        read[1]["texts"][0].as_str().is_some_and(|t| !t.is_empty()),
        "{read:?}"
    );

    // Every use in the ledger with its decision; an intent for each one forwarded.
    let bodies = run_entries(&db, &id, "gateway.mcp_request").await;
    let uses: Vec<(String, String)> = bodies
        .iter()
        .map(|b| {
            (
                b["target"].as_str().unwrap().to_string(),
                b["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("prompt:everything.simple-prompt".to_string(), "ok"),
        ("prompt:everything.args-prompt".to_string(), "denied"),
        ("prompt:everything.resource-prompt".to_string(), "denied"),
        (format!("resource:everything:{docs}/architecture.md"), "ok"),
        (
            format!("resource:everything:{docs}/instructions.md"),
            "denied",
        ),
        (
            "resource:everything:demo://resource/dynamic/text/7".to_string(),
            "ok",
        ),
        (
            "resource:everything:demo://resource/dynamic/blob/7".to_string(),
            "denied",
        ),
        ("prompt:everything.completable-prompt".to_string(), "ok"),
        (
            format!("resource:everything:{docs}/features.md"),
            "approved",
        ),
    ]
    .into_iter()
    .map(|(t, o)| (t, o.to_string()))
    .collect();
    assert_eq!(uses, expected, "{bodies:?}");
    let intents = count(
        &db,
        &format!(
            "SELECT COUNT(*) FROM ledger_entries WHERE workflow_id = '{id}' AND event_type = 'gateway.call_intent'"
        ),
    )
    .await;
    assert_eq!(intents, 5, "one intent per forwarded use");
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
}

/// A tool's progress reaches the client that asked for it, with its own token, as the call
/// runs, and no other: two runs call the same long operation at once on the one shared
/// server process, with the same progress token (the SDK uses its request id); each gets its
/// own four steps, streamed, and the call is recorded with the notifications relayed.
#[tokio::test(flavor = "multi_thread")]
async fn progress_reaches_its_own_caller_only() {
    let (Some(python), Some(everything)) = (mcp_python(), everything_js()) else {
        return;
    };
    let m = mcp_stack(&everything, false).await;
    let (stack, db) = (&m.stack, m.db.clone());
    let url = stack.gw_url("/mcp");
    let ops = json!([{"op": "call", "name": "everything_trigger-long-running-operation",
                      "arguments": {"duration": 2, "steps": 4}, "progress": true}]);
    let mut runs = Vec::new();
    for _ in 0..2 {
        runs.push(running_run(stack).await);
    }
    let clients: Vec<Client> = runs
        .iter()
        .map(|(_, token)| Client::start(&python, &url, token, &ops))
        .collect();
    for client in clients {
        let out = client.finish();
        let dump = serde_json::to_string_pretty(&out).unwrap();
        assert_eq!(out[1]["is_error"], false, "{dump}");
        let progress: Vec<f64> = out[1]["progress"]
            .as_array()
            .expect(&dump)
            .iter()
            .map(|p| p[0].as_f64().unwrap())
            .collect();
        assert_eq!(progress.len(), 4, "its own four steps, no other's: {dump}");
        assert!(progress.windows(2).all(|w| w[0] < w[1]), "{dump}");
    }
    for (id, _) in &runs {
        let calls = tool_call_entries(&db, id).await;
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0]["outcome"], "ok", "{calls:?}");
        assert_eq!(calls[0]["detail"]["notifications"], 4, "{calls:?}");
    }
}
