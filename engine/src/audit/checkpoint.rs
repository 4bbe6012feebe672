//! Signed checkpoints: the ledger's length and head hash at a moment, signed (ed25519) with a
//! key that lives outside the database and written outside it (a checkpoint file, stdout for CI
//! logs). The hash chain alone shows an entry was altered in place; it cannot show the chain
//! was cut at its tail, or rewritten and recomputed from some point on, by someone who can
//! write the database. A checkpoint can: `audit verify --checkpoint FILE` checks that the
//! database still holds exactly the prefix each checkpoint signed (the entry at `size` has
//! `head_hash`, and the chain up to it verifies, so every entry before it is as it was).
//!
//! The signed bytes are `cogward ledger checkpoint v1\0<size>\0<head hash>\0<at>`. The key
//! file (`<state-dir>/ledger-signing-key.json`, 0600, created on first use) holds the secret
//! and public key; auditors pin the public key (`--public-key`), since whoever rewrites the
//! database could also write a checkpoint file of their own with another key.

use crate::db::Db;
use anyhow::{Context, Result};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

const DOMAIN: &str = "cogward ledger checkpoint v1";

/// One signed checkpoint, as a line of a checkpoint file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Entries in the chain (the seq of the last one).
    pub size: i64,
    pub head_hash: String,
    pub at: String,
    /// The signing key's public half, hex (which key signed; trust comes from pinning it).
    pub public_key: String,
    /// ed25519 over the signed bytes, hex.
    pub signature: String,
}

fn signed_bytes(size: i64, head_hash: &str, at: &str) -> Vec<u8> {
    format!("{DOMAIN}\0{size}\0{head_hash}\0{at}").into_bytes()
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    secret: String,
    public: String,
    created_at: String,
}

/// The installation's checkpoint signing key, created (0600) if `path` does not exist.
pub fn signing_key(path: &Path) -> Result<SigningKey> {
    let contents = || {
        let key = SigningKey::from_bytes(&crate::state_dir::random_32());
        let file = KeyFile {
            secret: hex::encode(key.to_bytes()),
            public: hex::encode(key.verifying_key().to_bytes()),
            created_at: crate::now_rfc3339(),
        };
        Ok(serde_json::to_vec_pretty(&file)?)
    };
    crate::state_dir::private_file(path, contents, read_key)
}

fn read_key(path: &Path) -> Result<SigningKey> {
    let file: KeyFile = serde_json::from_slice(&std::fs::read(path)?)
        .with_context(|| format!("the signing key file {} is not valid", path.display()))?;
    let bytes: [u8; 32] = hex::decode(&file.secret)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("the signing key is not 32 bytes"))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// A public key given as hex.
pub fn public_key(hex_key: &str) -> Result<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .context("the public key is not hex")?
        .try_into()
        .map_err(|_| anyhow::anyhow!("an ed25519 public key is 32 bytes"))?;
    VerifyingKey::from_bytes(&bytes).context("not an ed25519 public key")
}

/// Sign the chain as the database holds it now: its head, checked against the entry it names.
pub async fn make(db: &Db, key: &SigningKey) -> Result<Checkpoint> {
    let head = sqlx::query("SELECT seq, hash FROM ledger_head WHERE id = 1")
        .fetch_one(&db.pool)
        .await?;
    let size: i64 = head.try_get("seq")?;
    let head_hash: String = head.try_get("hash")?;
    if size > 0 {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT hash FROM ledger_entries WHERE seq = $1")
                .bind(size)
                .fetch_optional(&db.pool)
                .await?;
        anyhow::ensure!(
            stored.as_deref() == Some(head_hash.as_str()),
            "the chain head (seq {size}) does not match its entry; run audit verify"
        );
    }
    let at = crate::now_rfc3339();
    let signature = key.sign(&signed_bytes(size, &head_hash, &at));
    Ok(Checkpoint {
        size,
        head_hash,
        at,
        public_key: hex::encode(key.verifying_key().to_bytes()),
        signature: hex::encode(signature.to_bytes()),
    })
}

/// Append `checkpoint` to the checkpoint file as one line, durably.
pub fn append(path: &Path, checkpoint: &Checkpoint) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut line = serde_json::to_vec(checkpoint)?;
    line.push(b'\n');
    f.write_all(&line)?;
    f.sync_all()?;
    Ok(())
}

/// The checkpoints of a file (one JSON object per line).
pub fn read_file(path: &Path) -> Result<Vec<Checkpoint>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a checkpoint", path.display(), i + 1))
        })
        .collect()
}

/// What a checkpoint says the database no longer holds; `None` when it holds.
pub async fn check(db: &Db, c: &Checkpoint, trusted: &VerifyingKey) -> Result<Option<String>> {
    if c.public_key != hex::encode(trusted.to_bytes()) {
        return Ok(Some(format!(
            "checkpoint of {} (size {}) is signed by another key {}",
            c.at, c.size, c.public_key
        )));
    }
    let signature = hex::decode(&c.signature)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok());
    let valid = signature.is_some_and(|s| {
        trusted
            .verify(&signed_bytes(c.size, &c.head_hash, &c.at), &s)
            .is_ok()
    });
    if !valid {
        return Ok(Some(format!(
            "checkpoint of {} (size {}): the signature does not verify",
            c.at, c.size
        )));
    }
    if c.size == 0 {
        return Ok(None);
    }
    let stored: Option<String> =
        sqlx::query_scalar("SELECT hash FROM ledger_entries WHERE seq = $1")
            .bind(c.size)
            .fetch_optional(&db.pool)
            .await?;
    Ok(match stored {
        None => Some(format!(
            "the ledger was cut: the checkpoint of {} signed {} entries, entry {} is gone",
            c.at, c.size, c.size
        )),
        Some(h) if h != c.head_hash => Some(format!(
            "the ledger was rewritten: entry {} is not the one the checkpoint of {} signed",
            c.size, c.at
        )),
        Some(_) => None,
    })
}

/// Write a checkpoint every `every` while the chain grows (until the process exits).
pub async fn on_schedule(
    db: Db,
    key: SigningKey,
    file: std::path::PathBuf,
    every: std::time::Duration,
) {
    let mut last_size = -1;
    loop {
        tokio::time::sleep(every).await;
        match make(&db, &key).await {
            Ok(c) if c.size != last_size => {
                last_size = c.size;
                if let Err(e) = append(&file, &c) {
                    tracing::error!(error = %format!("{e:#}"), "writing a ledger checkpoint");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "making a ledger checkpoint"),
        }
    }
}
