//! Built-in policy `budget` (kind `budget.spend`): does this spend fit the budget?
//!
//! Request: `tenant`, `context.{run_tokens, run_cost_usd, tenant_cost_usd, estimated_tokens,
//! estimated_cost_usd}` — what the run has used so far, what the tenant has spent today, and
//! what this call is estimated to use. All five are required and must not be negative;
//! `run_calls` (the run's permitted gateway calls so far, model and tool) is optional (0).
//!
//! Data (`data.example.json`): per tenant (exact name, else `"*"`):
//!
//! ```text
//! {"tenants": {"<tenant>" | "*": {
//!     "run_max_tokens": u64?, "run_max_cost_usd": f64?, "tenant_daily_max_cost_usd": f64?,
//!     "run_max_calls": u64?,  // gateway calls (model and tool) per run; this call counts 1
//!     "throttle_from": f64,   // fraction of a ceiling where throttling starts, in [0, 1]
//!     "max_delay_ms": u64     // the delay at the ceiling
//! }}}
//! ```
//!
//! A ceiling left out does not apply. For each ceiling, the usage after the call is
//! `(used + estimated) / ceiling`: at or above 1.0 the call is denied (above, for
//! `run_max_calls`: that many calls are admitted), naming every ceiling it
//! would reach; at or above `throttle_from` it is permitted with one `throttle` obligation whose
//! delay grows linearly from 0 at `throttle_from` to `max_delay_ms` at 1.0 (the largest over the
//! ceilings), each throttling ceiling named in the reasons; below, it is permitted as is.

use cogward_policy_sdk::{
    Decision, Effect, Obligation, Policy, Tenants, export_policy, for_tenant,
};
use serde::Deserialize;
use std::collections::BTreeMap;

pub type Data = Tenants<Budget>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default)]
    pub run_max_tokens: Option<u64>,
    #[serde(default)]
    pub run_max_cost_usd: Option<f64>,
    #[serde(default)]
    pub tenant_daily_max_cost_usd: Option<f64>,
    #[serde(default)]
    pub run_max_calls: Option<u64>,
    pub throttle_from: f64,
    pub max_delay_ms: u64,
}

#[derive(Debug, Deserialize)]
pub struct Request {
    pub tenant: String,
    pub context: Context,
}

#[derive(Debug, Deserialize)]
pub struct Context {
    pub run_tokens: u64,
    pub run_cost_usd: f64,
    pub tenant_cost_usd: f64,
    pub estimated_tokens: u64,
    pub estimated_cost_usd: f64,
    #[serde(default)]
    pub run_calls: u64,
}

/// One ceiling, ready to compare against.
#[derive(Debug)]
struct Ceiling {
    /// The data field that sets it, as named in reasons.
    name: &'static str,
    max: f64,
    /// Which usage it bounds.
    usage: Usage,
}

#[derive(Debug, Clone, Copy)]
enum Usage {
    RunTokens,
    RunCost,
    TenantCost,
    RunCalls,
}

impl Usage {
    /// (used so far, estimated for this call).
    fn of(self, c: &Context) -> (f64, f64) {
        match self {
            Usage::RunTokens => (c.run_tokens as f64, c.estimated_tokens as f64),
            Usage::RunCost => (c.run_cost_usd, c.estimated_cost_usd),
            Usage::TenantCost => (c.tenant_cost_usd, c.estimated_cost_usd),
            Usage::RunCalls => (c.run_calls as f64, 1.0),
        }
    }
}

#[derive(Debug)]
struct TenantBudget {
    ceilings: Vec<Ceiling>,
    throttle_from: f64,
    max_delay_ms: u64,
}

pub struct BudgetPolicy {
    tenants: BTreeMap<String, TenantBudget>,
}

