//! The parent side of the sandbox: create it, map its ids, and wait until the agent's program
//! runs (or learn which step failed).

use super::init::{self, ChildFds, ExecArgs};
use super::namespaces::{self, IdMapError};
use super::{ChildFailure, SandboxPlan, Step};
use nix::errno::Errno;
use nix::fcntl::{OFlag, fcntl, open};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, socketpair,
};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::{Pid, pipe2, read, write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The init's stack (it runs little code, but the agent process forks from it too).
const CHILD_STACK_BYTES: usize = 1 << 20;
/// How long the namespaces, mounts and `execve` may take before the sandbox counts as failed.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running sandbox: its init's host pid and the runner's ends of its pipes.
#[derive(Debug)]
pub struct Sandbox {
    /// Host pid of the sandbox's init (PID 1 inside). SIGTERM to it reaches every process in
    /// the sandbox; SIGKILL to it kills them all.
    pub init_pid: Pid,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The init writes the agent's raw wait status here just before it exits.
    pub status: OwnedFd,
    /// The listening sockets on the sandbox's loopback (see `SandboxPlan::egress_ports`, in
    /// that order), for the
    /// runner to accept the agent's gateway connections on.
    pub egress: Vec<OwnedFd>,
    /// Our end of the sync pipe, open while we supervise: the init checks it did not hang up
    /// (that we did not die) after re-arming its parent-death signal.
    _lifeline: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{context}: {source}")]
    Os {
        context: &'static str,
        #[source]
        source: Errno,
    },
    #[error("mapping the sandbox user: {0}")]
    IdMap(#[from] IdMapError),
    #[error("sandbox setup failed while {0}")]
    Setup(ChildFailure),
    #[error("sandbox setup failed while {0} ({1})")]
    FsView(ChildFailure, String),
    /// The sandbox was fine but the agent's program could not be executed.
    #[error("the agent's program could not be executed: {}", std::io::Error::from_raw_os_error(.0.errno))]
    Exec(ChildFailure),
    #[error("sandbox setup did not finish within {0:?}")]
    Timeout(Duration),
    #[error("placing the sandbox in its control group: {0}")]
    Cgroup(#[from] crate::cgroup::CgroupError),
}

impl LaunchError {
    /// Whether the sandbox itself failed (as opposed to the agent's program not existing).
    pub fn is_sandbox_failure(&self) -> bool {
        !matches!(self, LaunchError::Exec(_))
    }

    /// The exit code the agent process had, if it got as far as trying to `execve`.
    pub fn agent_exit_code(&self) -> Option<i32> {
        matches!(self, LaunchError::Exec(_)).then_some(init::EXEC_FAILED)
    }
}

fn os(context: &'static str) -> impl FnOnce(Errno) -> LaunchError {
    move |source| LaunchError::Os { context, source }
}

/// Kills and reaps the init unless disarmed: no error path leaves a half-built sandbox behind.
struct KillOnDrop(Option<Pid>);

impl KillOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

/// Start the sandbox described by `plan` and return once the agent's program is running.
///
/// The caller must be single-threaded and have SIGCHLD (and SIGTERM) blocked, so the init's
/// exit is seen through its signalfd.
pub fn launch(plan: &SandboxPlan, cgroup: &crate::cgroup::Cgroup) -> Result<Sandbox, LaunchError> {
    let cloexec = OFlag::O_CLOEXEC;
    let (sync_read, sync_write) = pipe2(cloexec).map_err(os("creating the sync pipe"))?;
    let (setup_read, setup_write) = pipe2(cloexec).map_err(os("creating the setup pipe"))?;
    let (status_read, status_write) = pipe2(cloexec).map_err(os("creating the status pipe"))?;
    let (stdout_read, stdout_write) = pipe2(cloexec).map_err(os("creating the stdout pipe"))?;
    let (stderr_read, stderr_write) = pipe2(cloexec).map_err(os("creating the stderr pipe"))?;
    let devnull = open("/dev/null", OFlag::O_RDWR | cloexec, Mode::empty())
        .map_err(os("opening /dev/null"))?;
    let egress = match plan.egress_ports.first() {
        Some(_) => Some(
            socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .map_err(os("creating the egress channel"))?,
        ),
        None => None,
    };

    let args = ExecArgs {
        plan,
        argv: null_terminated(&plan.argv),
        envp: null_terminated(&plan.envp),
    };
    let fds = ChildFds {
        sync_read: sync_read.as_raw_fd(),
        setup_write: setup_write.as_raw_fd(),
        status_write: status_write.as_raw_fd(),
        stdout_write: stdout_write.as_raw_fd(),
        stderr_write: stderr_write.as_raw_fd(),
        devnull: devnull.as_raw_fd(),
        egress: egress.as_ref().map_or(-1, |(_, child)| child.as_raw_fd()),
    };
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    let callback = Box::new(|| -> isize { init::sandbox_init(&args, fds) });
    // SAFETY: without CLONE_VM the child gets a copy of our memory, like fork; it runs
    // `sandbox_init` on its copy of `stack` and never returns into our frames. We are
    // single-threaded, so no lock is held by a thread that does not exist in the child.
    let init_pid = unsafe {
        nix::sched::clone(
            callback,
            &mut stack,
            namespaces::CLONE_FLAGS,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(os("creating the sandbox namespaces (clone)"))?;
    let guard = KillOnDrop(Some(init_pid));
    drop((
        sync_read,
        setup_write,
        status_write,
        stdout_write,
        stderr_write,
    ));
    drop(devnull);
    let egress = egress.map(|(ours, _child_end)| ours);

    // Before the init may go on: everything it starts is in the run's group.
    cgroup.add(init_pid.as_raw())?;
    namespaces::write_id_maps(init_pid, &plan.uid_map, &plan.gid_map)?;
    write(&sync_write, &[1]).map_err(os("releasing the sandbox init"))?;
    wait_for_exec(&setup_read, SETUP_TIMEOUT).map_err(|e| match e {
        LaunchError::Setup(f) if f.step == Step::FsOp => {
            let what = usize::try_from(f.detail)
                .ok()
                .and_then(|i| plan.fs_view.get(i))
                .map_or_else(|| "an unknown entry".to_string(), |op| op.describe());
            LaunchError::FsView(f, what)
        }
        other => other,
    })?;
    // The init sent the listener before it forked the agent, so it is waiting for us.
    let egress = match egress {
        Some(channel) => plan
            .egress_ports
            .iter()
            .map(|_| receive_fd(&channel))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    guard.disarm();

    for fd in [&stdout_read, &stderr_read, &status_read] {
        set_nonblocking(fd).map_err(os("making the sandbox pipes non-blocking"))?;
    }
    Ok(Sandbox {
        init_pid,
        stdout: stdout_read,
        stderr: stderr_read,
        status: status_read,
        egress,
        _lifeline: sync_write,
    })
}

/// The one descriptor the init sent over `channel`.
fn receive_fd(channel: &OwnedFd) -> Result<OwnedFd, LaunchError> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        channel.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(os("receiving the gateway listener from the sandbox"))?;
    for cmsg in msg.cmsgs().map_err(os("reading the egress channel"))? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed `fd` in our table for us; we own it now.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(LaunchError::Os {
        context: "the sandbox did not send its gateway listener",
        source: Errno::EPROTO,
    })
}

fn null_terminated(strings: &[std::ffi::CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), Errno> {
    let flags = OFlag::from_bits_retain(fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?);
    fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// EOF on the setup pipe means every writer is gone: the init closed its end after forking,
/// and the agent's end closed at a successful `execve`. A report means a step failed.
fn wait_for_exec(setup: &OwnedFd, timeout: Duration) -> Result<(), LaunchError> {
    let give_up = Instant::now() + timeout;
    let mut report = [0u8; ChildFailure::WIRE_SIZE];
    let mut got = 0;
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LaunchError::Timeout(timeout));
        }
        let mut fds = [PollFd::new(setup.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(os("waiting for the sandbox setup")(e)),
        }
        let n = match read(setup, &mut report[got..]) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(os("reading the sandbox setup report")(e)),
        };
        if n == 0 {
            return match got {
                0 => Ok(()),
                _ => Err(LaunchError::Os {
                    context: "the sandbox sent a truncated setup report",
                    source: Errno::EPROTO,
                }),
            };
        }
        got += n;
        if got == report.len() {
            return Err(match ChildFailure::decode(&report) {
                Some(f) if f.step == Step::Exec => LaunchError::Exec(f),
                Some(f) => LaunchError::Setup(f),
                None => LaunchError::Os {
                    context: "the sandbox sent an unknown setup report",
                    source: Errno::EPROTO,
                },
            });
        }
    }
}
