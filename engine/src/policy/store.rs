//! The policy store: content-addressed modules and data documents, immutable versioned bundles,
//! and bindings (tables in migrations/0003_policies.sql).

use crate::db::Db;
use crate::now_rfc3339;
use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cogward_protocol::spec::PolicyRef;
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// A bundle version as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    pub name: String,
    pub version: i64,
    pub module_sha256: String,
    pub data_sha256: String,
    pub created_by: String,
    pub created_at: String,
}

impl Bundle {
    pub fn policy_ref(&self) -> PolicyRef {
        PolicyRef {
            name: self.name.clone(),
            version: self.version,
            module_sha256: self.module_sha256.clone(),
            data_sha256: self.data_sha256.clone(),
        }
    }
}

/// A binding of a bundle to (tenant, agent, kind): the row, the API's answer and the
/// `policy.bound` ledger body are one type.
pub use cogward_protocol::audit::PolicyBound as Binding;

fn bundle_from_row(row: &sqlx::any::AnyRow) -> Result<Bundle> {
    Ok(Bundle {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        module_sha256: row.try_get("module_sha256")?,
        data_sha256: row.try_get("data_sha256")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
    })
}

const BUNDLE_COLUMNS: &str = "name, version, module_sha256, data_sha256, created_by, created_at";

#[derive(Clone)]
pub struct PolicyStore {
    db: Db,
}

impl PolicyStore {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Store a module unless one with the same sha256 is stored; true if this call stored it.
    pub async fn put_module(&self, sha256: &str, abi_version: u32, wasm: &[u8]) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO policy_modules (sha256, abi_version, size_bytes, wasm_base64, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(sha256)
        .bind(i64::from(abi_version))
        .bind(wasm.len() as i64)
        .bind(B64.encode(wasm))
        .bind(now_rfc3339())
        .execute(&self.db.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn put_data(&self, sha256: &str, body: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO policy_data (sha256, body, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (sha256) DO NOTHING",
        )
        .bind(sha256)
        .bind(body)
        .bind(now_rfc3339())
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    pub async fn module(&self, sha256: &str) -> Result<Option<Vec<u8>>> {
        let b64: Option<String> =
            sqlx::query_scalar("SELECT wasm_base64 FROM policy_modules WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(&self.db.pool)
                .await?;
        b64.map(|b| B64.decode(b).context("stored module is not base64"))
            .transpose()
    }

    pub async fn data(&self, sha256: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT body FROM policy_data WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(&self.db.pool)
                .await?,
        )
    }

    pub async fn module_count(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM policy_modules")
            .fetch_one(&self.db.pool)
            .await?)
    }

    /// The next version of `name` for (module, data), or the latest version if it already is
    /// that pair. Returns the bundle and whether this call created it.
    pub async fn create_bundle(
        &self,
        name: &str,
        module_sha256: &str,
        data_sha256: &str,
        by: &str,
    ) -> Result<(Bundle, bool)> {
        let latest = self.latest(name).await?;
        if let Some(b) = latest
            .as_ref()
            .filter(|b| b.module_sha256 == module_sha256 && b.data_sha256 == data_sha256)
        {
            return Ok((b.clone(), false));
        }
        let bundle = Bundle {
            name: name.into(),
            version: latest.map_or(1, |b| b.version + 1),
            module_sha256: module_sha256.into(),
            data_sha256: data_sha256.into(),
            created_by: by.into(),
            created_at: now_rfc3339(),
        };
        // Two concurrent pushes of one name: the primary key lets one win, the other errors.
        sqlx::query(concat!(
            "INSERT INTO policy_bundles (name, version, module_sha256, data_sha256, created_by, created_at) ",
            "VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(&bundle.name)
        .bind(bundle.version)
        .bind(&bundle.module_sha256)
        .bind(&bundle.data_sha256)
        .bind(&bundle.created_by)
        .bind(&bundle.created_at)
        .execute(&self.db.pool)
        .await
        .context("storing the bundle version (a concurrent push of the same name?)")?;
        Ok((bundle, true))
    }

    pub async fn latest(&self, name: &str) -> Result<Option<Bundle>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BUNDLE_COLUMNS} FROM policy_bundles WHERE name = $1 ORDER BY version DESC LIMIT 1"
        )))
        .bind(name)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(bundle_from_row).transpose()
    }

    pub async fn bundle(&self, name: &str, version: i64) -> Result<Option<Bundle>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BUNDLE_COLUMNS} FROM policy_bundles WHERE name = $1 AND version = $2"
        )))
        .bind(name)
        .bind(version)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(bundle_from_row).transpose()
    }

    pub async fn bundles(&self) -> Result<Vec<Bundle>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BUNDLE_COLUMNS} FROM policy_bundles ORDER BY name, version"
        )))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(bundle_from_row).collect()
    }

    /// Point (tenant, agent, kind) at a bundle version (which must exist).
    pub async fn bind(&self, b: &Binding) -> Result<()> {
        sqlx::query(concat!(
            "INSERT INTO policy_bindings (tenant, agent, kind, name, version, bound_by, bound_at) ",
            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant, agent, kind) DO UPDATE SET ",
            "name = excluded.name, version = excluded.version, bound_by = excluded.bound_by, ",
            "bound_at = excluded.bound_at"
        ))
        .bind(&b.tenant)
        .bind(&b.agent)
        .bind(&b.kind)
        .bind(&b.name)
        .bind(b.version)
        .bind(&b.bound_by)
        .bind(&b.bound_at)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    pub async fn bindings(&self) -> Result<Vec<Binding>> {
        let rows = sqlx::query(concat!(
            "SELECT tenant, agent, kind, name, version, bound_by, bound_at FROM policy_bindings ",
            "ORDER BY kind, tenant, agent"
        ))
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Binding {
                    tenant: row.try_get("tenant")?,
                    agent: row.try_get("agent")?,
                    kind: row.try_get("kind")?,
                    name: row.try_get("name")?,
                    version: row.try_get("version")?,
                    bound_by: row.try_get("bound_by")?,
                    bound_at: row.try_get("bound_at")?,
                })
            })
            .collect()
    }

    /// The bundle deciding `kind` for (tenant, agent): the most specific binding wins.
    pub async fn resolve(&self, tenant: &str, agent: &str, kind: &str) -> Result<Option<Bundle>> {
        let row = sqlx::query(concat!(
            "SELECT b.name, b.version, b.module_sha256, b.data_sha256, b.created_by, b.created_at ",
            "FROM policy_bindings p JOIN policy_bundles b ON b.name = p.name AND b.version = p.version ",
            "WHERE p.kind = $1 AND ((p.tenant = $2 AND p.agent = $3) OR (p.tenant = $2 AND p.agent = '*') ",
            "OR (p.tenant = '*' AND p.agent = '*')) ",
            "ORDER BY CASE WHEN p.tenant = '*' THEN 2 WHEN p.agent = '*' THEN 1 ELSE 0 END LIMIT 1"
        ))
        .bind(kind)
        .bind(tenant)
        .bind(agent)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(bundle_from_row).transpose()
    }
}
