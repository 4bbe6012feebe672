//! Compiles the built-in policies (`wasm-policies/policies/*`) to wasm32-wasip1 with a nested
//! cargo, in `<target>/wasm-policies`, and copies the modules into OUT_DIR for `include_bytes!`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, file stem in OUT_DIR).
const POLICIES: &[&str] = &[
    "run-admission",
    "tool-access",
    "model-access",
    "budget",
    "promotion-gate",
];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.join("../..");
    let out_dir = PathBuf::from(env("OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .unwrap_or(&out_dir)
        .join("wasm-policies");
    for dir in ["abi", "sdk", "policies"] {
        println!(
            "cargo::rerun-if-changed={}",
            workspace.join("wasm-policies").join(dir).display()
        );
    }
    println!(
        "cargo::rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );

    let mut cmd = Command::new(env("CARGO"));
    cmd.arg("build")
        .args(["--release", "--target", "wasm32-wasip1", "--target-dir"])
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"));
    for p in POLICIES {
        cmd.args(["-p", &format!("cogward-policy-{p}")]);
    }
    // The outer build's wrappers (clippy), flags and target must not leak into the guest build.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running cargo: {e}"));
    if !status.success() {
        panic!(
            "building the built-in policies for wasm32-wasip1 failed \
             (is the target installed? `rustup target add wasm32-wasip1`)"
        );
    }
    for p in POLICIES {
        let file = format!("cogward_policy_{}.wasm", p.replace('-', "_"));
        let from = target_dir.join("wasm32-wasip1/release").join(&file);
        copy(&from, &out_dir.join(&file));
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}
