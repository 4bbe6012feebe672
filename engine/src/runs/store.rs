//! The `runs` table: the API's index of runs for listing and idempotency. Status here is derived
//! from workflow history by the mirror; the record is the ledger.

use crate::db::Db;
use anyhow::{Context, Result};
use cogward_protocol::spec::{RunId, RunSpec, RunStatus, RunSummary};
use cogward_workflows::history::{AGENT_RUN, RunIndex};
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

pub struct Runs<'a>(pub &'a Db);

impl Runs<'_> {
    /// Insert a new run; if one with the same id (same tenant + idempotency key) exists, return
    /// that one instead. The bool says whether this call created it.
    /// The mirror starts following the run's workflow in the same transaction.
    pub async fn insert_or_get(&self, rec: &RunRecord) -> Result<(RunRecord, bool)> {
        let mut tx = self.0.write().await?;
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
        .execute(tx.conn())
        .await?
        .rows_affected();
        crate::audit::mirror::follow(tx.conn(), rec.run_id.as_str(), AGENT_RUN).await?;
        tx.commit().await?;
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
        let mut tx = self.0.write().await?;
        sqlx::query("DELETE FROM runs WHERE run_id = $1")
            .bind(run_id.as_str())
            .execute(tx.conn())
            .await?;
        crate::audit::mirror::unfollow(tx.conn(), run_id.as_str()).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Record in the run's row what the mirror learned of it from its history.
pub async fn apply_index(
    conn: &mut sqlx::AnyConnection,
    run_id: &str,
    temporal_run_id: &str,
    index: &RunIndex,
) -> Result<()> {
    let summary = index
        .summary
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    sqlx::query(
        "UPDATE runs SET temporal_run_id = $1, status = $2, reason = COALESCE($3, reason), \
         summary = COALESCE($4, summary), updated_at = $5 WHERE run_id = $6",
    )
    .bind(temporal_run_id)
    .bind(index.status.as_str())
    .bind(&index.reason)
    .bind(summary)
    .bind(crate::now_rfc3339())
    .bind(run_id)
    .execute(conn)
    .await?;
    Ok(())
}
