//! Escape attempts from inside a run, as a hostile agent would make them, against the real
//! `cogward-runner`: each asserts the failure it names. (`isolation.rs` holds the namespace and
//! limit basics.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixture;

use cogward_protocol::runner::{Outcome, RunnerResult};
use fixture::{RunDir, python3, request};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

fn lines_with<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.starts_with(prefix)).collect()
}

fn host_id(result: &RunnerResult) -> u32 {
    result.sandbox.as_ref().expect("sandbox evidence").host_id
}

/// The whole root the agent sees: exactly the system paths of this host that exist, its work
/// directory, and its own scratch and pseudo-filesystems. No engine state, no other run, no
/// `/root`, `/home`, `/run`, `/var`, `/sys`, no `shadow`, and nothing writable outside `work/`,
/// `/tmp` and `/dev/shm`.
#[test]
fn the_view_holds_nothing_of_the_host_but_read_only_system_paths() {
    // A stand-in for the engine's state: world-readable, as the breach found it.
    let state = tempfile::tempdir().unwrap();
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = state.path().join("cogward.db");
    std::fs::write(&db, "gateway_key SECRET-KEY").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = RunDir::new(&["true"]);
    let probes = [
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/sudoers",
        "/root",
        "/run",
        "/var",
        "/sys",
        "/srv",
        "/mnt",
        "/opt",
        "/boot",
        "/proc/1/root/etc",
        db.to_str().unwrap(),
        state.path().to_str().unwrap(),
        run.dir.to_str().unwrap(),
        "/tmp/.X11-unix",
    ];
    let writes = [
        "/x",
        "/usr/x",
        "/etc/x",
        "/etc/passwd",
        "/dev/x",
        "/proc/x",
        "/tmp/ok",
        "/dev/shm/ok",
        "/home/agent/ok",
        "/work/ok",
    ];
    let mut script = String::from(
        "echo ROOT $(ls -a / | tr '\\n' ' '); echo HOMES $(ls -a /home | tr '\\n' ' '); ",
    );
    for p in probes {
        script.push_str(&format!(
            "if [ -e '{p}' ] || [ -L '{p}' ]; then echo 'SEES {p}'; fi; "
        ));
    }
    for w in writes {
        script.push_str(&format!(
            "if (echo x > '{w}') 2>/dev/null; then echo 'WROTE {w}'; fi; "
        ));
    }
    script.push_str(
        "grep -rl SECRET-KEY /etc /tmp /work /dev/shm /home 2>/dev/null | sed 's/^/FOUND /'; \
         cat /etc/passwd | sed 's/^/PASSWD /'; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
    );
    std::fs::write(
        run.path("request.json"),
        serde_json::to_vec(&request(&["sh", "-c", &script])).unwrap(),
    )
    .unwrap();
    let result = run.run_ok();
    assert_eq!(result.exit_code, Some(0), "{}", run.stderr());
    let out = run.stdout();

    let mut expected: Vec<&str> = vec![".", "..", "dev", "etc", "home", "proc", "tmp", "work"];
    for p in ["usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32"] {
        if Path::new("/").join(p).symlink_metadata().is_ok() {
            expected.push(p);
        }
    }
    expected.sort();
    let root_line = lines_with(&out, "ROOT ")[0];
    let mut root: Vec<&str> = root_line["ROOT ".len()..].split_whitespace().collect();
    root.sort();
    assert_eq!(root, expected, "{out}");
    assert!(lines_with(&out, "SEES ").is_empty(), "{out}");
    assert_eq!(
        lines_with(&out, "WROTE "),
        [
            "WROTE /tmp/ok",
            "WROTE /dev/shm/ok",
            "WROTE /home/agent/ok",
            "WROTE /work/ok"
        ],
        "{out}"
    );
    // Of /home, only the agent's own (a tmpfs of the sandbox's, not the host's /home).
    assert_eq!(lines_with(&out, "HOMES "), ["HOMES . .. agent"], "{out}");
    assert!(lines_with(&out, "FOUND ").is_empty(), "{out}");
    let passwd = lines_with(&out, "PASSWD ");
    assert_eq!(passwd.len(), 3, "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    // Only the work directory reached the host.
    assert!(run.work().join("ok").exists());
    assert_eq!(
        std::fs::read_to_string(&db).unwrap(),
        "gateway_key SECRET-KEY"
    );
}

/// Two live runs never share a host id, and neither can reach the other's work directory by
/// its host path (it does not exist in the view).
#[test]
fn concurrent_runs_get_their_own_ids_and_cannot_reach_each_other() {
    let victim = RunDir::new(&["sh", "-c", "echo mine > marker; sleep 3"]);
    let mut victim_runner = victim.command().spawn().unwrap();
    victim.wait_for_started(Duration::from_secs(10));
    let victim_work = victim.work();
    let script = format!(
        "for p in '{w}' '{w}/marker' '{d}'; do \
           if [ -e \"$p\" ]; then echo \"SEES $p\"; fi; done; \
         if (echo evil > '{w}/build.sh') 2>/dev/null; then echo PLANTED; fi",
        w = victim_work.display(),
        d = victim.dir.display(),
    );
    let attacker = RunDir::new(&["sh", "-c", &script]);
    let attacker_result = attacker.run_ok();
    assert!(victim_runner.wait().unwrap().success());
    let victim_result = victim.result();
    let out = attacker.stdout();
    assert!(lines_with(&out, "SEES ").is_empty(), "{out}");
    assert!(!out.contains("PLANTED"), "{out}");
    assert!(!victim_work.join("build.sh").exists());
    assert_ne!(host_id(&attacker_result), host_id(&victim_result));
    assert_eq!(victim_result.outcome, Outcome::Exited);
    let owner = std::fs::metadata(victim_work.join("marker")).unwrap().uid();
    assert_eq!(owner, host_id(&victim_result));
}

/// The sandbox's one way out is its gateway port: a host pathname socket (even a
/// world-writable one) and a host abstract socket are unreachable.
#[test]
fn host_unix_sockets_are_unreachable() {
    use std::os::linux::net::SocketAddrExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path().join("host.sock");
    let pathname = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    pathname.set_nonblocking(true).unwrap();
    let name = format!("cogward-escape-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let abstract_ = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    abstract_.set_nonblocking(true).unwrap();
    let script = format!(
        "import socket\n\
         for target in ['{}', '\\0{name}']:\n\
         \x20   s = socket.socket(socket.AF_UNIX)\n\
         \x20   try:\n\
         \x20       s.connect(target)\n\
         \x20       print('CONNECTED', repr(target))\n\
         \x20   except OSError as e:\n\
         \x20       print('REFUSED', e.errno)\n",
        path.display()
    );
    let run = RunDir::new(&[python3(), "-c", &script]);
    run.run_ok();
    let out = run.stdout();
    assert_eq!(
        lines_with(&out, "REFUSED ").len(),
        2,
        "{out}\n{}",
        run.stderr()
    );
    assert!(pathname.accept().is_err());
    assert!(abstract_.accept().is_err());
}

/// seccomp, tried for real: socket families other than unix/IP, new namespaces (nested
/// `unshare -U`), mounts, io_uring, ptrace of a sibling, reading its memory, eBPF, the keyring,
/// perf events and userfaultfd are refused.
#[test]
fn forbidden_families_and_system_calls_are_refused() {
    let script = format!(
        "import ctypes, os, socket, subprocess, time\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         def call(name, nr, *args):\n\
         \x20   r = libc.syscall(nr, *args)\n\
         \x20   print(name, 'ALLOWED' if r >= 0 else 'ERRNO %d' % ctypes.get_errno(), flush=True)\n\
         for fam in [40, 16, 17, 38, 31]:\n\
         \x20   try:\n\
         \x20       socket.socket(fam, socket.SOCK_RAW if fam in (16, 17) else socket.SOCK_STREAM)\n\
         \x20       print('family', fam, 'ALLOWED')\n\
         \x20   except OSError as e:\n\
         \x20       print('family', fam, 'ERRNO', e.errno)\n\
         sibling = subprocess.Popen(['sleep', '5'])\n\
         time.sleep(0.2)\n\
         call('unshare', {unshare}, 0x10000000)\n\
         call('mount', {mount}, b'none', b'/tmp', b'tmpfs', 0, None)\n\
         call('io_uring_setup', {io_uring}, 8, ctypes.create_string_buffer(120))\n\
         call('ptrace', {ptrace}, 16, sibling.pid, 0, 0)\n\
         call('process_vm_readv', {vm_readv}, sibling.pid, 0, 0, 0, 0, 0)\n\
         call('bpf', {bpf}, 0, 0, 0)\n\
         call('keyctl', {keyctl}, 0, 0, 0)\n\
         call('perf_event_open', {perf}, 0, 0, -1, -1, 0)\n\
         call('userfaultfd', {uffd}, 0)\n\
         call('setns', {setns}, 0, 0)\n\
         call('clone_newuser', {clone}, 0x10000000 | 17, 0, 0, 0, 0)\n\
         sibling.kill()\n\
         r = subprocess.run(['unshare', '-Urm', 'true'], capture_output=True)\n\
         print('nested_unshare', 'ALLOWED' if r.returncode == 0 else 'REFUSED')\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n\
         print('inet', 'ALLOWED')\n",
        unshare = libc::SYS_unshare,
        mount = libc::SYS_mount,
        io_uring = libc::SYS_io_uring_setup,
        ptrace = libc::SYS_ptrace,
        vm_readv = libc::SYS_process_vm_readv,
        bpf = libc::SYS_bpf,
        keyctl = libc::SYS_keyctl,
        perf = libc::SYS_perf_event_open,
        uffd = libc::SYS_userfaultfd,
        setns = libc::SYS_setns,
        clone = libc::SYS_clone,
    );
    let run = RunDir::new(&[python3(), "-c", &script]);
    let result = run.run_ok();
    assert_eq!(result.exit_code, Some(0), "{}", run.stderr());
    let out = run.stdout();
    for fam in [40, 16, 17, 38, 31] {
        assert!(
            out.contains(&format!("family {fam} ERRNO {}", libc::EAFNOSUPPORT)),
            "family {fam}: {out}"
        );
    }
    for name in [
        "unshare",
        "mount",
        "io_uring_setup",
        "ptrace",
        "process_vm_readv",
        "bpf",
        "keyctl",
        "perf_event_open",
        "userfaultfd",
        "setns",
        "clone_newuser",
    ] {
        assert!(
            out.contains(&format!("{name} ERRNO {}", libc::EPERM)),
            "{name}: {out}"
        );
    }
    assert!(out.contains("nested_unshare REFUSED"), "{out}");
    assert!(out.contains("inet ALLOWED"), "{out}");
}

/// A setuid-root binary gains nothing: `no_new_privs`, nosuid mounts, and no root in the
/// namespace to become.
#[test]
fn setuid_binaries_gain_nothing() {
    let Some(su) = ["/usr/bin/su", "/bin/su", "/usr/bin/passwd"]
        .into_iter()
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o4000 != 0)
                .unwrap_or(false)
        })
    else {
        panic!("this host has no setuid binary to try (su or passwd)");
    };
    let script = format!(
        "{su} -c 'id -u' root </dev/null; echo SU_EXIT=$?; \
         grep ' /usr ' /proc/self/mountinfo | grep -q nosuid && echo USR_NOSUID"
    );
    let run = RunDir::new(&["sh", "-c", &script]);
    run.run_ok();
    let out = run.stdout();
    assert!(!out.lines().any(|l| l.trim() == "0"), "became root: {out}");
    assert!(!out.contains("SU_EXIT=0"), "{out}");
    assert!(out.contains("USR_NOSUID"), "{out}");
}

