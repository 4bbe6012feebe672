//! The run-directory protocol end to end: results, events, deadlines, cancellation,
//! at-most-once, and refused requests — with the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixture;

use cogward_protocol::runner::{
    EVENTS_FILE, LOCK_FILE, Outcome, RunnerEvent, STARTED_FILE, StopReason,
};
use cogward_runner::exit_code;
use fixture::{RunDir, pids_with_cmdline, request, sha256_hex};
use std::time::{Duration, Instant};

#[test]
fn trivial_run_exits_zero_with_started_exited_finished() {
    let run = RunDir::new(&["true"]);
    let result = run.run_ok();
    assert_eq!(result.outcome, Outcome::Exited);
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.signal, None);
    assert_eq!(result.run_id, "test-run");
    assert_eq!(run.event_names(), ["started", "exited", "finished"]);
    assert!(result.started_at_ms <= result.finished_at_ms);
}

#[test]
fn artifacts_and_stdout_digest_match_what_the_agent_wrote() {
    let run = RunDir::new(&[
        "sh",
        "-c",
        "echo hi > out.txt; mkdir -p d/e; printf x > d/e/f; echo hello",
    ]);
    let result = run.run_ok();
    // The result names the manifest by digest; the list is in the run directory.
    let bytes = std::fs::read(run.path(&result.artifacts.manifest)).unwrap();
    assert_eq!(result.artifacts.sha256, sha256_hex(&bytes));
    assert_eq!((result.artifacts.files, result.artifacts.listed), (2, 2));
    assert!(!result.artifacts.truncated);
    let manifest: cogward_protocol::runner::Manifest = serde_json::from_slice(&bytes).unwrap();
    let paths: Vec<&str> = manifest.artifacts.iter().map(|a| a.path.as_str()).collect();
    assert_eq!(paths, ["d/e/f", "out.txt"]);
    assert_eq!(manifest.artifacts[1].sha256, sha256_hex(b"hi\n"));
    assert_eq!(manifest.artifacts[1].bytes, 3);
    assert_eq!(result.stdout.sha256, sha256_hex(b"hello\n"));
    assert_eq!(result.stdout.bytes, 6);
    assert!(!result.stdout.truncated);
    assert_eq!(run.stdout(), "hello\n");
    assert_eq!(result.stderr.sha256, sha256_hex(b""));
}

#[test]
fn output_past_the_cap_is_truncated_and_hashed_as_stored() {
    let mut req = request(&[
        "sh",
        "-c",
        "head -c 5000 /dev/zero | tr '\\0' a; echo err >&2",
    ]);
    req.limits.max_output_bytes = 1000;
    let run = RunDir::with_request(&req);
    let result = run.run_ok();
    assert_eq!(result.stdout.bytes, 1000);
    assert!(result.stdout.truncated);
    assert_eq!(result.stdout.sha256, sha256_hex(&[b'a'; 1000]));
    assert_eq!(run.stderr(), "err\n");
    assert!(!result.stderr.truncated);
}

#[test]
fn agent_exit_code_is_reported_and_runner_still_exits_zero() {
    let run = RunDir::new(&["sh", "-c", "exit 3"]);
    let result = run.run_ok();
    assert_eq!(result.outcome, Outcome::Exited);
    assert_eq!(result.exit_code, Some(3));
}

#[test]
fn missing_program_is_exit_127_with_the_reason() {
    let run = RunDir::new(&["definitely-not-a-program-xyz"]);
    let result = run.run_ok();
    assert_eq!(result.outcome, Outcome::Exited);
    assert_eq!(result.exit_code, Some(127));
    let detail = result.detail.unwrap();
    assert!(detail.contains("No such file"), "{detail}");
}

#[test]
fn deadline_times_out_a_sleeper() {
    let mut req = request(&["sleep", "30"]);
    req.limits.wall_clock_seconds = 1;
    req.limits.grace_seconds = 1;
    let run = RunDir::with_request(&req);
    let t0 = Instant::now();
    let result = run.run_ok();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(result.outcome, Outcome::TimedOut);
    assert_eq!(result.signal, Some(libc::SIGTERM));
    assert!(run.events().iter().any(|e| matches!(
        e,
        RunnerEvent::Stopping {
            reason: StopReason::Deadline,
            ..
        }
    )));
    assert_eq!(
        run.event_names(),
        ["started", "stopping", "exited", "finished"]
    );
}

#[test]
fn deadline_kills_an_agent_that_ignores_sigterm_after_the_grace() {
    let mut req = request(&["sh", "-c", "trap '' TERM; sleep 30"]);
    req.limits.wall_clock_seconds = 1;
    req.limits.grace_seconds = 1;
    let run = RunDir::with_request(&req);
    let t0 = Instant::now();
    let result = run.run_ok();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "grace not honoured: {took:?}"
    );
    assert!(took < Duration::from_secs(6), "{took:?}");
    assert_eq!(result.outcome, Outcome::TimedOut);
    assert_eq!(result.signal, Some(libc::SIGKILL));
    // It ran for about two seconds: progress was reported meanwhile.
    assert!(
        run.events()
            .iter()
            .any(|e| matches!(e, RunnerEvent::Progress { elapsed_ms, .. } if *elapsed_ms >= 1000)),
        "{:?}",
        run.events()
    );
}

