//! Built-in policy `run-admission` (kind `run.admission`): may this run start?
//!
//! Request: `agent`, `tenant`, `resource.{runtime, program, model, sandbox_profile, egress_profiles}`,
//! `context.limits.{cpu_seconds, memory_mb, max_processes, wall_clock_seconds, grace_seconds}`.
//!
//! Data (`data.example.json`): per tenant (exact name, else `"*"`), glob lists of allowed
//! `agents`, `programs` (for `command` runtimes), `models` (for agent CLIs) and `egress_profiles` (none if absent: a run may reach nothing beyond
//! the gateway), lists of allowed `runtimes` and `sandbox_profiles`, `max_limits`, and
//! `escalate` rules that send matching runs to a human group for approval. Every violated rule is
//! named in the reasons of the `deny`.

use cogward_policy_sdk::{Decision, Policy, Tenants, export_policy, for_tenant, glob_match};
use serde::Deserialize;
use std::collections::BTreeMap;

pub type Data = Tenants<TenantRules>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRules {
    pub agents: Vec<String>,
    pub runtimes: Vec<String>,
    /// Programs a `command` runtime may start (globs; the agent-CLI runtimes start their CLI).
    #[serde(default = "any")]
    pub programs: Vec<String>,
    /// Models an agent-CLI runtime may ask for (globs; the gateway's model-access policy
    /// decides every call on top).
    #[serde(default = "any")]
    pub models: Vec<String>,
    pub sandbox_profiles: Vec<String>,
    #[serde(default)]
    pub egress_profiles: Vec<String>,
    pub max_limits: BTreeMap<String, u64>,
    #[serde(default)]
    pub escalate: Vec<EscalateRule>,
}

fn any() -> Vec<String> {
    vec!["*".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalateRule {
    pub agents: Vec<String>,
    #[serde(default = "any")]
    pub programs: Vec<String>,
    pub group: String,
    pub reason: String,
}

#[derive(Debug, Deserialize)]
pub struct Request {
    pub tenant: String,
    pub agent: String,
    pub resource: Resource,
    pub context: Context,
}

#[derive(Debug, Deserialize)]
pub struct Resource {
    pub runtime: String,
    #[serde(default)]
    pub program: String,
    /// The agent CLI's model (`claude-code`, `codex`).
    #[serde(default)]
    pub model: Option<String>,
    pub sandbox_profile: String,
    #[serde(default)]
    pub egress_profiles: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Context {
    pub limits: BTreeMap<String, u64>,
}

pub struct RunAdmission(Data);

fn any_glob(patterns: &[String], text: &str) -> bool {
    patterns.iter().any(|p| glob_match(p, text))
}

impl Policy for RunAdmission {
    type Data = Data;
    type Request<'a> = Request;

    fn new(data: Data) -> Result<Self, String> {
        Ok(Self(data))
    }

    fn evaluate(&self, r: &Request) -> Decision {
        let Some(rules) = for_tenant(&self.0.tenants, &r.tenant) else {
            return Decision::deny(format!("tenant {} has no admission rules", r.tenant));
        };
        let mut reasons = Vec::new();
        if !any_glob(&rules.agents, &r.agent) {
            reasons.push(format!(
                "agent {} is not allowed for tenant {}",
                r.agent, r.tenant
            ));
        }
        if !rules.runtimes.contains(&r.resource.runtime) {
            reasons.push(format!("runtime {} is not allowed", r.resource.runtime));
        }
        if r.resource.runtime == "command" && !any_glob(&rules.programs, &r.resource.program) {
            reasons.push(format!("program {} is not allowed", r.resource.program));
        }
        if let Some(model) = &r.resource.model
            && !any_glob(&rules.models, model)
        {
            reasons.push(format!("model {model} is not allowed"));
        }
        if !rules.sandbox_profiles.contains(&r.resource.sandbox_profile) {
            reasons.push(format!(
                "sandbox profile {} is not allowed",
                r.resource.sandbox_profile
            ));
        }
        for profile in &r.resource.egress_profiles {
            if !any_glob(&rules.egress_profiles, profile) {
                reasons.push(format!("egress profile {profile} is not allowed"));
            }
        }
        for (name, asked) in &r.context.limits {
            match rules.max_limits.get(name) {
                Some(max) if asked > max => {
                    reasons.push(format!("limits.{name} {asked} exceeds the ceiling {max}"))
                }
                Some(_) => {}
                None => reasons.push(format!("limits.{name} has no ceiling configured")),
            }
        }
        if !reasons.is_empty() {
            return Decision {
                effect: cogward_policy_sdk::Effect::Deny,
                reasons,
                obligations: Vec::new(),
            };
        }
        match rules
            .escalate
            .iter()
            .find(|e| any_glob(&e.agents, &r.agent) && any_glob(&e.programs, &r.resource.program))
        {
            Some(rule) => Decision::escalate(&rule.group, &rule.reason),
            None => Decision::permit(),
        }
    }
}

export_policy!(RunAdmission);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use cogward_policy_sdk::{Effect, Obligation};

    cogward_policy_sdk::example_tests!(RunAdmission);

    #[test]
    fn every_violation_is_named_and_escalation_names_the_group() {
        let d = decide(
            r#"{"tenant":"acme","agent":"rogue","resource":{"runtime":"command","program":"/bin/sh","sandbox_profile":"host"},"context":{"limits":{"cpu_seconds":999999}}}"#,
        );
        assert_eq!(d.effect, Effect::Deny);
        assert_eq!(d.reasons.len(), 3, "{:?}", d.reasons);
        let d = decide(
            r#"{"tenant":"acme","agent":"deploy-prod","resource":{"runtime":"command","program":"/bin/sh","sandbox_profile":"standard"},"context":{"limits":{}}}"#,
        );
        assert_eq!(d.effect, Effect::Escalate);
        assert_eq!(
            d.obligations,
            vec![Obligation::RequireApproval {
                group: "release-managers".into()
            }]
        );
        let d = decide(r#"{"tenant":"acme"}"#);
        assert_eq!(d.effect, Effect::Deny);
        assert!(d.reasons[0].starts_with("malformed request"), "{d:?}");
    }
}
