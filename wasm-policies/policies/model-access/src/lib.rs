//! Built-in policy `model-access` (kind `model.call`): may this agent call this provider's model
//! from here?
//!
//! Request: `tenant`, `resource.{provider, model}`, `context.{tier, region}` (`region`: where the
//! request's data must stay). Provider, model, tier and region compare case-insensitively.
//!
//! Data (`data.example.json`):
//!
//! ```text
//! {"tenants": {"<tenant>" | "*": {"tiers": {"<tier>" | "*": [
//!      {"provider": "anthropic", "models": [model glob], "pin": "<exact model version>"?}
//!  ]}}},
//!  "residency": {"<provider>": [region glob]}}
//! ```
//!
//! The tenant's rules are those of its exact name, else `"*"`; the tier's allowlist that of its
//! exact name, else `"*"`. An entry allows its `provider`'s models matching one of its `models`
//! globs, and its `pin` itself; with a `pin`, only the pinned version may be called. `residency`
//! lists the regions each provider may serve (a provider absent from it serves none).
//!
//! Decision: `deny` when the tenant or tier has no allowlist; when no entry allows the provider
//! and model; when the provider may not serve the region — every violation named. When every
//! entry that allows the model pins another version, `permit` with a `pin_model` obligation
//! naming the (first) pinned version, which the gateway calls instead. Otherwise `permit`.