impl TenantBudget {
    fn new(b: Budget) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&b.throttle_from) {
            return Err(format!(
                "throttle_from {} is not a fraction in [0, 1]",
                b.throttle_from
            ));
        }
        let mut ceilings = Vec::new();
        for (name, max, usage) in [
            (
                "run_max_tokens",
                b.run_max_tokens.map(|t| t as f64),
                Usage::RunTokens,
            ),
            ("run_max_cost_usd", b.run_max_cost_usd, Usage::RunCost),
            (
                "tenant_daily_max_cost_usd",
                b.tenant_daily_max_cost_usd,
                Usage::TenantCost,
            ),
            (
                "run_max_calls",
                b.run_max_calls.map(|n| n as f64),
                Usage::RunCalls,
            ),
        ] {
            if let Some(max) = max {
                if !(max.is_finite() && max > 0.0) {
                    return Err(format!("{name} {max} must be a positive number"));
                }
                ceilings.push(Ceiling { name, max, usage });
            }
        }
        Ok(Self {
            ceilings,
            throttle_from: b.throttle_from,
            max_delay_ms: b.max_delay_ms,
        })
    }
}

/// `0.8312` → `"83.1%"`.
fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

impl Policy for BudgetPolicy {
    type Data = Data;
    type Request<'a> = Request;

    fn new(data: Data) -> Result<Self, String> {
        Ok(Self {
            tenants: data.build(TenantBudget::new)?,
        })
    }

    fn evaluate(&self, r: &Request) -> Decision {
        let Some(b) = for_tenant(&self.tenants, &r.tenant) else {
            return Decision::deny(format!("tenant {} has no budget rules", r.tenant));
        };
        let c = &r.context;
        for (field, value) in [
            ("run_cost_usd", c.run_cost_usd),
            ("tenant_cost_usd", c.tenant_cost_usd),
            ("estimated_cost_usd", c.estimated_cost_usd),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return Decision::deny(format!("context.{field} {value} is not a valid amount"));
            }
        }
        let mut exceeded = Vec::new();
        let mut throttled = Vec::new();
        let mut delay_ms = 0u64;
        for ceiling in &b.ceilings {
            let (used, estimated) = ceiling.usage.of(c);
            let after = used + estimated;
            let fraction = after / ceiling.max;
            // A count ceiling admits exactly that many calls; an amount is refused on reaching it.
            let over = match ceiling.usage {
                Usage::RunCalls => after > ceiling.max,
                _ => fraction >= 1.0,
            };
            if over {
                exceeded.push(format!(
                    "{} would reach {} of the {} ceiling {} ({used} used + {estimated} estimated)",
                    ceiling.name,
                    percent(fraction),
                    ceiling.name,
                    ceiling.max
                ));
            } else if fraction >= b.throttle_from && fraction < 1.0 {
                // fraction < 1.0 <= throttle_from is impossible here, so the span is positive.
                let span = 1.0 - b.throttle_from;
                let delay = ((fraction - b.throttle_from) / span * b.max_delay_ms as f64).round();
                delay_ms = delay_ms.max(delay as u64);
                throttled.push(format!(
                    "{} at {} of its ceiling {} (throttling from {})",
                    ceiling.name,
                    percent(fraction),
                    ceiling.max,
                    percent(b.throttle_from)
                ));
            }
        }
        if !exceeded.is_empty() {
            return Decision {
                effect: Effect::Deny,
                reasons: exceeded,
                obligations: Vec::new(),
            };
        }
        if throttled.is_empty() {
            return Decision::permit();
        }
        Decision {
            effect: Effect::Permit,
            reasons: throttled,
            obligations: vec![Obligation::Throttle { delay_ms }],
        }
    }
}

