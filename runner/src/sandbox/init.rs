//! The child side of the sandbox: runs after `clone`, inside the new namespaces.
//!
//! The process created by `clone` is PID 1 of the new PID namespace: the sandbox's *init*. It
//! sets up the namespaces (it holds every capability, but only in its own user namespace),
//! drops to the sandbox user, forks the agent, forwards SIGTERM to every process in the
//! sandbox, reaps orphans, and when the agent exits reports its wait status and exits — which
//! makes the kernel kill whatever the agent left behind.
//!
//! The runner is single-threaded when it clones, so no lock can be held by a vanished thread;
//! still, everything here is allocation-free, plain system calls on data prepared beforehand,
//! so the code stays correct should the runner ever grow threads.

use super::{ChildFailure, SandboxPlan, Step, fs_view, landlock, namespaces, rlimits, seccomp};
use nix::errno::Errno;
use std::os::fd::RawFd;

/// The init exits with this when its setup fails (the reason went over the setup pipe).
const INIT_FAILED: i32 = 125;
/// The agent process exits with this when `execve` fails, as shells do.
pub const EXEC_FAILED: i32 = 127;

/// The descriptors the child uses. Every other inherited descriptor is closed.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChildFds {
    /// The runner writes one byte here once the id maps are in place (EOF before it: give
    /// up), then keeps its end open for as long as it supervises us: a hang-up means it died.
    pub sync_read: RawFd,
    /// A [`ChildFailure`] for the first failed step; close-on-exec, so EOF means the agent's
    /// program is running.
    pub setup_write: RawFd,
    /// The agent's raw wait status, written by the init just before it exits.
    pub status_write: RawFd,
    pub stdout_write: RawFd,
    pub stderr_write: RawFd,
    pub devnull: RawFd,
    /// A unix socket to the runner: the gateway listener goes over it (`SCM_RIGHTS`). -1 when
    /// the run has no gateway.
    pub egress: RawFd,
}

/// The plan plus the NULL-terminated pointer arrays `execve` takes, built before `clone`.
pub(super) struct ExecArgs<'a> {
    pub plan: &'a SandboxPlan,
    pub argv: Vec<*const libc::c_char>,
    pub envp: Vec<*const libc::c_char>,
}

fn report_and_exit(fd: RawFd, step: Step, errno: Errno, code: i32) -> ! {
    report_detail_and_exit(fd, step, errno, 0, code)
}

fn report_detail_and_exit(fd: RawFd, step: Step, errno: Errno, detail: u32, code: i32) -> ! {
    let bytes = ChildFailure {
        step,
        errno: errno as i32,
        detail,
    }
    .encode();
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `bytes` outlives the call.
    unsafe {
        libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(code)
    }
}

fn rc(ret: libc::c_int) -> Result<(), Errno> {
    Errno::result(ret).map(drop)
}

