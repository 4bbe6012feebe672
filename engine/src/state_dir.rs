//! The engine's own files are private: the state directory is `0700` and every file cogward or
//! its embedded Temporal dev server keeps in it (databases with their WAL and SHM, tokens, the
//! gateway configuration, logs, run directories) is readable by root alone, whatever the umask
//! the engine was started with. A second line of defence behind the sandbox's filesystem view,
//! which shows agents none of it.

use anyhow::{Context, Result};
use nix::sys::stat::{Mode, umask};
use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Sub-directories whose files are tightened too (the dev server's database and log).
const PRIVATE_SUBDIRS: [&str; 2] = ["temporal", "runs"];

/// From here on, everything this process (and what it starts) creates is private to it.
pub fn private_umask() {
    umask(Mode::from_bits_truncate(0o077));
}

/// Create `dir` if needed and make it, and the files an earlier, looser start left in it,
/// private.
pub fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    restrict(dir, 0o700)?;
    tighten_files(dir)?;
    for sub in PRIVATE_SUBDIRS {
        let sub = dir.join(sub);
        if sub.is_dir() {
            restrict(&sub, 0o700)?;
            tighten_files(&sub)?;
        }
    }
    Ok(())
}

fn restrict(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(mode))
        .with_context(|| format!("making {} private", path.display()))
}

/// Regular files directly in `dir` lose every group and other permission bit.
fn tighten_files(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        // `DirEntry::metadata` does not follow symlinks: a link is left alone, never chmod'ed
        // through.
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            restrict(&entry.path(), meta.permissions().mode() & 0o700)?;
        }
    }
    Ok(())
}

/// 32 bytes from the operating system's random source (through uuid's v4 generator).
pub fn random_32() -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    out[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    out
}

/// A private file (0600) holding a key: created exclusively with `contents` if it does not
/// exist (two processes racing to create it agree), then read with `read`, waiting briefly
/// while another process may still be writing it.
pub fn private_file<T>(
    path: &Path,
    contents: impl FnOnce() -> Result<Vec<u8>>,
    read: impl Fn(&Path) -> Result<T>,
) -> Result<T> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            f.write_all(&contents()?)?;
            f.sync_all()?;
            read(path)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mut last = read(path);
            for _ in 0..50 {
                if last.is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
                last = read(path);
            }
            last
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_loose_state_directory_is_made_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        std::fs::create_dir_all(dir.join("temporal")).unwrap();
        for f in ["cogward.db", "cogward.db-wal", "temporal/temporal.db"] {
            std::fs::write(dir.join(f), b"x").unwrap();
            restrict(&dir.join(f), 0o644).unwrap();
        }
        restrict(&dir, 0o755).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        restrict(&outside, 0o644).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        prepare(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("temporal")), 0o700);
        for f in ["cogward.db", "cogward.db-wal", "temporal/temporal.db"] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        assert_eq!(mode(&outside), 0o644, "a symlink was followed");
    }
}
