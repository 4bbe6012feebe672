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

type Reply = oneshot::Sender<Result<Vec<AppendOutcome>, String>>;

#[derive(Clone)]
pub struct Ledger {
    db: Db,
    tx: mpsc::Sender<(Vec<NewEntry>, Reply)>,
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
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((entries, reply))
            .await
            .map_err(|_| anyhow!("ledger writer stopped"))?;
        rx.await
            .map_err(|_| anyhow!("ledger writer stopped"))?
            .map_err(|e| anyhow!("ledger append failed: {e}"))
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

async fn run_writer(db: Db, mut rx: mpsc::Receiver<(Vec<NewEntry>, Reply)>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut count = jobs[0].0.len();
        while count < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.0.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let batch: Vec<&NewEntry> = jobs.iter().flat_map(|(e, _)| e.iter()).collect();
        match commit(&db, &batch).await {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (entries, reply) in jobs {
                    let mine: Vec<AppendOutcome> = outcomes.by_ref().take(entries.len()).collect();
                    let _ = reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), entries = count, "ledger append failed");
                for (_, reply) in jobs {
                    let _ = reply.send(Err(format!("{e:#}")));
                }
            }
        }
    }
}

async fn commit(db: &Db, batch: &[&NewEntry]) -> Result<Vec<AppendOutcome>> {
    let mut tx = match db.backend {
        Backend::Sqlite => db.pool.begin_with("BEGIN IMMEDIATE").await?,
        Backend::Postgres => db.pool.begin().await?,
    };
    let lock = match db.backend {
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
    let mut outcomes = Vec::with_capacity(batch.len());
    for e in batch {
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
            outcomes.push(AppendOutcome::Appended { seq });
        } else {
            outcomes.push(AppendOutcome::Duplicate);
        }
    }
    sqlx::query("UPDATE ledger_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(&prev)
        .execute(&mut *tx)
        .await?;
    tx.commit().await.context("committing ledger batch")?;
    Ok(outcomes)
}
