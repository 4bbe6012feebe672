//! A run's workspace: a checkout of one of the engine's repositories (`--repositories-dir`:
//! `<dir>/<name>` or `<dir>/<name>.git`, kept by the operator — a mirror `git fetch`ed on a
//! schedule, say). The activity resolves the spec's ref to a commit once, before the runner
//! starts (the commit is in the runner's request, so a retry checks out the same one); the
//! runner clones it into `work/`; the evidence's diff is against that commit's tree, read from
//! the engine's repository, never from the `.git` the agent had in its hands.
//!
//! Git runs here only on the engine's own repositories, with no system or global
//! configuration and nothing of the agent's.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One file of a commit's tree: its digest, and its bytes when small enough to diff.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeFile {
    pub sha256: String,
    pub bytes: Option<Vec<u8>>,
    /// Its git mode (`100755` for an executable).
    pub executable: bool,
}

fn git(repo: &Path) -> Command {
    let mut cmd = cogward_runner::git::command();
    cmd.arg("--git-dir").arg(git_dir(repo));
    cmd
}

/// The git directory of a repository path: itself when bare, else its `.git`.
fn git_dir(repo: &Path) -> PathBuf {
    let dot_git = repo.join(".git");
    if dot_git.is_dir() {
        dot_git
    } else {
        repo.to_path_buf()
    }
}

/// The repository named `name` in `dir`; an error a submitter can read if there is none.
pub fn repository(dir: &Path, name: &str) -> Result<PathBuf, String> {
    for candidate in [dir.join(name), dir.join(format!("{name}.git"))] {
        if candidate.is_dir() {
            return candidate
                .canonicalize()
                .map_err(|e| format!("workspace repository {name}: {e}"));
        }
    }
    Err(format!(
        "workspace repository {name:?} is not one of this engine's (none in {})",
        dir.display()
    ))
}

/// The commit `git_ref` names in `repo`.
pub fn resolve(repo: &Path, name: &str, git_ref: &str) -> Result<String, String> {
    let out = git(repo)
        .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
        .arg(format!("{git_ref}^{{commit}}"))
        .output()
        .map_err(|e| format!("running git: {e}"))?;
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || commit.is_empty() {
        return Err(format!(
            "workspace: {git_ref:?} is not a commit of repository {name}"
        ));
    }
    Ok(commit)
}

/// The regular files of `commit`'s tree (links and submodules are not files of the diff), each
/// with its sha256 and, up to `max_file` bytes, its contents.
pub fn tree(repo: &Path, commit: &str, max_file: u64) -> io::Result<BTreeMap<String, TreeFile>> {
    let out = git(repo)
        .args(["ls-tree", "-r", "-z", "--full-tree", commit])
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "git ls-tree {commit}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // `<mode> blob <id>\t<path>`, NUL-terminated.
    let mut blobs = Vec::new();
    for entry in out.stdout.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        let text = String::from_utf8_lossy(entry);
        let Some((meta, path)) = text.split_once('\t') else {
            continue;
        };
        let mut parts = meta.split(' ');
        let (Some(mode), Some("blob"), Some(id)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if mode == "100644" || mode == "100755" {
            blobs.push((path.to_string(), id.to_string(), mode == "100755"));
        }
    }
    let mut child = git(repo)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("stdin"))?;
    let ids: Vec<String> = blobs.iter().map(|(_, id, _)| id.clone()).collect();
    let writer = std::thread::spawn(move || -> io::Result<()> {
        for id in ids {
            writeln!(stdin, "{id}")?;
        }
        Ok(())
    });
    let mut reader = BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("stdout"))?,
    );
    let mut files = BTreeMap::new();
    for (path, _, executable) in &blobs {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        // `<id> blob <size>`
        let size: u64 = header
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("git cat-file said {header:?}")))?;
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut kept = Vec::new();
        let mut left = size;
        let mut buf = vec![0u8; 64 << 10];
        while left > 0 {
            let n = reader.read(&mut buf[..left.min(64 << 10) as usize])?;
            if n == 0 {
                return Err(io::Error::other("git cat-file ended early"));
            }
            sha2::Digest::update(&mut hasher, &buf[..n]);
            if size <= max_file {
                kept.extend_from_slice(&buf[..n]);
            }
            left -= n as u64;
        }
        let mut newline = [0u8; 1];
        reader.read_exact(&mut newline)?;
        files.insert(
            path.clone(),
            TreeFile {
                sha256: hex::encode(sha2::Digest::finalize(hasher)),
                bytes: (size <= max_file).then_some(kept),
                executable: *executable,
            },
        );
    }
    writer
        .join()
        .map_err(|_| io::Error::other("the writer to git cat-file panicked"))??;
    child.wait()?;
    Ok(files)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub mod tests {
    use super::*;

    /// A repository with two commits: `v1` (a.txt, bin/tool executable, a link) and HEAD.
    pub fn repo(dir: &Path) -> PathBuf {
        let repo = dir.join("app");
        std::fs::create_dir_all(repo.join("bin")).unwrap();
        let run = |args: &[&str]| {
            let ok = Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(args)
                .current_dir(&repo)
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .output()
                .unwrap();
            assert!(ok.status.success(), "{args:?}: {ok:?}");
        };
        run(&["init", "-q", "-b", "main"]);
        std::fs::write(repo.join("a.txt"), "one\n").unwrap();
        std::fs::write(repo.join("bin/tool"), "#!/bin/sh\n").unwrap();
        let exec = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(repo.join("bin/tool"), exec).unwrap();
        std::os::unix::fs::symlink("a.txt", repo.join("link")).unwrap();
        run(&["add", "-A"]);
        run(&["commit", "-q", "-m", "v1"]);
        run(&["tag", "v1"]);
        std::fs::write(repo.join("a.txt"), "two\n").unwrap();
        run(&["commit", "-q", "-am", "v2"]);
        repo
    }

    #[test]
    fn a_ref_resolves_to_its_commit_and_its_tree_is_read_from_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        let path = repo(dir.path());
        let found = repository(dir.path(), "app").unwrap();
        assert_eq!(found, path.canonicalize().unwrap());
        assert!(
            repository(dir.path(), "nope")
                .unwrap_err()
                .contains("not one of")
        );
        let v1 = resolve(&found, "app", "v1").unwrap();
        let head = resolve(&found, "app", "HEAD").unwrap();
        assert_eq!(v1.len(), 40);
        assert_ne!(v1, head);
        assert_eq!(resolve(&found, "app", "main").unwrap(), head);
        for bad in ["no-such-branch", "--output=/tmp/x", "HEAD~9"] {
            assert!(resolve(&found, "app", bad).is_err(), "{bad}");
        }
        let tree = tree(&found, &v1, 1024).unwrap();
        assert_eq!(tree.keys().collect::<Vec<_>>(), ["a.txt", "bin/tool"]);
        assert!(tree["bin/tool"].executable);
        assert_eq!(tree["a.txt"].bytes.as_deref(), Some(&b"one\n"[..]));
        assert!(!tree["a.txt"].executable);
        let small = super::tree(&found, &head, 2).unwrap();
        assert_eq!(small["a.txt"].bytes, None, "over the size: digest only");
        assert_eq!(
            small["a.txt"].sha256,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"two\n"))
        );
    }
}
