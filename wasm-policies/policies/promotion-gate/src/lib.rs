//! Built-in policy `promotion-gate` (kind `promotion.gate`): may this change be promoted to the
//! next stage?
//!
//! Request: `tenant`, `resource.{change, from_stage, to_stage}`, `context.evals` (eval name →
//! score) and `context.approvals` (`[{"group", "by"}]`); both context fields default to empty.
//!
//! Data (`data.example.json`): per tenant (exact name, else `"*"`), per target stage:
//!
//! ```text
//! {"tenants": {"<tenant>" | "*": {"stages": {"<to_stage>": {
//!     "required_evals": {"<eval>": min_score},
//!     "required_approvals": ["<group>"],
//!     "allowed_from": ["<stage>"]?          // absent: from any stage
//! }}}}}
//! ```
//!
//! Decision: `deny` for a target stage the tenant does not configure, a `from_stage` not in
//! `allowed_from`, and each required eval that is missing or scores below its minimum — every
//! one named; otherwise, while a required group has no approval (one with a non-empty `by`),
//! `escalate` with one `require_approval` obligation per missing group; otherwise `permit`.

use cogward_policy_sdk::{
    Decision, Effect, Obligation, Policy, Tenants, export_policy, for_tenant,
};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

pub type Data = Tenants<TenantRules>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRules {
    pub stages: BTreeMap<String, StageGate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageGate {
    #[serde(default)]
    pub required_evals: BTreeMap<String, f64>,
    #[serde(default)]
    pub required_approvals: Vec<String>,
    #[serde(default)]
    pub allowed_from: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub struct Request {
    pub tenant: String,
    pub resource: Resource,
    #[serde(default)]
    pub context: Context,
}

#[derive(Debug, Deserialize)]
pub struct Resource {
    #[serde(default)]
    pub change: String,
    pub from_stage: String,
    pub to_stage: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Context {
    #[serde(default)]
    pub evals: BTreeMap<String, f64>,
    #[serde(default)]
    pub approvals: Vec<Approval>,
}

#[derive(Debug, Deserialize)]
pub struct Approval {
    pub group: String,
    #[serde(default)]
    pub by: String,
}

/// A stage gate, ready to check.
#[derive(Debug)]
struct Gate {
    required_evals: Vec<(String, f64)>,
    /// Sorted and deduplicated.
    required_approvals: Vec<String>,
    allowed_from: Option<BTreeSet<String>>,
}

pub struct PromotionGate {
    tenants: BTreeMap<String, BTreeMap<String, Gate>>,
}

impl Gate {
    fn new(g: StageGate) -> Result<Self, String> {
        for (name, min) in &g.required_evals {
            if !min.is_finite() {
                return Err(format!("eval {name}: minimum {min} is not a number"));
            }
        }
        let mut required_approvals = g.required_approvals;
        required_approvals.sort();
        required_approvals.dedup();
        Ok(Self {
            required_evals: g.required_evals.into_iter().collect(),
            required_approvals,
            allowed_from: g.allowed_from.map(|v| v.into_iter().collect()),
        })
    }
}

fn change_name(change: &str) -> &str {
    if change.is_empty() {
        "the change"
    } else {
        change
    }
}

impl Policy for PromotionGate {
    type Data = Data;
    type Request<'a> = Request;

    fn new(data: Data) -> Result<Self, String> {
        let mut tenants = BTreeMap::new();
        for (tenant, rules) in data.tenants {
            let mut stages = BTreeMap::new();
            for (stage, gate) in rules.stages {
                let gate =
                    Gate::new(gate).map_err(|e| format!("tenant {tenant}, stage {stage}: {e}"))?;
                stages.insert(stage, gate);
            }
            tenants.insert(tenant, stages);
        }
        Ok(Self { tenants })
    }

    fn evaluate(&self, r: &Request) -> Decision {
        let Some(stages) = for_tenant(&self.tenants, &r.tenant) else {
            return Decision::deny(format!("tenant {} has no promotion rules", r.tenant));
        };
        let (from, to) = (&r.resource.from_stage, &r.resource.to_stage);
        let change = change_name(&r.resource.change);
        let Some(gate) = stages.get(to) else {
            return Decision::deny(format!(
                "stage {to} is not a promotion target in tenant {}",
                r.tenant
            ));
        };
        let mut reasons = Vec::new();
        if let Some(allowed) = &gate.allowed_from
            && !allowed.contains(from)
        {
            let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
            reasons.push(format!(
                "{change} may not be promoted from {from} to {to} (only from {})",
                allowed.join(", ")
            ));
        }
        for (eval, min) in &gate.required_evals {
            match r.context.evals.get(eval) {
                None => reasons.push(format!("eval {eval} is missing (needs at least {min})")),
                Some(score) if score < min => reasons.push(format!(
                    "eval {eval} scored {score}, below the required {min}"
                )),
                Some(_) => {}
            }
        }
        if !reasons.is_empty() {
            return Decision {
                effect: Effect::Deny,
                reasons,
                obligations: Vec::new(),
            };
        }
        let missing: Vec<&String> = gate
            .required_approvals
            .iter()
            .filter(|group| {
                !r.context
                    .approvals
                    .iter()
                    .any(|a| a.group == **group && !a.by.is_empty())
            })
            .collect();
        if missing.is_empty() {
            return Decision::permit();
        }
        Decision {
            effect: Effect::Escalate,
            reasons: missing
                .iter()
                .map(|g| format!("promoting {change} to {to} needs an approval from {g}"))
                .collect(),
            obligations: missing
                .iter()
                .map(|g| Obligation::RequireApproval {
                    group: (*g).clone(),
                })
                .collect(),
        }
    }
}

export_policy!(PromotionGate);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    cogward_policy_sdk::example_tests!(PromotionGate);

    #[test]
    fn each_missing_approval_is_one_obligation() {
        let d = decide(
            r#"{"tenant":"acme","resource":{"change":"pr-7","from_stage":"staging","to_stage":"prod"},
                "context":{"evals":{"unit":1.0,"safety":0.99},"approvals":[{"group":"security","by":""}]}}"#,
        );
        assert_eq!(d.effect, Effect::Escalate);
        assert_eq!(
            d.obligations,
            vec![
                Obligation::RequireApproval {
                    group: "release-managers".into()
                },
                Obligation::RequireApproval {
                    group: "security".into()
                },
            ]
        );
        assert_eq!(
            d.reasons[0],
            "promoting pr-7 to prod needs an approval from release-managers"
        );
    }

    #[test]
    fn every_failure_is_named() {
        let d = decide(
            r#"{"tenant":"acme","resource":{"change":"pr-7","from_stage":"dev","to_stage":"prod"},
                "context":{"evals":{"unit":0.9}}}"#,
        );
        assert_eq!(d.effect, Effect::Deny);
        assert_eq!(
            d.reasons,
            vec![
                "pr-7 may not be promoted from dev to prod (only from staging)",
                "eval safety is missing (needs at least 0.95)",
                "eval unit scored 0.9, below the required 1",
            ]
        );
        assert!(d.obligations.is_empty());
    }

    #[test]
    fn bad_data_is_refused() {
        let err = cogward_policy_sdk::init_json::<PromotionGate>(
            br#"{"tenants":{"a":{"stages":{"prod":{"approvals":[]}}}}}"#,
        )
        .err()
        .unwrap();
        assert!(err.contains("unknown field"), "{err}");
    }
}
