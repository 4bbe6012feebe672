//! The sandbox's isolation, checked by running the real binary and asserting the forbidden
//! thing fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixture;

use cogward_protocol::runner::Outcome;
use fixture::{RunDir, python3, request};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

#[test]
fn no_network_route_out_and_host_loopback_unreachable() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!(
        "echo ROUTES; tail -n +2 /proc/net/route; echo END; \
         if echo hi > /dev/tcp/127.0.0.1/{port}; then echo HOST_LOOPBACK_CONNECTED; \
         else echo HOST_LOOPBACK_FAILED; fi; \
         if echo hi > /dev/tcp/1.1.1.1/53; then echo OUTSIDE_CONNECTED; \
         else echo OUTSIDE_FAILED; fi"
    );
    let run = RunDir::new(&["bash", "-c", &script]);
    let result = run.run_ok();
    assert_eq!(result.outcome, Outcome::Exited);
    let out = run.stdout();
    assert!(out.contains("ROUTES\nEND\n"), "routes inside: {out}");
    assert!(out.contains("HOST_LOOPBACK_FAILED"), "{out}");
    assert!(out.contains("OUTSIDE_FAILED"), "{out}");
    assert!(
        listener.accept().is_err(),
        "the host listener got a connection from the sandbox"
    );
}

#[test]
fn pid_namespace_hides_host_processes() {
    let mut host_sleep = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let host_pid = host_sleep.id();
    let script = format!(
        "echo PID=$$; echo PROCS=$(ls /proc | grep -c '^[0-9]'); \
         if kill -0 {host_pid}; then echo KILL_ALLOWED; else echo KILL_DENIED; fi"
    );
    let run = RunDir::new(&["sh", "-c", &script]);
    run.run_ok();
    host_sleep.kill().unwrap();
    host_sleep.wait().unwrap();
    let out = run.stdout();
    let pid: u32 = field(&out, "PID=").parse().unwrap();
    assert!(pid <= 2, "agent shell pid inside is {pid}: {out}");
    let procs: u32 = field(&out, "PROCS=").parse().unwrap();
    assert!(procs <= 6, "{procs} pids visible in /proc: {out}");
    assert!(out.contains("KILL_DENIED"), "{out}");
}

