//! End-to-end tests: real `temporal server start-dev`, real `cogward` and `cogward-runner`
//! binaries, real SQLite and PostgreSQL. Nothing of ours is mocked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agents;
mod approvals;
mod callbacks;
mod calls;
mod conformance;
mod egress;
mod gateway;
mod ledger;
mod mcp;
mod policies;
mod sandbox;
mod stack;

use reqwest::Method;
use serde_json::{Value, json};
use stack::{Stack, StackOptions, spec};
use std::time::Duration;

pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn run_id(v: &Value) -> String {
    v["run_id"].as_str().expect("run_id").to_string()
}

/// Submit with approval, approve as another principal, finish, and find every Temporal history
/// event (as `temporal workflow show` prints it) plus the application events in a verified
/// ledger.
async fn approval_run_end_to_end(stack: &Stack) {
    let mut s = spec(
        "acme",
        &[
            "sh",
            "-c",
            "echo hello; printf data > out.txt; echo $COGWARD_INPUTS",
        ],
    );
    s["requires_approval"] = json!(true);
    s["inputs"] = json!({"ticket": "T-1"});
    let (status, run) = stack.submit_as(&stack.tokens.lead, &s).await.unwrap();
    assert_eq!(status, 201, "{run}");
    let id = run_id(&run);
    stack
        .wait_status(&id, &["awaiting_approval"], RUN_TIMEOUT)
        .await
        .unwrap();
    // The submitter may not approve its own run, whatever its roles.
    let (code, _, err) = stack
        .cli(&stack.tokens.lead, &["run", "approve", &id])
        .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("self_approval"), "{err}");
    let (code, out, err) = stack
        .cli(
            &stack.tokens.approver,
            &["run", "approve", &id, "--comment", "looks fine"],
        )
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let done = stack
        .wait_status(&id, &["succeeded", "failed"], RUN_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
    let evidence = &done["summary"]["evidence"];
    assert_eq!(evidence["kind"], "finished", "{evidence}");
    assert_eq!(evidence["exit_code"], 0);
    let summary = &evidence["artifacts"];
    let manifest_bytes = std::fs::read(stack.run_dir(&id).join("manifest.json")).unwrap();
    assert_eq!(
        summary["sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest_bytes)),
        "the evidence names the manifest by digest"
    );
    let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let artifacts = manifest["artifacts"].as_array().unwrap();
    let out_txt = artifacts
        .iter()
        .find(|a| a["path"] == "out.txt")
        .expect("out.txt artifact");
    assert_eq!(
        out_txt["sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"data"))
    );
    let stdout = std::fs::read_to_string(stack.run_dir(&id).join("stdout.log")).unwrap();
    assert_eq!(stdout, "hello\n{\"ticket\":\"T-1\"}\n");
    assert_eq!(
        evidence["stdout"]["sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(stdout.as_bytes()))
    );

    let ledger = stack.assert_history_mirrored(&id).await.unwrap();
    let app: Vec<&Value> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "app")
        .collect();
    let types: Vec<&str> = app
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "run.submitted",
            "run.admission",
            "policy.decision",
            "run.approval",
            "run.evidence",
            "run.finished"
        ]
    );
    let decision: Value = serde_json::from_str(app[2]["body"].as_str().unwrap()).unwrap();
    assert_eq!(decision["decision"]["effect"], "permit", "{decision}");
    assert_eq!(decision["policy"]["name"], "run-admission");
    assert_eq!(decision["request"]["agent"], "e2e-agent");
    let approval: Value = serde_json::from_str(app[3]["body"].as_str().unwrap()).unwrap();
    assert_eq!(approval["approver"], "approver");
    assert_eq!(approval["comment"], "looks fine");
    let submitted: Value = serde_json::from_str(app[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(submitted["submitted_by"], "lead");

    // The gate's own workflow is mirrored too: its request, and the vote as it arrived.
    let gate = format!("approval-gate-{id}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (status, approval) = loop {
        let (status, approval) = stack
            .call(
                reqwest::Method::GET,
                &format!("/v1/approvals/{gate}/history"),
                Some(&stack.tokens.ci),
                None,
            )
            .await
            .unwrap();
        if approval["complete"] == true || tokio::time::Instant::now() > deadline {
            break (status, approval);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200, "{approval}");
    assert_eq!(approval["complete"], true, "{approval}");
    let approval_entries = approval["entries"].as_array().unwrap();
    let types: Vec<&str> = approval_entries
        .iter()
        .filter(|e| e["kind"] == "app")
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["approval.requested", "approval.decided"]);
    assert!(
        approval_entries
            .iter()
            .any(|e| e["event_type"] == "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED"),
        "the vote's signal: {approval}"
    );

    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["ok"], true);
    // The run's entries and its gate's, plus the two of the policy bootstrap (push and bind).
    assert_eq!(
        report["entries"],
        ledger["entries"].as_array().unwrap().len() + approval_entries.len() + 2
    );

    // The ledger alone holds the exact history: rebuilt from it, it replays against AgentRun...
    let n = stack.temporal.history(&id).unwrap().len();
    let (replayed, text) = stack.replay(&id).unwrap();
    assert!(
        replayed && text.starts_with(&format!("OK: {n} history events")),
        "{text}"
    );
    // ...and one whose approval is turned into a rejection does not: the workflow would have
    // ended `rejected` where the history goes on to start the runner.
    use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes;
    let db = cogward::db::Db::connect(&stack.database_url).await.unwrap();
    let ledger = cogward::audit::Ledger::start(db);
    let mut events = cogward::audit::replay::history_from_ledger(&ledger, &id)
        .await
        .unwrap();
    let mut forged = 0;
    for e in &mut events {
        if let Some(Attributes::ChildWorkflowExecutionCompletedEventAttributes(a)) =
            &mut e.attributes
        {
            for p in a.result.iter_mut().flat_map(|r| r.payloads.iter_mut()) {
                let text = String::from_utf8(p.data.clone()).unwrap();
                let rejected = text.replace("approved", "rejected");
                assert_ne!(text, rejected, "{text}");
                p.data = rejected.into_bytes();
                forged += 1;
            }
        }
    }
    assert_eq!(forged, 1, "the gate's approval outcome");
    let err = cogward::audit::replay::replay_events(events)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").to_lowercase().contains("nondetermin"),
        "{err:#}"
    );

    // The gate's own history replays from the ledger too; and an approval whose outcome is
    // credited to someone else no longer matches the `approval.decided` entry the ledger holds.
    let (replayed, text) = stack.replay(&gate).unwrap();
    assert!(replayed && text.starts_with("OK: "), "{text}");
    let mut events = cogward::audit::replay::history_from_ledger(&ledger, &gate)
        .await
        .unwrap();
    let mut forged = 0;
    for e in &mut events {
        if let Some(Attributes::WorkflowExecutionCompletedEventAttributes(a)) = &mut e.attributes {
            for p in a.result.iter_mut().flat_map(|r| r.payloads.iter_mut()) {
                let text = String::from_utf8(p.data.clone()).unwrap();
                let someone_else =
                    text.replace("\"approver\":\"approver\"", "\"approver\":\"mallory\"");
                assert_ne!(text, someone_else, "{text}");
                p.data = someone_else.into_bytes();
                forged += 1;
            }
        }
    }
    assert_eq!(forged, 1, "the approval's outcome");
    let problems = cogward::audit::replay::check_app_entries(&ledger, &gate, &events)
        .await
        .unwrap();
    assert!(
        problems.len() == 1
            && problems[0].contains("approval.decided")
            && problems[0].contains("mallory"),
        "{problems:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn approval_run_on_sqlite_is_mirrored_and_verified() {
    let stack = Stack::start(StackOptions::default()).unwrap();
    approval_run_end_to_end(&stack).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn approval_run_on_postgres_is_mirrored_and_verified() {
    let Some(url) = stack::postgres_database().await else {
        return;
    };
    let stack = Stack::start(StackOptions {
        database_url: Some(url.clone()),
        ..Default::default()
    })
    .unwrap();
    approval_run_end_to_end(&stack).await;

    // The database itself refuses to rewrite history.
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    for sql in [
        "UPDATE ledger_entries SET body = '{}' WHERE seq = 1",
        "DELETE FROM ledger_entries WHERE seq = 1",
        "TRUNCATE ledger_entries",
    ] {
        let err = sqlx::raw_sql(sql).execute(&mut conn).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_wait_exit_codes_tell_the_verdict() {
    let stack = Stack::start(StackOptions::default()).unwrap();
    let dir = stack.dir.path();
    let write = |name: &str, v: Value| {
        let p = dir.join(name);
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
        p.display().to_string()
    };
    let ok = write("ok.json", spec("codes", &["true"]));
    let fail = write("fail.json", spec("codes", &["sh", "-c", "exit 3"]));
    let mut big = spec("codes", &["true"]);
    big["limits"] = json!({"cpu_seconds": 999999});
    let denied = write("denied.json", big);

    let (code, out, err) = stack
        .cli(
            &stack.tokens.ci,
            &["run", "submit", &ok, "--wait", "--json"],
        )
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "succeeded");
    let (code, out, _) = stack
        .cli(&stack.tokens.ci, &["run", "submit", &fail, "--wait"])
        .unwrap();
    assert_eq!(code, 10, "{out}");
    assert!(out.contains("exited with code 3"), "{out}");
    let (code, out, _) = stack
        .cli(&stack.tokens.ci, &["run", "submit", &denied, "--wait"])
        .unwrap();
    assert_eq!(code, 14, "{out}");
    assert!(out.contains("cpu_seconds 999999 exceeds"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_expired_and_cancelled_runs_end_as_such() {
    let stack = Stack::start(StackOptions::default()).unwrap();

    // Rejected at the gate.
    let mut s = spec("gate", &["true"]);
    s["requires_approval"] = json!(true);
    let (_, run) = stack.submit(&s).await.unwrap();
    let id = run_id(&run);
    stack
        .wait_status(&id, &["awaiting_approval"], RUN_TIMEOUT)
        .await
        .unwrap();
    let (code, _, err) = stack
        .cli(&stack.tokens.approver, &["run", "reject", &id])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let v = stack
        .wait_status(&id, &["rejected"], RUN_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(v["summary"]["approval"]["approver"], "approver");
    assert!(
        !stack.run_dir(&id).exists(),
        "a rejected run must never start a runner"
    );

    // Nobody decides: expired.
    let mut s = spec("gate", &["true"]);
    s["requires_approval"] = json!(true);
    s["approval_timeout_seconds"] = json!(2);
    let (_, run) = stack.submit(&s).await.unwrap();
    let id = run_id(&run);
    let v = stack
        .wait_status(&id, &["expired"], RUN_TIMEOUT)
        .await
        .unwrap();
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("no approval within 2s"),
        "{v}"
    );
    // Deciding after the fact is refused.
    stack
        .expect_problem(
            Method::POST,
            &format!("/v1/runs/{id}/approve"),
            &stack.tokens.approver,
            None,
            409,
            "not_awaiting_approval",
        )
        .await;

    // Cancelled while the agent runs: it gets SIGTERM (and traps it), the run ends cancelled
    // with the operator's reason.
    let s = spec(
        "gate",
        &[
            "sh",
            "-c",
            "trap 'echo got-term > term.txt; exit 0' TERM; echo up > up.txt; while :; do sleep 0.1; done",
        ],
    );
    let (_, run) = stack.submit(&s).await.unwrap();
    let id = run_id(&run);
    stack::wait_file(&stack.run_dir(&id).join("work").join("up.txt")).await;
    let (code, _, err) = stack
        .cli(
            &stack.tokens.ci,
            &["run", "cancel", &id, "--reason", "change freeze"],
        )
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let v = stack
        .wait_status(&id, &["cancelled"], RUN_TIMEOUT)
        .await
        .unwrap();
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("change freeze (by ci)"),
        "{v}"
    );
    let term = std::fs::read_to_string(stack.run_dir(&id).join("work").join("term.txt")).unwrap();
    assert_eq!(term, "got-term\n");
    assert_eq!(v["summary"]["evidence"]["outcome"], "cancelled", "{v}");
    stack.assert_history_mirrored(&id).await.unwrap();
    // Cancelling again: the run is over.
    stack
        .expect_problem(
            Method::POST,
            &format!("/v1/runs/{id}/cancel"),
            &stack.tokens.ci,
            None,
            409,
            "run_finished",
        )
        .await;
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_submission_returns_the_first_run() {
    let stack = Stack::start(StackOptions::default()).unwrap();
    let mut s = spec("idem", &["true"]);
    s["idempotency_key"] = json!("pipeline-42");
    let (status, first) = stack.submit(&s).await.unwrap();
    assert_eq!(status, 201, "{first}");
    let (status, second) = stack.submit(&s).await.unwrap();
    assert_eq!(status, 200, "{second}");
    assert_eq!(first["run_id"], second["run_id"]);
    let id = run_id(&first);
    stack
        .wait_status(&id, &["succeeded"], RUN_TIMEOUT)
        .await
        .unwrap();
    // Even after it finished.
    let (status, third) = stack.submit(&s).await.unwrap();
    assert_eq!((status, &third["run_id"]), (200, &first["run_id"]));
    // The same key with another spec is a conflict, not a second run.
    let mut other = s.clone();
    other["runtime"]["command"] = json!(["false"]);
    let (status, p) = stack.submit(&other).await.unwrap();
    assert_eq!(
        (status, p["code"].as_str()),
        (409, Some("idempotency_key_reused")),
        "{p}"
    );
    let (_, list) = stack
        .call(
            Method::GET,
            "/v1/runs?tenant=idem",
            Some(&stack.tokens.ci),
            None,
        )
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    // Temporal holds exactly one execution with that id.
    assert_eq!(
        stack
            .temporal
            .history(&id)
            .unwrap()
            .iter()
            .filter(|(_, t)| t == "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED")
            .count(),
        1
    );
}

/// (what, method, path, token, body, expected status, expected problem code)
type BadCase<'a> = (
    &'a str,
    Method,
    String,
    Option<&'a str>,
    Option<Vec<u8>>,
    u16,
    &'a str,
);

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_problem_document_and_changes_nothing() {
    let stack = Stack::start(StackOptions::default()).unwrap();
    // One finished run to aim at.
    let (_, run) = stack.submit(&spec("bad", &["true"])).await.unwrap();
    let done = run_id(&run);
    stack
        .wait_status(&done, &["succeeded"], RUN_TIMEOUT)
        .await
        .unwrap();
    stack.wait_mirrored(&done).await.unwrap();
    let (_, before) = stack.verify().unwrap();

    let ci = Some(stack.tokens.ci.as_str());
    let approver = Some(stack.tokens.approver.as_str());
    let valid = serde_json::to_vec(&spec("bad", &["true"])).unwrap();
    let mut unknown = spec("bad", &["true"]);
    unknown["privileged"] = json!(true);
    let mut bad_name = spec("bad", &["true"]);
    bad_name["agent"] = json!("../../etc/passwd");
    let oversized = {
        let mut s = spec("bad", &["true"]);
        s["inputs"] = json!({"blob": "x".repeat(70 * 1024)});
        serde_json::to_vec(&s).unwrap()
    };
    let cases: Vec<BadCase> = vec![
        (
            "malformed JSON",
            Method::POST,
            "/v1/runs".into(),
            ci,
            Some(b"{\"spec_version\":".to_vec()),
            400,
            "malformed_json",
        ),
        (
            "unknown field",
            Method::POST,
            "/v1/runs".into(),
            ci,
            Some(serde_json::to_vec(&unknown).unwrap()),
            422,
            "invalid_body",
        ),
        (
            "missing field",
            Method::POST,
            "/v1/runs".into(),
            ci,
            Some(b"{\"spec_version\":1}".to_vec()),
            422,
            "invalid_body",
        ),
        (
            "invalid name",
            Method::POST,
            "/v1/runs".into(),
            ci,
            Some(serde_json::to_vec(&bad_name).unwrap()),
            422,
            "invalid_spec",
        ),
        (
            "oversized body",
            Method::POST,
            "/v1/runs".into(),
            ci,
            Some(oversized),
            413,
            "body_too_large",
        ),
        (
            "no token",
            Method::POST,
            "/v1/runs".into(),
            None,
            Some(valid.clone()),
            401,
            "unauthenticated",
        ),
        (
            "forged token",
            Method::POST,
            "/v1/runs".into(),
            Some("cgw_forged"),
            Some(valid.clone()),
            401,
            "invalid_token",
        ),
        (
            "approver cannot submit",
            Method::POST,
            "/v1/runs".into(),
            approver,
            Some(valid.clone()),
            403,
            "forbidden",
        ),
        (
            "approve a finished run",
            Method::POST,
            format!("/v1/runs/{done}/approve"),
            approver,
            None,
            409,
            "not_awaiting_approval",
        ),
        (
            "cancel an unknown run",
            Method::POST,
            "/v1/runs/run-0123456789abcdef/cancel".into(),
            ci,
            None,
            404,
            "run_not_found",
        ),
        (
            "cancel a finished run",
            Method::POST,
            format!("/v1/runs/{done}/cancel"),
            ci,
            None,
            409,
            "run_finished",
        ),
        (
            "malformed run id",
            Method::GET,
            "/v1/runs/..%2F..%2Fetc".into(),
            ci,
            None,
            400,
            "invalid_run_id",
        ),
        (
            "unknown status filter",
            Method::GET,
            "/v1/runs?status=bogus".into(),
            ci,
            None,
            400,
            "invalid_query",
        ),
        (
            "unknown query parameter",
            Method::GET,
            "/v1/runs?drop=1".into(),
            ci,
            None,
            400,
            "invalid_query",
        ),
        (
            "malformed cancel body",
            Method::POST,
            format!("/v1/runs/{done}/cancel"),
            ci,
            Some(b"{".to_vec()),
            400,
            "malformed_json",
        ),
        (
            "no DELETE of runs",
            Method::DELETE,
            format!("/v1/runs/{done}"),
            ci,
            None,
            405,
            "method_not_allowed",
        ),
        (
            "no such endpoint",
            Method::GET,
            "/v1/ledger/rewrite".into(),
            ci,
            None,
            404,
            "not_found",
        ),
    ];
    for (name, method, path, token, body, want_status, want_code) in cases {
        let (status, problem) = stack.call(method, &path, token, body).await.unwrap();
        assert_eq!(status, want_status, "{name}: {problem}");
        assert_eq!(problem["code"], want_code, "{name}: {problem}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}: {problem}"
        );
    }
    // Nothing was written: the same runs, the same ledger.
    let (_, list) = stack.call(Method::GET, "/v1/runs", ci, None).await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (_, after) = stack.verify().unwrap();
    assert_eq!(before["head_hash"], after["head_hash"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_byte_in_a_ledger_row_is_named_by_verify() {
    let stack = Stack::start(StackOptions::default()).unwrap();
    let (_, run) = stack.submit(&spec("tamper", &["true"])).await.unwrap();
    let id = run_id(&run);
    stack
        .wait_status(&id, &["succeeded"], RUN_TIMEOUT)
        .await
        .unwrap();
    let ledger = stack.wait_mirrored(&id).await.unwrap();
    let n = ledger["entries"].as_array().unwrap().len() as i64;
    assert!(n > 10);
    let (code, _) = stack.verify().unwrap();
    assert_eq!(code, 0);

    // Flip one byte in the middle of one row's body, behind the engine's back.
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&stack.database_url)
        .await
        .unwrap();
    let target = n / 2;
    let body: String = sqlx::query_scalar("SELECT body FROM ledger_entries WHERE seq = ?")
        .bind(target)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let mut bytes = body.into_bytes();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    sqlx::query("UPDATE ledger_entries SET body = ? WHERE seq = ?")
        .bind(String::from_utf8_lossy(&bytes).into_owned())
        .bind(target)
        .execute(&mut conn)
        .await
        .unwrap();
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["first_bad"]["seq"], target, "{report}");
    let out = stack.command().args(["audit", "verify"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("ledger entry {target} is bad")),
        "{text}"
    );
}

/// An agent whose side effect shows how often it ran.
fn counted_agent(tenant: &str, seconds: u32) -> Value {
    let script = format!("echo ran >> effects.txt; sleep {seconds}; echo done");
    spec(tenant, &["sh", "-c", &script])
}

async fn assert_ran_once(stack: &Stack, id: &str) {
    let v = stack
        .wait_status(id, &["succeeded", "failed"], RUN_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(v["status"], "succeeded", "{v}\n{}", stack.logs());
    let effects =
        std::fs::read_to_string(stack.run_dir(id).join("work").join("effects.txt")).unwrap();
    assert_eq!(effects, "ran\n", "the agent ran more than once");
    let events = std::fs::read_to_string(stack.run_dir(id).join("events.jsonl")).unwrap();
    assert_eq!(
        events.matches("\"event\":\"started\"").count(),
        1,
        "{events}"
    );
    stack.assert_history_mirrored(id).await.unwrap();
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_killed_mid_run_finishes_once() {
    let mut stack = Stack::start(StackOptions {
        separate_worker: true,
        ..Default::default()
    })
    .unwrap();
    let (_, run) = stack.submit(&counted_agent("crash", 4)).await.unwrap();
    let id = run_id(&run);
    stack::wait_file(&stack.run_dir(&id).join("started")).await;
    stack.kill9_worker();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.start_worker().unwrap();
    assert_ran_once(&stack, &id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn temporal_server_restarted_mid_run_finishes_once() {
    let mut stack = Stack::start(StackOptions::default()).unwrap();
    let (_, run) = stack.submit(&counted_agent("restart", 4)).await.unwrap();
    let id = run_id(&run);
    stack::wait_file(&stack.run_dir(&id).join("started")).await;
    stack.temporal.kill9_and_restart().unwrap();
    assert_ran_once(&stack, &id).await;
}

/// With Temporal unreachable, a submission is 503 `temporal_unavailable` and leaves no run.
async fn a_submission_is_refused_and_nothing_recorded(stack: &Stack) {
    let (status, problem) = stack.submit(&spec("down", &["true"])).await.unwrap();
    assert_eq!(
        (status, problem["code"].as_str()),
        (503, Some("temporal_unavailable")),
        "{problem}"
    );
    let (_, list) = stack
        .call(Method::GET, "/v1/runs", Some(&stack.tokens.ci), None)
        .await
        .unwrap();
    assert_eq!(list, json!([]), "a run that never started was recorded");
}

#[tokio::test(flavor = "multi_thread")]
async fn submission_while_temporal_is_down_is_a_503_and_records_nothing() {
    let mut stack = Stack::start(StackOptions::default()).unwrap();
    stack.temporal.kill9();
    a_submission_is_refused_and_nothing_recorded(&stack).await;
    // Back up: the same submission goes through.
    stack.temporal.kill9_and_restart().unwrap();
    let (status, run) = stack.submit(&spec("down", &["true"])).await.unwrap();
    assert_eq!(status, 201, "{run}");
    stack
        .wait_status(&run_id(&run), &["succeeded"], RUN_TIMEOUT)
        .await
        .unwrap();
}

/// `serve --worker` started while Temporal is down keeps serving (health, 503s for what needs
/// Temporal, nothing recorded), past the 20 s after which it used to exit, and works once
/// Temporal is back: the worker and the mirror connect by themselves.
#[tokio::test(flavor = "multi_thread")]
async fn serve_started_without_temporal_keeps_serving_and_works_once_it_is_up() {
    let mut stack = Stack::start(StackOptions::default()).unwrap();
    stack.temporal.kill9();
    stack.kill9_and_restart_serve_listening().unwrap();
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(stack.serve_alive(), "serve exited:\n{}", stack.logs());
    let (status, health) = stack
        .call(Method::GET, "/healthz", None, None)
        .await
        .unwrap();
    assert_eq!(
        (status, &health["temporal"]),
        (200, &json!(false)),
        "{health}"
    );
    a_submission_is_refused_and_nothing_recorded(&stack).await;

    stack.temporal.kill9_and_restart().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, health) = stack
            .call(Method::GET, "/healthz", None, None)
            .await
            .unwrap();
        if health["temporal"] == json!(true) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, run) = stack.submit(&spec("down", &["true"])).await.unwrap();
    assert_eq!(status, 201, "{run}");
    stack
        .wait_status(&run_id(&run), &["succeeded"], RUN_TIMEOUT)
        .await
        .unwrap();
    stack.wait_mirrored(&run_id(&run)).await.unwrap();
}

/// A principal of tenant globex can see, approve, cancel and bind nothing of tenant acme: acme's
/// runs are not found for it, acme's bindings and shared bundles are refused, and nothing of
/// acme changes.
#[tokio::test(flavor = "multi_thread")]
async fn a_principal_of_one_tenant_reaches_nothing_of_another() {
    let mut stack = Stack::start(StackOptions::default()).unwrap();
    let globex = stack
        .add_principal_for(
            "globex-ops",
            "submit,read,approve,operate",
            &["release-managers"],
            "globex",
        )
        .unwrap();
    stack.kill9_and_restart_serve().unwrap();
    let mut gated = spec("acme", &["true"]);
    gated["requires_approval"] = json!(true);
    let (status, run) = stack.submit_as(&stack.tokens.lead, &gated).await.unwrap();
    assert_eq!(status, 201, "{run}");
    let id = run_id(&run);
    stack
        .wait_status(&id, &["awaiting_approval"], RUN_TIMEOUT)
        .await
        .unwrap();

    let body = || Some(br#"{"comment": "mine now"}"#.to_vec());
    for (method, path, payload) in [
        (Method::GET, format!("/v1/runs/{id}"), None),
        (Method::GET, format!("/v1/runs/{id}/history"), None),
        (Method::GET, format!("/v1/runs/{id}/tool-calls"), None),
        (Method::GET, format!("/v1/runs/{id}/events"), None),
        (
            Method::GET,
            format!("/v1/runs/{id}/events?follow=true"),
            None,
        ),
        (Method::GET, format!("/v1/runs/{id}/evidence"), None),
        (Method::GET, format!("/v1/runs/{id}/evidence/diff"), None),
        (Method::POST, format!("/v1/runs/{id}/approve"), body()),
        (Method::POST, format!("/v1/runs/{id}/reject"), body()),
        (
            Method::POST,
            format!("/v1/runs/{id}/cancel"),
            Some(br#"{"reason": "mine now"}"#.to_vec()),
        ),
    ] {
        let (status, v) = stack
            .call(method.clone(), &path, Some(&globex), payload)
            .await
            .unwrap();
        assert_eq!(
            (status, v["code"].as_str()),
            (404, Some("run_not_found")),
            "{method} {path}: {v}"
        );
    }
    let (status, list) = stack
        .call(Method::GET, "/v1/runs?tenant=acme", Some(&globex), None)
        .await
        .unwrap();
    assert_eq!((status, list), (200, json!([])));
    let (status, v) = stack
        .submit_as(&globex, &spec("acme", &["true"]))
        .await
        .unwrap();
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("forbidden_tenant")),
        "{v}"
    );
    // Binding for acme or for a tenant pattern, and pushing a shared bundle.
    let mut forbidden: Vec<(Method, &str, Value)> = ["acme", "*", "glo*"]
        .into_iter()
        .map(|tenant| {
            let binding =
                json!({"tenant": tenant, "kind": "run.admission", "name": "x", "version": 1});
            (Method::PUT, "/v1/policies/bindings", binding)
        })
        .collect();
    let push = json!({"name": "globex-admission", "wasm_base64": "AA==", "data": {}});
    forbidden.push((Method::POST, "/v1/policies", push));
    for (method, path, body) in forbidden {
        let payload = Some(body.to_string().into_bytes());
        let (status, v) = stack
            .call(method.clone(), path, Some(&globex), payload)
            .await
            .unwrap();
        assert_eq!(
            (status, v["code"].as_str()),
            (403, Some("forbidden_tenant")),
            "{method} {path} {body}: {v}"
        );
    }

    // Nothing of acme changed; globex works on its own.
    let acme = stack.run(&id).await.unwrap();
    assert_eq!(acme["status"], "awaiting_approval", "{acme}");
    let (status, own) = stack
        .submit_as(&globex, &spec("globex", &["true"]))
        .await
        .unwrap();
    assert_eq!(status, 201, "{own}");
    let (status, list) = stack
        .call(Method::GET, "/v1/runs", Some(&globex), None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let tenants: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["globex"], "{list}");
}
