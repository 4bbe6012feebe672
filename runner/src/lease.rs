//! One host id per live run: a lease on an id of the profile's range, held for the runner's
//! whole life.
//!
//! Each id has a file in the lease directory; a runner owns an id while it holds an exclusive
//! `flock` on its file. The kernel releases the lock when the runner exits, however it dies, and
//! the sandbox dies with its runner (parent-death signal, PID namespace), so an id is free again
//! exactly when nothing runs under it any more. Two live runs never share an id, so one run's
//! processes can never touch another's files or signal its processes.

use cogward_protocol::runner::IdRange;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("all {0} sandbox ids of the range are leased by live runs")]
    Exhausted(u32),
    #[error("lease directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A leased id; the lease lasts as long as this value.
#[derive(Debug)]
pub struct IdLease {
    pub id: u32,
    _file: File,
}

/// Lease a free id of `range` in `dir` (created root-only if missing), starting the search at a
/// point derived from `run_id` so concurrent runners rarely contend for the same file.
pub fn acquire(dir: &Path, range: IdRange, run_id: &str) -> Result<IdLease, LeaseError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LeaseError::Io { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    let start = start_offset(run_id, range.count);
    for i in 0..range.count {
        let id = range.first + (start + i) % range.count;
        let path = dir.join(id.to_string());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => return Ok(IdLease { id, _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
    }
    Err(LeaseError::Exhausted(range.count))
}

/// FNV-1a of the run id, folded into the range.
fn start_offset(run_id: &str, count: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in run_id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h % count.max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn live_leases_never_share_an_id_and_a_released_one_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let range = IdRange {
            first: 200_000,
            count: 3,
        };
        let a = acquire(dir.path(), range, "same").unwrap();
        let b = acquire(dir.path(), range, "same").unwrap();
        let c = acquire(dir.path(), range, "same").unwrap();
        let mut ids = [a.id, b.id, c.id];
        ids.sort();
        assert_eq!(ids, [200_000, 200_001, 200_002]);
        assert!(matches!(
            acquire(dir.path(), range, "x"),
            Err(LeaseError::Exhausted(3))
        ));
        let freed = b.id;
        drop(b);
        assert_eq!(acquire(dir.path(), range, "x").unwrap().id, freed);
    }

    #[test]
    fn a_symlink_in_place_of_a_lease_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("300000")).unwrap();
        let range = IdRange {
            first: 300_000,
            count: 1,
        };
        assert!(matches!(
            acquire(dir.path(), range, "r"),
            Err(LeaseError::Io { .. })
        ));
        assert_eq!(std::fs::read_to_string(victim).unwrap(), "keep");
    }
}
