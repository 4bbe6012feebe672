//! Approvals as workflows, tried as approvers would and as an approver trying to get round them
//! would: the two-person rule (one approval waits, the same approver twice does not count, a
//! second distinct one releases), escalation (after the deadline the next group is asked, and
//! only it), expiry (denies; a decision after it is refused), all visible through
//! `/v1/approvals`, `cogward approvals` and Temporal itself (and invisible to another tenant's
//! approvers), and surviving the engine's kill -9.

use crate::RUN_TIMEOUT;
use crate::stack::{Stack, StackOptions, spec};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

/// A stack whose requests with no policy-named group need two distinct approvers, and escalate
/// to `security` when nobody decides in time.
fn stack(dir: &std::path::Path) -> (Stack, [String; 2]) {
    let channels = dir.join("channels.json");
    std::fs::write(
        &channels,
        json!({"groups": {"*": {"required": 2, "escalate_to": ["security"]}}}).to_string(),
    )
    .unwrap();
    let stack = Stack::start(StackOptions {
        env: vec![(
            "COGWARD_CHANNELS_CONFIG".into(),
            channels.display().to_string(),
        )],
        ..Default::default()
    })
    .unwrap();
    let secops = ["secops", "secops2"].map(|name| {
        stack
            .add_principal(name, "approve,read", &["security"])
            .unwrap()
    });
    (stack, secops)
}

async fn vote(stack: &Stack, token: &str, approval: &str, verb: &str) -> (u16, Value) {
    stack
        .call(
            Method::POST,
            &format!("/v1/approvals/{approval}/{verb}"),
            Some(token),
            Some(json!({"comment": "e2e"}).to_string().into_bytes()),
        )
        .await
        .unwrap()
}