/// Landlock, apart from the view: a process restricted by the runner's own `apply` to a few
/// directories cannot read a file outside them, even one the filesystem permits.
#[test]
fn landlock_apply_denies_what_it_does_not_grant() {
    use cogward_runner::sandbox::landlock;
    use std::os::unix::process::CommandExt;
    let abi = landlock::host_abi();
    assert!(abi >= landlock::MIN_ABI, "this host has no Landlock");
    let outside = tempfile::tempdir().unwrap();
    let file = outside.path().join("readable");
    std::fs::write(&file, "open to all").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let all = landlock::fs_rights(abi);
    let read_exec =
        landlock::ACCESS_FS_READ_FILE | landlock::ACCESS_FS_READ_DIR | landlock::ACCESS_FS_EXECUTE;
    let mut rules = Vec::new();
    for dir in ["/usr", "/lib", "/lib64", "/bin", "/etc"] {
        if Path::new(dir).is_dir() {
            rules.push((std::ffi::CString::new(dir).unwrap(), read_exec));
        }
    }
    let ruleset = landlock::Ruleset {
        abi,
        handled_fs: all,
        scoped: 0,
        rules,
        handled_net: 0,
        net_rules: Vec::new(),
    };
    let mut cmd = std::process::Command::new("/usr/bin/cat");
    cmd.arg(&file);
    // SAFETY: the closure makes only system calls (prctl, landlock) before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            landlock::apply(&ruleset).map_err(std::io::Error::from)
        });
    }
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "read outside the ruleset");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    // Without the ruleset the same read works: the denial is Landlock's.
    let plain = std::process::Command::new("/usr/bin/cat")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "open to all");
}