/// Entry point of the sandbox's init (PID 1 of the new PID namespace). Never returns.
pub(super) fn sandbox_init(args: &ExecArgs<'_>, fds: ChildFds) -> ! {
    let plan = args.plan;
    let check = |step: Step, result: Result<(), Errno>| {
        if let Err(errno) = result {
            report_and_exit(fds.setup_write, step, errno, INIT_FAILED);
        }
    };

    // If the runner dies, so does the sandbox: nothing may run unsupervised. (A runner that died
    // before this point is caught by the sync read below returning EOF.)
    check(Step::ParentDeathSignal, kill_me_when_the_runner_dies());
    let mut keep = [
        fds.sync_read,
        fds.setup_write,
        fds.status_write,
        fds.stdout_write,
        fds.stderr_write,
        fds.devnull,
        fds.egress,
    ];
    check(Step::CloseFds, close_all_except(&mut keep));

    // Wait until the runner has written our uid/gid maps: before that we are `nobody` here.
    let mut byte = [0u8; 1];
    loop {
        // SAFETY: reading one byte into a stack buffer.
        let n = unsafe { libc::read(fds.sync_read, byte.as_mut_ptr().cast(), 1) };
        if n == 1 {
            break;
        }
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        // EOF or error: the runner gave up on us (it reports why); vanish quietly.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(INIT_FAILED) };
    }

    // SAFETY: plain system call.
    check(Step::SetSession, rc(unsafe { libc::setsid() }));
    check(Step::MountsPrivate, namespaces::make_mounts_private());
    // The work directory, opened here so its mount is this namespace's, and while we still have
    // the runner's filesystem ids (its parents are root-only). The final component is not
    // followed; the parents are root's alone.
    // SAFETY: valid C string.
    let work_dir = unsafe {
        libc::open(
            plan.work_source.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if work_dir < 0 {
        report_and_exit(
            fds.setup_write,
            Step::OpenWorkDir,
            Errno::last(),
            INIT_FAILED,
        );
    }
    // What the view creates must belong to an id this namespace maps: the sandbox user's.
    // (The root it builds is read-only once entered.)
    check(Step::FsIds, set_fs_ids(plan.sandbox_uid, plan.sandbox_gid));
    if let Err((step, errno)) = fs_view::apply(&plan.fs_view, work_dir) {
        let (step, detail) = match step {
            fs_view::FsStep::Staging => (Step::FsStaging, 0),
            fs_view::FsStep::Op(i) => (Step::FsOp, u32::try_from(i).unwrap_or(u32::MAX)),
            fs_view::FsStep::DetachHost => (Step::FsDetachHost, 0),
            fs_view::FsStep::EnterRoot => (Step::FsEnterRoot, 0),
            fs_view::FsStep::ReadOnlyRoot => (Step::FsReadOnlyRoot, 0),
        };
        report_detail_and_exit(fds.setup_write, step, errno, detail, INIT_FAILED);
    }
    // SAFETY: closing our own descriptor; the work directory is mounted now.
    unsafe { libc::close(work_dir) };
    if plan.loopback_up {
        check(Step::Loopback, namespaces::loopback_up());
    }
    if !plan.egress_ports.is_empty() {
        for &port in &plan.egress_ports {
            check(Step::Egress, namespaces::egress_listener(port, fds.egress));
        }
        // SAFETY: closing our own descriptor; the listeners now live on in the runner.
        unsafe { libc::close(fds.egress) };
    }
    check(Step::Hostname, namespaces::set_hostname(&plan.hostname));
    // The gid first: after the uid changes we could no longer choose it.
    let (uid, gid) = (plan.sandbox_uid, plan.sandbox_gid);
    // SAFETY: plain system calls.
    check(Step::SetGid, rc(unsafe { libc::setresgid(gid, gid, gid) }));
    // SAFETY: plain system call.
    check(Step::SetUid, rc(unsafe { libc::setresuid(uid, uid, uid) }));
    // Changing credentials cleared the parent-death signal: set it again, then make sure the
    // runner did not die in between (its end of the sync pipe would have hung up).
    check(Step::ParentDeathSignal, kill_me_when_the_runner_dies());
    let mut lifeline = libc::pollfd {
        fd: fds.sync_read,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one initialised pollfd, without waiting.
    let polled = unsafe { libc::poll(&mut lifeline, 1, 0) };
    if polled != 0 && lifeline.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(INIT_FAILED) };
    }
    // SAFETY: plain system call.
    unsafe { libc::close(fds.sync_read) };

    // A PID namespace's init only receives the signals it has a handler for, even from the
    // runner; so SIGTERM gets a (no-op) handler, and stays blocked (inherited from the runner)
    // to be taken synchronously with sigwait together with SIGCHLD.
    let mut waited = empty_sigset();
    // SAFETY: initialised sigset_t and sigaction structures; a handler that does nothing.
    check(Step::InitSignals, unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = noop_handler as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaddset(&mut waited, libc::SIGTERM);
        libc::sigaddset(&mut waited, libc::SIGCHLD);
        rc(libc::sigaction(
            libc::SIGTERM,
            &action,
            std::ptr::null_mut(),
        ))
        .and_then(|()| {
            rc(libc::sigprocmask(
                libc::SIG_BLOCK,
                &waited,
                std::ptr::null_mut(),
            ))
        })
    });

    // SAFETY: fork in a process with a single thread.
    let agent = unsafe { libc::fork() };
    if agent < 0 {
        report_and_exit(fds.setup_write, Step::Fork, Errno::last(), INIT_FAILED);
    }
    if agent == 0 {
        exec_agent(args, fds);
    }
    // Only the agent keeps these: the runner sees EOF on its output once the agent (and all it
    // started) are gone, and EOF on the setup pipe once the agent's program runs.
    for fd in [
        fds.setup_write,
        fds.stdout_write,
        fds.stderr_write,
        fds.devnull,
    ] {
        // SAFETY: closing our own descriptors.
        unsafe { libc::close(fd) };
    }

    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `waited` is an initialised sigset_t.
        if unsafe { libc::sigwait(&waited, &mut sig) } != 0 {
            continue;
        }
        if sig == libc::SIGTERM {
            // Every process in the namespace except this init.
            // SAFETY: plain system call.
            unsafe { libc::kill(-1, libc::SIGTERM) };
            continue;
        }
        // SIGCHLD: reap everything that exited (orphans are re-parented to us).
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: plain system call.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == agent {
                let bytes = status.to_ne_bytes();
                // SAFETY: write(2) then _exit(2); our exit kills the rest of the namespace.
                unsafe {
                    libc::write(fds.status_write, bytes.as_ptr().cast(), bytes.len());
                    libc::_exit(0)
                }
            }
        }
    }
}

