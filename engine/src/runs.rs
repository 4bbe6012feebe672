//! The `runs` table: the API's index of runs for listing and idempotency. Status here is derived
//! from workflow history by the mirror; the record is the ledger.

use crate::db::Db;
use anyhow::{Context, Result};
use cogward_activities::spec::{RunId, RunSpec, RunStatus, RunSummary};
use serde::Serialize;
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    pub run_id: RunId,
    pub tenant: String,
    pub agent: String,
    pub idempotency_key: Option<String>,
    pub spec_sha256: String,
    pub spec: RunSpec,
    pub submitted_by: String,
    pub status: RunStatus,
    pub reason: Option<String>,
    pub summary: Option<RunSummary>,
    pub temporal_run_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Default, Clone)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub agent: Option<String>,
    pub tenant: Option<String>,
    pub limit: i64,
}

macro_rules! run_columns {
    () => {
        "run_id, tenant, agent, idempotency_key, spec_sha256, spec, submitted_by, status, reason, \
         summary, temporal_run_id, created_at, updated_at"
    };
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<RunRecord> {
    let status: String = row.try_get("status")?;
    let spec: String = row.try_get("spec")?;
    let summary: Option<String> = row.try_get("summary")?;
    Ok(RunRecord {
        run_id: RunId(row.try_get("run_id")?),
        tenant: row.try_get("tenant")?,
        agent: row.try_get("agent")?,
        idempotency_key: row.try_get("idempotency_key")?,
        spec_sha256: row.try_get("spec_sha256")?,
        spec: serde_json::from_str(&spec).context("stored spec")?,
        submitted_by: row.try_get("submitted_by")?,
        status: RunStatus::parse(&status).context("stored status")?,
        reason: row.try_get("reason")?,
        summary: summary
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .context("stored summary")?,
        temporal_run_id: row.try_get("temporal_run_id")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A run the mirror has not finished copying.
#[derive(Debug, Clone)]
pub struct MirrorCursor {
    pub run_id: RunId,
    pub mirrored_event_id: i64,
}

/// What the mirror learned about a run from its history.
#[derive(Debug, Clone)]
pub struct MirrorUpdate {
    pub temporal_run_id: String,
    pub mirrored_event_id: i64,
    pub status: RunStatus,
    pub reason: Option<String>,
    pub summary: Option<RunSummary>,
    pub done: bool,
}

pub struct Runs<'a>(pub &'a Db);

impl Runs<'_> {
    /// Insert a new run; if one with the same id (same tenant + idempotency key) exists, return
    /// that one instead. The bool says whether this call created it.
    pub async fn insert_or_get(&self, rec: &RunRecord) -> Result<(RunRecord, bool)> {
        let inserted = sqlx::query(concat!(
            "INSERT INTO runs (",
            run_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT DO NOTHING"
        ))
        .bind(rec.run_id.as_str())
        .bind(&rec.tenant)
        .bind(&rec.agent)
        .bind(&rec.idempotency_key)
        .bind(&rec.spec_sha256)
        .bind(serde_json::to_string(&rec.spec)?)
        .bind(&rec.submitted_by)
        .bind(rec.status.as_str())
        .bind(&rec.reason)
        .bind(None::<String>)
        .bind(&rec.temporal_run_id)
        .bind(&rec.created_at)
        .bind(&rec.updated_at)
        .execute(&self.0.pool)
        .await?
        .rows_affected();
        let stored = self
            .get(&rec.run_id)
            .await?
            .context("run vanished after insert")?;
        Ok((stored, inserted == 1))
    }

    pub async fn get(&self, run_id: &RunId) -> Result<Option<RunRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE run_id = $1"
        ))
        .bind(run_id.as_str())
        .fetch_optional(&self.0.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    pub async fn list(&self, f: &RunFilter) -> Result<Vec<RunRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR agent = $2) \
             AND ($3 IS NULL OR tenant = $3) ORDER BY created_at DESC, run_id LIMIT $4"
        ))
        .bind(f.status.map(|s| s.as_str()))
        .bind(&f.agent)
        .bind(&f.tenant)
        .bind(f.limit)
        .fetch_all(&self.0.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Remove a run whose workflow Temporal never started (it has no history to mirror).
    pub async fn forget(&self, run_id: &RunId) -> Result<()> {
        sqlx::query("DELETE FROM runs WHERE run_id = $1")
            .bind(run_id.as_str())
            .execute(&self.0.pool)
            .await?;
        Ok(())
    }

    pub async fn mirror_pending(&self) -> Result<Vec<MirrorCursor>> {
        let rows = sqlx::query(
            "SELECT run_id, mirrored_event_id FROM runs WHERE mirror_done = 0 ORDER BY created_at",
        )
        .fetch_all(&self.0.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MirrorCursor {
                    run_id: RunId(r.try_get("run_id")?),
                    mirrored_event_id: r.try_get("mirrored_event_id")?,
                })
            })
            .collect()
    }

    /// Record what the mirror learned of several runs, in one transaction.
    pub async fn apply_mirror(&self, updates: &[(RunId, MirrorUpdate)]) -> Result<()> {
        let now = crate::now_rfc3339();
        let mut tx = self.0.pool.begin().await?;
        for (run_id, u) in updates {
            let summary = u.summary.as_ref().map(serde_json::to_string).transpose()?;
            sqlx::query(
                "UPDATE runs SET temporal_run_id = $1, mirrored_event_id = $2, status = $3, \
                 reason = COALESCE($4, reason), summary = COALESCE($5, summary), mirror_done = $6, \
                 updated_at = $7 WHERE run_id = $8",
            )
            .bind(&u.temporal_run_id)
            .bind(u.mirrored_event_id)
            .bind(u.status.as_str())
            .bind(&u.reason)
            .bind(summary)
            .bind(i64::from(u.done))
            .bind(&now)
            .bind(run_id.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
