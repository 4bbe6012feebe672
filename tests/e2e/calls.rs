//! Every model call decided, paid for and recorded exactly once, tried as a client that hangs
//! up, an agent looking for a way around its budget, and a fault in the machine (a full disk, a
//! `kill -9` with calls in flight). The provider is the fake of `tests/fakes/fake_provider.py`;
//! it logs every request it receives, which is what "the provider saw it" means here.

use crate::gateway::{FakeProvider, PROVIDER_KEY, credential, fresh_connections, push_and_bind};
use crate::policies::count;
use crate::stack::{SmallDisk, Stack, StackOptions, spec};
use cogward::db::Db;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// acme may call any claude or gpt model (the tests are about budgets and records, not access).
fn open_access() -> Value {
    json!({"tenants": {"acme": {"tiers": {"*": [
        {"provider": "anthropic", "models": ["claude-*"]},
        {"provider": "openai", "models": ["gpt-*"]}
    ]}}}, "residency": {"anthropic": ["*"], "openai": ["*"]}})
}

fn config(provider_url: &str) -> Value {
    let mut c = crate::gateway::gateway_config(provider_url);
    // Calls take at most 3 s (the fake's slow models take 2), so one still pending 4 s later
    // was abandoned by a dead process.
    for p in ["anthropic", "openai"] {
        c["providers"][p]["timeout_seconds"] = json!(3);
    }
    c["abandoned_call_grace_seconds"] = json!(1);
    c["max_throttle_ms"] = json!(500);
    c["prices"] = json!([
        {"provider": "anthropic", "model": "claude-sonnet-4-5*", "input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0},
        {"provider": "openai", "model": "gpt-4o-mini*", "input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.6}
    ]);
    c
}

struct Calls {
    stack: Stack,
    provider: FakeProvider,
    db: Db,
    run_id: String,
    token: String,
    _dir: tempfile::TempDir,
}

/// A stack with open model access and `budget` bound for acme, and a running run of acme.
async fn calls_stack(budget: Value, database_url: Option<String>, dir: tempfile::TempDir) -> Calls {
    let provider = FakeProvider::start(dir.path());
    let stack = Stack::start(StackOptions {
        database_url,
        gateway_config: Some(config(&provider.url)),
        env: vec![("FAKE_PROVIDER_KEY".into(), PROVIDER_KEY.into())],
        ..Default::default()
    })
    .unwrap();
    push_and_bind(
        &stack,
        "model-access",
        "open",
        "model.call",
        "acme",
        &open_access(),
    );
    push_and_bind(&stack, "budget", "budget", "budget.spend", "acme", &budget);
    let db = Db::connect(&stack.database_url).await.unwrap();
    let (run_id, _) = stack
        .submit_until(&spec("acme", &["sleep", "300"]), &["running"])
        .await
        .unwrap();
    let token = credential(&stack, &run_id);
    Calls {
        stack,
        provider,
        db,
        run_id,
        token,
        _dir: dir,
    }
}

fn generous() -> Value {
    json!({"tenants": {"acme": {"run_max_tokens": 10_000_000, "throttle_from": 1.0, "max_delay_ms": 0}}})
}

/// `(path, body)` of a call on each wire, streamed or not.
fn wire_calls(anthropic_model: &str, openai_model: &str) -> Vec<(&'static str, Value)> {
    let mut out = Vec::new();
    for stream in [false, true] {
        out.push((
            "/gw/anthropic/v1/messages",
            json!({"model": anthropic_model, "max_tokens": 16, "stream": stream,
                   "messages": [{"role": "user", "content": "one two three"}]}),
        ));
        out.push((
            "/gw/openai/v1/chat/completions",
            json!({"model": openai_model, "max_completion_tokens": 16, "stream": stream,
                   "messages": [{"role": "user", "content": "one two three"}]}),
        ));
        out.push((
            "/gw/openai/v1/responses",
            json!({"model": openai_model, "max_output_tokens": 16, "stream": stream,
                   "input": "one two three"}),
        ));
    }
    out
}

impl Calls {
    async fn send(
        &self,
        http: &reqwest::Client,
        path: &str,
        body: &[u8],
    ) -> reqwest::Result<reqwest::Response> {
        http.post(self.stack.gw_url(path))
            .header("x-api-key", &self.token)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
    }

    /// The ledger bodies of `event_type`.
    async fn entries(&self, event_type: &str) -> Vec<Value> {
        let bodies: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM ledger_entries WHERE event_type = $1 ORDER BY seq",
        )
        .bind(event_type)
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect()
    }

    /// Wait until `sql` (a count) reaches `n`.
    async fn wait_count(&self, sql: &str, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = count(&self.db, sql).await;
            if got >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sql}: {got} of {n}\n{}",
                self.stack.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A client that hangs up before the answer, on every wire, streamed or not: the provider is
/// still called once, and the call is recorded (intent and outcome `client_gone`) and charged.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_is_recorded_and_charged_on_every_wire() {
    let c = calls_stack(generous(), None, tempfile::tempdir().unwrap()).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let calls = wire_calls("claude-sonnet-4-5-slow", "gpt-4o-mini-slow");
    for (path, body) in &calls {
        let r = c.send(&impatient, path, body.to_string().as_bytes()).await;
        assert!(
            r.is_err(),
            "{path}: the slow provider answered within 0.5 s"
        );
    }
    let n = calls.len() as i64;
    c.wait_count(
        "SELECT COUNT(*) FROM gateway_calls WHERE outcome = 'client_gone'",
        n,
    )
    .await;
    let charged: Vec<(i64, i64)> =
        sqlx::query_as("SELECT input_tokens + output_tokens, cost_micro_usd FROM gateway_calls")
            .fetch_all(&c.db.pool)
            .await
            .unwrap();
    assert_eq!(charged.len(), calls.len());
    assert!(
        charged.iter().all(|(t, cost)| *t > 0 && *cost > 0),
        "a call the client hung up on was not charged: {charged:?}"
    );
    assert_eq!(
        c.provider.requests().len(),
        calls.len(),
        "each forwarded once"
    );
    let intents = c.entries("gateway.call_intent").await;
    let outcomes = c.entries("gateway.model_call").await;
    assert_eq!((intents.len(), outcomes.len()), (calls.len(), calls.len()));
    assert!(
        outcomes.iter().all(|o| o["outcome"] == "client_gone"),
        "{outcomes:?}"
    );
    let (code, report) = c.stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["calls_without_outcome"], json!([]), "{report}");
}

