//! The database: SQLite by default, PostgreSQL when the URL says so. One set of portable
//! migrations, plus PostgreSQL-only ones (`*.postgres.sql`) for what SQLite cannot express.

use anyhow::{Context, Result, bail};
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Migrations in order: (version, file name, SQL). Files ending `.postgres.sql` run only there.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "0001_init.sql",
        include_str!("../../migrations/0001_init.sql"),
    ),
    (
        2,
        "0002_append_only.postgres.sql",
        include_str!("../../migrations/0002_append_only.postgres.sql"),
    ),
    (
        3,
        "0003_policies.sql",
        include_str!("../../migrations/0003_policies.sql"),
    ),
    (
        4,
        "0004_policies_immutable.postgres.sql",
        include_str!("../../migrations/0004_policies_immutable.postgres.sql"),
    ),
    (
        5,
        "0005_gateway.sql",
        include_str!("../../migrations/0005_gateway.sql"),
    ),
    (
        6,
        "0006_mcp.sql",
        include_str!("../../migrations/0006_mcp.sql"),
    ),
    (
        7,
        "0007_single_use_approvals.sql",
        include_str!("../../migrations/0007_single_use_approvals.sql"),
    ),
    (
        8,
        "0008_run_credentials.sql",
        include_str!("../../migrations/0008_run_credentials.sql"),
    ),
    (
        9,
        "0009_mcp_client_capabilities.sql",
        include_str!("../../migrations/0009_mcp_client_capabilities.sql"),
    ),
    (
        10,
        "0010_mcp_log_level.sql",
        include_str!("../../migrations/0010_mcp_log_level.sql"),
    ),
    (
        11,
        "0011_callback_deliveries.sql",
        include_str!("../../migrations/0011_callback_deliveries.sql"),
    ),
    (
        12,
        "0012_mirror_cursors.sql",
        include_str!("../../migrations/0012_mirror_cursors.sql"),
    ),
];

/// The database cannot take writes (or answer) right now: its disk is full, its server is gone,
/// no connection could be had. Retrying later can succeed; callers answer 503.
#[derive(Debug, thiserror::Error)]
#[error("storage unavailable: {0}")]
pub struct StorageUnavailable(pub String);

/// Whether `e` (anywhere in its chain) is a storage failure rather than a bug or bad input.
pub fn is_storage_unavailable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<StorageUnavailable>()
            || cause
                .downcast_ref::<sqlx::Error>()
                .is_some_and(sqlx_unavailable)
    })
}

fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let message = db.message().to_ascii_lowercase();
            let sqlite = code.len() < 5 && code.parse::<u32>().is_ok();
            let storage = if sqlite {
                // SQLITE_IOERR (10), SQLITE_FULL (13), SQLITE_CANTOPEN (14), with their
                // extended codes (the low byte is the primary code).
                code.parse::<u32>()
                    .is_ok_and(|c| matches!(c & 0xff, 10 | 13 | 14))
            } else {
                // PostgreSQL: insufficient resources (53…), connection exception (08…),
                // operator intervention (57P…).
                code.starts_with("53") || code.starts_with("08") || code.starts_with("57P")
            };
            storage || message.contains("disk is full") || message.contains("disk i/o error")
        }
        _ => false,
    }
}

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

/// A write transaction on a connection of its own: committed by [`WriteTx::commit`]; dropped
/// without it (any failure), its connection is closed rather than handed back to the pool,
/// since a failed `COMMIT` (a full disk) can leave a SQLite connection inside a transaction that
/// would hold the write lock against every later writer. Closing rolls it back.
pub struct WriteTx {
    conn: sqlx::pool::PoolConnection<sqlx::Any>,
    committed: bool,
}

impl WriteTx {
    pub fn conn(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.conn
    }

    pub async fn commit(mut self) -> Result<()> {
        sqlx::raw_sql("COMMIT").execute(&mut *self.conn).await?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if !self.committed {
            self.conn.close_on_drop();
        }
    }
}

impl Db {
    /// Begin a [`WriteTx`] (on SQLite `BEGIN IMMEDIATE`: the write lock is taken at once, so
    /// two writers never deadlock upgrading).
    pub async fn write(&self) -> Result<WriteTx> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .context("acquiring a database connection")?;
        let begin = match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        sqlx::raw_sql(begin).execute(&mut *conn).await?;
        Ok(WriteTx {
            conn,
            committed: false,
        })
    }

    /// Connect and bring the schema up to date.
    pub async fn connect(url: &str) -> Result<Self> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            bail!("unsupported database URL {url:?}: use sqlite://FILE or postgres://...");
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        // `COGWARD_SQLITE_SYNCHRONOUS=normal`: commits without an fsync (WAL mode), durable
        // against a crash of the process but not of the machine; the default is `full`.
        let synchronous = match std::env::var("COGWARD_SQLITE_SYNCHRONOUS").as_deref() {
            Ok("normal") => "PRAGMA synchronous = NORMAL",
            _ => "PRAGMA synchronous = FULL",
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 10 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute(synchronous).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        if backend == Backend::Sqlite {
            pool.execute("PRAGMA journal_mode = WAL").await?;
        }
        let db = Self { pool, backend };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<()> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS cogward_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        for (version, name, sql) in MIGRATIONS {
            if name.ends_with(".postgres.sql") && self.backend != Backend::Postgres {
                continue;
            }
            let mut tx = self.pool.begin().await?;
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM cogward_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(*sql)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("migration {name}"))?;
            sqlx::query("INSERT INTO cogward_migrations (version, name) VALUES ($1, $2)")
                .bind(*version)
                .bind(*name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(name, "migration applied");
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn storage_failures_are_told_apart_from_other_errors() {
        let io = anyhow::Error::from(sqlx::Error::Io(std::io::Error::other("gone")));
        assert!(is_storage_unavailable(&io));
        assert!(is_storage_unavailable(
            &anyhow::Error::from(sqlx::Error::PoolTimedOut).context("acquiring")
        ));
        assert!(is_storage_unavailable(&anyhow::Error::new(
            StorageUnavailable("full".into())
        )));
        assert!(!is_storage_unavailable(&anyhow::anyhow!("a bug")));
        assert!(!is_storage_unavailable(&anyhow::Error::from(
            sqlx::Error::RowNotFound
        )));
    }
}
