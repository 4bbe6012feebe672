//! The outcome spool: where a forwarded call's outcome waits when the ledger cannot take it (a
//! full disk, a lost database). One file per call (`<call id>.json`, written to a temporary
//! name, fsync'd, renamed); [`drain`] appends them in the background and removes each once its
//! journal row shows the outcome settled, so a file replayed twice (a crash between the append
//! and the removal) is appended once.

use crate::audit::writer::JournalRow;
use crate::audit::{Ledger, NewEntry};
use crate::db::Db;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the spool is retried.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// A call's outcome as it will be appended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spooled {
    pub entries: Vec<NewEntry>,
    pub journal: JournalRow,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub fn open(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the outcome spool {}", dir.display()))?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keep `record` durably until [`drain`] appends it.
    pub fn keep(&self, call_id: &str, record: &Spooled) -> Result<()> {
        anyhow::ensure!(
            !call_id.is_empty() && call_id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
            "call id {call_id:?} is not a uuid"
        );
        let bytes = serde_json::to_vec(record)?;
        let tmp = self.dir.join(format!(".{call_id}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(format!("{call_id}.json")))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// The spooled records, oldest name first.
    fn pending(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
    }

    /// Append every spooled record the ledger takes now; how many are left.
    pub async fn drain_once(&self, ledger: &Ledger) -> usize {
        let mut left = 0;
        for path in self.pending() {
            match replay(ledger, &path).await {
                Ok(()) => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), file = %path.display(),
                                   "a spooled call outcome is not recorded yet");
                    left += 1;
                }
            }
        }
        left
    }
}

/// Append one spooled record unless its outcome is already settled.
async fn replay(ledger: &Ledger, path: &Path) -> Result<()> {
    let record: Spooled = serde_json::from_slice(&std::fs::read(path)?)
        .with_context(|| format!("reading {}", path.display()))?;
    if settled(ledger.db(), &record.journal.call_id).await? {
        return Ok(());
    }
    ledger
        .append_with_journal(record.entries, Some(record.journal))
        .await?;
    Ok(())
}

/// Whether the call's journal row carries its outcome (it is written with the outcome's entry;
/// `outcome_unknown`, written for an abandoned call, is corrected by the real one).
async fn settled(db: &Db, call_id: &str) -> Result<bool> {
    let outcome: Option<String> =
        sqlx::query_scalar("SELECT outcome FROM gateway_calls WHERE call_id = $1")
            .bind(call_id)
            .fetch_optional(&db.pool)
            .await?;
    Ok(outcome.is_some_and(|o| o != "pending" && o != super::OUTCOME_UNKNOWN))
}

/// Retry the spool until the process exits.
pub async fn drain(gw: std::sync::Arc<super::Gateway>) {
    loop {
        gw.spool.drain_once(&gw.ledger).await;
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// When even the spool cannot be written: keep retrying from memory (lost only if the process
/// dies first, and then `audit verify` names the call's intent without an outcome).
pub async fn retry_in_memory(ledger: Ledger, record: Spooled) {
    loop {
        tokio::time::sleep(RETRY_EVERY).await;
        match settled(ledger.db(), &record.journal.call_id).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => continue,
        }
        if ledger
            .append_with_journal(record.entries.clone(), Some(record.journal.clone()))
            .await
            .is_ok()
        {
            return;
        }
    }
}
