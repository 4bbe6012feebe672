//! The audit ledger: the compliance record. Append-only and hash-chained; verifiable offline from
//! the database alone.
//!
//! Each entry's `hash` is `sha256(prev_hash || canonical bytes)`, where `prev_hash` is the
//! previous entry's hash as 32 raw bytes (all zeros before the first entry) and the canonical
//! bytes are the entry's fields other than `hash` as one JSON object with keys sorted, no
//! whitespace, and `body` embedded as (canonical) JSON:
//!
//! ```text
//! {"body":{..},"event_id":5,"event_type":"EVENT_TYPE_ACTIVITY_TASK_COMPLETED","kind":"history",
//!  "namespace":"default","prev_hash":"…","recorded_at":"…","seq":42,"temporal_run_id":"…",
//!  "workflow_id":"run-…"}
//! ```

pub mod checkpoint;
pub mod mirror;
pub mod replay;
pub mod verify;
pub mod writer;

use cogward_protocol::audit::AuditEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use verify::{VerifyReport, verify};
pub use writer::{AppendOutcome, Ledger};

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A Temporal history event, mirrored as is.
    History,
    /// An application event (admission, approval, evidence, verdict) derived from one.
    App,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::History => "history",
            EntryKind::App => "app",
        }
    }
}

/// An entry to append; the writer assigns `seq`, `recorded_at` and the hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEntry {
    pub kind: EntryKind,
    pub namespace: String,
    pub workflow_id: String,
    pub temporal_run_id: String,
    pub event_id: Option<i64>,
    pub event_type: String,
    pub body: Value,
}

impl NewEntry {
    /// An application entry that no Temporal history event carries (the gateway's calls,
    /// policy lifecycle, breaker transitions): no run id, no event id.
    pub fn app(namespace: &str, workflow_id: String, event: AuditEvent, body: Value) -> Self {
        Self {
            kind: EntryKind::App,
            namespace: namespace.to_string(),
            workflow_id,
            temporal_run_id: String::new(),
            event_id: None,
            event_type: event.as_str().to_string(),
            body,
        }
    }
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub seq: i64,
    pub kind: String,
    pub namespace: String,
    pub workflow_id: String,
    pub temporal_run_id: String,
    pub event_id: Option<i64>,
    pub event_type: String,
    pub recorded_at: String,
    /// Canonical JSON text.
    pub body: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Write `v` as canonical JSON: object keys sorted, no whitespace.
pub fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(&Value::String(k.clone()), out);
                out.push(b':');
                canonical_json(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(item, out);
            }
            out.push(b']');
        }
        // Scalars have one serde_json rendering.
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

pub fn canonical_string(v: &Value) -> String {
    let mut out = Vec::new();
    canonical_json(v, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EntryError {
    #[error("prev_hash is not 64 hex characters")]
    PrevHash,
}

impl LedgerEntry {
    /// Whether this is the history entry of its workflow's closing event: once it is in the
    /// ledger, so is the whole history (and what it implies, appended with it).
    pub fn closes_its_workflow(&self) -> bool {
        self.kind == "history" && cogward_workflows::history::closes_by_name(&self.event_type)
    }

    /// The bytes the hash covers. `body` is embedded exactly as stored (the writer stores it in
    /// canonical form), so a change to any byte of any column changes the hash.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let rest = serde_json::json!({
            "seq": self.seq,
            "kind": self.kind,
            "namespace": self.namespace,
            "workflow_id": self.workflow_id,
            "temporal_run_id": self.temporal_run_id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "recorded_at": self.recorded_at,
            "prev_hash": self.prev_hash,
        });
        let mut tail = Vec::with_capacity(256);
        canonical_json(&rest, &mut tail);
        // "body" sorts before every other key.
        let mut out = Vec::with_capacity(self.body.len() + tail.len() + 8);
        out.extend_from_slice(b"{\"body\":");
        out.extend_from_slice(self.body.as_bytes());
        out.push(b',');
        out.extend_from_slice(&tail[1..]);
        out
    }

    /// `sha256(prev_hash || canonical bytes)`, hex.
    pub fn compute_hash(&self) -> Result<String, EntryError> {
        let prev = hex::decode(&self.prev_hash).map_err(|_| EntryError::PrevHash)?;
        if prev.len() != 32 {
            return Err(EntryError::PrevHash);
        }
        let mut h = Sha256::new();
        h.update(&prev);
        h.update(self.canonical_bytes());
        Ok(hex::encode(h.finalize()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let v = json!({"b": 1, "a": {"d": [1, {"z": null, "y": "é\n"}], "c": true}});
        assert_eq!(
            canonical_string(&v),
            r#"{"a":{"c":true,"d":[1,{"y":"é\n","z":null}]},"b":1}"#
        );
    }

    fn entry() -> LedgerEntry {
        LedgerEntry {
            seq: 1,
            kind: "history".into(),
            namespace: "default".into(),
            workflow_id: "run-1".into(),
            temporal_run_id: "r".into(),
            event_id: Some(1),
            event_type: "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED".into(),
            recorded_at: "2026-01-01T00:00:00.000Z".into(),
            body: r#"{"a":1}"#.into(),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn hash_covers_every_field() {
        let base = entry().compute_hash().unwrap();
        let mut e = entry();
        e.body = r#"{"a":2}"#.into();
        assert_ne!(e.compute_hash().unwrap(), base);
        let mut e = entry();
        e.event_id = Some(2);
        assert_ne!(e.compute_hash().unwrap(), base);
        let mut e = entry();
        e.prev_hash = "1".repeat(64);
        assert_ne!(e.compute_hash().unwrap(), base);
        // Every byte of the stored body counts, whitespace included.
        let mut e = entry();
        e.body = r#"{ "a":1}"#.into();
        assert_ne!(e.compute_hash().unwrap(), base);
    }

    #[test]
    fn canonical_bytes_are_sorted_json() {
        let bytes = entry().canonical_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(r#"{"body":{"a":1},"event_id":1,"#),
            "{text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(canonical_string(&v), text);
    }

    #[test]
    fn malformed_prev_hash_is_an_error() {
        let mut e = entry();
        e.prev_hash = "zz".into();
        assert_eq!(e.compute_hash(), Err(EntryError::PrevHash));
    }
}
