//! One writer per process, group commit: callers hand in entries and wait; the writer takes
//! whatever has queued up, appends it in one transaction (one fsync), and answers them all.
//!
//! Across processes (several engines on one PostgreSQL, or the CLI and the engine on one SQLite
//! file) writers serialise on the chain head row: `SELECT … FOR UPDATE` on PostgreSQL,
//! `BEGIN IMMEDIATE` on SQLite.

use super::{LedgerEntry, NewEntry, canonical_string};
use crate::db::{Backend, Db};
use anyhow::{Context, Result, anyhow};
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

/// Most entries one transaction takes.
const MAX_BATCH: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    Appended {
        seq: i64,
    },
    /// Already in the ledger (same history event, or same derived application event).
    Duplicate,
}

/// A batch's failure as its callers get it: the message, and whether it was the storage's.
#[derive(Debug, Clone)]
struct BatchError {
    message: String,
    unavailable: bool,
}

type Reply = oneshot::Sender<Result<Vec<AppendOutcome>, BatchError>>;

/// One caller's entries, and the journal row (if any) committed with them.
struct Job {
    entries: Vec<NewEntry>,
    journal: Option<JournalRow>,
    reply: Reply,
}

/// A row of the events journal (`gateway_calls`), written in the same transaction as the ledger
/// entries of the call it describes (one commit for both), with `ledger_seq` set to the seq of
/// the call's last entry. A call's intent writes its row (outcome `pending`, the reservation as
/// its tokens and cost); its outcome overwrites the row with what it measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JournalRow {
    pub call_id: String,
    pub at: String,
    pub day: String,
    pub run_id: String,
    pub tenant: String,
    pub agent: String,
    pub kind: String,
    pub target: String,
    pub decision: String,
    pub outcome: String,
    pub upstream_status: Option<i64>,
    pub latency_us: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_micro_usd: i64,
    pub args_sha256: String,
    pub policy_sha256: Option<String>,
}

#[derive(Clone)]
pub struct Ledger {
    db: Db,
    tx: mpsc::Sender<Job>,
}

impl Ledger {
    /// Start the writer task.
    pub fn start(db: Db) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run_writer(db.clone(), rx));
        Self { db, tx }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Append entries in order, atomically, and return once they are durable.
    pub async fn append(&self, entries: Vec<NewEntry>) -> Result<Vec<AppendOutcome>> {
        self.append_with_journal(entries, None).await
    }

    /// [`Self::append`], plus a journal row in the same transaction.
    pub async fn append_with_journal(
        &self,
        entries: Vec<NewEntry>,
        journal: Option<JournalRow>,
    ) -> Result<Vec<AppendOutcome>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                entries,
                journal,
                reply,
            })
            .await
            .map_err(|_| anyhow!("ledger writer stopped"))?;
        rx.await
            .map_err(|_| anyhow!("ledger writer stopped"))?
            .map_err(|e| {
                let message = format!("ledger append failed: {}", e.message);
                if e.unavailable {
                    anyhow::Error::new(crate::db::StorageUnavailable(message))
                } else {
                    anyhow!(message)
                }
            })
    }

    /// Entries of one run (its workflow id), in chain order.
    pub async fn entries_for_workflow(&self, workflow_id: &str) -> Result<Vec<LedgerEntry>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            ledger_columns!(),
            " FROM ledger_entries WHERE workflow_id = $1 ORDER BY seq"
        ))
        .bind(workflow_id)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(entry_from_row).collect()
    }
}

/// The ledger's columns, as a literal for `concat!` (sqlx takes only static SQL).
macro_rules! ledger_columns {
    () => {
        "seq, kind, namespace, workflow_id, temporal_run_id, event_id, event_type, recorded_at, \
         body, prev_hash, hash"
    };
}
pub(crate) use ledger_columns;

