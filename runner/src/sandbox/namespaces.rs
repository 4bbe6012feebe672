//! Namespaces: which ones the sandbox gets, the id mapping, and the steps that set them up.
//!
//! The parent (the runner, root in the initial user namespace) writes the id maps; the child
//! (the sandbox's init, holding every capability in its *new* user namespace only) makes its
//! mounts private, mounts a `/proc` for its PID namespace, brings up its own loopback and names
//! its host. Nothing here gives the sandbox a route out: its network namespace is empty.

/// The uid/gid the agent runs as inside the sandbox.
pub const SANDBOX_UID: u32 = 1000;
pub const SANDBOX_GID: u32 = 1000;
/// The sandbox's hostname (its own UTS namespace), so the host's name does not leak in.
pub const SANDBOX_HOSTNAME: &str = "cogward";

/// One line of `/proc/<pid>/uid_map` or `gid_map`: exactly one id inside maps to one id
/// outside; every other host id (root included) stays unmapped, i.e. `nobody`, inside.
pub fn id_map_line(inside: u32, outside: u32) -> String {
    format!("{inside} {outside} 1\n")
}

/// Written to `/proc/<pid>/setgroups` before `gid_map`: the sandbox can never call
/// `setgroups`, so it cannot drop a group to slip past a deny-by-group permission.
pub const SETGROUPS_POLICY: &str = "deny";

#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(target_os = "linux")]
mod linux {
    use super::SETGROUPS_POLICY;
    use nix::errno::Errno;
    use nix::sched::CloneFlags;
    use nix::unistd::Pid;
    use std::ffi::CStr;
    use std::path::PathBuf;

    /// New user, PID, mount, network, UTS and IPC namespaces: one of each per sandbox.
    pub const CLONE_FLAGS: CloneFlags = CloneFlags::CLONE_NEWUSER
        .union(CloneFlags::CLONE_NEWPID)
        .union(CloneFlags::CLONE_NEWNS)
        .union(CloneFlags::CLONE_NEWNET)
        .union(CloneFlags::CLONE_NEWUTS)
        .union(CloneFlags::CLONE_NEWIPC);

    #[derive(Debug, thiserror::Error)]
    #[error("writing {path}: {source}")]
    pub struct IdMapError {
        pub path: PathBuf,
        #[source]
        pub source: std::io::Error,
    }

    /// Parent side: map the child's user namespace. Each file takes exactly one write.
    pub fn write_id_maps(child: Pid, uid_map: &str, gid_map: &str) -> Result<(), IdMapError> {
        let proc_dir = PathBuf::from(format!("/proc/{child}"));
        for (file, content) in [
            ("uid_map", uid_map),
            ("setgroups", SETGROUPS_POLICY),
            ("gid_map", gid_map),
        ] {
            let path = proc_dir.join(file);
            std::fs::write(&path, content).map_err(|source| IdMapError { path, source })?;
        }
        Ok(())
    }

    // Child side below: called between `clone` and `execve`, so each is a thin, allocation-free
    // system call wrapper.

    /// Stop mount events propagating back to the host (and from it).
    pub fn make_mounts_private() -> Result<(), Errno> {
        // SAFETY: plain system call with static, NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        Errno::result(rc).map(drop)
    }

    /// Bring up the namespace's own `lo` so agents can talk to themselves (test servers on
    /// localhost); it reaches nothing of the host's.
    pub fn loopback_up() -> Result<(), Errno> {
        // SAFETY: a datagram socket used only for interface ioctls, closed before returning.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        let sock = Errno::result(sock)?;
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read/write the `ifr_flags` member of our ifreq.
        let result = unsafe {
            Errno::result(libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut ifr)).and_then(|_| {
                ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                Errno::result(libc::ioctl(sock, libc::SIOCSIFFLAGS, &ifr))
            })
        };
        // SAFETY: `sock` is ours.
        unsafe { libc::close(sock) };
        result.map(drop)
    }

    /// Listen on `127.0.0.1:port` of the sandbox's network namespace and send the listening
    /// socket to the runner over `channel` (`SCM_RIGHTS`). The socket belongs to this
    /// namespace wherever it is used, so the runner, outside, accepts the sandbox's connections
    /// without the sandbox ever seeing the host's network.
    pub fn egress_listener(port: u16, channel: libc::c_int) -> Result<(), Errno> {
        // SAFETY: plain system call.
        let sock =
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        let sock = Errno::result(sock)?;
        let result = listen_and_send(sock, port, channel);
        // SAFETY: `sock` is ours; the runner holds its own reference once sent.
        unsafe { libc::close(sock) };
        result
    }

    fn listen_and_send(sock: libc::c_int, port: u16, channel: libc::c_int) -> Result<(), Errno> {
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `addr` is an initialised sockaddr_in of `len` bytes.
        Errno::result(unsafe { libc::bind(sock, (&raw const addr).cast(), len) })?;
        // SAFETY: plain system call.
        Errno::result(unsafe { libc::listen(sock, 128) })?;

        // One data byte carrying the descriptor; the control buffer is on the stack, aligned
        // for `cmsghdr`.
        #[repr(C, align(8))]
        struct Control([u8; 64]);
        let mut control = Control([0; 64]);
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let fd_len = std::mem::size_of::<libc::c_int>() as libc::c_uint;
        // SAFETY: msghdr is plain old data; the CMSG_* helpers stay inside `control`, which is
        // larger than CMSG_SPACE(sizeof(int)) and aligned.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(fd_len) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_len) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), sock);
            libc::sendmsg(channel, &msg, libc::MSG_NOSIGNAL)
        };
        Errno::result(sent).map(drop)
    }

    pub fn set_hostname(name: &CStr) -> Result<(), Errno> {
        // SAFETY: `name` is a valid C string of the given length.
        let rc = unsafe { libc::sethostname(name.as_ptr(), name.to_bytes().len()) };
        Errno::result(rc).map(drop)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn id_map_maps_exactly_one_id() {
        assert_eq!(id_map_line(1000, 100_000), "1000 100000 1\n");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn every_namespace_is_new() {
        use nix::sched::CloneFlags;
        for flag in [
            CloneFlags::CLONE_NEWUSER,
            CloneFlags::CLONE_NEWPID,
            CloneFlags::CLONE_NEWNS,
            CloneFlags::CLONE_NEWNET,
        ] {
            assert!(CLONE_FLAGS.contains(flag), "{flag:?}");
        }
    }
}