/// An agent looking for a way around its budget: streams that do not ask for usage, a huge
/// request, many concurrent calls, an upper-case model name, a second `model` key, an unpriced
/// model. None gets past the ceiling by more than the documented bound (here: at all, since the
/// fake's inputs are far below the reservation's estimate).
#[tokio::test(flavor = "multi_thread")]
async fn budgets_have_no_side_routes() {
    let ceiling = 2000;
    let budget = json!({"tenants": {"acme": {"run_max_tokens": ceiling, "throttle_from": 1.0, "max_delay_ms": 0}}});
    let c = calls_stack(budget, None, tempfile::tempdir().unwrap()).await;
    let http = fresh_connections();

    // Bad input: refused with 400 or 403, nothing forwarded, nothing charged.
    let dup = br#"{"model":"claude-sonnet-4-5","max_tokens":16,"model":"claude-opus-4-1","messages":[{"role":"user","content":"hi"}]}"#;
    let resp = c
        .send(&http, "/gw/anthropic/v1/messages", dup)
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate key"),
        "{v}"
    );
    let unpriced = json!({"model": "claude-unpriced-1", "max_tokens": 16,
                          "messages": [{"role": "user", "content": "hi"}]});
    let resp = c
        .send(
            &http,
            "/gw/anthropic/v1/messages",
            unpriced.to_string().as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no configured price"),
        "{v}"
    );
    let huge = json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "a ".repeat(1_800_000)}]});
    let resp = c
        .send(
            &http,
            "/gw/anthropic/v1/messages",
            huge.to_string().as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 429, "a 3.6 MB request fits no reservation");
    assert!(
        c.provider.requests().is_empty(),
        "a refused call was forwarded"
    );

    // An upper-case model is the same model: decided, priced and forwarded lower-case.
    let shouting = json!({"model": " CLAUDE-SONNET-4-5", "max_tokens": 16,
                          "messages": [{"role": "user", "content": "hi"}]});
    let resp = c
        .send(
            &http,
            "/gw/anthropic/v1/messages",
            shouting.to_string().as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(c.provider.requests()[0]["model"], "claude-sonnet-4-5");
    let first = c.entries("gateway.model_call").await.pop().unwrap();
    assert_eq!(first["target"], "anthropic/claude-sonnet-4-5");
    assert!(first["cost_usd"].as_f64().unwrap() > 0.0, "{first}");

    // A Chat Completions stream that does not ask for usage is metered all the same.
    let quiet = json!({"model": "gpt-4o-mini", "stream": true, "max_completion_tokens": 16,
                       "messages": [{"role": "user", "content": "one two three"}]});
    let resp = c
        .send(
            &http,
            "/gw/openai/v1/chat/completions",
            quiet.to_string().as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A stream names its call too, and the provider's id of its answer.
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let call_id = header("x-cogward-call-id").expect("x-cogward-call-id on a stream");
    assert_eq!(header("x-cogward-decision").as_deref(), Some("permit"));
    let provider_id = header("x-cogward-provider-request-id").expect("the provider's request id");
    assert!(provider_id.starts_with("req_"), "{provider_id}");
    let text = resp.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    let streamed = c.entries("gateway.model_call").await.pop().unwrap();
    assert_eq!(streamed["call_id"], call_id.as_str());
    assert_eq!(
        streamed["detail"]["provider_request_id"],
        provider_id.as_str()
    );
    assert_eq!(streamed["detail"]["stream"], true);
    assert_eq!(
        streamed["tokens"],
        json!({"input": 3, "output": 16}),
        "{streamed}"
    );

    // Many concurrent calls: each reserves before it is forwarded, so together they stay under
    // the ceiling; the ones that do not fit are refused before the provider sees them.
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "w ".repeat(100)}]})
    .to_string();
    let sends = (0..24).map(|_| c.send(&http, "/gw/anthropic/v1/messages", body.as_bytes()));
    let statuses: Vec<u16> = futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&429),
        "24 calls all fit a ceiling of {ceiling}: {statuses:?}"
    );
    let used = count(
        &c.db,
        &format!(
            "SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM gateway_calls WHERE run_id = '{}'",
            c.run_id
        ),
    )
    .await;
    assert!(
        used <= ceiling,
        "the run used {used} tokens of a {ceiling} ceiling"
    );
    let forwarded = c.provider.requests().len() as i64;
    let permitted = count(
        &c.db,
        "SELECT COUNT(*) FROM gateway_calls WHERE decision = 'permit'",
    )
    .await;
    assert_eq!(
        forwarded, permitted,
        "every permitted call forwarded once, no other"
    );
    let pending = count(
        &c.db,
        "SELECT COUNT(*) FROM gateway_calls WHERE outcome = 'pending'",
    )
    .await;
    assert_eq!(pending, 0);
}

