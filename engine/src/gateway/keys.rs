//! The installation's credential keys: a key file outside the database, readable only by the
//! engine (`<state-dir>/gateway-keys.json`, mode 0600, or `COGWARD_GATEWAY_KEYS`), so nothing
//! that can read the database (or a copy of it) can mint a run's credential.
//!
//! ```json
//! {"keys": [{"id": "k3f9a…", "key": "<64 hex>", "created_at": "…"}, …]}
//! ```
//!
//! The first key mints; every listed key verifies (so `cogward gateway rotate-key` puts a new
//! key first and credentials already issued keep working; `--retire ID` removes one, and the
//! credentials it signed stop verifying). Every engine process sharing an installation reads
//! the same file (on one machine, the state directory; across machines, the operator
//! distributes it) and re-reads it when it changes.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Clone, Serialize, Deserialize)]
pub struct Key {
    pub id: String,
    /// 32 random bytes, hex.
    pub key: String,
    pub created_at: String,
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<Key>,
}

/// The keys as last read, and which version of the file that was.
struct Loaded {
    keys: Vec<(String, Vec<u8>)>,
    version: Option<Version>,
}

/// A file's identity and modification time: a rewrite (a new inode, renamed into place) shows
/// even within the clock's granularity.
type Version = (SystemTime, u64, u64);

pub struct KeyRing {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn new_key() -> Key {
    let bytes = crate::state_dir::random_32();
    let id = format!("k{}", &crate::gateway::sha256_hex(&bytes)[..8]);
    Key {
        id,
        key: hex::encode(bytes),
        created_at: crate::now_rfc3339(),
    }
}

fn version(path: &Path) -> Option<Version> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.ino(), m.len()))
}

fn read(path: &Path) -> Result<KeyFile> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file: KeyFile = serde_json::from_slice(&bytes)
        .with_context(|| format!("the key file {} is not valid", path.display()))?;
    anyhow::ensure!(
        !file.keys.is_empty(),
        "the key file {} lists no key",
        path.display()
    );
    Ok(file)
}

/// Write `file` to `path` (0600) atomically.
fn write(path: &Path, file: &KeyFile) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(file)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

impl KeyRing {
    /// Open the key file, creating it with one fresh key if it does not exist.
    pub fn open(path: PathBuf) -> Result<Self> {
        let contents = || {
            let file = KeyFile {
                keys: vec![new_key()],
            };
            Ok(serde_json::to_vec_pretty(&file)?)
        };
        crate::state_dir::private_file(&path, contents, read)?;
        let ring = Self {
            path,
            loaded: Mutex::new(Loaded {
                keys: Vec::new(),
                version: None,
            }),
        };
        ring.refresh()?;
        Ok(ring)
    }

    /// Re-read the file if it changed since it was last read.
    fn refresh(&self) -> Result<()> {
        let now = version(&self.path);
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| anyhow::anyhow!("key ring poisoned"))?;
        if !loaded.keys.is_empty() && loaded.version == now {
            return Ok(());
        }
        let file = read(&self.path)?;
        let mut keys = Vec::new();
        for k in file.keys {
            let bytes = hex::decode(&k.key)
                .ok()
                .filter(|b| b.len() >= 32)
                .with_context(|| format!("key {} is not 32+ bytes of hex", k.id))?;
            keys.push((k.id, bytes));
        }
        *loaded = Loaded { keys, version: now };
        Ok(())
    }

    /// The credential of `run_id` under the current key.
    pub fn mint(&self, run_id: &str) -> Result<(String, String)> {
        self.refresh()?;
        let loaded = self
            .loaded
            .lock()
            .map_err(|_| anyhow::anyhow!("key ring poisoned"))?;
        let (id, key) = loaded.keys.first().context("no key")?;
        Ok((
            cogward_activities::credential::mint(id, key, run_id),
            id.clone(),
        ))
    }

    /// The run a credential names, if it verifies under the key it names.
    pub fn verify<'a>(&self, credential: &'a str) -> Option<&'a str> {
        let presented = cogward_activities::credential::parse(credential)?;
        if let Err(e) = self.refresh() {
            tracing::error!(error = %format!("{e:#}"), "re-reading the gateway key file");
        }
        let loaded = self.loaded.lock().ok()?;
        let (_, key) = loaded.keys.iter().find(|(id, _)| id == presented.key_id)?;
        presented.verifies_under(key).then_some(presented.run_id)
    }
}

/// `cogward gateway rotate-key`: a new key first; `retire` removes one (never the last).
pub fn rotate(path: &Path, retire: Option<&str>) -> Result<String> {
    let mut file = read(path)?;
    if let Some(id) = retire {
        let before = file.keys.len();
        file.keys.retain(|k| k.id != id);
        anyhow::ensure!(
            file.keys.len() < before,
            "no key {id} in {}",
            path.display()
        );
        anyhow::ensure!(!file.keys.is_empty(), "{id} is the only key; rotate first");
        write(path, &file)?;
        return Ok(format!(
            "retired {id}; credentials it signed no longer verify"
        ));
    }
    let key = new_key();
    let id = key.id.clone();
    file.keys.insert(0, key);
    write(path, &file)?;
    Ok(format!(
        "{id} now mints; {} older key(s) still verify",
        file.keys.len() - 1
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn credentials_verify_across_a_rotation_until_their_key_is_retired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let ring = KeyRing::open(path.clone()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (old, old_id) = ring.mint("run-1").unwrap();
        assert_eq!(ring.verify(&old), Some("run-1"));
        // Another process opening the same file agrees.
        assert_eq!(
            KeyRing::open(path.clone()).unwrap().verify(&old),
            Some("run-1")
        );

        rotate(&path, None).unwrap();
        let (new, new_id) = ring.mint("run-2").unwrap();
        assert_ne!(old_id, new_id, "the rotated key mints");
        assert_eq!(
            ring.verify(&old),
            Some("run-1"),
            "old credentials still verify"
        );
        assert_eq!(ring.verify(&new), Some("run-2"));

        rotate(&path, Some(&old_id)).unwrap();
        assert_eq!(ring.verify(&old), None, "a retired key verifies nothing");
        assert_eq!(ring.verify(&new), Some("run-2"));
        assert!(rotate(&path, Some(&new_id)).is_err(), "the last key stays");
    }
}
