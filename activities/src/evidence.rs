//! The evidence store: what a reviewer needs to judge a run, content-addressed on disk, per
//! tenant, each item's digest in the run's history (and so in the audit ledger).
//!
//! ```text
//! <state>/evidence/<tenant>/blobs/<sha256[..2]>/<sha256>   an item's bytes (0600)
//! <state>/evidence/<tenant>/runs/<run id>.json             the run's index: its items
//! ```
//!
//! Items ([`store_run`], by the StartRunner activity once the runner's result is in):
//! `manifest` (runtime and CLI version, model, profile, admission policy digests, spec
//! digest), `diff` (the work directory against what the run was given, as a unified diff),
//! `transcript` (an agent CLI's run events), `stdout`, `stderr`, `artifacts` (the runner's
//! file list) and every artifact as `work/<path>` (listed by digest only past the size caps).
//!
//! History carries the index's digest and the run's own items; the artifacts (any number of
//! them) are listed in the index only, each with its digest, so what grows with the agent's
//! work stays out of history. Storing is idempotent: a retried activity writes the same blobs
//! and the same index (it has no timestamp of its own), so the digest in history always names
//! the file on disk; blobs are made durable (one `syncfs`) before the index that names them.
//! Reading ([`read_item`]) checks the index against its recorded digest and every byte against
//! its own. [`sweep`] deletes runs' evidence past
//! the retention and the blobs no index names any more.

use crate::agent_events::{Normaliser, OutputFormat};
pub use crate::workspace::TreeFile;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use cogward_protocol::runner::{
    EvidenceItem, MANIFEST_FILE, Manifest, RunnerResult, STDERR_FILE, STDOUT_FILE, StoredEvidence,
    WORK_DIR,
};
use cogward_protocol::spec::{PolicyRef, RuntimeSpec};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// An artifact larger than this is listed by digest, not stored.
pub const MAX_STORED_ARTIFACT: u64 = 64 << 20;
/// A run stores at most this many bytes of artifacts, and this many artifact files.
pub const MAX_STORED_ARTIFACTS_PER_RUN: u64 = 512 << 20;
pub const MAX_STORED_ARTIFACT_FILES: usize = 2000;
/// Files larger than this are not diffed line by line (the diff names them with their digest).
pub const MAX_DIFFED_FILE: u64 = 1 << 20;
/// The diff covers at most this many changed files and about this many bytes; it says how many
/// more changed (their digests are in the index).
pub const MAX_DIFFED_FILES: usize = 2000;
pub const MAX_DIFF_BYTES: usize = 16 << 20;

/// The run's index in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIndex {
    pub run_id: String,
    pub tenant: String,
    /// When the agent finished (the runner's clock), for retention.
    pub finished_at_ms: u64,
    pub items: Vec<EvidenceItem>,
    /// Every artifact (`work/<path>`), stored or by digest only.
    #[serde(default)]
    pub artifacts: Vec<EvidenceItem>,
}

impl RunIndex {
    fn all(&self) -> impl Iterator<Item = &EvidenceItem> {
        self.items.iter().chain(&self.artifacts)
    }
}

/// What the manifest item records about the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    pub run_id: String,
    pub tenant: String,
    pub runtime: String,
    /// The agent CLI and its version (`claude-code 2.1.197`), for agent-CLI runtimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cli: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub sandbox_profile: String,
    pub spec_sha256: String,
    /// The policy that admitted the run (module and data digests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission_policy: Option<PolicyRef>,
    /// The checkout `work/` started as, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<CheckedOut>,
    pub outcome: String,
    pub exit_code: Option<i32>,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
}

/// A run's checkout: the repository and ref the spec named, and the commit they were.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckedOut {
    pub repository: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit: String,
}

/// Where the store is, for the engine's state directory.
pub fn root(state_dir: &Path) -> PathBuf {
    state_dir.join("evidence")
}