/// The ledger's filesystem fills up mid-traffic: calls are refused before they are forwarded
/// (the provider sees no call that has no record), and once space is back the writer and the
/// mirror recover by themselves and the chain verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_calls_before_forwarding_and_everything_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path(), "24m");
    let c = calls_stack(generous(), Some(disk.sqlite_url()), dir).await;
    let http = fresh_connections();
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "one two three"}]})
    .to_string();

    let filler = disk.fill();
    // SQLite writes into the space its write-ahead log already has until that runs out: call
    // until the refusals come.
    let mut refused = 0;
    for _ in 0..1500 {
        let resp = c
            .send(&http, "/gw/anthropic/v1/messages", body.as_bytes())
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => {}
            503 => refused += 1,
            other => panic!(
                "a full disk answered {other}: {}",
                resp.text().await.unwrap()
            ),
        }
        if refused >= 5 {
            break;
        }
    }
    assert!(refused >= 5, "the full disk refused {refused} calls");
    // A run submitted now: refused with 503, or accepted and mirrored once space is back.
    let (status, submitted) = c.stack.submit(&spec("acme", &["true"])).await.unwrap();
    assert!(status == 201 || status == 503, "{status} {submitted}");

    std::fs::remove_file(&filler).unwrap();
    for _ in 0..5 {
        let resp = c
            .send(&http, "/gw/anthropic/v1/messages", body.as_bytes())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
    if status == 201 {
        let id = submitted["run_id"].as_str().unwrap();
        c.stack
            .wait_status(id, &["succeeded"], crate::RUN_TIMEOUT)
            .await
            .unwrap();
        c.stack.wait_mirrored(id).await.unwrap();
    }
    // Every call the provider saw has its intent and its outcome in the ledger.
    c.wait_count(
        "SELECT COUNT(*) FROM ledger_entries WHERE event_type = 'gateway.model_call'",
        c.provider.requests().len() as i64,
    )
    .await;
    let intents = c.entries("gateway.call_intent").await.len();
    assert_eq!(
        intents,
        c.provider.requests().len(),
        "a forwarded call without an intent"
    );
    let (code, report) = c.stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["calls_without_outcome"], json!([]), "{report}");
}

