//! Policies on the run path: bundles pushed, bound and deciding admissions (deny, escalate to a
//! group), decisions in the ledger and replayed; hostile modules refused, and a module that
//! faults in production denies the run without taking the engine down.

use crate::RUN_TIMEOUT;
use crate::stack::{Stack, StackOptions, spec};
use base64::Engine as _;
use cogward::db::Db;
use cogward_policy_host::builtins::builtin;
use cogward_policy_host::{fixtures, sha256_hex};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::PathBuf;

fn policy_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../wasm-policies/policies")
        .join(name)
}

/// `SELECT COUNT(*) ...` (a test's own fixed SQL).
pub(crate) async fn count(db: &Db, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn ledger_count(db: &Db, event_type: &str) -> i64 {
    count(
        db,
        &format!("SELECT COUNT(*) FROM ledger_entries WHERE event_type = '{event_type}'"),
    )
    .await
}

/// The run's app entry of this type, parsed.
pub(crate) async fn app_entry(stack: &Stack, id: &str, event_type: &str) -> Value {
    let ledger = stack.wait_mirrored(id).await.unwrap();
    crate::stack::app_bodies(&ledger, event_type)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no {event_type} entry for {id}: {ledger}"))
}

fn cli_ok(stack: &Stack, args: &[&str]) -> String {
    let (code, out, err) = stack.cli(&stack.tokens.ci, args).unwrap();
    assert_eq!(code, 0, "{args:?}: {out}\n{err}");
    out
}

async fn admission_policy_end_to_end(stack: &Stack) {
    let db = Db::connect(&stack.database_url).await.unwrap();
    // Bootstrap stored the built-in admission module and bound it for every tenant.
    assert_eq!(count(&db, "SELECT COUNT(*) FROM policy_modules").await, 1);
    let dir = policy_dir("run-admission");
    let data = dir.join("data.example.json");
    let tests = dir.join("tests.jsonl");
    let push = [
        "policy",
        "push",
        "builtin:run-admission",
        "--name",
        "acme-admission",
        "--data",
        data.to_str().unwrap(),
        "--tests",
        tests.to_str().unwrap(),
    ];
    let out = cli_ok(stack, &push);
    assert!(out.starts_with("pushed acme-admission version 1"), "{out}");
    assert!(
        out.contains("already stored") && out.contains("18 tests passed"),
        "{out}"
    );
    let out = cli_ok(stack, &push);
    assert!(
        out.starts_with("unchanged: acme-admission version 1"),
        "{out}"
    );
    // The same module, pushed three times, is stored once.
    assert_eq!(count(&db, "SELECT COUNT(*) FROM policy_modules").await, 1);
    for tenant in ["locked", "acme"] {
        cli_ok(
            stack,
            &[
                "policy",
                "bind",
                "--tenant",
                tenant,
                "--kind",
                "run.admission",
                "--name",
                "acme-admission",
                "--version",
                "1",
            ],
        );
    }
    let list = cli_ok(stack, &["policy", "list"]);
    assert!(
        list.contains("acme-admission") && list.contains("locked"),
        "{list}"
    );

    // Tenant `locked` allows no agent: denied, with the policy's reason.
    let (id, run) = stack
        .submit_until(&spec("locked", &["/bin/sh", "-c", "exit 0"]), &["denied"])
        .await
        .unwrap();
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.contains("agent e2e-agent is not allowed for tenant locked"),
        "{reason}"
    );
    assert!(
        !stack.run_dir(&id).exists(),
        "a denied run must not start a runner"
    );
    let decision = app_entry(stack, &id, "policy.decision").await;
    assert_eq!(decision["decision"]["effect"], "deny");
    assert_eq!(decision["policy"]["name"], "acme-admission");
    assert_eq!(decision["policy"]["version"], 1);
    let builtin_sha = sha256_hex(builtin("run-admission").unwrap().wasm);
    assert_eq!(decision["policy"]["module_sha256"], builtin_sha.as_str());
    let data_doc: Value = serde_json::from_str(&std::fs::read_to_string(&data).unwrap()).unwrap();
    assert_eq!(
        decision["policy"]["data_sha256"],
        sha256_hex(data_doc.to_string().as_bytes()).as_str()
    );
    assert_eq!(
        decision["request_sha256"],
        sha256_hex(&serde_json::to_vec(&decision["request"]).unwrap()).as_str()
    );
    assert!(decision["latency_us"].as_u64().unwrap() > 0, "{decision}");
    let out = cli_ok(stack, &["policy", "replay", &id]);
    assert!(
        out.starts_with("same run.admission by acme-admission v1"),
        "{out}"
    );
    assert!(out.contains("recorded deny, replayed deny"), "{out}");

    // `deploy-*` agents escalate to release-managers: the gate opens without the spec asking,
    // and only a member of that group may decide.
    let mut s = spec("acme", &["/bin/sh", "-c", "echo deployed"]);
    s["agent"] = json!("deploy-prod");
    let (id, run) = stack
        .submit_until(&s, &["awaiting_approval"])
        .await
        .unwrap();
    let reason = run["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("needs approval from group release-managers"),
        "{run}"
    );
    let (code, _, err) = stack
        .cli(&stack.tokens.lead, &["run", "approve", &id])
        .unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not_in_approval_group"), "{err}");
    let (code, out, err) = stack
        .cli(&stack.tokens.approver, &["run", "approve", &id])
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    stack
        .wait_status(&id, &["succeeded"], RUN_TIMEOUT)
        .await
        .unwrap();
    let decision = app_entry(stack, &id, "policy.decision").await;
    assert_eq!(decision["decision"]["effect"], "escalate");

    assert!(ledger_count(&db, "policy.pushed").await >= 2);
    assert!(ledger_count(&db, "policy.bound").await >= 3);
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admission_policy_denies_and_escalates_on_sqlite() {
    let stack = Stack::start(StackOptions::default()).unwrap();
    admission_policy_end_to_end(&stack).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admission_policy_denies_and_escalates_on_postgres() {
    let Some(url) = crate::stack::postgres_database().await else {
        return;
    };
    let stack = Stack::start(StackOptions {
        database_url: Some(url.clone()),
        ..Default::default()
    })
    .unwrap();
    admission_policy_end_to_end(&stack).await;
    // Stored policies are immutable at the database.
    let db = Db::connect(&url).await.unwrap();
    for sql in [
        "UPDATE policy_modules SET size_bytes = 1",
        "DELETE FROM policy_bundles",
        "UPDATE policy_data SET body = '{}'",
    ] {
        let err = sqlx::raw_sql(sql).execute(&db.pool).await.unwrap_err();
        assert!(err.to_string().contains("immutable"), "{sql}: {err}");
    }
}

async fn push(stack: &Stack, token: &str, name: &str, wasm: &[u8]) -> (u16, Value) {
    let body = json!({
        "name": name,
        "wasm_base64": base64::engine::general_purpose::STANDARD.encode(wasm),
        "data": {},
    });
    stack
        .call(
            Method::POST,
            "/v1/policies",
            Some(token),
            Some(body.to_string().into_bytes()),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_policies_are_refused_and_a_faulting_policy_denies_the_run() {
    let stack = Stack::start(StackOptions::default()).unwrap();
    let db = Db::connect(&stack.database_url).await.unwrap();
    let ci = &stack.tokens.ci;
    let modules = "SELECT COUNT(*) FROM policy_modules";
    let bundles = "SELECT COUNT(*) FROM policy_bundles";
    let (modules_before, bundles_before) = (count(&db, modules).await, count(&db, bundles).await);

    // Each refused at push, with its reason, and recorded as a security event.
    let mut hostile: Vec<(String, Vec<u8>)> = fixtures::unloadable()
        .into_iter()
        .map(|(n, w)| (n.to_string(), w))
        .collect();
    hostile.extend(
        fixtures::hostile()
            .into_iter()
            .map(|(n, wat)| (n.to_string(), fixtures::wasm(&wat))),
    );
    for (name, wasm) in &hostile {
        let (status, problem) = push(&stack, ci, name, wasm).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (422, Some("policy_rejected")),
            "{name}: {problem}"
        );
        let expected = match name.as_str() {
            "infinite-loop" => "fuel",
            "memory-bomb" => "memory limit",
            "trap" => "trapped",
            "wrong-abi-version" => "ABI version 2",
            "forbidden-import" => "forbidden import env::exfiltrate",
            "missing-export" => "export",
            "garbage-output"
            | "unknown-obligation"
            | "output-out-of-bounds"
            | "output-too-large" => "malformed output",
            _ => "not a valid WebAssembly module",
        };
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{name}: {detail}");
    }
    assert_eq!(
        ledger_count(&db, "security.policy_rejected").await,
        hostile.len() as i64
    );
    assert_eq!(
        count(&db, modules).await,
        modules_before,
        "a refused module was stored"
    );
    assert_eq!(count(&db, bundles).await, bundles_before);

    // Malformed pushes and bindings: clear errors, nothing changed.
    let good = fixtures::wasm(&fixtures::permit());
    let b64 = base64::engine::general_purpose::STANDARD.encode(&good);
    for (token, body, status, code) in [
        (
            ci.as_str(),
            json!({"name": "x", "wasm_base64": "%%%", "data": {}}),
            400,
            "invalid_request",
        ),
        (
            ci.as_str(),
            json!({"name": "x", "wasm_base64": b64, "data": {}, "sudo": true}),
            422,
            "invalid_body",
        ),
        (
            ci.as_str(),
            json!({"name": "../x", "wasm_base64": b64, "data": {}}),
            422,
            "policy_rejected",
        ),
        (
            stack.tokens.approver.as_str(),
            json!({"name": "x", "wasm_base64": b64, "data": {}}),
            403,
            "forbidden",
        ),
    ] {
        stack
            .expect_problem(
                Method::POST,
                "/v1/policies",
                token,
                Some(&body),
                status,
                code,
            )
            .await;
    }
    let oversized = vec![b' '; 17 << 20];
    let (got, problem) = stack
        .call(Method::POST, "/v1/policies", Some(ci), Some(oversized))
        .await
        .unwrap();
    assert_eq!(
        (got, problem["code"].as_str()),
        (413, Some("body_too_large"))
    );
    for body in [
        json!({"tenant": "t", "kind": "run.admission", "name": "nope", "version": 1}),
        json!({"tenant": "t", "kind": "launch.missiles", "name": "run-admission", "version": 1}),
        json!({"tenant": "../t", "kind": "run.admission", "name": "run-admission", "version": 1}),
    ] {
        stack
            .expect_problem(
                Method::PUT,
                "/v1/policies/bindings",
                ci,
                Some(&body),
                422,
                "invalid_binding",
            )
            .await;
    }
    assert_eq!(count(&db, modules).await, modules_before);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM policy_bindings").await, 1);

    // A module that passes its dry run but loops on real admission requests: the run is
    // denied with the fault, a security event is recorded, and replay reproduces the decision.
    let bomb = fixtures::wasm(&fixtures::loops_on_requests_longer_than(300));
    let (status, pushed) = push(&stack, ci, "bomb", &bomb).await;
    assert_eq!(status, 201, "{pushed}");
    cli_ok(
        &stack,
        &[
            "policy",
            "bind",
            "--tenant",
            "trap",
            "--kind",
            "run.admission",
            "--name",
            "bomb",
            "--version",
            "1",
        ],
    );
    let (id, run) = stack
        .submit_until(&spec("trap", &["true"]), &["denied"])
        .await
        .unwrap();
    assert!(
        run["reason"]
            .as_str()
            .unwrap()
            .contains("exhausted its fuel"),
        "{run}"
    );
    let fault = app_entry(&stack, &id, "security.policy_fault").await;
    assert_eq!(fault["fault"]["fault"], "fuel_exhausted", "{fault}");
    assert_eq!(fault["policy"]["name"], "bomb");
    let out = cli_ok(&stack, &["policy", "replay", &id]);
    assert!(out.contains("recorded deny, replayed deny"), "{out}");

    // The engine keeps serving: another tenant's run (default binding) succeeds.
    stack
        .submit_until(&spec("acme", &["true"]), &["succeeded"])
        .await
        .unwrap();
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
}

#[test]
fn policy_test_diffs_expected_decisions_locally() {
    let tests = policy_dir("run-admission").join("tests.jsonl");
    let run = |file: &std::path::Path| {
        let out = std::process::Command::new(crate::stack::cogward_bin())
            .args(["policy", "test", "builtin:run-admission"])
            .arg(file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&tests);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("18 passed, 0 failed"), "{out}");

    // Flip one expectation: the author sees which case and why.
    let dir = tempfile::tempdir().unwrap();
    let flipped = dir.path().join("flipped.jsonl");
    let text = std::fs::read_to_string(&tests).unwrap();
    std::fs::write(
        &flipped,
        text.replacen(r#""expect":"deny""#, r#""expect":"permit""#, 1),
    )
    .unwrap();
    let (code, out) = run(&flipped);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL unknown agent: expected permit, got deny"),
        "{out}"
    );
    assert!(out.contains("17 passed, 1 failed"), "{out}");
}
