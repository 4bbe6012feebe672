//! The run directory on disk: the lock, the at-most-once `started` claim, the event log, and
//! the atomic result (see [`crate::protocol`] for the file table).
//!
//! Files the runner creates are mode 0600 and owned like the run directory itself, so the
//! worker that created the directory can read them and the sandbox user cannot (it does not
//! even see them: its filesystem view holds `work/` alone).

use cap_std::fs::{Dir, OpenOptionsExt as _};
use cogward_protocol::runner::{
    ArtifactsSummary, Checkout, EVENTS_FILE, GIT_DIR, LOCK_FILE, MANIFEST_FILE, Manifest,
    REQUEST_FILE, RESULT_FILE, RUNNER_LOG_FILE, RunnerEvent, RunnerResult, STARTED_FILE, WORK_DIR,
};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another process holds {0}")]
    Busy(PathBuf),
    #[error("locking {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("{0} exists: the agent was already started once; it is never started again")]
    AlreadyStarted(PathBuf),
    #[error("creating {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Contents of `started`: who claimed the run directory, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartedClaim {
    pub runner_pid: u32,
    pub started_at_ms: u64,
}

#[derive(Debug)]
pub struct RunDir {
    root: PathBuf,
    owner_uid: u32,
    owner_gid: u32,
}

