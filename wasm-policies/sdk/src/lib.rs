//! The guest SDK: a cogward policy in Rust is a type implementing [`Policy`] — built once from
//! its data document, then a plain function from a typed request to a [`Decision`] — and one
//! [`export_policy!`] line that generates the ABI exports.
//!
//! ```text
//! use cogward_policy_sdk::{Decision, Policy, export_policy};
//!
//! pub struct OnlyAlice;
//! #[derive(serde::Deserialize)]
//! pub struct Req { principal: String }
//! impl Policy for OnlyAlice {
//!     type Data = serde_json::Value;
//!     type Request<'a> = Req;
//!     fn new(_: Self::Data) -> Result<Self, String> { Ok(OnlyAlice) }
//!     fn evaluate(&self, r: &Req) -> Decision {
//!         if r.principal == "alice" { Decision::permit() } else { Decision::deny("not alice") }
//!     }
//! }
//! export_policy!(OnlyAlice);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip1` (crate type `cdylib`). Use
//! `BTreeMap` rather than `HashMap`: the standard hasher's random seed would import
//! `random_get`, and the host grants no capabilities. The same crate, built natively, is an
//! ordinary library: test the policy with `cargo test`.

pub use cogward_policy_abi::{
    ABI_VERSION, Decision, Effect, InitResult, Obligation, Request, kinds, pack, unpack,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// A policy: built once per instance from its data document, then asked for decisions.
pub trait Policy: Sized + 'static {
    /// The data document (configuration), parsed once at instance start.
    type Data: DeserializeOwned;
    /// The request as this policy reads it. Extra fields are ignored unless the type says
    /// otherwise. It may borrow from the request's bytes (`#[serde(borrow)] Cow<'a, str>`),
    /// which saves an allocation per string field.
    type Request<'a>: Deserialize<'a>;

    /// Build the policy from its data (precompute indexes here: it runs once, not per decision).
    fn new(data: Self::Data) -> Result<Self, String>;

    fn evaluate(&self, request: &Self::Request<'_>) -> Decision;
}

/// Parse the data document and build the policy.
pub fn init_json<P: Policy>(data: &[u8]) -> Result<P, String> {
    let data: P::Data =
        serde_json::from_slice(data).map_err(|e| format!("malformed data document: {e}"))?;
    P::new(data)
}

/// One decision, JSON in and JSON out — what the `cogward_evaluate` export does, callable
/// natively too. A request the policy cannot parse is denied.
pub fn evaluate_json<P: Policy>(policy: &P, request: &[u8], out: &mut Vec<u8>) {
    let decision = match serde_json::from_slice::<P::Request<'_>>(request) {
        Ok(req) => policy.evaluate(&req),
        Err(e) => Decision::deny(format!("malformed request: {e}")),
    };
    out.clear();
    // Serialising these types cannot fail; an empty output would be denied by the host anyway.
    let _ = serde_json::to_writer(&mut *out, &decision);
}

/// A data document that is one rule set per tenant (`"*"`: any tenant not named).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenants<T> {
    pub tenants: BTreeMap<String, T>,
}

impl<T> Tenants<T> {
    /// Prepare each tenant's rules with `f`, naming the tenant in an error.
    pub fn build<U>(
        self,
        mut f: impl FnMut(T) -> Result<U, String>,
    ) -> Result<BTreeMap<String, U>, String> {
        self.tenants
            .into_iter()
            .map(|(name, rules)| {
                Ok((
                    name.clone(),
                    f(rules).map_err(|e| format!("tenant {name}: {e}"))?,
                ))
            })
            .collect()
    }
}

/// The entry for `tenant`, else the `"*"` entry: how every built-in finds a tenant's rules.
pub fn for_tenant<'a, T>(by_tenant: &'a BTreeMap<String, T>, tenant: &str) -> Option<&'a T> {
    by_tenant.get(tenant).or_else(|| by_tenant.get("*"))
}

/// Native helpers for a policy crate's unit tests: the same JSON path as the wasm export.
pub mod testing {
    use super::*;

    /// Build the policy from a data document; panics with the reason if it is refused.
    pub fn policy<P: Policy>(data: &[u8]) -> P {
        init_json(data).unwrap_or_else(|e| panic!("data refused: {e}"))
    }

    /// One decision for a JSON request.
    pub fn decide<P: Policy>(policy: &P, request: &str) -> Decision {
        let mut out = Vec::new();
        evaluate_json(policy, request.as_bytes(), &mut out);
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("malformed decision: {e}"))
    }

    /// Every line of a `tests.jsonl` (`{"name", "request", "expect"}`) gets its expected effect;
    /// panics naming the first case that does not.
    pub fn check_cases<P: Policy>(policy: &P, tests: &str) {
        for line in tests.lines().filter(|l| !l.trim().is_empty()) {
            let case: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let d = decide(policy, &case["request"].to_string());
            assert_eq!(
                Some(d.effect.as_str()),
                case["expect"].as_str(),
                "{}: {d:?}",
                case["name"]
            );
        }
    }
}

