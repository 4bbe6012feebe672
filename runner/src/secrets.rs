//! Scoped secrets, on the runner's side: the values arrive on standard input (from the
//! `StartRunner` activity, through a pipe: never a file), are checked against the names and
//! digests of the request, and become files of a tmpfs in the agent's view
//! ([`cogward_protocol::runner::SECRETS_DIR`]) readable by the run's uid alone. They live in memory and
//! in that tmpfs only, which goes with the sandbox's mount namespace when the run ends.

use cogward_protocol::runner::SecretRef;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;

/// Largest secret document accepted on standard input.
pub const MAX_INPUT_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the secret values on standard input are not a JSON object of strings")]
    Malformed,
    #[error("secret {0:?} has no value on standard input")]
    Missing(String),
    #[error("secret {0:?} does not match the digest in the request")]
    Digest(String),
    #[error("standard input holds secrets the request does not name: {0:?}")]
    Unexpected(Vec<String>),
    #[error("secret {0:?} contains a NUL byte")]
    Nul(String),
    #[error("the secret values on standard input exceed {MAX_INPUT_BYTES} bytes")]
    TooLarge,
    #[error("reading the secret values from standard input: {0}")]
    Read(String),
}

/// Read standard input whole, unless it is a terminal (a runner started by hand): bounded.
pub fn read_stdin() -> Result<Vec<u8>, SecretError> {
    // SAFETY: isatty on descriptor 0.
    if unsafe { libc::isatty(0) } == 1 {
        return Ok(Vec::new());
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_INPUT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SecretError::Read(e.to_string()))?;
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(SecretError::TooLarge);
    }
    Ok(bytes)
}

/// The values for `refs`, from `input`: exactly the named secrets, each matching its digest.
pub fn values(refs: &[SecretRef], input: &[u8]) -> Result<Vec<(String, String)>, SecretError> {
    if refs.is_empty() && input.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let mut given: BTreeMap<String, String> =
        serde_json::from_slice(input).map_err(|_| SecretError::Malformed)?;
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        let value = given
            .remove(&r.name)
            .ok_or_else(|| SecretError::Missing(r.name.clone()))?;
        if hex::encode(Sha256::digest(value.as_bytes())) != r.sha256 {
            return Err(SecretError::Digest(r.name.clone()));
        }
        if value.contains('\0') {
            return Err(SecretError::Nul(r.name.clone()));
        }
        out.push((r.name.clone(), value));
    }
    if !given.is_empty() {
        return Err(SecretError::Unexpected(given.into_keys().collect()));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn r(name: &str, value: &str) -> SecretRef {
        SecretRef {
            name: name.into(),
            sha256: hex::encode(Sha256::digest(value.as_bytes())),
        }
    }

    #[test]
    fn exactly_the_named_secrets_with_matching_digests() {
        let refs = [r("a", "1"), r("b", "2")];
        assert_eq!(
            values(&refs, br#"{"a":"1","b":"2"}"#).unwrap(),
            [("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(values(&[], b"").unwrap(), []);
        assert_eq!(
            values(&refs, br#"{"a":"1"}"#),
            Err(SecretError::Missing("b".into()))
        );
        assert_eq!(
            values(&refs, br#"{"a":"1","b":"3"}"#),
            Err(SecretError::Digest("b".into()))
        );
        assert_eq!(
            values(&refs, br#"{"a":"1","b":"2","c":"x"}"#),
            Err(SecretError::Unexpected(vec!["c".into()]))
        );
        assert_eq!(values(&refs, b"[1]"), Err(SecretError::Malformed));
        assert_eq!(
            values(&[], br#"{"a":"1"}"#),
            Err(SecretError::Unexpected(vec!["a".into()]))
        );
    }
}