fn tenant_dir(root: &Path, tenant: &str) -> PathBuf {
    // Tenants are checked names ([A-Za-z0-9._-]); a name of dots alone is kept out of paths.
    let safe = if tenant.bytes().all(|b| b == b'.') {
        "_"
    } else {
        tenant
    };
    root.join(safe)
}

fn index_path(root: &Path, tenant: &str, run_id: &str) -> PathBuf {
    tenant_dir(root, tenant)
        .join("runs")
        .join(format!("{run_id}.json"))
}

fn blob_path(root: &Path, tenant: &str, sha256: &str) -> PathBuf {
    tenant_dir(root, tenant)
        .join("blobs")
        .join(&sha256[..2.min(sha256.len())])
        .join(sha256)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Write `bytes` to `path` atomically (temp + rename), 0600, unless it is there; durable once
/// the store is synced ([`sync_store`]).
fn write_once(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    write_file(path, bytes, false)
}

/// Write `bytes` to `path` atomically and durably (temp + fsync + rename).
fn write_replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_file(path, bytes, true)
}

/// Flush everything written to the store's filesystem (one `syncfs`, not a sync per blob).
fn sync_store(root: &Path) -> io::Result<()> {
    let dir = std::fs::File::open(root)?;
    nix::unistd::syncfs(&dir).map_err(io::Error::from)
}

fn write_file(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("item"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Collects a run's items as they are stored.
struct Writer<'a> {
    root: &'a Path,
    tenant: &'a str,
    items: Vec<EvidenceItem>,
}

impl Writer<'_> {
    fn put(&mut self, name: &str, media_type: &str, bytes: &[u8]) -> io::Result<()> {
        let sha256 = sha256_hex(bytes);
        write_once(&blob_path(self.root, self.tenant, &sha256), bytes)?;
        self.items.push(EvidenceItem {
            name: name.to_string(),
            media_type: media_type.to_string(),
            sha256,
            bytes: bytes.len() as u64,
            stored: true,
        });
        Ok(())
    }
}

/// What the StartRunner activity knows of the run beyond the runner's result.
pub struct RunFacts<'a> {
    pub run_id: &'a str,
    pub tenant: &'a str,
    pub runtime: &'a RuntimeSpec,
    pub cli: Option<String>,
    pub sandbox_profile: &'a str,
    pub spec_sha256: &'a str,
    pub admission_policy: Option<PolicyRef>,
    /// What `work/` held before the run started (the diff's left side): the checkout's files
    /// and those the run was given.
    pub initial_files: &'a BTreeMap<String, TreeFile>,
    /// The checkout `work/` started as: the diff is then spelled as `git diff` spells it.
    pub workspace: Option<CheckedOut>,
}