export_policy!(BudgetPolicy);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    cogward_policy_sdk::example_tests!(BudgetPolicy);

    fn spend(
        tenant: &str,
        run_tokens: u64,
        run_cost: f64,
        tenant_cost: f64,
        est_tokens: u64,
        est_cost: f64,
    ) -> Decision {
        decide(
            &serde_json::json!({
                "tenant": tenant,
                "context": {
                    "run_tokens": run_tokens,
                    "run_cost_usd": run_cost,
                    "tenant_cost_usd": tenant_cost,
                    "estimated_tokens": est_tokens,
                    "estimated_cost_usd": est_cost,
                },
            })
            .to_string(),
        )
    }

    #[test]
    fn the_delay_grows_linearly_and_the_largest_wins() {
        // acme: run_max_tokens 1,000,000, run_max_cost_usd 20, tenant_daily_max_cost_usd 500,
        // throttle_from 0.8, max_delay_ms 10,000.
        let d = spend("acme", 100_000, 1.0, 10.0, 1_000, 0.01);
        assert_eq!(d, Decision::permit());
        let d = spend("acme", 800_000, 1.0, 10.0, 0, 0.0);
        assert_eq!(d.obligations, vec![Obligation::Throttle { delay_ms: 0 }]);
        let d = spend("acme", 890_000, 1.0, 10.0, 10_000, 0.0);
        assert_eq!(d.effect, Effect::Permit);
        assert_eq!(
            d.obligations,
            vec![Obligation::Throttle { delay_ms: 5_000 }]
        );
        assert_eq!(d.reasons.len(), 1);
        assert!(d.reasons[0].starts_with("run_max_tokens at 90.0%"), "{d:?}");
        // Tokens at 90% (5,000 ms) and run cost at 95% (7,500 ms): one obligation, the larger.
        let d = spend("acme", 900_000, 18.0, 10.0, 0, 1.0);
        assert_eq!(
            d.obligations,
            vec![Obligation::Throttle { delay_ms: 7_500 }]
        );
        assert_eq!(d.reasons.len(), 2, "{d:?}");
    }

    #[test]
    fn every_reached_ceiling_is_named() {
        let d = spend("acme", 999_000, 19.5, 499.0, 1_000, 1.0);
        assert_eq!(d.effect, Effect::Deny);
        assert_eq!(d.reasons.len(), 3, "{d:?}");
        assert!(
            d.reasons[0].starts_with("run_max_tokens would reach 100.0%"),
            "{d:?}"
        );
        assert!(d.reasons[1].starts_with("run_max_cost_usd"), "{d:?}");
        assert!(
            d.reasons[2].starts_with("tenant_daily_max_cost_usd"),
            "{d:?}"
        );
        assert!(d.obligations.is_empty());
        let d = spend("acme", 0, -1.0, 0.0, 0, 0.0);
        assert_eq!(d.effect, Effect::Deny);
        assert!(d.reasons[0].contains("run_cost_usd"), "{d:?}");
    }

    #[test]
    fn a_call_ceiling_counts_every_gateway_call() {
        let data: Data = serde_json::from_value(serde_json::json!({"tenants": {"acme": {
            "run_max_calls": 3, "throttle_from": 1.0, "max_delay_ms": 0}}}))
        .unwrap();
        let policy = BudgetPolicy::new(data).unwrap();
        let ask = |calls: u64| {
            let text = serde_json::json!({"tenant": "acme", "context": {
                "run_tokens": 0, "run_cost_usd": 0.0, "tenant_cost_usd": 0.0,
                "estimated_tokens": 0, "estimated_cost_usd": 0.0, "run_calls": calls}})
            .to_string();
            policy.evaluate(&serde_json::from_str(&text).unwrap())
        };
        assert_eq!(ask(1).effect, Effect::Permit);
        assert_eq!(
            ask(2).effect,
            Effect::Permit,
            "the third call is the last one"
        );
        let d = ask(3);
        assert_eq!(d.effect, Effect::Deny, "a fourth passes the ceiling");
        assert!(d.reasons[0].contains("run_max_calls"), "{:?}", d.reasons);
    }

    #[test]
    fn bad_data_is_refused() {
        for (data, needle) in [
            (
                r#"{"tenants":{"a":{"throttle_from":1.5,"max_delay_ms":1}}}"#,
                "not a fraction",
            ),
            (
                r#"{"tenants":{"a":{"run_max_cost_usd":0,"throttle_from":0.5,"max_delay_ms":1}}}"#,
                "must be a positive number",
            ),
            (
                r#"{"tenants":{"a":{"run_max_usd":1,"throttle_from":0.5,"max_delay_ms":1}}}"#,
                "unknown field",
            ),
        ] {
            let err = cogward_policy_sdk::init_json::<BudgetPolicy>(data.as_bytes())
                .err()
                .unwrap();
            assert!(err.contains(needle), "{err}");
        }
    }
}
