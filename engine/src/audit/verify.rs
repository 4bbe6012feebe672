//! Offline verification: walk the whole chain from the database alone and name the first entry
//! that does not hold.

use super::writer::{entry_from_row, ledger_columns};
use super::{GENESIS_HASH, canonical_string};
use crate::db::Db;
use anyhow::Result;
use cogward_protocol::audit::AuditEvent;
use serde::Serialize;
use sqlx::Row;

const PAGE: i64 = 5000;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadEntry {
    pub seq: i64,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    pub entries: u64,
    pub head_seq: i64,
    pub head_hash: String,
    pub ok: bool,
    pub first_bad: Option<BadEntry>,
    /// Gateway calls whose intent is in the chain but whose outcome is not: in flight while the
    /// chain was read, or lost in a crash between forwarding and recording. `(run, call id)`.
    pub calls_without_outcome: Vec<CallWithoutOutcome>,
    /// Each signed checkpoint checked (`audit verify --checkpoint`), with what it found.
    pub checkpoints: Vec<CheckpointCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointCheck {
    pub at: String,
    pub size: i64,
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallWithoutOutcome {
    pub seq: i64,
    pub run_id: String,
    pub call_id: String,
    pub target: String,
}

/// Intents waiting for their outcomes, as the chain is walked: each with the event its outcome
/// is (`outcome_event` in the intent).
#[derive(Default)]
struct OpenCalls(std::collections::BTreeMap<String, (CallWithoutOutcome, String)>);

impl OpenCalls {
    fn observe(&mut self, seq: i64, event_type: &str, body: &serde_json::Value) {
        let call_id = body["call_id"].as_str().unwrap_or_default();
        if event_type == AuditEvent::GatewayCallIntent.as_str() {
            let text = |key: &str| body[key].as_str().unwrap_or_default().to_string();
            let call = CallWithoutOutcome {
                seq,
                run_id: text("run_id"),
                call_id: call_id.to_string(),
                target: text("target"),
            };
            self.0
                .insert(call_id.to_string(), (call, text("outcome_event")));
        } else if self
            .0
            .get(call_id)
            .is_some_and(|(_, outcome)| outcome == event_type)
        {
            self.0.remove(call_id);
        }
    }
}

pub async fn verify(db: &Db) -> Result<VerifyReport> {
    let head = sqlx::query("SELECT seq, hash FROM ledger_head WHERE id = 1")
        .fetch_one(&db.pool)
        .await?;
    let head_seq: i64 = head.try_get("seq")?;
    let head_hash: String = head.try_get("hash")?;
    let mut expected_seq = 1i64;
    let mut prev = GENESIS_HASH.to_string();
    let mut count = 0u64;
    let mut open = OpenCalls::default();
    let bad = |seq: i64, reason: String, count: u64| VerifyReport {
        entries: count,
        head_seq,
        head_hash: head_hash.clone(),
        ok: false,
        first_bad: Some(BadEntry { seq, reason }),
        calls_without_outcome: Vec::new(),
        checkpoints: Vec::new(),
    };
    loop {
        let rows = sqlx::query(concat!(
            "SELECT ",
            ledger_columns!(),
            " FROM ledger_entries WHERE seq >= $1 ORDER BY seq LIMIT $2"
        ))
        .bind(expected_seq)
        .bind(PAGE)
        .fetch_all(&db.pool)
        .await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let e = entry_from_row(row)?;
            if e.seq != expected_seq {
                return Ok(bad(
                    expected_seq,
                    format!("entry missing (next present is {})", e.seq),
                    count,
                ));
            }
            if e.prev_hash != prev {
                return Ok(bad(
                    e.seq,
                    "prev_hash does not link to the entry before".into(),
                    count,
                ));
            }
            match serde_json::from_str::<serde_json::Value>(&e.body) {
                Ok(v) if canonical_string(&v) == e.body => open.observe(e.seq, &e.event_type, &v),
                Ok(_) => return Ok(bad(e.seq, "body is not in canonical form".into(), count)),
                Err(err) => return Ok(bad(e.seq, format!("body is not JSON: {err}"), count)),
            }
            match e.compute_hash() {
                Ok(h) if h == e.hash => {}
                Ok(_) => {
                    return Ok(bad(
                        e.seq,
                        "hash does not match the entry's content".into(),
                        count,
                    ));
                }
                Err(err) => return Ok(bad(e.seq, err.to_string(), count)),
            }
            prev = e.hash;
            expected_seq += 1;
            count += 1;
        }
    }
    // The head must point at the last entry: a truncated tail or a rewound head shows here.
    let last = expected_seq - 1;
    if head_seq > last {
        return Ok(bad(
            last + 1,
            format!("entry missing: the chain head says the chain ends at seq {head_seq}"),
            count,
        ));
    }
    if head_seq < last || head_hash != prev {
        return Ok(bad(
            head_seq + 1,
            format!("the chain head (seq {head_seq}) does not match the last entry (seq {last})"),
            count,
        ));
    }
    Ok(VerifyReport {
        entries: count,
        head_seq,
        head_hash,
        ok: true,
        first_bad: None,
        calls_without_outcome: open.0.into_values().map(|(call, _)| call).collect(),
        checkpoints: Vec::new(),
    })
}
