//! Hand-written modules that speak the ABI's shape but misbehave in one way each, for tests of
//! the host and of the engine (`fixtures` feature).

/// A module with the ABI's exports: a bump allocator, an `init` that accepts any data, and
/// `evaluate` with the given body (params `$ptr`, `$len`; result i64, a packed (ptr, len)).
/// Constant strings live at 16 (`{"effect":"permit"}`, 19 bytes), 64 (`not json at all`,
/// 15 bytes) and 128 (an unknown obligation, 58 bytes).
pub fn abi_module(abi_version: i32, evaluate_body: &str) -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (global $bump (mut i32) (i32.const 1024))
  (data (i32.const 8) "{{}}")
  (data (i32.const 16) "{{\"effect\":\"permit\"}}")
  (data (i32.const 64) "not json at all")
  (data (i32.const 128) "{{\"effect\":\"permit\",\"obligations\":[{{\"type\":\"exfiltrate\"}}]}}")
  (func (export "cogward_abi_version") (result i32) (i32.const {abi_version}))
  (func (export "cogward_alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (local.get $len)))
    (local.get $p))
  (func (export "cogward_init") (param i32 i32) (result i64)
    (global.set $bump (i32.const 1024))
    (i64.or (i64.shl (i64.const 8) (i64.const 32)) (i64.const 2)))
  (func (export "cogward_evaluate") (param $ptr i32) (param $len i32) (result i64)
    (global.set $bump (i32.const 1024))
    {evaluate_body})
)"#
    )
}

/// `(ptr << 32) | len` as a WAT i64 constant expression.
fn packed(ptr: u32, len: u32) -> String {
    format!("(i64.const {})", (u64::from(ptr) << 32) | u64::from(len))
}

/// A module that permits everything.
pub fn permit() -> String {
    abi_module(1, &packed(16, 19))
}

/// Each hostile module by name, as WAT.
pub fn hostile() -> Vec<(&'static str, String)> {
    vec![
        (
            "infinite-loop",
            abi_module(1, "(loop $l (br $l)) (i64.const 0)"),
        ),
        (
            "memory-bomb",
            abi_module(
                1,
                "(loop $l (drop (memory.grow (i32.const 16))) (br $l)) (i64.const 0)",
            ),
        ),
        ("trap", abi_module(1, "unreachable")),
        ("garbage-output", abi_module(1, &packed(64, 15))),
        ("unknown-obligation", abi_module(1, &packed(128, 58))),
        (
            "output-out-of-bounds",
            abi_module(1, &packed(0xffff_0000, 64)),
        ),
        ("output-too-large", abi_module(1, &packed(0, 0x00ff_ffff))),
    ]
}

/// Permits requests shorter than `len` bytes and loops forever on longer ones: a module that
/// passes a dry run and misbehaves in production.
pub fn loops_on_requests_longer_than(len: u32) -> String {
    abi_module(
        1,
        &format!(
            "(if (i32.gt_u (local.get $len) (i32.const {len})) (then (loop $l (br $l)))) {}",
            packed(16, 19)
        ),
    )
}

/// Modules the host must refuse to load, by name.
pub fn unloadable() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = vec![
        ("wrong-abi-version", wasm(&abi_module(2, &packed(16, 19)))),
        (
            "missing-export",
            wasm(r#"(module (memory (export "memory") 1))"#),
        ),
        (
            "forbidden-import",
            wasm(&permit().replacen(
                "(module",
                r#"(module (import "env" "exfiltrate" (func $x))"#,
                1,
            )),
        ),
        (
            "huge-initial-memory",
            wasm(&permit().replacen(
                r#"(memory (export "memory") 1)"#,
                r#"(memory (export "memory") 4000)"#,
                1,
            )),
        ),
        ("not-wasm", b"\0asm but not really".to_vec()),
    ];
    v.push(("empty", Vec::new()));
    v
}

/// Compile WAT text to a module.
pub fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).unwrap_or_else(|e| panic!("fixture does not parse: {e}\n{wat}"))
}
