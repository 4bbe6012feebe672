//! Sandbox start, per profile, against plain fork/exec of the same command: `true` run by
//! `cogward-runner exec` on a fresh run directory (lease, cgroup, namespaces, the private
//! filesystem view, Landlock, seccomp, rlimits, result and manifest) versus `true` spawned
//! directly. Interleaved (one of each in turn) so load drifts hit all alike; prints p50/p99 and
//! the line for docs/benchmarks.md.
//!
//! `cargo bench -p cogward-runner --bench sandbox_start` (as root).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cogward_protocol::runner::{
    Limits, Outcome, PROTOCOL_VERSION, ProfileName, REQUEST_FILE, RESULT_FILE, RunnerRequest,
    RunnerResult, SandboxProfile,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const WARMUP: usize = 10;
const N: usize = 200;

fn request(i: usize, profile: ProfileName) -> RunnerRequest {
    RunnerRequest {
        protocol: PROTOCOL_VERSION,
        run_id: format!("bench-{i}"),
        argv: vec!["true".into()],
        env: BTreeMap::from([("COGWARD_INPUTS".to_string(), "{}".to_string())]),
        limits: Limits {
            cpu_seconds: 10,
            memory_bytes: 512 << 20,
            max_processes: 64,
            wall_clock_seconds: 30,
            grace_seconds: 1,
            max_output_bytes: 1 << 20,
            max_file_bytes: 1 << 30,
            max_open_files: 1024,
        },
        sandbox: SandboxProfile {
            name: profile,
            ..SandboxProfile::default()
        },
        gateway: None,
        egress_proxy: None,
        files: BTreeMap::new(),
        checkout: None,
        home_files: BTreeMap::new(),
        secrets: Vec::new(),
    }
}

fn runner_once(root: &Path, i: usize, profile: ProfileName) -> f64 {
    let dir = root.join(format!("run-{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(REQUEST_FILE),
        serde_json::to_vec(&request(i, profile)).unwrap(),
    )
    .unwrap();
    let t = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_cogward-runner"))
        .args(["exec", "--dir"])
        .arg(&dir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(status.success(), "runner: {status}");
    let result: RunnerResult =
        serde_json::from_slice(&std::fs::read(dir.join(RESULT_FILE)).unwrap()).unwrap();
    assert_eq!(
        (result.outcome, result.exit_code),
        (Outcome::Exited, Some(0))
    );
    std::fs::remove_dir_all(&dir).unwrap();
    ms
}

fn plain_once() -> f64 {
    let t = Instant::now();
    let status = Command::new("true").stdin(Stdio::null()).status().unwrap();
    assert!(status.success());
    t.elapsed().as_secs_f64() * 1000.0
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn main() {
    let root = tempfile::tempdir().unwrap();
    for i in 0..WARMUP {
        plain_once();
        runner_once(root.path(), i, ProfileName::Standard);
        runner_once(root.path(), i, ProfileName::Strict);
    }
    let (mut plain, mut standard, mut strict) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..N {
        plain.push(plain_once());
        standard.push(runner_once(root.path(), i, ProfileName::Standard));
        strict.push(runner_once(root.path(), i, ProfileName::Strict));
    }
    let (p50, p99) = (pct(&mut plain, 0.5), pct(&mut plain, 0.99));
    println!("sandbox start, N={N} each, interleaved (ms)");
    println!("| | p50 | p99 | added p50 | added p99 |");
    println!("|---|---|---|---|---|");
    println!("| plain fork/exec of `true` | {p50:.2} | {p99:.2} | | |");
    for (name, v) in [("standard", &mut standard), ("strict", &mut strict)] {
        let (a, b) = (pct(v, 0.5), pct(v, 0.99));
        println!(
            "| runner, `{name}` | {a:.2} | {b:.2} | +{:.2} | +{:.2} |",
            a - p50,
            b - p99
        );
    }
}