async fn approval(stack: &Stack, approval: &str) -> Value {
    stack.approval(approval).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_distinct_approvers_release_a_run_and_an_unanswered_one_escalates_then_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (mut stack, secops) = stack(dir.path());

    // 0./1. A vote sent right after the submit, before the run has asked for its approval,
    // waits for the run to reach its gate and counts; two-person rule: one approval waits.
    let mut gated = spec("acme", &["true"]);
    gated["requires_approval"] = json!(true);
    let submit = |s: Value| {
        let stack = &stack;
        async move {
            let (status, run) = stack.submit_as(&stack.tokens.ci, &s).await.unwrap();
            assert_eq!(status, 201, "{run}");
            run["run_id"].as_str().unwrap().to_string()
        }
    };
    let a = submit(gated).await;
    let id = format!("approval-gate-{a}");
    let (status, v) = vote(&stack, &stack.tokens.approver, &id, "approve").await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["open"], true, "one approval of two: {v}");
    // A run with no gate has no approval to vote on, also right after its submit.
    let plain = submit(spec("acme", &["true"])).await;
    let (status, v) = vote(
        &stack,
        &stack.tokens.approver,
        &format!("approval-gate-{plain}"),
        "approve",
    )
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (404, Some("approval_not_found")),
        "{v}"
    );
    let (status, v) = vote(&stack, &stack.tokens.approver, &id, "approve").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("already_voted")),
        "{v}"
    );
    // The submitter has no approve role; neither may approve.
    let (status, v) = vote(&stack, &stack.tokens.ci, &id, "approve").await;
    assert_eq!(status, 403, "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.run(&a).await.unwrap()["status"], "awaiting_approval");
    let shown = approval(&stack, &id).await;
    assert_eq!(shown["votes"].as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown["request"]["required"], 2, "{shown}");
    // The engine (API, gateway and worker) kill -9'd with the approval pending: the vote
    // counted so far is the workflow's, so nothing is lost, and nothing counts twice.
    // (Tokens are read at start: another tenant's approver, for after the restart.)
    let globex = stack
        .add_principal_for("globex-approver", "approve,read", &["security"], "globex")
        .unwrap();
    stack.kill9_and_restart_serve().unwrap();
    let shown = approval(&stack, &id).await;
    assert_eq!(shown["votes"].as_array().unwrap().len(), 1, "{shown}");
    let (status, v) = vote(&stack, &stack.tokens.approver, &id, "approve").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("already_voted")),
        "{v}"
    );
    // Another tenant's approver neither sees it nor decides it: it does not exist for them.
    for (method, path) in [
        (Method::GET, format!("/v1/approvals/{id}")),
        (Method::GET, format!("/v1/approvals/{id}/history")),
        (Method::POST, format!("/v1/approvals/{id}/approve")),
    ] {
        let body = (method == Method::POST).then(|| b"{}".to_vec());
        let (status, v) = stack
            .call(method, &path, Some(&globex), body)
            .await
            .unwrap();
        assert_eq!(
            (status, v["code"].as_str()),
            (404, Some("approval_not_found")),
            "{path}: {v}"
        );
    }
    // (Its own tenant's principals do see its mirrored history, once the restarted mirror has
    // it: the 404 above is the tenant's.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (status, v) = loop {
        let (status, v) = stack
            .call(
                Method::GET,
                &format!("/v1/approvals/{id}/history"),
                Some(&stack.tokens.ci),
                None,
            )
            .await
            .unwrap();
        if status != 404 || tokio::time::Instant::now() > deadline {
            break (status, v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((status, &v["complete"]), (200, &json!(false)), "{v}");
    let (status, listed) = stack
        .call(Method::GET, "/v1/approvals", Some(&globex), None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{listed}");
    assert!(!listed.to_string().contains(&id), "{listed}");
    // The CLI lists it, with its count.
    let (code, out, err) = stack.cli(&stack.tokens.ci, &["approvals", "list"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id) && out.contains("1/2 approvals"), "{out}");
    let (code, out, err) = stack
        .cli(&stack.tokens.lead, &["approvals", "approve", &id])
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let done = stack
        .wait_status(&a, &["succeeded", "failed"], RUN_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
    let ledger = stack.wait_mirrored(&a).await.unwrap();
    let entry = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "run.approval")
        .unwrap_or_else(|| panic!("no approval entry: {ledger}"));
    let body: Value = serde_json::from_str(entry["body"].as_str().unwrap()).unwrap();
    let voters: Vec<&str> = body["votes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["approver"].as_str().unwrap())
        .collect();
    assert_eq!(voters, ["approver", "lead"], "{body}");
    assert_eq!(body["result"], "approved");
    assert!(body["votes"][0]["at"].as_str().is_some(), "{body}");
    // Temporal itself holds the approval, as its own workflow with its summary.
    let listed = stack
        .temporal
        .cli(&["workflow", "list", "--query", "WorkflowType = 'Approval'"])
        .unwrap();
    assert!(listed.contains(&id), "{listed}");

    // 2. Nobody decides: after 2 s the next group (security) is asked, and only it counts;
    // after its 2 s the approval expires and the run with it.
    let b = stack
        .gated_run(&stack.tokens.ci, json!({"approval_timeout_seconds": 2}))
        .await
        .unwrap();
    let id = format!("approval-gate-{b}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while approval(&stack, &id).await["stage"] != 1 {
        assert!(tokio::time::Instant::now() < deadline, "never escalated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, v) = vote(&stack, &stack.tokens.approver, &id, "approve").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("not_in_approval_group")),
        "{v}"
    );
    let (status, v) = vote(&stack, &secops[0], &id, "approve").await;
    assert_eq!(status, 202, "a member of the escalated group counts: {v}");
    let done = stack
        .wait_status(&b, &["expired", "succeeded"], RUN_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(done["status"], "expired", "one of two approvals: {done}");
    let (status, v) = vote(&stack, &secops[1], &id, "approve").await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("approval_closed")),
        "a decision after the deadline: {v}"
    );
    let shown = approval(&stack, &id).await;
    assert_eq!(shown["open"], false, "{shown}");
    let (status, v) = stack
        .call(
            Method::POST,
            &format!("/v1/runs/{b}/approve"),
            Some(&stack.tokens.lead),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("not_awaiting_approval")),
        "{v}"
    );
}
