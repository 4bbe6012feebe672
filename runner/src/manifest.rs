//! The artifact manifest: every regular file the agent left in `work/`.
//!
//! Built after every process of the sandbox is gone, so nothing changes underneath. The walk
//! goes through `cap-std` directory handles, so no path in it resolves outside `work/`, and
//! symlinks are never followed (not even for directories): an agent cannot make the runner,
//! which is root, read a host file by linking to it.

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use cogward_protocol::runner::{Artifact, MANIFEST_MAX_FILES, MANIFEST_MAX_HASHED_BYTES};
use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, PartialEq)]
pub struct Manifest {
    /// The manifest as written to the run directory.
    pub file: cogward_protocol::runner::Manifest,
    /// Entries left out because their path is not UTF-8 (the protocol's paths are strings).
    pub skipped: Vec<PathBuf>,
}

/// Walk `work` (a path the runner owns) and hash every regular file in it, but for those under
/// the top-level entries named in `skip` (a checkout's `.git`).
pub fn build(work: &Path, skip: &[&str]) -> io::Result<Manifest> {
    let root = Dir::open_ambient_dir(work, cap_std::ambient_authority())?;
    build_from(root, skip)
}

/// Walk the directory `root` and hash every regular file in it (but under `skip`).
pub fn build_from(root: Dir, skip: &[&str]) -> io::Result<Manifest> {
    let mut manifest = Manifest::default();
    let mut hashed = 0u64;
    let mut pending = vec![(root, PathBuf::new())];
    while let Some((dir, rel_dir)) = pending.pop() {
        for entry in dir.entries()? {
            let entry = entry?;
            let name = entry.file_name();
            let rel = rel_dir.join(&name);
            if rel_dir.as_os_str().is_empty() && name.to_str().is_some_and(|n| skip.contains(&n)) {
                continue;
            }
            // `DirEntry::file_type` does not follow symlinks.
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push((entry.open_dir()?, rel));
            } else if kind.is_file() {
                let m = &mut manifest.file;
                let size = entry.metadata()?.len();
                m.files += 1;
                m.bytes += size;
                if m.artifacts.len() >= MANIFEST_MAX_FILES
                    || hashed + size > MANIFEST_MAX_HASHED_BYTES
                {
                    m.truncated = true;
                    continue;
                }
                match artifact_path(&rel) {
                    Some(path) => {
                        let (sha256, bytes) = hash_file(&dir, Path::new(&name))?;
                        hashed += bytes;
                        m.artifacts.push(Artifact {
                            path,
                            sha256,
                            bytes,
                        });
                    }
                    None => manifest.skipped.push(rel),
                }
            }
        }
    }
    sort(&mut manifest.file.artifacts);
    Ok(manifest)
}

/// The manifest's order: by path, byte-wise (as `str` compares), so it is stable whatever order
/// the filesystem lists entries in.
pub fn sort(artifacts: &mut [Artifact]) {
    artifacts.sort_by(|a, b| a.path.cmp(&b.path));
}

/// `rel` as the protocol spells it: components joined by `/`. `None` if not UTF-8.
pub fn artifact_path(rel: &Path) -> Option<String> {
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    parts.map(|p| p.join("/"))
}

fn hash_file(dir: &Dir, name: &Path) -> io::Result<(String, u64)> {
    // O_NOFOLLOW: the entry was a regular file when listed; never open a link in its place.
    let mut options = OpenOptions::new();
    options
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let mut file = dir.open_with(name, &options)?;
    let mut hasher = Sha256::new();
    let bytes = io::copy(&mut file, &mut hasher)?;
    Ok((hex::encode(hasher.finalize()), bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::fs;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn manifest_lists_regular_files_sorted_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        fs::create_dir_all(w.join("b/c")).unwrap();
        fs::write(w.join("z.txt"), b"z").unwrap();
        fs::write(w.join("b/c/deep.txt"), b"deep").unwrap();
        fs::write(w.join("a.txt"), b"").unwrap();
        fs::write(w.join("b.txt"), b"bb").unwrap();
        let m = build(w, &[]).unwrap();
        let got: Vec<(&str, u64)> = m
            .file
            .artifacts
            .iter()
            .map(|a| (a.path.as_str(), a.bytes))
            .collect();
        assert_eq!(
            got,
            [
                ("a.txt", 0),
                ("b.txt", 2),
                ("b/c/deep.txt", 4),
                ("z.txt", 1)
            ]
        );
        assert_eq!(m.file.artifacts[2].sha256, sha(b"deep"));
        assert!(m.skipped.is_empty());
    }

    #[test]
    fn symlinks_are_never_followed() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"host secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        std::os::unix::fs::symlink(outside.path().join("secret"), w.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), w.join("dirlink")).unwrap();
        fs::write(w.join("real"), b"r").unwrap();
        let m = build(w, &[]).unwrap();
        let paths: Vec<&str> = m.file.artifacts.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(paths, ["real"]);
    }

    #[test]
    fn sort_is_bytewise_by_path() {
        let art = |p: &str| Artifact {
            path: p.into(),
            sha256: String::new(),
            bytes: 0,
        };
        let mut v = vec![art("b"), art("a/z"), art("B"), art("a")];
        sort(&mut v);
        let paths: Vec<&str> = v.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(paths, ["B", "a", "a/z", "b"]);
    }

    #[test]
    fn non_utf8_names_are_skipped_not_mangled() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::from_bytes(b"bad\xff");
        fs::write(dir.path().join(name), b"x").unwrap();
        let m = build(dir.path(), &[]).unwrap();
        assert!(m.file.artifacts.is_empty());
        assert_eq!(m.skipped, [PathBuf::from(name)]);
    }
}