impl RunDir {
    /// `path` made absolute (it becomes part of the agent's `HOME`); it must be a directory.
    pub fn open(path: &Path) -> io::Result<RunDir> {
        let root = std::fs::canonicalize(path)?;
        let meta = std::fs::metadata(&root)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(RunDir {
            root,
            owner_uid: meta.uid(),
            owner_gid: meta.gid(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn work_dir(&self) -> PathBuf {
        self.file(WORK_DIR)
    }

    /// Open a runner-owned file with `options` (mode 0600 when created), owned like the dir.
    fn open_owned(&self, name: &str, options: &mut OpenOptions) -> io::Result<File> {
        let file = options.mode(0o600).open(self.file(name))?;
        std::os::unix::fs::fchown(&file, Some(self.owner_uid), Some(self.owner_gid))?;
        Ok(file)
    }

    /// Take the run directory's exclusive lock without waiting; hold the returned file for the
    /// runner's whole life (the lock goes with it).
    pub fn lock(&self) -> Result<File, LockError> {
        let path = self.file(LOCK_FILE);
        let io_err = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let file = self
            .open_owned(
                LOCK_FILE,
                OpenOptions::new().read(true).write(true).create(true),
            )
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Busy(path)),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(e)),
        }
    }

    pub fn has_result(&self) -> bool {
        self.file(RESULT_FILE).exists()
    }

    /// Whether an agent was started from this directory (by this runner or one that died).
    pub fn has_started(&self) -> bool {
        self.file(STARTED_FILE).exists()
    }

    /// Point the runner's stdin at /dev/null and stdout/stderr at `runner.log`: the runner
    /// outlives whoever started it, so its diagnostics go to the run directory. Also keeps
    /// descriptors 0–2 taken, so no pipe created later lands on them.
    pub fn redirect_stdio(&self) -> io::Result<()> {
        let log = self.open_owned(
            RUNNER_LOG_FILE,
            OpenOptions::new().append(true).create(true),
        )?;
        let null = File::open("/dev/null")?;
        nix::unistd::dup2_stdin(&null)?;
        nix::unistd::dup2_stdout(&log)?;
        nix::unistd::dup2_stderr(&log)?;
        Ok(())
    }

    /// Keep the run directory to root: the sandbox never sees it (its view binds `work/` from
    /// a descriptor), and `request.json` may hold the agent's environment.
    pub fn restrict_access(&self) -> io::Result<()> {
        std::fs::set_permissions(&self.root, Permissions::from_mode(0o700))?;
        std::fs::set_permissions(self.file(REQUEST_FILE), Permissions::from_mode(0o600))
    }

    /// Create `started` with `O_EXCL`, durably: its existence is what guarantees the agent
    /// starts at most once for this run directory.
    pub fn claim_started(&self, claim: &StartedClaim) -> Result<(), ClaimError> {
        let path = self.file(STARTED_FILE);
        let io_err = |source| ClaimError::Io {
            path: path.clone(),
            source,
        };
        let mut file = match self.open_owned(
            STARTED_FILE,
            OpenOptions::new().write(true).create_new(true),
        ) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ClaimError::AlreadyStarted(path));
            }
            Err(e) => return Err(io_err(e)),
        };
        let mut bytes = serde_json::to_vec(claim).map_err(|e| io_err(e.into()))?;
        bytes.push(b'\n');
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| self.sync())
            .map_err(io_err)
    }

    /// Create `work/` and write the agent's `files` into it while it is still root's and
    /// private (0700): nothing of any sandbox can reach it yet, and every path is opened
    /// relative to a `cap-std` handle, files with `O_EXCL` (never through a link). Only then is
    /// it handed to the sandbox's host id: the written entries first, `work/` itself last.
    ///
    /// With a `checkout`, `work/` is first a clone of the engine's repository at the commit
    /// (see [`RunDir::check_out`]); `files` then replace what the checkout has at their paths.
    ///
    /// Paths were validated as plain relative paths with the request.
    pub fn prepare_work(
        &self,
        files: &BTreeMap<String, String>,
        checkout: Option<&Checkout>,
        host_id: u32,
    ) -> io::Result<()> {
        let run = Dir::open_ambient_dir(&self.root, cap_std::ambient_authority())?;
        match run.symlink_metadata(WORK_DIR) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a directory",
                        self.work_dir().display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => run.create_dir(WORK_DIR)?,
            Err(e) => return Err(e),
        }
        let work = run.open_dir(WORK_DIR)?;
        let private = |dir: &Dir, uid: u32| -> io::Result<()> {
            let fd = reopen(dir)?;
            std::os::unix::fs::fchown(&fd, Some(uid), Some(uid))?;
            nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o700)).map_err(io::Error::from)
        };
        private(&work, 0)?;
        if let Some(c) = checkout {
            self.check_out(c)?;
            chown_tree(&work, host_id)?;
        }
        let mut dirs = Vec::new();
        for (rel, content) in files {
            let rel = Path::new(rel);
            let mut at = PathBuf::new();
            for part in rel.parent().into_iter().flat_map(Path::components) {
                at.push(part);
                match work.create_dir(&at) {
                    Ok(()) => dirs.push(at.clone()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            if checkout.is_some() {
                // What the checkout has there goes (unlinked, never followed).
                match work.remove_file(rel) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            let mut options = cap_std::fs::OpenOptions::new();
            options.write(true).create_new(true).mode(0o644);
            let mut file = work.open_with(rel, &options)?;
            file.write_all(content.as_bytes())?;
            std::os::unix::fs::fchown(&file, Some(host_id), Some(host_id))?;
        }
        for dir in dirs {
            let d = reopen(&work.open_dir(&dir)?)?;
            std::os::unix::fs::fchown(&d, Some(host_id), Some(host_id))?;
        }
        private(&work, host_id)
    }

    /// Clone the engine's repository into `work/` (still root's and private) and check the
    /// commit out, detached. `--no-local`: the objects are copied through git's own transport,
    /// never hard-linked (the tree is handed to the sandbox's user next, and a shared inode
    /// would hand it the engine's repository too) and nothing of the repository's own
    /// configuration or hooks comes along. Git runs as [`crate::git::command`] has it.
    /// A retried runner whose earlier attempt cloned already checks out again.
    fn check_out(&self, c: &Checkout) -> io::Result<()> {
        let work = self.work_dir();
        let git = |args: &[&std::ffi::OsStr]| -> io::Result<()> {
            let out = crate::git::command().args(args).output()?;
            if out.status.success() {
                return Ok(());
            }
            Err(io::Error::other(format!(
                "git {}: {}",
                args.first()
                    .map(|a| a.to_string_lossy())
                    .unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        };
        let os = std::ffi::OsStr::new;
        if std::fs::symlink_metadata(work.join(GIT_DIR)).is_err() {
            git(&[
                os("clone"),
                os("--quiet"),
                os("--no-local"),
                os("--no-checkout"),
                os("--"),
                os(&c.repository),
                work.as_os_str(),
            ])?;
        }
        git(&[
            os("-C"),
            work.as_os_str(),
            os("-c"),
            os("advice.detachedHead=false"),
            os("checkout"),
            os("--quiet"),
            os("--force"),
            os("--detach"),
            os(&c.commit),
        ])
    }

    /// Create (truncating) one of the agent's output logs.
    pub fn create_output(&self, name: &str) -> io::Result<File> {
        self.open_owned(
            name,
            OpenOptions::new().write(true).create(true).truncate(true),
        )
    }

    pub fn open_events(&self) -> io::Result<EventLog> {
        let file = self.open_owned(EVENTS_FILE, OpenOptions::new().append(true).create(true))?;
        Ok(EventLog { file })
    }

    /// Write `result.json` atomically and durably: a reader sees no result or the whole one.
    pub fn write_result(&self, result: &RunnerResult) -> io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(result)?;
        bytes.push(b'\n');
        self.write_atomic(RESULT_FILE, &bytes)
    }

    /// Write the artifact manifest (before the result that names it); its summary, with the
    /// digest of the bytes written.
    pub fn write_manifest(&self, manifest: &Manifest) -> io::Result<ArtifactsSummary> {
        let bytes = serde_json::to_vec(manifest)?;
        self.write_atomic(MANIFEST_FILE, &bytes)?;
        use sha2::Digest;
        Ok(ArtifactsSummary {
            manifest: MANIFEST_FILE.to_string(),
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            files: manifest.files,
            bytes: manifest.bytes,
            listed: manifest.artifacts.len() as u64,
            truncated: manifest.truncated,
        })
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp_name = format!("{name}.tmp");
        let mut tmp = self.open_owned(
            &tmp_name,
            OpenOptions::new().write(true).create(true).truncate(true),
        )?;
        tmp.write_all(bytes)?;
        tmp.sync_all()?;
        drop(tmp);
        std::fs::rename(self.file(&tmp_name), self.file(name))?;
        self.sync()
    }

    /// fsync the directory itself, so created and renamed entries survive a crash.
    fn sync(&self) -> io::Result<()> {
        File::open(&self.root)?.sync_all()
    }
}

/// Give every entry under `dir` (not `dir` itself) to `uid`, links included, never following
/// one.
fn chown_tree(dir: &Dir, uid: u32) -> io::Result<()> {
    let id = (
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(uid)),
    );
    let mut pending = vec![dir.try_clone()?];
    while let Some(d) = pending.pop() {
        for entry in d.entries()? {
            let entry = entry?;
            let name = entry.file_name();
            nix::unistd::fchownat(
                &d,
                name.as_os_str(),
                id.0,
                id.1,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(io::Error::from)?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.open_dir()?);
            }
        }
    }
    Ok(())
}

/// A descriptor of `dir` itself that `fchown`/`fchmod` accept (cap-std's may be `O_PATH`).
fn reopen(dir: &Dir) -> io::Result<std::os::fd::OwnedFd> {
    nix::fcntl::openat(
        dir,
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// `events.jsonl`: one event per line, each written with a single `write` on an `O_APPEND`
/// descriptor, so a reader never sees half a line except at the very end.
#[derive(Debug)]
pub struct EventLog {
    file: File,
}

impl EventLog {
    pub fn emit(&mut self, event: &RunnerEvent) -> io::Result<()> {
        let mut line = serde_json::to_vec(event)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.flush()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use cogward_protocol::runner::{Outcome, PROTOCOL_VERSION, StreamDigest};

    #[test]
    fn started_can_be_claimed_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::open(dir.path()).unwrap();
        let claim = StartedClaim {
            runner_pid: 1,
            started_at_ms: 2,
        };
        rd.claim_started(&claim).unwrap();
        assert!(matches!(
            rd.claim_started(&claim),
            Err(ClaimError::AlreadyStarted(_))
        ));
        let stored: StartedClaim =
            serde_json::from_slice(&std::fs::read(rd.file(STARTED_FILE)).unwrap()).unwrap();
        assert_eq!(stored, claim);
    }

    #[test]
    fn a_second_lock_is_refused_while_the_first_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::open(dir.path()).unwrap();
        let held = rd.lock().unwrap();
        assert!(matches!(rd.lock(), Err(LockError::Busy(_))));
        drop(held);
        rd.lock().unwrap();
    }

    #[test]
    fn events_are_one_json_object_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::open(dir.path()).unwrap();
        let mut log = rd.open_events().unwrap();
        log.emit(&RunnerEvent::Started { at_ms: 1, pid: 42 })
            .unwrap();
        log.emit(&RunnerEvent::Finished { at_ms: 2 }).unwrap();
        let text = std::fs::read_to_string(rd.file(EVENTS_FILE)).unwrap();
        let events: Vec<RunnerEvent> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            events,
            [
                RunnerEvent::Started { at_ms: 1, pid: 42 },
                RunnerEvent::Finished { at_ms: 2 }
            ]
        );
    }

    #[test]
    fn result_is_written_whole_and_no_temp_file_remains() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::open(dir.path()).unwrap();
        let digest = StreamDigest {
            sha256: String::new(),
            bytes: 0,
            truncated: false,
        };
        let result = RunnerResult {
            protocol: PROTOCOL_VERSION,
            run_id: "r".into(),
            outcome: Outcome::Exited,
            exit_code: Some(0),
            signal: None,
            detail: None,
            stdout: digest.clone(),
            stderr: digest,
            artifacts: Default::default(),
            sandbox: None,
            started_at_ms: 1,
            finished_at_ms: 2,
            cpu_ms: None,
            evidence: None,
        };
        rd.write_result(&result).unwrap();
        let back: RunnerResult =
            serde_json::from_slice(&std::fs::read(rd.file(RESULT_FILE)).unwrap()).unwrap();
        assert_eq!(back, result);
        assert!(!rd.file("result.json.tmp").exists());
        assert!(rd.has_result());
    }
}