/// A symlink where the runner will write an agent file (left by anyone in a `work/` that
/// already exists) is never followed: the run is refused and the link's target is unchanged.
#[test]
fn a_planted_link_in_a_preexisting_work_dir_is_not_followed() {
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("root-only");
    std::fs::write(&victim, "keep").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut req = request(&["true"]);
    req.files.insert(".mcp.json".into(), "{}".into());
    req.files.insert("sub/x.txt".into(), "x".into());
    for plant in ["file", "parent", "work"] {
        let run = RunDir::with_request(&req);
        match plant {
            "file" => {
                std::fs::create_dir(run.work()).unwrap();
                std::os::unix::fs::symlink(&victim, run.work().join(".mcp.json")).unwrap();
            }
            "parent" => {
                std::fs::create_dir(run.work()).unwrap();
                std::os::unix::fs::symlink(victim_dir.path(), run.work().join("sub")).unwrap();
            }
            _ => std::os::unix::fs::symlink(victim_dir.path(), run.work()).unwrap(),
        }
        run.assert_refused(Some(run.run()));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep", "{plant}");
        let meta = std::fs::metadata(&victim).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600), "{plant}");
        assert!(!victim_dir.path().join("x.txt").exists(), "{plant}");
        let dir_meta = std::fs::metadata(victim_dir.path()).unwrap();
        assert_eq!(dir_meta.uid(), 0, "{plant}: the link's target was chowned");
    }
}