pub(crate) fn entry_from_row(row: &sqlx::any::AnyRow) -> Result<LedgerEntry> {
    Ok(LedgerEntry {
        seq: row.try_get("seq")?,
        kind: row.try_get("kind")?,
        namespace: row.try_get("namespace")?,
        workflow_id: row.try_get("workflow_id")?,
        temporal_run_id: row.try_get("temporal_run_id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        recorded_at: row.try_get("recorded_at")?,
        body: row.try_get("body")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

async fn run_writer(db: Db, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut count = jobs[0].entries.len();
        while count < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.entries.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        match commit(&db, &jobs).await {
            Ok(outcomes) => {
                for (job, mine) in jobs.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), entries = count, "ledger append failed");
                let failed = BatchError {
                    message: format!("{e:#}"),
                    unavailable: crate::db::is_storage_unavailable(&e),
                };
                for job in jobs {
                    let _ = job.reply.send(Err(failed.clone()));
                }
            }
        }
    }
}

/// Every job's entries, and its journal row, in one transaction; the outcomes per job.
///
/// A batch that fails (a full disk, a lost server) fails its callers only: its connection is
/// closed rather than handed back to the pool, since a failed `COMMIT` can leave it inside a
/// transaction that every later batch would trip over; the next batch takes a fresh one.
async fn commit(db: &Db, jobs: &[Job]) -> Result<Vec<Vec<AppendOutcome>>> {
    let mut conn = db
        .pool
        .acquire()
        .await
        .context("acquiring a database connection")?;
    let result = commit_on(&mut conn, db.backend, jobs).await;
    if result.is_err() {
        conn.close_on_drop();
    }
    result
}

async fn commit_on(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
    backend: Backend,
    jobs: &[Job],
) -> Result<Vec<Vec<AppendOutcome>>> {
    use sqlx::Connection;
    let mut tx = match backend {
        Backend::Sqlite => conn.begin_with("BEGIN IMMEDIATE").await?,
        Backend::Postgres => conn.begin().await?,
    };
    let lock = match backend {
        Backend::Sqlite => "SELECT seq, hash FROM ledger_head WHERE id = 1",
        Backend::Postgres => "SELECT seq, hash FROM ledger_head WHERE id = 1 FOR UPDATE",
    };
    let head = sqlx::query(lock)
        .fetch_one(&mut *tx)
        .await
        .context("reading the chain head")?;
    let mut seq: i64 = head.try_get("seq")?;
    let mut prev: String = head.try_get("hash")?;
    let recorded_at = crate::now_rfc3339();
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut mine = Vec::with_capacity(job.entries.len());
        for e in &job.entries {
            let mut entry = LedgerEntry {
                seq: seq + 1,
                kind: e.kind.as_str().to_string(),
                namespace: e.namespace.clone(),
                workflow_id: e.workflow_id.clone(),
                temporal_run_id: e.temporal_run_id.clone(),
                event_id: e.event_id,
                event_type: e.event_type.clone(),
                recorded_at: recorded_at.clone(),
                body: canonical_string(&e.body),
                prev_hash: prev.clone(),
                hash: String::new(),
            };
            entry.hash = entry.compute_hash()?;
            let inserted = sqlx::query(concat!(
                "INSERT INTO ledger_entries (",
                ledger_columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING"
            ))
            .bind(entry.seq)
            .bind(&entry.kind)
            .bind(&entry.namespace)
            .bind(&entry.workflow_id)
            .bind(&entry.temporal_run_id)
            .bind(entry.event_id)
            .bind(&entry.event_type)
            .bind(&entry.recorded_at)
            .bind(&entry.body)
            .bind(&entry.prev_hash)
            .bind(&entry.hash)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 1 {
                seq = entry.seq;
                prev = entry.hash;
                mine.push(AppendOutcome::Appended { seq });
            } else {
                mine.push(AppendOutcome::Duplicate);
            }
        }
        if let Some(row) = &job.journal {
            insert_journal_row(&mut tx, row, seq).await?;
        }
        outcomes.push(mine);
    }
    sqlx::query("UPDATE ledger_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(&prev)
        .execute(&mut *tx)
        .await?;
    tx.commit().await.context("committing ledger batch")?;
    Ok(outcomes)
}

async fn insert_journal_row(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    row: &JournalRow,
    ledger_seq: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO gateway_calls (call_id, at, day, run_id, tenant, agent, kind, target, \
         decision, outcome, upstream_status, latency_us, input_tokens, output_tokens, \
         cost_micro_usd, args_sha256, policy_sha256, ledger_seq) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
         ON CONFLICT (call_id) DO UPDATE SET target = excluded.target, decision = excluded.decision, \
         outcome = excluded.outcome, upstream_status = excluded.upstream_status, \
         latency_us = excluded.latency_us, input_tokens = excluded.input_tokens, \
         output_tokens = excluded.output_tokens, cost_micro_usd = excluded.cost_micro_usd, \
         policy_sha256 = excluded.policy_sha256, ledger_seq = excluded.ledger_seq",
    )
    .bind(&row.call_id)
    .bind(&row.at)
    .bind(&row.day)
    .bind(&row.run_id)
    .bind(&row.tenant)
    .bind(&row.agent)
    .bind(&row.kind)
    .bind(&row.target)
    .bind(&row.decision)
    .bind(&row.outcome)
    .bind(row.upstream_status)
    .bind(row.latency_us)
    .bind(row.input_tokens)
    .bind(row.output_tokens)
    .bind(row.cost_micro_usd)
    .bind(&row.args_sha256)
    .bind(&row.policy_sha256)
    .bind(ledger_seq)
    .execute(&mut **tx)
    .await
    .context("writing the events journal")?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A tmpfs of its own, unmounted when dropped.
    struct SmallDisk(tempfile::TempDir);

    impl SmallDisk {
        fn mount(bytes: u64) -> SmallDisk {
            let dir = tempfile::tempdir().unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                dir.path(),
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some(format!("size={bytes}").as_str()),
            )
            .expect("mounting a tmpfs (the test runs as root)");
            SmallDisk(dir)
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }

    fn entry(i: usize, body_bytes: usize) -> NewEntry {
        NewEntry::app(
            "test",
            format!("run-{i}"),
            cogward_protocol::audit::AuditEvent::GatewayToolCall,
            json!({"i": i, "pad": "x".repeat(body_bytes)}),
        )
    }

    /// Regression: one failed commit (the disk full) left the writer's connection inside a
    /// transaction, and every later append failed until the process restarted. Now the batch
    /// that hit the full disk fails, and once there is space again the next one succeeds and
    /// the chain verifies.
    #[tokio::test]
    async fn the_writer_recovers_from_a_full_disk_by_itself() {
        let disk = SmallDisk::mount(4 << 20);
        let url = format!("sqlite://{}", disk.0.path().join("ledger.db").display());
        let db = Db::connect(&url).await.unwrap();
        let ledger = Ledger::start(db.clone());
        ledger.append(vec![entry(0, 10)]).await.unwrap();

        let filler = disk.0.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        drop(f);
        let mut failures = 0;
        for i in 1..=5 {
            if let Err(e) = ledger.append(vec![entry(i, 256 << 10)]).await {
                assert!(
                    crate::db::is_storage_unavailable(&e),
                    "a full disk is a storage failure: {e:#}"
                );
                failures += 1;
            }
        }
        assert!(failures > 0, "the full disk never refused an append");

        std::fs::remove_file(&filler).unwrap();
        for i in 10..15 {
            ledger
                .append(vec![entry(i, 10)])
                .await
                .expect("an append after space came back");
        }
        let report = super::super::verify::verify(&db).await.unwrap();
        assert!(report.ok, "{:?}", report.first_bad);
    }
}