use cogward_policy_sdk::{
    Decision, Effect, Obligation, Policy, export_policy, for_tenant, glob_match,
};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    pub tenants: BTreeMap<String, TenantRules>,
    #[serde(default)]
    pub residency: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRules {
    pub tiers: BTreeMap<String, Vec<ModelRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRule {
    pub provider: String,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub pin: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Request {
    pub tenant: String,
    pub resource: Resource,
    pub context: Context,
}

#[derive(Debug, Deserialize)]
pub struct Resource {
    pub provider: String,
    pub model: String,
}

#[derive(Debug, Deserialize)]
pub struct Context {
    pub tier: String,
    pub region: String,
}

/// One allowlist entry, lowercased.
#[derive(Debug)]
struct Allow {
    models: Vec<String>,
    /// (lowercased, as written).
    pin: Option<(String, String)>,
}

/// tier → provider → entries.
type Tiers = BTreeMap<String, BTreeMap<String, Vec<Allow>>>;

pub struct ModelAccess {
    tenants: BTreeMap<String, Tiers>,
    residency: BTreeMap<String, Vec<String>>,
}

fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

fn lower_all(v: Vec<String>) -> Vec<String> {
    v.into_iter().map(|s| s.to_ascii_lowercase()).collect()
}

impl Policy for ModelAccess {
    type Data = Data;
    type Request<'a> = Request;

    fn new(data: Data) -> Result<Self, String> {
        let mut tenants = BTreeMap::new();
        for (tenant, rules) in data.tenants {
            let mut tiers = Tiers::new();
            for (tier, entries) in rules.tiers {
                let providers = tiers.entry(tier.to_ascii_lowercase()).or_default();
                for e in entries {
                    if e.models.is_empty() && e.pin.is_none() {
                        return Err(format!(
                            "tenant {tenant}, tier {tier}: the {} entry allows no model \
                             (give models or a pin)",
                            e.provider
                        ));
                    }
                    providers
                        .entry(e.provider.to_ascii_lowercase())
                        .or_default()
                        .push(Allow {
                            models: lower_all(e.models),
                            pin: e.pin.map(|p| (p.to_ascii_lowercase(), p)),
                        });
                }
            }
            tenants.insert(tenant, tiers);
        }
        let residency = data
            .residency
            .into_iter()
            .map(|(p, regions)| (p.to_ascii_lowercase(), lower_all(regions)))
            .collect();
        Ok(Self { tenants, residency })
    }

    fn evaluate(&self, r: &Request) -> Decision {
        let Some(tiers) = for_tenant(&self.tenants, &r.tenant) else {
            return Decision::deny(format!("tenant {} has no model-access rules", r.tenant));
        };
        let tier = lower(&r.context.tier);
        let Some(allowlist) = tiers.get(tier.as_ref()).or_else(|| tiers.get("*")) else {
            return Decision::deny(format!(
                "tier {} has no model allowlist in tenant {}",
                r.context.tier, r.tenant
            ));
        };
        let (provider, model) = (lower(&r.resource.provider), lower(&r.resource.model));
        let region = lower(&r.context.region);
        let (p, m) = (&r.resource.provider, &r.resource.model);
        let mut reasons = Vec::new();
        let mut pinned: Option<String> = None;

        match allowlist.get(provider.as_ref()) {
            None => reasons.push(format!(
                "provider {p} is not allowed for tier {}",
                r.context.tier
            )),
            Some(entries) => {
                let mut pins: Vec<&str> = Vec::new();
                let mut allowed = false;
                for e in entries {
                    let listed = e.models.iter().any(|g| glob_match(g, &model))
                        || e.pin.as_ref().is_some_and(|(pin, _)| *pin == *model);
                    if !listed {
                        continue;
                    }
                    match &e.pin {
                        Some((pin, written)) if *pin != *model => pins.push(written),
                        _ => {
                            allowed = true;
                            break;
                        }
                    }
                }
                if !allowed {
                    if pins.is_empty() {
                        reasons.push(format!(
                            "model {m} of provider {p} is not allowed for tier {}",
                            r.context.tier
                        ));
                    } else {
                        // The first pin is the version to call instead.
                        pinned = Some(pins[0].to_string());
                    }
                }
            }
        }
        let serves = self
            .residency
            .get(provider.as_ref())
            .is_some_and(|regions| regions.iter().any(|g| glob_match(g, &region)));
        if !serves {
            reasons.push(format!(
                "provider {p} may not serve region {}",
                r.context.region
            ));
        }
        if let (true, Some(pin)) = (reasons.is_empty(), &pinned) {
            return Decision {
                effect: Effect::Permit,
                reasons: vec![format!(
                    "model {m} of provider {p} is pinned to {pin} for tier {}",
                    r.context.tier
                )],
                obligations: vec![Obligation::PinModel { model: pin.clone() }],
            };
        }
        if let Some(pin) = &pinned {
            reasons.insert(
                0,
                format!(
                    "model {m} of provider {p} is pinned to {pin} for tier {}",
                    r.context.tier
                ),
            );
        }
        if reasons.is_empty() {
            Decision::permit()
        } else {
            Decision {
                effect: Effect::Deny,
                reasons,
                obligations: Vec::new(),
            }
        }
    }
}

export_policy!(ModelAccess);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    cogward_policy_sdk::example_tests!(ModelAccess);

    fn ask(tenant: &str, provider: &str, model: &str, tier: &str, region: &str) -> Decision {
        decide(
            &serde_json::json!({
                "tenant": tenant,
                "resource": {"provider": provider, "model": model},
                "context": {"tier": tier, "region": region},
            })
            .to_string(),
        )
    }

    #[test]
    fn a_pin_is_an_obligation_and_the_pinned_version_is_allowed() {
        let d = ask("acme", "anthropic", "claude-opus-4-1", "premium", "eu");
        assert_eq!(d.effect, Effect::Permit);
        assert_eq!(
            d.obligations,
            vec![Obligation::PinModel {
                model: "claude-opus-4-1-20250805".into()
            }]
        );
        assert_eq!(
            d.reasons,
            vec![
                "model claude-opus-4-1 of provider anthropic is pinned to claude-opus-4-1-20250805 for tier premium"
            ]
        );
        let d = ask(
            "acme",
            "Anthropic",
            "Claude-Opus-4-1-20250805",
            "Premium",
            "EU",
        );
        assert_eq!(d.effect, Effect::Permit, "{d:?}");
    }

    #[test]
    fn every_violation_is_named() {
        let d = ask("acme", "openai", "o3", "standard", "eu");
        assert_eq!(d.effect, Effect::Deny);
        assert_eq!(
            d.reasons,
            vec![
                "model o3 of provider openai is not allowed for tier standard",
                "provider openai may not serve region eu",
            ]
        );
        let d = ask("acme", "mistral", "mistral-large", "standard", "eu");
        assert_eq!(
            d.reasons,
            vec![
                "provider mistral is not allowed for tier standard",
                "provider mistral may not serve region eu",
            ]
        );
        let d = ask("acme", "anthropic", "claude-haiku-4-5", "gold", "eu");
        assert_eq!(
            d.reasons,
            vec!["tier gold has no model allowlist in tenant acme"]
        );
        let d = decide(
            r#"{"tenant":"acme","resource":{"provider":"anthropic","model":"x"},"context":{"tier":"standard"}}"#,
        );
        assert!(d.reasons[0].starts_with("malformed request"), "{d:?}");
    }

    #[test]
    fn bad_data_is_refused() {
        let err = cogward_policy_sdk::init_json::<ModelAccess>(
            br#"{"tenants":{"a":{"tiers":{"t":[{"provider":"p"}]}}}}"#,
        )
        .err()
        .unwrap();
        assert!(err.contains("allows no model"), "{err}");
        let err = cogward_policy_sdk::init_json::<ModelAccess>(br#"{"tenants":{},"regions":{}}"#)
            .err()
            .unwrap();
        assert!(err.contains("unknown field"), "{err}");
    }
}