/// A hostile run races new runs' set-up, trying to replace the files the runner writes into
/// their `work/` with links to a root-only file, over and over. It cannot even see where they
/// are; every new run gets its own files, and the root-only file never changes.
#[test]
fn a_racing_run_cannot_replace_files_the_runner_writes() {
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("root-only");
    std::fs::write(&victim, "keep").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let targets = tempfile::tempdir().unwrap();
    let runs: Vec<RunDir> = (0..10)
        .map(|_| {
            let mut req = request(&["cat", ".mcp.json"]);
            req.files.insert(".mcp.json".into(), "{\"ok\":1}".into());
            RunDir::with_request_in(&req, targets.path())
        })
        .collect();
    let mut script = String::from("end=$(( $(date +%s) + 4 )); n=0; won=0; ");
    script.push_str("while [ $(date +%s) -lt $end ]; do for w in");
    for r in &runs {
        script.push_str(&format!(" '{}'", r.work().display()));
    }
    script.push_str(&format!(
        "; do n=$((n+1)); ln -sf '{v}' \"$w/.mcp.json\" 2>/dev/null && won=$((won+1)); \
         ln -f '{v}' \"$w/.mcp.json\" 2>/dev/null && won=$((won+1)); \
         mv -f \"$w/.mcp.json\" \"$w/x\" 2>/dev/null && won=$((won+1)); done; done; \
         echo TRIES=$n WON=$won",
        v = victim.display()
    ));
    let mut req = request(&["sh", "-c", &script]);
    req.limits.wall_clock_seconds = 15;
    let attacker = RunDir::with_request(&req);
    let mut attacker_runner = attacker.command().spawn().unwrap();
    attacker.wait_for_started(Duration::from_secs(10));
    let t0 = Instant::now();
    for r in &runs {
        let result = r.run_ok();
        assert_eq!(result.exit_code, Some(0), "{}", r.stderr());
        assert_eq!(r.stdout(), "{\"ok\":1}");
        let meta = std::fs::symlink_metadata(r.work().join(".mcp.json")).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.uid(), host_id(&result));
    }
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "the runs did not overlap the race"
    );
    assert!(attacker_runner.wait().unwrap().success());
    let out = attacker.stdout();
    assert!(out.contains("WON=0"), "{out}");
    let tries: u32 = out
        .trim()
        .strip_prefix("TRIES=")
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(tries > 100, "{out}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
}