/// Store the evidence of a finished run whose directory is `run_dir`.
pub fn store_run(
    root: &Path,
    facts: &RunFacts<'_>,
    run_dir: &Path,
    result: &RunnerResult,
) -> io::Result<StoredEvidence> {
    let mut w = Writer {
        root,
        tenant: facts.tenant,
        items: Vec::new(),
    };
    let task = facts.runtime.task();
    let manifest = RunManifest {
        run_id: facts.run_id.to_string(),
        tenant: facts.tenant.to_string(),
        runtime: facts.runtime.name().to_string(),
        cli: facts.cli.clone(),
        model: task.map(|t| t.model.clone()),
        sandbox_profile: facts.sandbox_profile.to_string(),
        spec_sha256: facts.spec_sha256.to_string(),
        admission_policy: facts.admission_policy.clone(),
        workspace: facts.workspace.clone(),
        outcome: serde_json::to_value(result.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        exit_code: result.exit_code,
        started_at_ms: result.started_at_ms,
        finished_at_ms: result.finished_at_ms,
    };
    w.put(
        "manifest",
        "application/json",
        &serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?,
    )?;
    let artifacts: Manifest = std::fs::read(run_dir.join(MANIFEST_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let work = match Dir::open_ambient_dir(run_dir.join(WORK_DIR), cap_std::ambient_authority()) {
        Ok(d) => Some(d),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let git = facts.workspace.is_some();
    let diff = tree_diff(work.as_ref(), facts.initial_files, &artifacts, git);
    w.put("diff", "text/x-diff", diff.as_bytes())?;
    let stdout = std::fs::read(run_dir.join(STDOUT_FILE)).unwrap_or_default();
    if let Some(format) = OutputFormat::of(facts.runtime) {
        let events = Normaliser::all(format, &String::from_utf8_lossy(&stdout));
        let mut transcript = Vec::new();
        for e in &events {
            serde_json::to_writer(&mut transcript, e).map_err(io::Error::other)?;
            transcript.push(b'\n');
        }
        w.put("transcript", "application/x-ndjson", &transcript)?;
    }
    w.put("stdout", "text/plain", &stdout)?;
    let stderr = std::fs::read(run_dir.join(STDERR_FILE)).unwrap_or_default();
    w.put("stderr", "text/plain", &stderr)?;
    w.put(
        "artifacts",
        "application/json",
        &serde_json::to_vec_pretty(&artifacts).map_err(io::Error::other)?,
    )?;
    let items = std::mem::take(&mut w.items);
    let (mut stored_bytes, mut stored_files) = (0u64, 0usize);
    for a in &artifacts.artifacts {
        let name = format!("work/{}", a.path);
        let fits = a.bytes <= MAX_STORED_ARTIFACT
            && stored_bytes + a.bytes <= MAX_STORED_ARTIFACTS_PER_RUN
            && stored_files < MAX_STORED_ARTIFACT_FILES;
        let bytes = match (&work, fits) {
            (Some(dir), true) => read_no_follow(dir, &a.path, a.bytes)?,
            _ => None,
        };
        match bytes {
            // Only what the runner hashed: a file that changed since is not evidence of the run.
            Some(b) if sha256_hex(&b) == a.sha256 => {
                stored_bytes += a.bytes;
                stored_files += 1;
                w.put(&name, "application/octet-stream", &b)?;
            }
            _ => w.items.push(EvidenceItem {
                name,
                media_type: "application/octet-stream".into(),
                sha256: a.sha256.clone(),
                bytes: a.bytes,
                stored: false,
            }),
        }
    }
    let index = RunIndex {
        run_id: facts.run_id.to_string(),
        tenant: facts.tenant.to_string(),
        finished_at_ms: result.finished_at_ms,
        items,
        artifacts: w.items,
    };
    sync_store(root)?;
    let bytes = serde_json::to_vec_pretty(&index).map_err(io::Error::other)?;
    write_replace(&index_path(root, facts.tenant, facts.run_id), &bytes)?;
    Ok(StoredEvidence {
        index_sha256: sha256_hex(&bytes),
        artifacts_listed: index.artifacts.len() as u64,
        artifacts_stored: index.artifacts.iter().filter(|a| a.stored).count() as u64,
        items: index.items,
    })
}

/// A regular file of the work directory, read without following any symlink out of it; `None`
/// if it is not (any more) a regular file of at most `max` bytes.
fn read_no_follow(dir: &Dir, rel: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
    let mut options = OpenOptions::new();
    options.read(true).custom_flags(nix::libc::O_NOFOLLOW);
    let mut file = match dir.open_with(rel, &options) {
        Ok(f) => f,
        Err(_) => return Ok(None),
    };
    if !file.metadata()?.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    (&mut file).take(max + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

/// The work directory against what it held at the start, as a unified diff (`a/` the run's
/// start, `b/` its end); with `git`, headed `diff --git` (a checkout's diff, which `git apply`
/// takes on its commit). Binary and large files are named with their digests.
pub fn tree_diff(
    work: Option<&Dir>,
    initial: &BTreeMap<String, TreeFile>,
    end: &Manifest,
    git: bool,
) -> String {
    let head = if git { "diff --git" } else { "diff --cogward" };
    let mut out = String::new();
    let after: BTreeMap<&str, &cogward_protocol::runner::Artifact> =
        end.artifacts.iter().map(|a| (a.path.as_str(), a)).collect();
    let mut paths: Vec<&str> = initial.keys().map(String::as_str).collect();
    paths.extend(after.keys().copied());
    paths.sort_unstable();
    paths.dedup();
    let (mut diffed, mut more) = (0usize, 0usize);
    for path in paths {
        let (old, new_meta) = (initial.get(path), after.get(path));
        if let (Some(o), Some(a)) = (old, new_meta)
            && o.sha256 == a.sha256
        {
            continue;
        }
        if diffed >= MAX_DIFFED_FILES || out.len() >= MAX_DIFF_BYTES {
            more += 1;
            continue;
        }
        let new = match (new_meta, work) {
            (Some(a), Some(dir)) if a.bytes <= MAX_DIFFED_FILE => {
                read_no_follow(dir, path, MAX_DIFFED_FILE).ok().flatten()
            }
            _ => None,
        };
        let old_bytes = old.and_then(|o| o.bytes.as_deref());
        // `git apply` needs a created or deleted file's mode (a new file's is not known: the
        // artifacts have no modes).
        let mode = |o: &TreeFile| if o.executable { "100755" } else { "100644" };
        let (created, deleted) = match old {
            _ if !git => (String::new(), String::new()),
            None => ("new file mode 100644\n".into(), String::new()),
            Some(o) => (String::new(), format!("deleted file mode {}\n", mode(o))),
        };
        match (old, new_meta, &new) {
            (Some(_), None, _) if old_bytes.is_some() => {
                let diff = file_diff(head, path, old_bytes, Some(&[]), true);
                out.push_str(&with_mode(diff, &deleted));
            }
            (Some(_), None, _) => out.push_str(&format!(
                "{head} a/{path} b/{path}\nDeleted file {path} (not diffed)\n"
            )),
            (None, _, Some(n)) => {
                let diff = file_diff(head, path, None, Some(n), false);
                out.push_str(&with_mode(diff, &created));
            }
            (Some(_), _, Some(n)) if old_bytes.is_some() => {
                out.push_str(&file_diff(head, path, old_bytes, Some(n), false));
            }
            (_, Some(a), _) => out.push_str(&format!(
                "{head} a/{path} b/{path}\n{} file {path}: {} bytes, sha256 {} (not diffed)\n",
                if old.is_some() { "Changed" } else { "New" },
                a.bytes,
                a.sha256
            )),
            (None, None, _) => continue,
        }
        diffed += 1;
    }
    if more > 0 {
        out.push_str(&format!(
            "# {more} more changed files are not in this diff (its caps); the index lists each with its digest\n"
        ));
    }
    if end.truncated {
        out.push_str(
            "# the artifact list was truncated: files past its caps are not in this diff\n",
        );
    }
    out
}

/// `diff` with `mode` (a `new file mode` or `deleted file mode` line) after its first line.
fn with_mode(diff: String, mode: &str) -> String {
    match diff.split_once('\n') {
        Some((first, rest)) if !mode.is_empty() => format!("{first}\n{mode}{rest}"),
        _ => diff,
    }
}

fn file_diff(
    head: &str,
    path: &str,
    old: Option<&[u8]>,
    new: Option<&[u8]>,
    deleted: bool,
) -> String {
    let (Ok(o), Ok(n)) = (
        std::str::from_utf8(old.unwrap_or_default()),
        std::str::from_utf8(new.unwrap_or_default()),
    ) else {
        let digest = |b: Option<&[u8]>| b.map(sha256_hex).unwrap_or_else(|| "-".into());
        return format!(
            "{head} a/{path} b/{path}\nBinary file {path} changed: sha256 {} -> {}\n",
            digest(old),
            digest(new)
        );
    };
    let (from, to) = match (old.is_some(), deleted) {
        (false, _) => ("/dev/null".to_string(), format!("b/{path}")),
        (true, true) => (format!("a/{path}"), "/dev/null".to_string()),
        (true, false) => (format!("a/{path}"), format!("b/{path}")),
    };
    let diff = similar::TextDiff::from_lines(o, n);
    format!(
        "{head} a/{path} b/{path}\n{}",
        diff.unified_diff().context_radius(3).header(&from, &to)
    )
}

/// A run's index, if the store has one for it.
pub fn read_index(root: &Path, tenant: &str, run_id: &str) -> io::Result<Option<RunIndex>> {
    match std::fs::read(index_path(root, tenant, run_id)) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Why an item cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the run has no evidence item {0:?}")]
    NoSuchItem(String),
    #[error("evidence item {0:?} is listed by digest only (too large to store)")]
    NotStored(String),
    #[error(
        "evidence item {name:?} does not match its recorded digest {sha256} (tampered or damaged)"
    )]
    Corrupt { name: String, sha256: String },
    #[error("reading the evidence store: {0}")]
    Io(#[from] io::Error),
}

/// The run's index, checked against the digest its history records, or why it cannot be.
pub fn verified_index(
    root: &Path,
    tenant: &str,
    run_id: &str,
    stored: &StoredEvidence,
) -> Result<RunIndex, ReadError> {
    let bytes = match std::fs::read(index_path(root, tenant, run_id)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if sha256_hex(&bytes) != stored.index_sha256 {
        return Err(ReadError::Corrupt {
            name: "index".into(),
            sha256: stored.index_sha256.clone(),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| ReadError::Io(io::Error::other(e)))
}

/// Every item of the run: its own, then its artifacts (from the verified index).
pub fn list_items(
    root: &Path,
    tenant: &str,
    run_id: &str,
    stored: &StoredEvidence,
) -> Result<Vec<EvidenceItem>, ReadError> {
    Ok(verified_index(root, tenant, run_id, stored)?
        .all()
        .cloned()
        .collect())
}

/// An item's bytes, checked against its digest: one of the run's own items as history
/// records it, or an artifact as the index (checked against history) lists it.
pub fn read_item(
    root: &Path,
    tenant: &str,
    run_id: &str,
    stored: &StoredEvidence,
    name: &str,
) -> Result<Vec<u8>, ReadError> {
    let index;
    let item = match stored.items.iter().find(|i| i.name == name) {
        Some(item) => item,
        None => {
            index = verified_index(root, tenant, run_id, stored)?;
            index
                .artifacts
                .iter()
                .find(|i| i.name == name)
                .ok_or_else(|| ReadError::NoSuchItem(name.to_string()))?
        }
    };
    if !item.stored {
        return Err(ReadError::NotStored(name.to_string()));
    }
    let bytes = match std::fs::read(blob_path(root, tenant, &item.sha256)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if sha256_hex(&bytes) != item.sha256 {
        return Err(ReadError::Corrupt {
            name: name.to_string(),
            sha256: item.sha256.clone(),
        });
    }
    Ok(bytes)
}

/// What a sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub runs: u64,
    pub blobs: u64,
}

/// Delete the evidence of runs that finished more than `retention` before `now`, then every
/// blob of a tenant that no remaining index lists.
pub fn sweep(root: &Path, retention: Duration, now: SystemTime) -> io::Result<Swept> {
    let mut swept = Swept::default();
    let cutoff_ms = now
        .checked_sub(retention)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    let tenants = match std::fs::read_dir(root) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(swept),
        Err(e) => return Err(e),
    };
    for tenant in tenants {
        let tenant = tenant?.path();
        let mut live = std::collections::BTreeSet::new();
        if let Ok(runs) = std::fs::read_dir(tenant.join("runs")) {
            for run in runs {
                let path = run?.path();
                let Ok(index) = std::fs::read(&path)
                    .map_err(io::Error::other)
                    .and_then(|b| serde_json::from_slice::<RunIndex>(&b).map_err(io::Error::other))
                else {
                    continue;
                };
                if index.finished_at_ms < cutoff_ms {
                    std::fs::remove_file(&path)?;
                    swept.runs += 1;
                } else {
                    live.extend(index.all().map(|i| i.sha256.clone()));
                }
            }
        }
        if let Ok(shards) = std::fs::read_dir(tenant.join("blobs")) {
            for shard in shards {
                for blob in std::fs::read_dir(shard?.path())? {
                    let blob = blob?.path();
                    let name = blob.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if !name.starts_with('.') && !live.contains(name) {
                        std::fs::remove_file(&blob)?;
                        swept.blobs += 1;
                    }
                }
            }
        }
    }
    Ok(swept)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use cogward_protocol::runner::{Artifact, ArtifactsSummary, Outcome, StreamDigest};

    fn result(finished_at_ms: u64) -> RunnerResult {
        RunnerResult {
            protocol: 3,
            run_id: "run-1".into(),
            outcome: Outcome::Exited,
            exit_code: Some(0),
            signal: None,
            detail: None,
            stdout: StreamDigest::default(),
            stderr: StreamDigest::default(),
            artifacts: ArtifactsSummary::default(),
            sandbox: None,
            started_at_ms: 1,
            finished_at_ms,
            cpu_ms: None,
            evidence: None,
        }
    }

    /// A run directory whose agent edited `a.txt`, added `b.bin` and linked `evil` to a host
    /// file; its manifest as the runner would write it.
    fn run_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(work.join("a.txt"), "one\ntwo changed\nthree\n").unwrap();
        std::fs::write(work.join("b.bin"), [0u8, 159, 146, 150]).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", work.join("evil")).unwrap();
        let artifacts = |p: &str, b: &[u8]| Artifact {
            path: p.into(),
            sha256: sha256_hex(b),
            bytes: b.len() as u64,
        };
        let manifest = Manifest {
            artifacts: vec![
                artifacts("a.txt", b"one\ntwo changed\nthree\n"),
                artifacts("b.bin", &[0, 159, 146, 150]),
                // A listed path that is a link now: never followed.
                artifacts("evil", b"root:x"),
            ],
            files: 3,
            bytes: 30,
            truncated: false,
        };
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join(STDOUT_FILE), "hi\n").unwrap();
        dir
    }

    fn facts<'a>(
        runtime: &'a RuntimeSpec,
        initial: &'a BTreeMap<String, TreeFile>,
    ) -> RunFacts<'a> {
        RunFacts {
            run_id: "run-1",
            tenant: "acme",
            runtime,
            cli: Some("claude-code 9.9.9".into()),
            sandbox_profile: "strict",
            spec_sha256: "abc",
            admission_policy: None,
            initial_files: initial,
            workspace: None,
        }
    }

    #[test]
    fn a_run_is_stored_by_digest_diffed_and_read_back_checked() {
        let store = tempfile::tempdir().unwrap();
        let dir = run_dir();
        let runtime: RuntimeSpec =
            serde_json::from_str(r#"{"type":"claude-code","prompt":"p","model":"m"}"#).unwrap();
        let text = b"one\ntwo\nthree\n";
        let initial = BTreeMap::from([(
            "a.txt".to_string(),
            TreeFile {
                sha256: sha256_hex(text),
                bytes: Some(text.to_vec()),
                executable: false,
            },
        )]);
        let facts = facts(&runtime, &initial);
        let stored = store_run(store.path(), &facts, dir.path(), &result(5)).unwrap();
        // History gets the run's own items; the index lists the artifacts too.
        let names: Vec<&str> = stored.items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "manifest",
                "diff",
                "transcript",
                "stdout",
                "stderr",
                "artifacts"
            ]
        );
        assert_eq!((stored.artifacts_listed, stored.artifacts_stored), (3, 2));
        let all = list_items(store.path(), "acme", "run-1", &stored).unwrap();
        assert_eq!(all.len(), 9);
        let read = |name: &str| read_item(store.path(), "acme", "run-1", &stored, name);
        let diff = String::from_utf8(read("diff").unwrap()).unwrap();
        assert!(diff.contains("--- a/a.txt\n+++ b/a.txt\n"), "{diff}");
        assert!(diff.contains("-two\n+two changed\n"), "{diff}");
        assert!(diff.contains("Binary file b.bin changed"), "{diff}");
        assert!(!diff.contains("root:"), "{diff}");
        // The link was not followed: listed by digest only.
        let evil = all.iter().find(|i| i.name == "work/evil").unwrap();
        assert!(!evil.stored);
        assert!(matches!(read("work/evil"), Err(ReadError::NotStored(_))));
        assert_eq!(read("work/a.txt").unwrap(), b"one\ntwo changed\nthree\n");
        let manifest: RunManifest = serde_json::from_slice(&read("manifest").unwrap()).unwrap();
        assert_eq!(
            (manifest.runtime.as_str(), manifest.model.as_deref()),
            ("claude-code", Some("m"))
        );
        // Idempotent: a retried activity stores the same index.
        let again = store_run(store.path(), &facts, dir.path(), &result(5)).unwrap();
        assert_eq!(again, stored);
        // A blob changed on disk is refused, not served; so is an index changed on disk.
        let item = all.iter().find(|i| i.name == "work/a.txt").unwrap();
        std::fs::write(blob_path(store.path(), "acme", &item.sha256), "forged").unwrap();
        assert!(matches!(read("work/a.txt"), Err(ReadError::Corrupt { .. })));
        let index = index_path(store.path(), "acme", "run-1");
        let text = std::fs::read_to_string(&index)
            .unwrap()
            .replace("\"stored\": false", "\"stored\": true");
        std::fs::write(&index, text).unwrap();
        assert!(matches!(read("work/evil"), Err(ReadError::Corrupt { .. })));
        assert!(
            read("diff").is_ok(),
            "the run's own items are checked against history itself"
        );
    }

    #[test]
    fn a_diff_stops_at_its_caps_and_says_how_many_files_it_left_out() {
        let work = tempfile::tempdir().unwrap();
        let mut artifacts = Vec::new();
        for i in 0..MAX_DIFFED_FILES + 5 {
            let name = format!("f{i:05}.txt");
            std::fs::write(work.path().join(&name), format!("{i}\n")).unwrap();
            artifacts.push(cogward_protocol::runner::Artifact {
                path: name,
                sha256: sha256_hex(format!("{i}\n").as_bytes()),
                bytes: 2,
            });
        }
        let end = Manifest {
            artifacts,
            ..Default::default()
        };
        let dir = Dir::open_ambient_dir(work.path(), cap_std::ambient_authority()).unwrap();
        let diff = tree_diff(Some(&dir), &BTreeMap::new(), &end, false);
        assert_eq!(diff.matches("+++ b/").count(), MAX_DIFFED_FILES);
        assert!(diff.ends_with("# 5 more changed files are not in this diff (its caps); the index lists each with its digest\n"), "{}", &diff[diff.len() - 200..]);
    }

    #[test]
    fn the_sweep_removes_runs_past_retention_and_blobs_nobody_lists() {
        let store = tempfile::tempdir().unwrap();
        let dir = run_dir();
        let runtime: RuntimeSpec =
            serde_json::from_str(r#"{"type":"command","command":["true"]}"#).unwrap();
        let initial = BTreeMap::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100 * 86400);
        let recent = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        store_run(
            store.path(),
            &facts(&runtime, &initial),
            dir.path(),
            &result(1),
        )
        .unwrap();
        let mut f = facts(&runtime, &initial);
        f.run_id = "run-2";
        std::fs::write(dir.path().join(STDOUT_FILE), "only run-2 printed this\n").unwrap();
        let kept = store_run(store.path(), &f, dir.path(), &result(recent)).unwrap();
        let swept = sweep(store.path(), Duration::from_secs(30 * 86400), now).unwrap();
        assert_eq!(swept.runs, 1);
        assert!(swept.blobs >= 1, "{swept:?}");
        assert!(read_index(store.path(), "acme", "run-1").unwrap().is_none());
        for item in list_items(store.path(), "acme", "run-2", &kept)
            .unwrap()
            .iter()
            .filter(|i| i.stored)
        {
            read_item(store.path(), "acme", "run-2", &kept, &item.name).unwrap();
        }
    }
}
