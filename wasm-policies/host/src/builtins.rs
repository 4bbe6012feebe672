//! The built-in policies, compiled to WebAssembly by this crate's build script and embedded, each
//! with its example data document and its test requests.

use crate::Effect;
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug)]
pub struct Builtin {
    /// The bundle name it is pushed under (`cogward policy push` names are free-form).
    pub name: &'static str,
    /// The request kind it decides (`cogward_policy_abi::kinds`).
    pub kind: &'static str,
    pub wasm: &'static [u8],
    pub example_data: &'static str,
    /// JSON lines of [`TestCase`].
    pub tests: &'static str,
}

macro_rules! builtin {
    ($name:literal, $kind:expr, $file:literal) => {
        Builtin {
            name: $name,
            kind: $kind,
            wasm: include_bytes!(concat!(env!("OUT_DIR"), "/", $file, ".wasm")),
            example_data: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../policies/",
                $name,
                "/data.example.json"
            )),
            tests: include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../policies/",
                $name,
                "/tests.jsonl"
            )),
        }
    };
}

use cogward_policy_abi::kinds;

pub const BUILTINS: &[Builtin] = &[
    builtin!(
        "run-admission",
        kinds::RUN_ADMISSION,
        "cogward_policy_run_admission"
    ),
    builtin!(
        "tool-access",
        kinds::TOOL_CALL,
        "cogward_policy_tool_access"
    ),
    builtin!(
        "model-access",
        kinds::MODEL_CALL,
        "cogward_policy_model_access"
    ),
    builtin!("budget", kinds::BUDGET, "cogward_policy_budget"),
    builtin!(
        "promotion-gate",
        kinds::PROMOTION,
        "cogward_policy_promotion_gate"
    ),
];

pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// One line of a policy test file: a request and the effect it must get.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    #[serde(default)]
    pub name: String,
    pub request: Value,
    pub expect: Effect,
}

/// Parse JSON lines of [`TestCase`] (blank lines skipped); errors name the line.
pub fn parse_tests(text: &str) -> Result<Vec<TestCase>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}