/// A disk filler stops at the file-size limit, and the run ends with the signal that says so.
#[test]
fn a_disk_filler_stops_at_the_file_size_limit() {
    let mut req = request(&["sh", "-c", "dd if=/dev/zero of=big bs=1M count=64"]);
    req.limits.max_file_bytes = 8 << 20;
    let run = RunDir::with_request(&req);
    let result = run.run_ok();
    let size = std::fs::metadata(run.work().join("big")).unwrap().len();
    assert!(size <= 8 << 20, "{size} bytes written");
    assert_ne!(result.exit_code, Some(0), "{result:?}");
}

/// Connection exhaustion through the gateway port: hundreds of half-sent requests held open.
/// At most the cap reaches the gateway at once (the rest are closed as they arrive), the
/// runner's threads stay bounded, a connection that sends nothing or goes idle is closed, and
/// the port still works afterwards.
#[test]
fn the_gateway_port_bounds_connections_and_closes_silent_and_idle_ones() {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    let (live, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    {
        let (live, peak) = (live.clone(), peak.clone());
        std::thread::spawn(move || {
            for conn in upstream.incoming() {
                let Ok(mut conn) = conn else { return };
                let n = live.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                let live = live.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(got) = conn.read(&mut buf) {
                        if got == 0 {
                            break;
                        }
                        if buf[..got].starts_with(b"ping") {
                            let _ = conn.write_all(b"pong");
                        }
                    }
                    live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    }
    let script = "import socket, time\n\
        held = []\n\
        for i in range(2500):\n\
        \x20   s = socket.create_connection(('127.0.0.1', 7480), timeout=5)\n\
        \x20   s.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n')\n\
        \x20   held.append(s)\n\
        print('OPENED', len(held), flush=True)\n\
        time.sleep(1.5)\n\
        closed = 0\n\
        for s in held:\n\
        \x20   s.setblocking(False)\n\
        \x20   try:\n\
        \x20       if s.recv(1) == b'': closed += 1\n\
        \x20   except BlockingIOError: pass\n\
        \x20   except OSError: closed += 1\n\
        print('CLOSED', closed, flush=True)\n\
        for s in held: s.close()\n\
        time.sleep(0.5)\n\
        s = socket.create_connection(('127.0.0.1', 7480), timeout=10)\n\
        t = time.time(); d = s.recv(1)\n\
        print('SILENT', round(time.time() - t, 1), d, flush=True)\n\
        s = socket.create_connection(('127.0.0.1', 7480), timeout=10)\n\
        s.sendall(b'hold'); t = time.time(); d = s.recv(1)\n\
        print('IDLE', round(time.time() - t, 1), d, flush=True)\n\
        s = socket.create_connection(('127.0.0.1', 7480), timeout=5)\n\
        s.sendall(b'ping')\n\
        print('REPLY', s.recv(4))\n";
    let mut req = request(&[python3(), "-c", script]);
    let mut gateway =
        cogward_protocol::runner::GatewayEgress::new(format!("127.0.0.1:{port}"), 7480);
    gateway.max_connections = 16;
    gateway.first_byte_timeout_seconds = 1;
    gateway.idle_timeout_seconds = 3;
    req.gateway = Some(gateway);
    req.limits.wall_clock_seconds = 30;
    req.limits.max_open_files = 4096;
    let run = RunDir::with_request(&req);
    let mut runner = run.command().spawn().unwrap();
    let pid = runner.id();
    let mut most_threads = 0;
    while runner.try_wait().unwrap().is_none() {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            most_threads = most_threads.max(tasks.count());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = run.result();
    let out = run.stdout();
    assert_eq!(result.exit_code, Some(0), "{out}\n{}", run.stderr());
    assert!(out.contains("OPENED 2500"), "{out}");
    let closed: usize = lines_with(&out, "CLOSED ")[0]["CLOSED ".len()..]
        .parse()
        .unwrap();
    assert!(closed >= 2500 - 16, "{out}");
    assert!(
        peak.load(Ordering::SeqCst) <= 16,
        "the gateway saw {peak:?} at once"
    );
    assert!(
        most_threads <= 16 + 4,
        "the runner grew to {most_threads} threads"
    );
    let secs = |prefix: &str| -> f64 {
        lines_with(&out, prefix)[0][prefix.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let silent = secs("SILENT ");
    assert!(
        (0.5..=4.0).contains(&silent),
        "silent closed after {silent}s: {out}"
    );
    let idle = secs("IDLE ");
    assert!(
        (2.0..=8.0).contains(&idle),
        "idle closed after {idle}s: {out}"
    );
    assert!(out.contains("REPLY b'pong'"), "{out}");
}

/// The strict profile: TCP only to the gateway port. Listening on TCP and connecting to any
/// other port of the sandbox's own loopback are refused by Landlock (EACCES, not "connection
/// refused"); under `standard` the same agent may run and reach its own server.
#[test]
fn strict_allows_tcp_to_the_gateway_port_only() {
    use cogward_protocol::runner::{GatewayEgress, ProfileName};
    use std::io::{Read, Write};
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in upstream.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4];
            if conn.read_exact(&mut buf).is_ok() {
                let _ = conn.write_all(b"pong");
            }
        }
    });
    let script = "import socket\n\
        s = socket.create_connection(('127.0.0.1', 7480), timeout=5)\n\
        s.sendall(b'ping'); print('GATEWAY', s.recv(4))\n\
        try:\n\
        \x20   srv = socket.socket(); srv.bind(('127.0.0.1', 9000)); srv.listen(1)\n\
        \x20   print('LISTEN ok')\n\
        \x20   c = socket.create_connection(('127.0.0.1', 9000), timeout=5); print('OWN ok')\n\
        except OSError as e:\n\
        \x20   print('LISTEN errno', e.errno)\n\
        try:\n\
        \x20   socket.create_connection(('127.0.0.1', 9001), timeout=5)\n\
        except OSError as e:\n\
        \x20   print('OTHER errno', e.errno)\n";
    let mut outputs = Vec::new();
    for profile in [ProfileName::Strict, ProfileName::Standard] {
        let mut req = request(&[python3(), "-c", script]);
        req.sandbox.name = profile;
        req.gateway = Some(GatewayEgress::new(format!("127.0.0.1:{port}"), 7480));
        let run = RunDir::with_request(&req);
        let result = run.run_ok();
        assert_eq!(result.exit_code, Some(0), "{}", run.stderr());
        assert_eq!(result.sandbox.unwrap().profile, profile);
        outputs.push(run.stdout());
    }
    let (strict, standard) = (&outputs[0], &outputs[1]);
    assert!(strict.contains("GATEWAY b'pong'"), "{strict}");
    assert!(
        strict.contains(&format!("LISTEN errno {}", libc::EACCES)),
        "{strict}"
    );
    assert!(
        strict.contains(&format!("OTHER errno {}", libc::EACCES)),
        "{strict}"
    );
    assert!(standard.contains("GATEWAY b'pong'"), "{standard}");
    assert!(
        standard.contains("LISTEN ok") && standard.contains("OWN ok"),
        "{standard}"
    );
    assert!(
        standard.contains(&format!("OTHER errno {}", libc::ECONNREFUSED)),
        "{standard}"
    );
}

/// A profile this build cannot provide is refused, with the reason, and nothing runs.
#[test]
fn the_reserved_microvm_profile_is_refused_not_downgraded() {
    let mut req = request(&["sh", "-c", "echo ran > side_effect"]);
    req.sandbox.name = cogward_protocol::runner::ProfileName::Microvm;
    let run = RunDir::with_request(&req);
    let result = run.assert_refused(Some(run.run()));
    assert!(result.detail.unwrap().contains("microvm"));
    assert!(!run.work().join("side_effect").exists());
}

/// A secret reaches the agent as a file only it can read, from the runner's standard input; it
/// is in no environment, and in no file of the run directory afterwards. Values that do not
/// match the request's digests, or that are missing, refuse the run.
#[test]
fn secrets_arrive_as_private_files_and_nowhere_else() {
    use cogward_protocol::runner::SecretRef;
    use sha2::Digest;
    let value = format!("S3CR3T-{}", std::process::id());
    let digest = hex::encode(sha2::Sha256::digest(value.as_bytes()));
    let script = "stat -c 'MODE %a %u' /secrets/api_token; stat -c 'DIR %a' /secrets; \
                  sha256sum /secrets/api_token | cut -d' ' -f1 | sed 's/^/SHA /'; \
                  env | grep -c S3CR3T | sed 's/^/ENV /'; echo \"DIR_VAR $COGWARD_SECRETS_DIR\"; \
                  if (echo x > /secrets/new) 2>/dev/null; then echo WROTE; fi";
    let mut req = request(&["sh", "-c", script]);
    req.secrets = vec![SecretRef {
        name: "api_token".into(),
        sha256: digest.clone(),
    }];
    let run = RunDir::with_request(&req);
    let code = run.run_with_stdin(format!(r#"{{"api_token":"{value}"}}"#).as_bytes());
    assert_eq!(code, Some(0), "{}", run.runner_log());
    let result = run.result();
    assert_eq!(result.exit_code, Some(0), "{}", run.stderr());
    let out = run.stdout();
    assert!(out.contains("MODE 400 1000"), "{out}");
    assert!(out.contains("DIR 700"), "{out}");
    assert!(out.contains(&format!("SHA {digest}")), "{out}");
    assert!(out.contains("ENV 0"), "{out}");
    assert!(out.contains("DIR_VAR /secrets"), "{out}");
    assert!(!out.contains("WROTE"), "{out}");
    assert_eq!(result.sandbox.unwrap().secrets[0].sha256, digest);
    for entry in walk(&run.dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
            "the secret is in {}",
            entry.display()
        );
    }

    // A value that is not the one the request names, or none at all: refused, nothing runs.
    for input in [r#"{"api_token":"other"}"#, ""] {
        let run = RunDir::with_request(&req);
        run.assert_refused(run.run_with_stdin(input.as_bytes()));
    }
}

/// Every regular file under `dir`, not following symlinks.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                pending.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}