#[test]
fn user_namespace_maps_agent_to_its_own_unprivileged_host_id() {
    let host_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(host_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let forbidden = host_dir.path().join("written-by-agent");
    let script = format!(
        "echo UID=$(id -u); touch mine; \
         if echo x > {}; then echo HOST_WRITE_ALLOWED; else echo HOST_WRITE_DENIED; fi; \
         if cat ../request.json; then echo REQUEST_READABLE; else echo REQUEST_DENIED; fi",
        forbidden.display()
    );
    let run = RunDir::new(&["sh", "-c", &script]);
    let result = run.run_ok();
    let out = run.stdout();
    assert_eq!(field(&out, "UID="), "1000", "{out}");
    assert!(out.contains("HOST_WRITE_DENIED"), "{out}");
    assert!(!forbidden.exists());
    assert!(out.contains("REQUEST_DENIED"), "{out}");
    let host_id = result.sandbox.expect("sandbox evidence").host_id;
    let range = cogward_protocol::runner::SandboxProfile::default().host_ids;
    assert!((range.first..range.first + range.count).contains(&host_id));
    let meta = std::fs::metadata(run.work().join("mine")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (host_id, host_id));
}

#[test]
fn environment_is_exactly_the_request_env_plus_defaults() {
    let mut req = request(&["env"]);
    req.env.insert("FOO".into(), "bar".into());
    let run = RunDir::with_request(&req);
    let out = run
        .command()
        .env("COGWARD_TEST_SECRET", "leak")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", run.runner_log());
    let env = run.stdout();
    assert!(!env.contains("COGWARD_TEST_SECRET"), "{env}");
    assert!(!env.contains("leak"), "{env}");
    let mut lines: Vec<&str> = env.lines().collect();
    lines.sort();
    let mut expected = vec![
        "COGWARD_RUN_ID=test-run",
        "FOO=bar",
        "HOME=/home/agent",
        "LANG=C.UTF-8",
        "PATH=/usr/local/bin:/usr/bin:/bin",
    ];
    expected.sort();
    assert_eq!(lines, expected);
}

#[test]
fn cpu_limit_kills_a_busy_loop_before_the_deadline() {
    let mut req = request(&["sh", "-c", "while :; do :; done"]);
    req.limits.cpu_seconds = 1;
    req.limits.wall_clock_seconds = 20;
    let run = RunDir::with_request(&req);
    let t0 = Instant::now();
    let result = run.run_ok();
    assert!(t0.elapsed() < Duration::from_secs(12), "{:?}", t0.elapsed());
    assert_eq!(result.outcome, Outcome::Signaled, "{result:?}");
    let sig = result.signal.unwrap();
    assert!(sig == libc::SIGXCPU || sig == libc::SIGKILL, "signal {sig}");
}

#[test]
fn process_limit_bounds_forks() {
    let script = "import os, time\n\
                  n = 0\n\
                  for i in range(50):\n\
                  \x20   try:\n\
                  \x20       pid = os.fork()\n\
                  \x20   except OSError:\n\
                  \x20       break\n\
                  \x20   if pid == 0:\n\
                  \x20       time.sleep(5)\n\
                  \x20       os._exit(0)\n\
                  \x20   n += 1\n\
                  print('FORKED', n)\n";
    let mut req = request(&[python3(), "-c", script]);
    req.limits.max_processes = 10;
    let run = RunDir::with_request(&req);
    let result = run.run_ok();
    assert_eq!(result.exit_code, Some(0), "{}", run.stderr());
    let forked: u32 = field(&run.stdout(), "FORKED ").parse().unwrap();
    assert!(
        forked < 10,
        "{forked} forks succeeded with max_processes=10"
    );
}

/// A memory bomb meets the run's control group: the out-of-memory killer ends it and the run's
/// outcome says so (not a generic signal), with the limit in the detail.
#[test]
fn a_memory_bomb_is_oom_killed_and_recorded_as_such() {
    let script = "small = bytearray(16 * 1024 * 1024)\n\
                  print('SMALL_OK', flush=True)\n\
                  big = bytearray(512 * 1024 * 1024)\n\
                  print('BIG_OK')\n";
    let mut req = request(&[python3(), "-c", script]);
    req.limits.memory_bytes = 256 << 20;
    let run = RunDir::with_request(&req);
    let result = run.run_ok();
    let out = run.stdout();
    assert!(out.contains("SMALL_OK"), "{out} / {}", run.stderr());
    assert!(!out.contains("BIG_OK"), "{out}");
    assert_eq!(result.outcome, Outcome::OutOfMemory, "{result:?}");
    assert!(
        result
            .detail
            .as_deref()
            .unwrap()
            .contains("268435456 bytes"),
        "{result:?}"
    );
    let cgroup = result.sandbox.unwrap().cgroup;
    assert!(
        cgroup.starts_with("v1:") || cgroup.starts_with("v2:"),
        "{cgroup}"
    );
    // The group is gone with the run.
    let path = cgroup.split_once(':').unwrap().1;
    assert!(!std::path::Path::new(path).exists(), "{path} left behind");
}

#[test]
fn a_missing_read_only_path_is_sandbox_failed_never_unsandboxed() {
    // The profile needs a host path this host lacks: the sandbox cannot be built as declared,
    // and the agent must not run some other way.
    let mut req = request(&["sh", "-c", "echo ran > side_effect"]);
    req.sandbox.read_only = vec!["/opt/cogward-does-not-exist".into()];
    let run = RunDir::with_request(&req);
    let result = run.assert_refused(Some(run.run()));
    let detail = result.detail.unwrap();
    assert!(detail.contains("/opt/cogward-does-not-exist"), "{detail}");
    assert!(!run.work().join("side_effect").exists());
}

fn field<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {out:?}"))
        .trim()
}

/// The gateway port on the sandbox's loopback reaches the configured upstream (and, through it,
/// only that): the agent's bytes arrive there and the upstream's answer comes back, while the
/// upstream's own address stays unreachable from inside.
#[test]
fn gateway_port_is_the_one_way_out() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = upstream.accept().unwrap();
        let mut got = [0u8; 5];
        conn.read_exact(&mut got).unwrap();
        conn.write_all(b"pong:").unwrap();
        conn.write_all(&got).unwrap();
        got
    });
    let script = format!(
        "import socket\n\
         s = socket.create_connection(('127.0.0.1', 7480), timeout=5)\n\
         s.sendall(b'hello')\n\
         data = b''\n\
         while len(data) < 10:\n\
         \x20   chunk = s.recv(64)\n\
         \x20   if not chunk: break\n\
         \x20   data += chunk\n\
         print('GOT', data.decode())\n\
         try:\n\
         \x20   socket.create_connection(('127.0.0.1', {port}), timeout=2)\n\
         \x20   print('UPSTREAM_DIRECT_CONNECTED')\n\
         except OSError:\n\
         \x20   print('UPSTREAM_DIRECT_FAILED')\n\
         print(open('.mcp.json').read())\n"
    );
    let mut req = request(&[python3(), "-c", &script]);
    req.gateway = Some(cogward_protocol::runner::GatewayEgress::new(
        format!("127.0.0.1:{port}"),
        7480,
    ));
    req.files
        .insert(".mcp.json".into(), r#"{"mcpServers":{}}"#.into());
    let run = RunDir::with_request(&req);
    let result = run.run_ok();
    assert_eq!(result.exit_code, Some(0), "{}", run.stderr());
    assert_eq!(&server.join().unwrap(), b"hello");
    let out = run.stdout();
    assert!(out.contains("GOT pong:hello"), "{out}");
    assert!(out.contains("UPSTREAM_DIRECT_FAILED"), "{out}");
    assert!(out.contains(r#"{"mcpServers":{}}"#), "{out}");
}