/// In a policy crate's `mod tests`: `fn policy()` (built from the crate's `data.example.json`),
/// `fn decide(request: &str) -> Decision`, and a test that every line of the crate's
/// `tests.jsonl` decides as expected.
#[macro_export]
macro_rules! example_tests {
    ($policy:ty) => {
        fn policy() -> $policy {
            $crate::testing::policy(include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/data.example.json"
            )))
        }

        #[allow(dead_code)]
        fn decide(request: &str) -> $crate::Decision {
            $crate::testing::decide(&policy(), request)
        }

        #[test]
        fn the_bundled_test_requests_decide_as_expected() {
            $crate::testing::check_cases(
                &policy(),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests.jsonl")),
            );
        }
    };
}

/// `*` matches any run of characters (including none), `?` exactly one; everything else is
/// literal. `mcp.github.*` matches `mcp.github.create_issue`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The guest side of the ABI, used by [`export_policy!`]. Not for direct use.
#[doc(hidden)]
pub mod rt {
    use super::*;
    use std::cell::RefCell;

    pub struct State<P> {
        policy: Option<P>,
        /// The input buffer `cogward_alloc` hands the host; reused across calls.
        input: Vec<u8>,
        out: Vec<u8>,
    }

    impl<P: Policy> State<P> {
        pub const fn new() -> Self {
            Self {
                policy: None,
                input: Vec::new(),
                out: Vec::new(),
            }
        }

        fn packed_out(&self) -> u64 {
            pack(self.out.as_ptr() as usize as u32, self.out.len() as u32)
        }
    }

    impl<P: Policy> Default for State<P> {
        fn default() -> Self {
            Self::new()
        }
    }

    /// The input buffer, at least `len` bytes; valid until the next `alloc`.
    pub fn alloc<P: Policy>(state: &RefCell<State<P>>, len: u32) -> *mut u8 {
        let mut s = state.borrow_mut();
        s.input.clear();
        s.input.resize(len as usize, 0);
        s.input.as_mut_ptr()
    }

    pub fn init<P: Policy>(state: &RefCell<State<P>>, len: u32) -> u64 {
        let mut s = state.borrow_mut();
        let data = &s.input[..(len as usize).min(s.input.len())];
        let result = match init_json::<P>(data) {
            Ok(p) => {
                s.policy = Some(p);
                InitResult { error: None }
            }
            Err(e) => InitResult { error: Some(e) },
        };
        s.out.clear();
        let _ = serde_json::to_writer(&mut s.out, &result);
        s.packed_out()
    }

    pub fn evaluate<P: Policy>(state: &RefCell<State<P>>, len: u32) -> u64 {
        let mut guard = state.borrow_mut();
        let s = &mut *guard;
        match &s.policy {
            Some(p) => {
                let request = &s.input[..(len as usize).min(s.input.len())];
                evaluate_json(p, request, &mut s.out)
            }
            None => {
                s.out.clear();
                let _ = serde_json::to_writer(
                    &mut s.out,
                    &Decision::deny("policy not initialised with its data"),
                );
            }
        }
        s.packed_out()
    }
}

/// Generate the ABI exports for a [`Policy`] type. Only on WebAssembly targets: natively the
/// crate stays an ordinary library (and several policies can link into one binary).
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_family = "wasm")]
        mod __cogward_policy_exports {
            use super::*;
            use $crate::rt;

            thread_local! {
                static STATE: ::std::cell::RefCell<rt::State<$policy>> =
                    const { ::std::cell::RefCell::new(rt::State::new()) };
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn cogward_abi_version() -> u32 {
                $crate::ABI_VERSION
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn cogward_alloc(len: u32) -> *mut u8 {
                STATE.with(|s| rt::alloc::<$policy>(s, len))
            }

            /// The data document is in the input buffer (`_ptr` is where `cogward_alloc` put it).
            #[unsafe(no_mangle)]
            pub extern "C" fn cogward_init(_ptr: u32, len: u32) -> u64 {
                STATE.with(|s| rt::init::<$policy>(s, len))
            }

            /// The request is in the input buffer.
            #[unsafe(no_mangle)]
            pub extern "C" fn cogward_evaluate(_ptr: u32, len: u32) -> u64 {
                STATE.with(|s| rt::evaluate::<$policy>(s, len))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        for (p, t, m) in [
            ("*", "", true),
            ("*", "anything", true),
            ("mcp.github.*", "mcp.github.create_issue", true),
            ("mcp.github.*", "mcp.gitlab.x", false),
            ("*.delete_*", "fs.delete_file", true),
            ("*.delete_*", "fs.read_file", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("**x", "yyx", true),
        ] {
            assert_eq!(glob_match(p, t), m, "{p} vs {t}");
        }
    }
}
