//! `Admit`: the run's admission, decided by the run-admission policy (a WebAssembly module the
//! engine evaluates; see `wasm-policies/`). This file builds the decision request from the run
//! and turns the decision into the run's verdict.

use cogward_policy_abi::{Effect, Obligation, Request, kinds};
use cogward_protocol::activities::AdmitInput;
use cogward_protocol::approval::GroupRules;
use cogward_protocol::spec::{
    Admission, AdmissionVerdict, CommandRuntime, DecisionRecord, RunSpec, RuntimeSpec,
};
use serde_json::json;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;

/// Decides policy requests: finds the bundle bound to the request's (tenant, agent, kind),
/// evaluates it and returns the record. Implemented by the engine; an `Err` is an
/// infrastructure failure (the activity retries), never a decision.
pub trait PolicyDecider: Debug + Send + Sync + 'static {
    fn decide(
        &self,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<DecisionRecord>> + Send + '_>>;
}

/// The `run.admission` request for a run (fields documented in the run-admission policy).
pub fn request(input: &AdmitInput) -> Request {
    let spec = &input.spec;
    let program = match &spec.runtime {
        RuntimeSpec::Command(CommandRuntime { command }) => {
            command.first().cloned().unwrap_or_default()
        }
        other => other.name().to_string(),
    };
    let task = spec.runtime.task();
    let l = &spec.limits;
    Request {
        kind: kinds::RUN_ADMISSION.into(),
        tenant: spec.tenant.clone(),
        principal: input.submitted_by.clone(),
        agent: spec.agent.clone(),
        action: "run.start".into(),
        resource: json!({
            "run_id": input.run_id,
            "runtime": spec.runtime.name(),
            "program": program,
            "model": task.map(|t| t.model.as_str()),
            "mcp_servers": task.map(|t| t.mcp_servers.as_slice()).unwrap_or_default(),
            "sandbox_profile": spec.sandbox_profile.as_str(),
            "egress_profiles": spec.egress,
        }),
        context: json!({
            "spec_sha256": spec.digest(),
            "requires_approval": spec.requires_approval,
            "limits": {
                "cpu_seconds": l.cpu_seconds,
                "memory_mb": l.memory_mb,
                "max_processes": l.max_processes,
                "wall_clock_seconds": l.wall_clock_seconds,
                "grace_seconds": l.grace_seconds,
            },
        }),
    }
}

/// The run's verdict from the policy's decision. An obligation admission cannot honour (only
/// `require_approval` applies to a run start) turns the decision into a deny: fail closed.
/// A run that waits for approval gets its chain and count from `rules`.
pub fn verdict(spec: &RunSpec, decision: DecisionRecord, rules: &GroupRules) -> Admission {
    let d = &decision.decision;
    let mut reasons = d.reasons.clone();
    let mut approval_group = None;
    let mut unsupported = false;
    for o in &d.obligations {
        match o {
            Obligation::RequireApproval { group } => approval_group = Some(group.clone()),
            other => {
                unsupported = true;
                reasons.push(format!(
                    "obligation {other:?} cannot be honoured at admission"
                ));
            }
        }
    }
    let verdict = match d.effect {
        _ if unsupported => AdmissionVerdict::Deny,
        Effect::Permit => AdmissionVerdict::Admit,
        Effect::Escalate => AdmissionVerdict::Escalate,
        Effect::Deny => AdmissionVerdict::Deny,
    };
    let approval = (verdict == AdmissionVerdict::Escalate
        || (verdict == AdmissionVerdict::Admit && spec.requires_approval))
        .then(|| {
            rules.chain(
                approval_group.as_deref(),
                spec.approval_timeout_seconds,
                spec.approvals_required,
            )
        });
    Admission {
        verdict,
        reasons,
        spec_sha256: spec.digest(),
        limits: spec.limits,
        approval_group,
        approval,
        decision,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use cogward_policy_abi::Decision;
    use cogward_protocol::spec::RunId;

    fn record(decision: Decision) -> DecisionRecord {
        DecisionRecord {
            kind: kinds::RUN_ADMISSION.into(),
            policy: None,
            request: json!({}),
            request_sha256: String::new(),
            decision,
            fault: None,
            latency_us: 1,
        }
    }

    #[test]
    fn effects_map_to_verdicts_and_unknown_obligations_deny() {
        let spec: RunSpec = serde_json::from_str(
            r#"{"spec_version":1,"agent":"a","tenant":"t","runtime":{"type":"command","command":["/bin/sh"]}}"#,
        )
        .unwrap();
        let a = verdict(&spec, record(Decision::permit()), &GroupRules::default());
        assert_eq!(a.verdict, AdmissionVerdict::Admit);
        let a = verdict(
            &spec,
            record(Decision::escalate("sec", "why")),
            &GroupRules::default(),
        );
        assert_eq!(a.verdict, AdmissionVerdict::Escalate);
        assert_eq!(a.approval_group.as_deref(), Some("sec"));
        let a = verdict(
            &spec,
            record(Decision::permit().with_obligation(Obligation::Throttle { delay_ms: 5 })),
            &GroupRules::default(),
        );
        assert_eq!(a.verdict, AdmissionVerdict::Deny);
        let input = AdmitInput {
            run_id: RunId("run-1".into()),
            spec,
            submitted_by: "ci".into(),
        };
        let r = request(&input);
        assert_eq!(r.resource["program"], "/bin/sh");
        assert_eq!(r.context["limits"]["cpu_seconds"], 60);
    }
}