/// `kill -9` the engine with calls in flight at the provider: after the restart, every call the
/// provider saw has its intent in the ledger, `audit verify` names the ones whose outcome was
/// lost, and once no such call can still be in flight they are settled `outcome_unknown`,
/// charged their reservation.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_calls_in_flight_loses_no_call_the_provider_saw() {
    let mut c = calls_stack(generous(), None, tempfile::tempdir().unwrap()).await;
    let calls = wire_calls("claude-sonnet-4-5-slow", "gpt-4o-mini-slow");
    let mut pending = Vec::new();
    for (path, body) in calls.clone() {
        let url = c.stack.gw_url(path);
        let token = c.token.clone();
        pending.push(tokio::spawn(async move {
            let _ = fresh_connections()
                .post(url)
                .header("x-api-key", &token)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await;
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.provider.requests().len() < calls.len() {
        assert!(
            Instant::now() < deadline,
            "the provider saw {} calls",
            c.provider.requests().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.stack.kill9_and_restart_serve().unwrap();
    for p in pending {
        let _ = p.await;
    }
    let seen = c.provider.requests().len();
    let intents = c.entries("gateway.call_intent").await;
    assert_eq!(
        intents.len(),
        seen,
        "a call the provider saw has no intent in the ledger"
    );
    let (code, report) = c.stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
    let open = report["calls_without_outcome"].as_array().unwrap();
    let outcomes = c.entries("gateway.model_call").await.len();
    assert_eq!(open.len() + outcomes, seen, "{report}");
    assert!(
        !open.is_empty(),
        "the kill lost no outcome: the test did not kill mid-call"
    );
    assert!(
        open.iter().all(|o| o["run_id"] == c.run_id.as_str()),
        "{report}"
    );
    // Budgets still count them: the run is charged their reservations.
    let pending_tokens = count(
        &c.db,
        "SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM gateway_calls WHERE outcome = 'pending'",
    )
    .await;
    assert!(pending_tokens > 0);

    // Past the longest timeout, the restarted gateway settles them as outcome_unknown.
    let lost = open.len() as i64;
    c.wait_count(
        "SELECT COUNT(*) FROM gateway_calls WHERE outcome = 'outcome_unknown'",
        lost,
    )
    .await;
    let unknown_tokens = count(
        &c.db,
        "SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM gateway_calls WHERE outcome = 'outcome_unknown'",
    )
    .await;
    assert_eq!(
        unknown_tokens, pending_tokens,
        "charged exactly their reservations"
    );
    let unknown = c
        .entries("gateway.model_call")
        .await
        .into_iter()
        .filter(|e| e["outcome"] == "outcome_unknown")
        .count() as i64;
    assert_eq!(unknown, lost);
    let (code, report) = c.stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["calls_without_outcome"], json!([]), "{report}");
}

/// A credential admits calls only while its agent runs: not at the approval gate (before the
/// runner started), not once the agent has exited; so no gateway entry of a run follows its
/// `run.finished`, even with a client hammering the gateway with the run's credential.
#[tokio::test(flavor = "multi_thread")]
async fn a_credential_admits_calls_only_while_its_agent_runs() {
    let c = calls_stack(generous(), None, tempfile::tempdir().unwrap()).await;
    let http = fresh_connections();
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
                      "messages": [{"role": "user", "content": "hi"}]})
    .to_string();

    let mut gated = spec("acme", &["sleep", "1"]);
    gated["requires_approval"] = json!(true);
    let (status, run) = c
        .stack
        .submit_as(&c.stack.tokens.lead, &gated)
        .await
        .unwrap();
    assert_eq!(status, 201, "{run}");
    let id = run["run_id"].as_str().unwrap().to_string();
    c.stack
        .wait_status(&id, &["awaiting_approval"], crate::RUN_TIMEOUT)
        .await
        .unwrap();
    let token = credential(&c.stack, &id);
    let send = |token: String| {
        let (http, url, body) = (
            http.clone(),
            c.stack.gw_url("/gw/anthropic/v1/messages"),
            body.clone(),
        );
        async move {
            let resp = http
                .post(url)
                .header("x-api-key", token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }
    };
    let (status, text) = send(token.clone()).await;
    assert_eq!(
        status, 401,
        "a run at its approval gate called a model: {text}"
    );
    assert!(text.contains("has not started"), "{text}");

    // Approve, and call with its credential as fast as possible until it has finished.
    let (status, v) = c
        .stack
        .call(
            reqwest::Method::POST,
            &format!("/v1/runs/{id}/approve"),
            Some(&c.stack.tokens.approver),
            Some(br#"{"comment": "ok"}"#.to_vec()),
        )
        .await
        .unwrap();
    assert!(status < 300, "{status} {v}");
    let mut statuses = Vec::new();
    let deadline = Instant::now() + crate::RUN_TIMEOUT;
    loop {
        statuses.push(send(token.clone()).await.0);
        let run = c.stack.run(&id).await.unwrap();
        if run["status"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{run}");
    }
    assert!(
        statuses.contains(&200),
        "never admitted while running: {statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&401), "{statuses:?}");
    let ledger = c.stack.wait_mirrored(&id).await.unwrap();
    let seq_of = |event_type: &str| -> Vec<i64> {
        ledger["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event_type"] == event_type)
            .map(|e| e["seq"].as_i64().unwrap())
            .collect()
    };
    let finished = seq_of("run.finished");
    let last_call = seq_of("gateway.model_call").into_iter().max().unwrap();
    assert!(
        last_call < finished[0],
        "a gateway entry (seq {last_call}) follows run.finished (seq {})",
        finished[0]
    );
}
