//! Run credentials: what an agent presents to the gateway.
//!
//! A credential is `cgw1.<run id>.<mac>`, where `mac` is HMAC-SHA256 over the run id under the
//! installation's gateway key (hex). It is derived, not stored: the `start_runner` activity
//! computes it for the runner's environment (it never enters workflow history or the ledger),
//! and the gateway recomputes it to check one. Whether the run may still call anything is
//! the gateway's second check (the run must not have ended).

use sha2::{Digest, Sha256};

const PREFIX: &str = "cgw1";
const BLOCK: usize = 64;

/// The credential of `run_id` under `key`.
pub fn mint(key: &[u8], run_id: &str) -> String {
    format!("{PREFIX}.{run_id}.{}", hex::encode(mac(key, run_id)))
}

/// The run id a credential names, if its MAC is right under `key`.
pub fn verify<'a>(key: &[u8], credential: &'a str) -> Option<&'a str> {
    let rest = credential.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let (run_id, tag) = rest.rsplit_once('.')?;
    let tag = hex::decode(tag).ok()?;
    let expected = mac(key, run_id);
    // Constant time: every byte is compared whatever the first difference.
    let differ = tag.len() != expected.len()
        || tag
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0;
    (!differ && !run_id.is_empty()).then_some(run_id)
}

/// The run id's MAC, domain-separated.
fn mac(key: &[u8], run_id: &str) -> [u8; 32] {
    hmac_sha256(key, &[b"cogward run credential\0", run_id.as_bytes()])
}

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let mut inner = Sha256::new().chain_update(pad(0x36));
    for part in parts {
        inner.update(part);
    }
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner.finalize())
        .finalize()
        .into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_credential_verifies_and_names_its_run() {
        let key = [7u8; 32];
        let c = mint(&key, "run-abc");
        assert!(c.starts_with("cgw1.run-abc."));
        assert_eq!(verify(&key, &c), Some("run-abc"));
    }

    #[test]
    fn forged_or_altered_credentials_do_not_verify() {
        let key = [7u8; 32];
        let c = mint(&key, "run-abc");
        assert_eq!(verify(&[8u8; 32], &c), None, "another key");
        let other_run = c.replace("run-abc", "run-abd");
        assert_eq!(verify(&key, &other_run), None, "run id swapped");
        let mut flipped = c.clone();
        let last = flipped.pop().unwrap();
        flipped.push(if last == '0' { '1' } else { '0' });
        assert_eq!(verify(&key, &flipped), None, "tag altered");
        for junk in [
            "",
            "cgw1",
            "cgw1..",
            "cgw1.run-abc.",
            "Bearer x",
            "cgw2.run-abc.00",
        ] {
            assert_eq!(verify(&key, junk), None, "{junk:?}");
        }
        assert_eq!(verify(&key, &c[..c.len() - 2]), None, "truncated");
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test cases 2 (short key) and 6 (key longer than the block).
        assert_eq!(
            hex::encode(hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
