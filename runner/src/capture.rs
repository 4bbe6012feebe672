//! One captured output stream: stored up to a cap, hashed over exactly what was stored.

use cogward_protocol::runner::StreamDigest;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Write};

/// Writes an output stream to its log file, keeping at most `cap` bytes. Bytes past the cap are
/// still read from the pipe (so the agent never blocks on a full pipe) but dropped.
pub struct StreamCapture {
    file: File,
    hasher: Sha256,
    stored: u64,
    cap: u64,
    truncated: bool,
}

impl StreamCapture {
    pub fn new(file: File, cap: u64) -> StreamCapture {
        StreamCapture {
            file,
            hasher: Sha256::new(),
            stored: 0,
            cap,
            truncated: false,
        }
    }

    pub fn push(&mut self, data: &[u8]) -> io::Result<()> {
        let room = self.cap.saturating_sub(self.stored);
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
        let (kept, dropped) = data.split_at(take);
        if !kept.is_empty() {
            self.file.write_all(kept)?;
            self.hasher.update(kept);
            self.stored += kept.len() as u64;
        }
        if !dropped.is_empty() {
            self.truncated = true;
        }
        Ok(())
    }

    /// Bytes stored so far.
    pub fn stored(&self) -> u64 {
        self.stored
    }

    /// Flush the file to disk and return the digest of what it holds.
    pub fn finish(self) -> io::Result<StreamDigest> {
        self.file.sync_all()?;
        Ok(StreamDigest {
            sha256: hex::encode(self.hasher.finalize()),
            bytes: self.stored,
            truncated: self.truncated,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn under_the_cap_everything_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut c = StreamCapture::new(File::create(&path).unwrap(), 100);
        c.push(b"hello ").unwrap();
        c.push(b"world").unwrap();
        let d = c.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello world");
        assert_eq!(d.sha256, sha(b"hello world"));
        assert_eq!((d.bytes, d.truncated), (11, false));
    }

    #[test]
    fn past_the_cap_bytes_are_dropped_and_counted_as_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut c = StreamCapture::new(File::create(&path).unwrap(), 4);
        c.push(b"abc").unwrap();
        c.push(b"defg").unwrap();
        c.push(b"h").unwrap();
        let d = c.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abcd");
        assert_eq!(d.sha256, sha(b"abcd"));
        assert_eq!((d.bytes, d.truncated), (4, true));
    }

    #[test]
    fn exactly_at_the_cap_is_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = StreamCapture::new(File::create(dir.path().join("o")).unwrap(), 3);
        c.push(b"abc").unwrap();
        assert!(!c.finish().unwrap().truncated);
    }
}
