//! Obligations, enforced in one place for every call site: the decisions of a call (several
//! policies may decide one call) become one [`Plan`] the site carries out, and an obligation the
//! site cannot carry out makes the call a deny (a policy that asked for something is never
//! silently ignored).
//!
//! | obligation | tool call | model call |
//! |---|---|---|
//! | `require_approval` | parks the call (with `escalate`) | deny |
//! | `throttle` | waits (up to the configured bound) | waits |
//! | `redact` | the field leaves the tool's result | the field leaves the response; a stream: deny |
//! | `pin_model` | deny | the pinned model is called |

use cogward_policy_abi::{Decision, Effect, Obligation};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    ToolCall,
    /// A model call; `streaming` when its response is a stream.
    ModelCall {
        streaming: bool,
    },
}

/// What a call's decisions oblige its site to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The strictest effect of the decisions.
    pub effect: Effect,
    pub approval_group: Option<String>,
    pub throttle_ms: u64,
    /// JSON pointers into the result.
    pub redact: Vec<String>,
    pub pin_model: Option<String>,
}

/// The plan of `decisions` at `site`; `Err` names the obligations the site cannot apply (the
/// call is then denied with that reason).
pub fn plan<'a>(
    decisions: impl IntoIterator<Item = &'a Decision>,
    site: Site,
    max_throttle_ms: u64,
) -> Result<Plan, String> {
    let mut plan = Plan {
        effect: Effect::Permit,
        approval_group: None,
        throttle_ms: 0,
        redact: Vec::new(),
        pin_model: None,
    };
    let mut unsupported = Vec::new();
    let mut effects = Vec::new();
    for d in decisions {
        effects.push(d.effect);
        for o in &d.obligations {
            match (o, site) {
                (Obligation::RequireApproval { group }, Site::ToolCall) => {
                    plan.approval_group.get_or_insert_with(|| group.clone());
                }
                (Obligation::Throttle { delay_ms }, _) => {
                    plan.throttle_ms = plan.throttle_ms.max((*delay_ms).min(max_throttle_ms));
                }
                (Obligation::Redact { field }, Site::ToolCall)
                | (Obligation::Redact { field }, Site::ModelCall { streaming: false }) => {
                    plan.redact.push(field.clone());
                }
                (Obligation::PinModel { model }, Site::ModelCall { .. }) => {
                    if plan.pin_model.as_ref().is_some_and(|m| m != model) {
                        unsupported.push(format!("two different model pins ({model})"));
                    }
                    plan.pin_model.get_or_insert_with(|| model.clone());
                }
                (other, _) => unsupported.push(describe(other)),
            }
        }
    }
    plan.effect = Effect::strictest(effects);
    if unsupported.is_empty() {
        Ok(plan)
    } else {
        Err(format!(
            "obligations this call cannot honour: {}",
            unsupported.join(", ")
        ))
    }
}

fn describe(o: &Obligation) -> String {
    serde_json::to_value(o)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{o:?}"))
}

/// Text that takes a redacted string's place.
pub const REDACTED: &str = "[redacted by cogward]";

/// Apply the plan's redactions to `value`: a string at a pointer is replaced by [`REDACTED`],
/// anything else is removed (an object's field) or nulled (an array's element). The pointers
/// that named something.
pub fn redact(value: &mut Value, pointers: &[String]) -> Vec<String> {
    let mut applied = Vec::new();
    for pointer in pointers {
        let hit = match value.pointer_mut(pointer) {
            Some(Value::String(s)) => {
                *s = REDACTED.to_string();
                true
            }
            Some(_) => remove(value, pointer),
            None => false,
        };
        if hit {
            applied.push(pointer.clone());
        }
    }
    applied
}

fn remove(value: &mut Value, pointer: &str) -> bool {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return false;
    };
    let key = last.replace("~1", "/").replace("~0", "~");
    match value.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&key).is_some(),
        Some(Value::Array(items)) => match key.parse::<usize>().ok().and_then(|i| items.get_mut(i))
        {
            Some(item) => {
                *item = Value::Null;
                true
            }
            None => false,
        },
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decision(effect: Effect, obligations: Vec<Obligation>) -> Decision {
        Decision {
            effect,
            reasons: Vec::new(),
            obligations,
        }
    }

    #[test]
    fn decisions_combine_into_the_strictest_effect_and_one_plan() {
        let access = decision(
            Effect::Permit,
            vec![Obligation::PinModel {
                model: "m-1".into(),
            }],
        );
        let budget = decision(Effect::Permit, vec![Obligation::Throttle { delay_ms: 900 }]);
        let p = plan([&access, &budget], Site::ModelCall { streaming: true }, 500).unwrap();
        assert_eq!(
            (p.effect, p.pin_model.as_deref(), p.throttle_ms),
            (Effect::Permit, Some("m-1"), 500)
        );
        let deny = decision(Effect::Deny, vec![]);
        let escalate = decision(Effect::Escalate, vec![]);
        assert_eq!(
            plan(
                [&access, &escalate, &deny],
                Site::ModelCall { streaming: false },
                0
            )
            .unwrap()
            .effect,
            Effect::Deny
        );
        assert_eq!(
            Effect::strictest([Effect::Permit, Effect::Escalate]),
            Effect::Escalate
        );
    }

    #[test]
    fn an_obligation_a_site_cannot_apply_is_a_refusal() {
        let approval = decision(
            Effect::Escalate,
            vec![Obligation::RequireApproval { group: "g".into() }],
        );
        assert!(plan([&approval], Site::ModelCall { streaming: false }, 0).is_err());
        let redact = decision(
            Effect::Permit,
            vec![Obligation::Redact { field: "/a".into() }],
        );
        let e = plan([&redact], Site::ModelCall { streaming: true }, 0).unwrap_err();
        assert!(e.contains("redact"), "{e}");
        assert_eq!(
            plan([&redact], Site::ToolCall, 0).unwrap().redact,
            vec!["/a".to_string()]
        );
        let pin = decision(
            Effect::Permit,
            vec![Obligation::PinModel { model: "m".into() }],
        );
        assert!(plan([&pin], Site::ToolCall, 0).is_err());
    }

    #[test]
    fn redaction_replaces_strings_and_removes_the_rest() {
        let mut v = json!({"content": [{"type": "text", "text": "secret"}, {"x": 1}],
                           "structuredContent": {"token": {"v": 1}, "keep": true}});
        let applied = redact(
            &mut v,
            &[
                "/content/0/text".into(),
                "/structuredContent/token".into(),
                "/content/1".into(),
                "/nope".into(),
            ],
        );
        assert_eq!(applied.len(), 3);
        assert_eq!(
            v,
            json!({"content": [{"type": "text", "text": REDACTED}, null],
                   "structuredContent": {"keep": true}})
        );
    }
}