/// `setfsuid`/`setfsgid` report nothing but the previous value: set, then read back.
fn set_fs_ids(uid: u32, gid: u32) -> Result<(), Errno> {
    // SAFETY: plain system calls; -1 (u32::MAX) only queries.
    let (u, g) = unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
        (libc::setfsuid(u32::MAX), libc::setfsgid(u32::MAX))
    };
    if u as u32 == uid && g as u32 == gid {
        Ok(())
    } else {
        Err(Errno::EPERM)
    }
}

fn kill_me_when_the_runner_dies() -> Result<(), Errno> {
    // SAFETY: prctl with integer arguments.
    rc(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })
}

extern "C" fn noop_handler(_: libc::c_int) {}

fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

/// Close every descriptor from 3 up except `keep` (sorted in place: no allocation).
fn close_all_except(keep: &mut [RawFd]) -> Result<(), Errno> {
    keep.sort_unstable();
    let mut next: libc::c_uint = 3;
    for &fd in keep.iter() {
        let Ok(fd) = libc::c_uint::try_from(fd) else {
            continue;
        };
        if fd < next {
            continue;
        }
        if fd > next {
            close_range(next, fd - 1, 0)?;
        }
        next = fd + 1;
    }
    close_range(next, libc::c_uint::MAX, 0)
}

fn close_range(first: libc::c_uint, last: libc::c_uint, flags: libc::c_int) -> Result<(), Errno> {
    // SAFETY: close_range(2) on our own descriptor table.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
    Errno::result(ret).map(drop)
}

/// The agent process: reset what the runner and init changed, connect stdio, apply limits,
/// then `execve`. Never returns.
fn exec_agent(args: &ExecArgs<'_>, fds: ChildFds) -> ! {
    let plan = args.plan;
    let check = |step: Step, result: Result<(), Errno>| {
        if let Err(errno) = result {
            report_and_exit(fds.setup_write, step, errno, EXEC_FAILED);
        }
    };

    // Ignored signals stay ignored across execve (the runner ignores SIGPIPE and SIGHUP), and
    // the mask is inherited too: start the agent from the defaults.
    // SAFETY: sigaction with SIG_DFL for each catchable signal; errors (for the signals libc
    // reserves) are irrelevant.
    check(Step::AgentSignals, unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut action.sa_mask);
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
        let none = empty_sigset();
        rc(libc::sigprocmask(
            libc::SIG_SETMASK,
            &none,
            std::ptr::null_mut(),
        ))
    });
    // SAFETY: dup2 onto the standard descriptors; the sources are open (ChildFds).
    check(Step::Stdio, unsafe {
        rc(libc::dup2(fds.devnull, 0))
            .and_then(|()| rc(libc::dup2(fds.stdout_write, 1)))
            .and_then(|()| rc(libc::dup2(fds.stderr_write, 2)))
    });
    // Everything else goes at execve; until then the setup pipe stays open for reporting.
    check(
        Step::CloseOnExec,
        close_range(
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        ),
    );
    // As the sandbox user: an unreachable work directory is a sandbox failure, not a surprise
    // for the agent later.
    // SAFETY: `work_dir` is a valid C string.
    check(
        Step::Chdir,
        rc(unsafe { libc::chdir(plan.work_dir.as_ptr()) }),
    );
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o022) };
    if let Err((kind, errno)) = rlimits::apply(&plan.rlimits) {
        let step = match kind {
            rlimits::LimitKind::Cpu => Step::RlimitCpu,
            rlimits::LimitKind::AddressSpace => Step::RlimitAs,
            rlimits::LimitKind::Processes => Step::RlimitNproc,
            rlimits::LimitKind::CoreDump => Step::RlimitCore,
            rlimits::LimitKind::FileSize => Step::RlimitFsize,
            rlimits::LimitKind::OpenFiles => Step::RlimitNofile,
        };
        report_and_exit(fds.setup_write, step, errno, EXEC_FAILED);
    }
    // No setuid/file-capability gains from anything the agent executes.
    // SAFETY: prctl with integer arguments.
    check(
        Step::NoNewPrivs,
        rc(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }),
    );
    // The second filesystem layer, then the system-call filter: last, so nothing before
    // `execve` needs a call it refuses.
    check(Step::Landlock, landlock::apply(&plan.landlock));
    check(Step::Seccomp, seccomp::apply(&plan.seccomp));

    // Like execvp: try each candidate; remember EACCES over ENOENT; stop at any other error.
    let mut errno = Errno::ENOENT;
    for candidate in &plan.exec_candidates {
        // SAFETY: NULL-terminated arrays of pointers into CStrings that outlive this call.
        unsafe { libc::execve(candidate.as_ptr(), args.argv.as_ptr(), args.envp.as_ptr()) };
        match Errno::last() {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => errno = Errno::EACCES,
            other => {
                errno = other;
                break;
            }
        }
    }
    report_and_exit(fds.setup_write, Step::Exec, errno, EXEC_FAILED)
}
