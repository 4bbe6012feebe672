//! The ledger writer and verifier against real SQLite and PostgreSQL: concurrent writers (as
//! several engines would be), exactly-once history keys, and tampering of every kind.

use crate::stack::postgres_database;
use cogward::db::{Backend, Db};
use cogward::ledger::{AppendOutcome, EntryKind, Ledger, NewEntry, verify};
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
