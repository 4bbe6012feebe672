//! The host against real modules: the built-ins compiled to wasm32-wasip1 by the build script,
//! and hand-written modules that misbehave.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cogward_policy_host::builtins::{BUILTINS, parse_tests};
use cogward_policy_host::fixtures::{self, wasm};
use cogward_policy_host::{Effect, Fault, Limits, LoadError, PolicyHost};
use std::sync::Arc;
use std::time::Duration;

fn host() -> Arc<PolicyHost> {
    Arc::new(PolicyHost::new(Limits::default()).unwrap())
}

const REQUEST: &[u8] =
    br#"{"kind":"tool.call","tenant":"t","principal":"p","agent":"a","action":"call"}"#;

#[test]
fn builtins_decide_their_test_requests_in_wasm() {
    let host = host();
    let mut decided = 0;
    for b in BUILTINS {
        let module = host
            .load(b.wasm)
            .unwrap_or_else(|e| panic!("{}: {e}", b.name));
        let policy = host
            .prepare(module, b.example_data.as_bytes())
            .unwrap_or_else(|e| panic!("{}: {e}", b.name));
        let cases = parse_tests(b.tests).unwrap();
        assert!(
            cases.len() >= 5,
            "{} has only {} test requests",
            b.name,
            cases.len()
        );
        for case in cases {
            let eval = policy.evaluate(&serde_json::to_vec(&case.request).unwrap());
            assert_eq!(eval.fault, None, "{} / {}", b.name, case.name);
            assert_eq!(
                eval.decision.effect, case.expect,
                "{} / {}: {:?}",
                b.name, case.name, eval.decision
            );
            decided += 1;
        }
    }
    assert!(decided >= 40, "{decided}");
}

#[test]
fn hostile_modules_are_denied_with_their_fault_and_the_host_keeps_serving() {
    let host = host();
    let good = host
        .prepare(host.load(&wasm(&fixtures::permit())).unwrap(), b"{}")
        .unwrap();
    for (name, wat) in fixtures::hostile() {
        let policy = host
            .prepare(host.load(&wasm(&wat)).unwrap(), b"{}")
            .unwrap();
        // Twice: the faulted instance is discarded and a fresh one faults the same way.
        for _ in 0..2 {
            let eval = policy.evaluate(REQUEST);
            assert_eq!(eval.decision.effect, Effect::Deny, "{name}");
            let fault = eval.fault.unwrap_or_else(|| panic!("{name}: no fault"));
            let expected = match name {
                "infinite-loop" => matches!(fault, Fault::FuelExhausted { .. }),
                "memory-bomb" => matches!(fault, Fault::MemoryLimit { .. }),
                "trap" => matches!(fault, Fault::Trap { .. }),
                _ => matches!(fault, Fault::MalformedOutput { .. }),
            };
            assert!(expected, "{name}: {fault:?}");
            assert_eq!(eval.decision.reasons, vec![fault.to_string()]);
            assert!(
                eval.elapsed < Duration::from_secs(5),
                "{name}: {:?}",
                eval.elapsed
            );
        }
        assert_eq!(
            good.evaluate(REQUEST).decision.effect,
            Effect::Permit,
            "after {name}"
        );
    }
}

#[test]
fn without_fuel_the_deadline_stops_an_infinite_loop() {
    let host = Arc::new(
        PolicyHost::new(Limits {
            fuel: None,
            deadline: Duration::from_millis(50),
            ..Limits::default()
        })
        .unwrap(),
    );
    let (_, wat) = fixtures::hostile().remove(0);
    let policy = host
        .prepare(host.load(&wasm(&wat)).unwrap(), b"{}")
        .unwrap();
    let eval = policy.evaluate(REQUEST);
    assert_eq!(eval.fault, Some(Fault::Deadline { ms: 50 }));
    assert!(eval.elapsed < Duration::from_secs(2), "{:?}", eval.elapsed);
}

#[test]
fn a_module_that_misbehaves_only_on_some_requests_is_caught_per_request() {
    let host = host();
    let module = host
        .load(&wasm(&fixtures::loops_on_requests_longer_than(100)))
        .unwrap();
    let policy = host.prepare(module, b"{}").unwrap();
    let short = br#"{"kind":"x"}"#;
    let long = [b' '; 200];
    assert_eq!(policy.evaluate(short).decision.effect, Effect::Permit);
    assert!(matches!(
        policy.evaluate(&long).fault,
        Some(Fault::FuelExhausted { .. })
    ));
    assert_eq!(policy.evaluate(short).decision.effect, Effect::Permit);
}

#[test]
fn unloadable_modules_are_refused_with_a_reason() {
    let host = host();
    for (name, bytes) in fixtures::unloadable() {
        let err = host.load(&bytes).expect_err(name);
        let expected = match name {
            "wrong-abi-version" => matches!(err, LoadError::AbiVersion { found: 2 }),
            "missing-export" => matches!(err, LoadError::Export(_)),
            "forbidden-import" => matches!(err, LoadError::ForbiddenImport { .. }),
            "huge-initial-memory" => matches!(err, LoadError::Invalid(_)),
            _ => matches!(err, LoadError::Invalid(_)),
        };
        assert!(expected, "{name}: {err:?}");
    }
    let too_big = Arc::new(
        PolicyHost::new(Limits {
            max_module_bytes: 100,
            ..Limits::default()
        })
        .unwrap(),
    );
    assert!(matches!(
        too_big.load(BUILTINS[0].wasm),
        Err(LoadError::TooLarge { .. })
    ));
}

#[test]
fn modules_are_compiled_once_and_bad_data_is_refused_at_prepare() {
    let host = host();
    let a = host.load(BUILTINS[0].wasm).unwrap();
    let b = host.load(BUILTINS[0].wasm).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.sha256, cogward_policy_host::sha256_hex(BUILTINS[0].wasm));
    for bad in [&b"not json"[..], br#"{"tenants": 5}"#] {
        let err = host.prepare(a.clone(), bad).unwrap_err();
        assert!(matches!(err, Fault::Init { .. }), "{err:?}");
    }
}

#[test]
fn concurrent_decisions_share_the_pool() {
    let host = host();
    let b = &BUILTINS[0];
    let policy = host
        .prepare(host.load(b.wasm).unwrap(), b.example_data.as_bytes())
        .unwrap();
    let case = parse_tests(b.tests).unwrap().remove(0);
    let request = serde_json::to_vec(&case.request).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..200 {
                    assert_eq!(policy.evaluate(&request).decision.effect, case.expect);
                }
            });
        }
    });
}
