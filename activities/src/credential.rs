//! Run credentials: what an agent presents to the gateway.
//!
//! A credential is `cgw2.<key id>.<run id>.<mac>`, where `mac` is HMAC-SHA256 (the `hmac`
//! crate) over the key id and run id under the installation key of that id (hex). It is
//! derived, not stored: the engine issues it when `start_runner` starts the runner (it never
//! enters workflow history or the ledger), and the gateway recomputes it to check one, in
//! constant time (`subtle`). Whether the run may still call anything is the gateway's second
//! check: the credential must have been issued and not yet revoked (it is revoked when the
//! agent exits).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

const PREFIX: &str = "cgw2";

/// A credential taken apart (nothing checked yet but its shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented<'a> {
    pub key_id: &'a str,
    pub run_id: &'a str,
    tag: Vec<u8>,
}

/// The credential of `run_id` under the key `key_id` = `key`.
pub fn mint(key_id: &str, key: &[u8], run_id: &str) -> String {
    format!(
        "{PREFIX}.{key_id}.{run_id}.{}",
        hex::encode(mac(key, key_id, run_id))
    )
}

/// Take a credential apart; `None` when it is not shaped like one.
pub fn parse(credential: &str) -> Option<Presented<'_>> {
    let rest = credential.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let (key_id, rest) = rest.split_once('.')?;
    let (run_id, tag) = rest.rsplit_once('.')?;
    let valid =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !valid(key_id) || !valid(run_id) {
        return None;
    }
    Some(Presented {
        key_id,
        run_id,
        tag: hex::decode(tag).ok()?,
    })
}

impl Presented<'_> {
    /// Whether its MAC is right under `key` (the key its id names).
    pub fn verifies_under(&self, key: &[u8]) -> bool {
        let expected = mac(key, self.key_id, self.run_id);
        bool::from(expected.as_slice().ct_eq(&self.tag))
    }
}

/// The MAC, domain-separated, the key id and run id length-prefixed.
fn mac(key: &[u8], key_id: &str, run_id: &str) -> [u8; 32] {
    let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        unreachable!("HMAC takes a key of any length")
    };
    m.update(b"cogward run credential v2\0");
    for part in [key_id, run_id] {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part.as_bytes());
    }
    m.finalize().into_bytes().into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_credential_verifies_and_names_its_run_and_key() {
        let key = [7u8; 32];
        let c = mint("k1", &key, "run-abc");
        assert!(c.starts_with("cgw2.k1.run-abc."));
        let p = parse(&c).unwrap();
        assert_eq!((p.key_id, p.run_id), ("k1", "run-abc"));
        assert!(p.verifies_under(&key));
    }

    #[test]
    fn forged_or_altered_credentials_do_not_verify() {
        let key = [7u8; 32];
        let c = mint("k1", &key, "run-abc");
        assert!(
            !parse(&c).unwrap().verifies_under(&[8u8; 32]),
            "another key"
        );
        let other_run = c.replace("run-abc", "run-abd");
        assert!(
            !parse(&other_run).unwrap().verifies_under(&key),
            "run id swapped"
        );
        let other_key = c.replace("k1", "k2");
        assert!(
            !parse(&other_key).unwrap().verifies_under(&key),
            "key id swapped"
        );
        let mut flipped = c.clone();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '0' { '1' } else { '0' });
        assert!(
            !parse(&flipped).unwrap().verifies_under(&key),
            "tag altered"
        );
        let truncated = &c[..c.len() - 2];
        assert!(!parse(truncated).unwrap().verifies_under(&key), "truncated");
        for junk in [
            "",
            "cgw2",
            "cgw2...",
            "cgw2.k1.run-abc.",
            "cgw2.k1..00",
            "cgw2.k 1.run.00",
            "Bearer x",
            "cgw1.run-abc.00",
        ] {
            assert!(
                parse(junk).is_none_or(|p| !p.verifies_under(&key)),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn the_mac_is_hmac_sha256_as_rfc_4231_defines_it() {
        // Test case 2, through the same crate the MAC uses.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