/// A runner whose agent is two `sleep`s named by a unique marker, both seen running (so a check
/// that they are gone means something). Returns the run, the runner process and the marker.
fn two_sleepers(prefix: &str) -> (RunDir, std::process::Child, String) {
    let marker = format!("{prefix}{}.25", std::process::id());
    let script = format!("sleep {marker} & sleep {marker}; wait");
    let run = RunDir::new(&["sh", "-c", &script]);
    let child = run.command().spawn().unwrap();
    run.wait_for_started(Duration::from_secs(10));
    let give_up = Instant::now() + Duration::from_secs(5);
    while pids_with_cmdline(&marker).len() < 2 {
        assert!(Instant::now() < give_up, "sandbox processes never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    (run, child, marker)
}

#[test]
fn cancellation_stops_the_agent_and_nothing_survives() {
    let (run, mut child, marker) = two_sleepers("777");
    let runner_pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(runner_pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", run.runner_log());
    let result = run.result();
    assert_eq!(result.outcome, Outcome::Cancelled);
    assert!(run.events().iter().any(|e| matches!(
        e,
        RunnerEvent::Stopping {
            reason: StopReason::Cancelled,
            ..
        }
    )));
    assert_eq!(pids_with_cmdline(&marker), Vec::<i32>::new());
}

#[test]
fn runner_death_kills_the_sandbox_and_the_agent_is_never_rerun() {
    let (run, mut child, marker) = two_sleepers("778");
    // SIGKILL: the runner gets no chance to clean up; the sandbox must die with it anyway.
    child.kill().unwrap();
    child.wait().unwrap();
    let give_up = Instant::now() + Duration::from_secs(5);
    while !pids_with_cmdline(&marker).is_empty() {
        assert!(
            Instant::now() < give_up,
            "sandbox processes outlived their runner: {:?}",
            pids_with_cmdline(&marker)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!run.has_result());
    assert_eq!(run.run(), i32::from(exit_code::ALREADY_STARTED));
    assert!(!run.has_result());
}

#[test]
fn second_exec_after_a_result_starts_nothing() {
    let run = RunDir::new(&["sh", "-c", "echo run >> count.txt"]);
    run.run_ok();
    let started = std::fs::read(run.path(STARTED_FILE)).unwrap();
    let started_mtime = std::fs::metadata(run.path(STARTED_FILE))
        .unwrap()
        .modified()
        .unwrap();
    let events = std::fs::read(run.path(EVENTS_FILE)).unwrap();
    let result = std::fs::read(run.path("result.json")).unwrap();

    assert_eq!(run.run(), 0);
    assert_eq!(std::fs::read(run.path(STARTED_FILE)).unwrap(), started);
    assert_eq!(
        std::fs::metadata(run.path(STARTED_FILE))
            .unwrap()
            .modified()
            .unwrap(),
        started_mtime
    );
    assert_eq!(std::fs::read(run.path(EVENTS_FILE)).unwrap(), events);
    assert_eq!(std::fs::read(run.path("result.json")).unwrap(), result);
    assert_eq!(
        std::fs::read_to_string(run.work().join("count.txt")).unwrap(),
        "run\n"
    );
}

#[test]
fn started_without_result_refuses_to_start_the_agent_again() {
    let run = RunDir::new(&["sh", "-c", "echo ran > side_effect"]);
    std::fs::write(
        run.path(STARTED_FILE),
        "{\"runner_pid\":1,\"started_at_ms\":1}\n",
    )
    .unwrap();
    assert_eq!(run.run(), i32::from(exit_code::ALREADY_STARTED));
    assert!(!run.work().join("side_effect").exists());
    assert!(!run.has_result());
    assert!(
        run.runner_log().contains("already started"),
        "{}",
        run.runner_log()
    );
    assert!(run.event_names().is_empty());
}

#[test]
fn lock_held_by_another_process_starts_nothing() {
    let run = RunDir::new(&["sh", "-c", "echo ran > side_effect"]);
    let lock = std::fs::File::create(run.path(LOCK_FILE)).unwrap();
    lock.lock().unwrap();
    assert_eq!(run.run(), i32::from(exit_code::LOCK_BUSY));
    assert!(!run.started_exists());
    assert!(!run.has_result());
    assert!(!run.work().exists());
    assert!(!run.path("runner.log").exists());
    drop(lock);
}

#[test]
fn wrong_protocol_version_is_refused_without_starting() {
    let mut req = serde_json::to_value(request(&["true"])).unwrap();
    req["protocol"] = serde_json::json!(cogward_protocol::runner::PROTOCOL_VERSION + 1);
    let run = RunDir::with_request_json(&req);
    assert_eq!(run.run(), i32::from(exit_code::BAD_REQUEST));
    assert!(!run.started_exists());
    assert!(!run.has_result());
    assert!(
        run.runner_log().contains("protocol version"),
        "{}",
        run.runner_log()
    );
}

#[test]
fn empty_argv_is_refused_without_starting() {
    let run = RunDir::new(&[]);
    assert_eq!(run.run(), i32::from(exit_code::BAD_REQUEST));
    assert!(!run.started_exists());
    assert!(!run.has_result());
    assert!(
        run.runner_log().contains("argv is empty"),
        "{}",
        run.runner_log()
    );
}

#[test]
fn version_and_help_work() {
    let out = std::process::Command::new(fixture::BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("cogward-runner "));
    let out = std::process::Command::new(fixture::BIN)
        .args(["exec", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--dir"));
}
