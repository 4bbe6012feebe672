//! The ledger writer and verifier against real SQLite and PostgreSQL: concurrent writers (as
//! several engines would be), exactly-once history keys, and tampering of every kind.

use crate::stack::postgres_database;
use cogward::audit::{AppendOutcome, EntryKind, Ledger, NewEntry, verify};
use cogward::db::{Backend, Db};
use serde_json::json;

fn history(workflow: &str, event_id: i64) -> NewEntry {
    NewEntry {
        kind: EntryKind::History,
        namespace: "default".into(),
        workflow_id: workflow.into(),
        temporal_run_id: "r1".into(),
        event_id: Some(event_id),
        event_type: "EVENT_TYPE_TIMER_FIRED".into(),
        body: json!({"event_id": event_id, "note": "é ✓ \"quoted\""}),
    }
}

async fn sqlite_url() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ledger.db").display());
    (dir, url)
}

/// Two writers with their own pools on one database (two engines), appending concurrently.
async fn concurrent_writers_keep_one_chain(url: &str) {
    let a = Ledger::start(Db::connect(url).await.unwrap());
    let b = Ledger::start(Db::connect(url).await.unwrap());
    let mut tasks = Vec::new();
    for (i, ledger) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            for j in 0..50 {
                let wf = format!("run-{i}");
                let out = ledger
                    .append(vec![history(&wf, j), history(&wf, j + 1000)])
                    .await
                    .unwrap();
                assert!(
                    out.iter()
                        .all(|o| matches!(o, AppendOutcome::Appended { .. }))
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = verify(a.db()).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.entries, 400);
    // The same history event again, from either writer: refused by the key, chain unchanged.
    let again = b
        .append(vec![history("run-0", 7), history("run-9", 1)])
        .await
        .unwrap();
    assert_eq!(again[0], AppendOutcome::Duplicate);
    assert_eq!(again[1], AppendOutcome::Appended { seq: 401 });
    let report = verify(a.db()).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.entries, 401);
}

