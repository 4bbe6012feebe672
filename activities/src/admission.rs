//! `Admit`: the run's admission decision. Deterministic over (spec, configured ceilings); the
//! policy engine takes this place when it arrives.

use crate::spec::{Admission, AdmissionVerdict, RunLimits, RunSpec};

/// Compare the requested limits with the ceilings and name every one that is exceeded.
pub fn decide(spec: &RunSpec, max: &RunLimits) -> Admission {
    let l = &spec.limits;
    let mut reasons = Vec::new();
    for (name, asked, ceiling) in [
        ("cpu_seconds", l.cpu_seconds, max.cpu_seconds),
        ("memory_mb", l.memory_mb, max.memory_mb),
        ("max_processes", l.max_processes, max.max_processes),
        (
            "wall_clock_seconds",
            l.wall_clock_seconds,
            max.wall_clock_seconds,
        ),
        ("grace_seconds", l.grace_seconds, max.grace_seconds),
    ] {
        if asked > ceiling {
            reasons.push(format!(
                "limits.{name} {asked} exceeds the ceiling {ceiling}"
            ));
        }
    }
    if let Err(e) = spec.validate() {
        reasons.push(e.to_string());
    }
    Admission {
        verdict: if reasons.is_empty() {
            AdmissionVerdict::Admit
        } else {
            AdmissionVerdict::Deny
        },
        reasons,
        spec_sha256: spec.digest(),
        limits: *l,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn limits_above_ceiling_are_denied_with_each_reason() {
        let mut spec: RunSpec = serde_json::from_str(
            r#"{"spec_version":1,"agent":"a","tenant":"t","runtime":{"type":"command","command":["true"]}}"#,
        )
        .unwrap();
        let max = RunLimits::default();
        assert_eq!(decide(&spec, &max).verdict, AdmissionVerdict::Admit);
        spec.limits.cpu_seconds = max.cpu_seconds + 1;
        spec.limits.memory_mb = max.memory_mb * 2;
        let a = decide(&spec, &max);
        assert_eq!(a.verdict, AdmissionVerdict::Deny);
        assert_eq!(a.reasons.len(), 2, "{:?}", a.reasons);
        assert!(a.reasons[0].contains("cpu_seconds"));
    }
}
