//! The cogward policy ABI, version [`ABI_VERSION`].
//!
//! A policy is a core WebAssembly module. The host (wasmtime) talks to it through four exports
//! and its exported linear memory, passing JSON both ways:
//!
//! | export | signature | meaning |
//! |---|---|---|
//! | `memory` | memory | the guest's linear memory |
//! | `cogward_abi_version` | `() -> i32` | must return [`ABI_VERSION`] |
//! | `cogward_alloc` | `(len: i32) -> i32` | a guest input buffer of at least `len` bytes; it stays valid, and the host reuses it for any number of calls, until the next `cogward_alloc` |
//! | `cogward_init` | `(ptr: i32, len: i32) -> i64` | the policy's data document (JSON, `len` bytes at `ptr`, the input buffer); called once per instance; returns an [`InitResult`] |
//! | `cogward_evaluate` | `(ptr: i32, len: i32) -> i64` | one [`Request`] (JSON, in the input buffer); returns a [`Decision`] |
//!
//! Results are JSON in guest memory, returned packed as `(ptr << 32) | len` and valid until the
//! next call. The host gives no capabilities: every import traps. Anything the host cannot
//! understand (a trap, exhausted fuel, a memory-limit hit, malformed output, an unknown
//! obligation) is a `deny` — policies fail closed.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The ABI version this crate describes. A module reporting another version is refused.
pub const ABI_VERSION: u32 = 1;

/// Export names.
pub mod exports {
    pub const MEMORY: &str = "memory";
    pub const ABI_VERSION: &str = "cogward_abi_version";
    pub const ALLOC: &str = "cogward_alloc";
    pub const INIT: &str = "cogward_init";
    pub const EVALUATE: &str = "cogward_evaluate";
}

/// The kinds of decision cogward asks for, and the policy kinds a binding can name.
pub mod kinds {
    /// May this run start? (`cogward-policy-run-admission`)
    pub const RUN_ADMISSION: &str = "run.admission";
    /// May this agent see / call this tool? (`cogward-policy-tool-access`)
    pub const TOOL_CALL: &str = "tool.call";
    /// May this agent call this provider/model? (`cogward-policy-model-access`)
    pub const MODEL_CALL: &str = "model.call";
    /// Does this spend fit the budget? (`cogward-policy-budget`)
    pub const BUDGET: &str = "budget.spend";
    /// May this change be promoted to the next stage? (`cogward-policy-promotion-gate`)
    pub const PROMOTION: &str = "promotion.gate";
}

/// One decision request: who (principal, agent, tenant) wants to do what (action) to what
/// (resource), in which context. `resource` and `context` are shaped by the request's `kind`;
/// each built-in policy documents the fields it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub kind: String,
    pub tenant: String,
    /// The authenticated principal on whose behalf the action happens.
    pub principal: String,
    pub agent: String,
    pub action: String,
    #[serde(default)]
    pub resource: Value,
    #[serde(default)]
    pub context: Value,
}

/// Ordered by strictness: `permit < escalate < deny`, so decisions of several policies combine
/// into the strictest ([`Effect::strictest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Permit,
    Escalate,
    Deny,
}

impl Effect {
    /// The strictest of `effects` (`permit` for none).
    pub fn strictest(effects: impl IntoIterator<Item = Effect>) -> Effect {
        effects.into_iter().max().unwrap_or(Effect::Permit)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Permit => "permit",
            Effect::Deny => "deny",
            Effect::Escalate => "escalate",
        }
    }
}

/// What the host must do on top of the effect. The host enforces every obligation it is given;
/// an obligation type it does not know makes the whole decision malformed, hence `deny`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Obligation {
    /// A human of `group` must approve before the action proceeds (with `escalate`).
    RequireApproval { group: String },
    /// Remove this field (a JSON pointer into the action's payload) before it is recorded or
    /// forwarded.
    Redact { field: String },
    /// Delay the action by this long before it proceeds (budget throttling).
    Throttle { delay_ms: u64 },
    /// Call this model instead of the one requested (a version pin), with `permit`.
    PinModel { model: String },
}

/// A policy's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub effect: Effect,
    #[serde(default)]
    pub reasons: Vec<String>,
    #[serde(default)]
    pub obligations: Vec<Obligation>,
}

impl Decision {
    pub fn permit() -> Self {
        Self {
            effect: Effect::Permit,
            reasons: Vec::new(),
            obligations: Vec::new(),
        }
    }

    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            effect: Effect::Deny,
            reasons: vec![reason.into()],
            obligations: Vec::new(),
        }
    }

    /// `escalate` to a human of `group`.
    pub fn escalate(group: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            effect: Effect::Escalate,
            reasons: vec![reason.into()],
            obligations: vec![Obligation::RequireApproval {
                group: group.into(),
            }],
        }
    }

    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reasons.push(reason.into());
        self
    }

    pub fn with_obligation(mut self, obligation: Obligation) -> Self {
        self.obligations.push(obligation);
        self
    }
}

/// What `cogward_init` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitResult {
    #[serde(default)]
    pub error: Option<String>,
}

/// Pack a guest (pointer, length) pair the way the ABI returns it.
pub fn pack(ptr: u32, len: u32) -> u64 {
    (u64::from(ptr) << 32) | u64::from(len)
}

/// The inverse of [`pack`].
pub fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn decisions_have_one_wire_form() {
        let d = Decision::escalate("security", "sensitive tool");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(
            json,
            r#"{"effect":"escalate","reasons":["sensitive tool"],"obligations":[{"type":"require_approval","group":"security"}]}"#
        );
        assert_eq!(serde_json::from_str::<Decision>(&json).unwrap(), d);
    }

    #[test]
    fn unknown_obligations_and_fields_are_malformed() {
        for bad in [
            r#"{"effect":"permit","obligations":[{"type":"launch_missiles"}]}"#,
            r#"{"effect":"permit","extra":1}"#,
            r#"{"effect":"maybe"}"#,
        ] {
            assert!(serde_json::from_str::<Decision>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pack_round_trips() {
        assert_eq!(unpack(pack(0xdead_beef, 17)), (0xdead_beef, 17));
    }
}