/// Each way of rewriting history is caught, and the first bad entry is named.
async fn tampering_is_named(db: &Db) {
    let ledger = Ledger::start(db.clone());
    let entries: Vec<NewEntry> = (1..=20).map(|i| history("run-t", i)).collect();
    ledger.append(entries).await.unwrap();
    assert!(verify(db).await.unwrap().ok);
    if db.backend == Backend::Postgres {
        // Only a superuser that disables the trigger can get this far.
        sqlx::raw_sql("ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_append_only")
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let cases: &[(&str, &str, i64)] = &[
        (
            "body",
            "UPDATE ledger_entries SET body = REPLACE(body, '\"event_id\":5', '\"event_id\":6') WHERE seq = 5",
            5,
        ),
        (
            "event type",
            "UPDATE ledger_entries SET event_type = 'EVENT_TYPE_X' WHERE seq = 8",
            8,
        ),
        (
            "hash",
            "UPDATE ledger_entries SET hash = (CASE WHEN SUBSTR(hash, 1, 1) = 'a' THEN 'b' ELSE 'a' END) || SUBSTR(hash, 2) WHERE seq = 11",
            11,
        ),
        (
            "whitespace in body",
            "UPDATE ledger_entries SET body = ' ' || body WHERE seq = 13",
            13,
        ),
        (
            "deleted row",
            "DELETE FROM ledger_entries WHERE seq = 16",
            16,
        ),
        (
            "truncated tail",
            "DELETE FROM ledger_entries WHERE seq = 20",
            20,
        ),
    ];
    for (what, sql, seq) in cases {
        // Work on a copy of the table so each case starts from an intact chain.
        sqlx::raw_sql("CREATE TABLE ledger_backup AS SELECT * FROM ledger_entries")
            .execute(&db.pool)
            .await
            .unwrap();
        let changed = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&db.pool)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(changed, 1, "{what}");
        let report = verify(db).await.unwrap();
        assert!(!report.ok, "{what}: {report:?}");
        assert_eq!(
            report.first_bad.as_ref().unwrap().seq,
            *seq,
            "{what}: {report:?}"
        );
        sqlx::raw_sql(
            "DELETE FROM ledger_entries; INSERT INTO ledger_entries SELECT * FROM ledger_backup; DROP TABLE ledger_backup",
        )
        .execute(&db.pool)
        .await
        .unwrap();
        assert!(verify(db).await.unwrap().ok, "{what}: restore");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_concurrent_writers_keep_one_chain() {
    let (_dir, url) = sqlite_url().await;
    concurrent_writers_keep_one_chain(&url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_tampering_is_named() {
    let (_dir, url) = sqlite_url().await;
    tampering_is_named(&Db::connect(&url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_concurrent_writers_keep_one_chain() {
    let Some(url) = postgres_database().await else {
        return;
    };
    concurrent_writers_keep_one_chain(&url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_tampering_is_named() {
    let Some(url) = postgres_database().await else {
        return;
    };
    tampering_is_named(&Db::connect(&url).await.unwrap()).await;
}

/// The ledger as an attacker with write access to the database would leave it, in a copy:
/// each tampering keeps the hash chain consistent, so only a signed checkpoint (and, for an
/// edited application entry, `audit replay`) can tell.
mod checkpoints {
    use crate::stack::{Stack, StackOptions, spec};
    use cogward::audit::LedgerEntry;
    use cogward::db::Db;
    use serde_json::{Value, json};
    use std::process::Output;

    /// A consistent copy of the stack's SQLite database.
    async fn copy(stack: &Stack, name: &str) -> (String, Db) {
        let path = stack.dir.path().join(format!("{name}.db"));
        let db = Db::connect(&stack.database_url).await.unwrap();
        sqlx::query("VACUUM INTO $1")
            .bind(path.display().to_string())
            .execute(&db.pool)
            .await
            .unwrap();
        let url = format!("sqlite://{}", path.display());
        let copy = Db::connect(&url).await.unwrap();
        (url, copy)
    }

    /// A ledger row as stored.
    type Row = (
        i64,
        String,
        String,
        String,
        String,
        Option<i64>,
        String,
        String,
        String,
        String,
        String,
    );

    async fn entries(db: &Db) -> Vec<LedgerEntry> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT seq, kind, namespace, workflow_id, temporal_run_id, event_id, event_type, \
                 recorded_at, body, prev_hash, hash FROM ledger_entries ORDER BY seq",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|r| LedgerEntry {
                seq: r.0,
                kind: r.1,
                namespace: r.2,
                workflow_id: r.3,
                temporal_run_id: r.4,
                event_id: r.5,
                event_type: r.6,
                recorded_at: r.7,
                body: r.8,
                prev_hash: r.9,
                hash: r.10,
            })
            .collect()
    }

    /// Replace the whole chain with `chain`, renumbered and re-hashed, and point the head at
    /// its end: what a careful attacker leaves behind.
    async fn rewrite(db: &Db, chain: Vec<LedgerEntry>) {
        sqlx::query("DELETE FROM ledger_entries")
            .execute(&db.pool)
            .await
            .unwrap();
        let mut prev = cogward::audit::GENESIS_HASH.to_string();
        let mut seq = 0;
        for mut e in chain {
            seq += 1;
            e.seq = seq;
            e.prev_hash = prev.clone();
            e.hash = e.compute_hash().unwrap();
            sqlx::query(
                "INSERT INTO ledger_entries (seq, kind, namespace, workflow_id, temporal_run_id, \
                 event_id, event_type, recorded_at, body, prev_hash, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(e.seq)
            .bind(&e.kind)
            .bind(&e.namespace)
            .bind(&e.workflow_id)
            .bind(&e.temporal_run_id)
            .bind(e.event_id)
            .bind(&e.event_type)
            .bind(&e.recorded_at)
            .bind(&e.body)
            .bind(&e.prev_hash)
            .bind(&e.hash)
            .execute(&db.pool)
            .await
            .unwrap();
            prev = e.hash;
        }
        sqlx::query("UPDATE ledger_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(seq)
            .bind(&prev)
            .execute(&db.pool)
            .await
            .unwrap();
    }

    fn cli(stack: &Stack, url: &str, args: &[&str]) -> (i32, String) {
        let Output {
            status,
            stdout,
            stderr,
        } = stack
            .command()
            .env("DATABASE_URL", url)
            .args(args)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&stdout).to_string();
        (
            status.code().unwrap_or(-1),
            format!("{out}{}", String::from_utf8_lossy(&stderr)),
        )
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn truncation_rewriting_and_erasure_are_caught_by_a_signed_checkpoint() {
        let stack = Stack::start(StackOptions::default()).unwrap();
        let mut gated = spec("acme", &["true"]);
        gated["requires_approval"] = json!(true);
        let (status, run) = stack.submit_as(&stack.tokens.lead, &gated).await.unwrap();
        assert_eq!(status, 201, "{run}");
        let approved = run["run_id"].as_str().unwrap().to_string();
        stack
            .wait_status(&approved, &["awaiting_approval"], crate::RUN_TIMEOUT)
            .await
            .unwrap();
        let (code, v) = stack
            .call(
                reqwest::Method::POST,
                &format!("/v1/runs/{approved}/approve"),
                Some(&stack.tokens.approver),
                Some(br#"{"comment": "ok"}"#.to_vec()),
            )
            .await
            .unwrap();
        assert!(code < 300, "{v}");
        let (other, _) = stack
            .submit_until(&spec("acme", &["true"]), &["succeeded"])
            .await
            .unwrap();
        stack
            .wait_status(&approved, &["succeeded"], crate::RUN_TIMEOUT)
            .await
            .unwrap();
        stack.wait_mirrored(&approved).await.unwrap();
        stack.wait_mirrored(&other).await.unwrap();

        let checkpoints = stack.dir.path().join("checkpoints.jsonl");
        let file = checkpoints.to_str().unwrap();
        let (code, out) = cli(
            &stack,
            &stack.database_url,
            &["audit", "checkpoint", "--file", file],
        );
        assert_eq!(code, 0, "{out}");
        let signed: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        let size = signed["size"].as_i64().unwrap();
        let (code, out) = cli(
            &stack,
            &stack.database_url,
            &["audit", "verify", "--checkpoint", file],
        );
        assert_eq!(code, 0, "the untouched ledger: {out}");

        // 1. Cut at the tail, the head row set to match.
        let (url, db) = copy(&stack, "cut").await;
        let mut chain = entries(&db).await;
        chain.truncate(chain.len() - 5);
        rewrite(&db, chain).await;
        let (code, out) = cli(&stack, &url, &["audit", "verify"]);
        assert_eq!(code, 0, "the chain alone cannot tell: {out}");
        let (code, out) = cli(&stack, &url, &["audit", "verify", "--checkpoint", file]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("the ledger was cut"), "{out}");

        // 2. The approver rewritten, the chain recomputed.
        let (url, db) = copy(&stack, "approver").await;
        let mut chain = entries(&db).await;
        let approval = chain
            .iter_mut()
            .find(|e| e.event_type == "run.approval")
            .unwrap();
        approval.body = approval
            .body
            .replace("\"approver\":\"approver\"", "\"approver\":\"mallory\"");
        assert!(approval.body.contains("mallory"));
        rewrite(&db, chain).await;
        let (code, out) = cli(&stack, &url, &["audit", "verify"]);
        assert_eq!(code, 0, "the chain alone cannot tell: {out}");
        let (code, out) = cli(&stack, &url, &["audit", "verify", "--checkpoint", file]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("the ledger was rewritten"), "{out}");
        let (code, out) = cli(&stack, &url, &["audit", "replay", &approved]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("run.approval") && out.contains("differs"),
            "{out}"
        );

        // 3. One run erased, the rest renumbered.
        let (url, db) = copy(&stack, "erased").await;
        let chain: Vec<LedgerEntry> = entries(&db)
            .await
            .into_iter()
            .filter(|e| e.workflow_id != other)
            .collect();
        assert!((chain.len() as i64) < size);
        rewrite(&db, chain).await;
        let (code, out) = cli(&stack, &url, &["audit", "verify"]);
        assert_eq!(code, 0, "the chain alone cannot tell: {out}");
        let (code, out) = cli(
            &stack,
            &url,
            &["audit", "verify", "--checkpoint", file, "--json"],
        );
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("the ledger was cut"), "{out}");

        // A checkpoint file of the attacker's own, signed with another key: refused.
        let forged = stack.dir.path().join("forged.jsonl");
        let (code, out) = stack
            .command()
            .env("DATABASE_URL", &url)
            .env(
                "COGWARD_LEDGER_SIGNING_KEY",
                stack.dir.path().join("mallory-key.json"),
            )
            .args(["audit", "checkpoint", "--file", forged.to_str().unwrap()])
            .output()
            .map(|o| {
                (
                    o.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&o.stdout).to_string(),
                )
            })
            .unwrap();
        assert_eq!(code, 0, "{out}");
        let (code, out) = cli(
            &stack,
            &url,
            &["audit", "verify", "--checkpoint", forged.to_str().unwrap()],
        );
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("signed by another key"), "{out}");
    }
}
