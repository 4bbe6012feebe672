//! Landlock: a second, independent layer over the same filesystem rules as the mount view.
//!
//! Even if a bug in the view exposed a host path, the agent's Landlock domain only grants:
//! read and execute beneath `/` (which, in the view, holds only the read-only system paths),
//! everything beneath its work directory, `/tmp` and `/dev/shm`, reading and writing device
//! files beneath `/dev`, and reading and writing beneath `/proc` (its own PID namespace's).
//! From ABI 6 on it is also scoped: no abstract unix socket and no signal outside its domain.
//!
//! The ruleset is decided here as data ([`decide`]) for the host's ABI (probed by the runner
//! before `clone`), and applied by the agent process after the view is in place, with
//! `no_new_privs` set, before seccomp and `execve` ([`apply`]).

use std::ffi::CString;

// linux/landlock.h
pub const ACCESS_FS_EXECUTE: u64 = 1 << 0;
pub const ACCESS_FS_WRITE_FILE: u64 = 1 << 1;
pub const ACCESS_FS_READ_FILE: u64 = 1 << 2;
pub const ACCESS_FS_READ_DIR: u64 = 1 << 3;
pub const ACCESS_FS_REMOVE_DIR: u64 = 1 << 4;
pub const ACCESS_FS_REMOVE_FILE: u64 = 1 << 5;
pub const ACCESS_FS_MAKE_CHAR: u64 = 1 << 6;
pub const ACCESS_FS_MAKE_DIR: u64 = 1 << 7;
pub const ACCESS_FS_MAKE_REG: u64 = 1 << 8;
pub const ACCESS_FS_MAKE_SOCK: u64 = 1 << 9;
pub const ACCESS_FS_MAKE_FIFO: u64 = 1 << 10;
pub const ACCESS_FS_MAKE_BLOCK: u64 = 1 << 11;
pub const ACCESS_FS_MAKE_SYM: u64 = 1 << 12;
/// ABI 2.
pub const ACCESS_FS_REFER: u64 = 1 << 13;
/// ABI 3.
pub const ACCESS_FS_TRUNCATE: u64 = 1 << 14;
/// ABI 5.
pub const ACCESS_FS_IOCTL_DEV: u64 = 1 << 15;
/// ABI 4: TCP.
pub const ACCESS_NET_BIND_TCP: u64 = 1 << 0;
pub const ACCESS_NET_CONNECT_TCP: u64 = 1 << 1;
pub const ACCESS_NET_ALL: u64 = ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP;
/// ABI 6.
pub const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
pub const SCOPE_SIGNAL: u64 = 1 << 1;

const CREATE_RULESET_VERSION: u32 = 1 << 0;
const RULE_PATH_BENEATH: libc::c_int = 1;
const RULE_NET_PORT: libc::c_int = 2;

/// The oldest ABI the sandbox accepts: without Landlock the second layer would be missing, and
/// a missing layer refuses the run rather than running with less.
pub const MIN_ABI: u32 = 1;
/// What network rules and scopes need (network rules came with 4, scopes with 6).
pub const MIN_ABI_NETWORK: u32 = 6;

/// Every filesystem right this ABI knows: all of them are handled (denied unless granted).
pub fn fs_rights(abi: u32) -> u64 {
    let mut rights = (1 << 13) - 1;
    if abi >= 2 {
        rights |= ACCESS_FS_REFER;
    }
    if abi >= 3 {
        rights |= ACCESS_FS_TRUNCATE;
    }
    if abi >= 5 {
        rights |= ACCESS_FS_IOCTL_DEV;
    }
    rights
}

fn scopes(abi: u32) -> u64 {
    if abi >= 6 {
        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    } else {
        0
    }
}

/// The decided ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub abi: u32,
    pub handled_fs: u64,
    pub scoped: u64,
    /// (directory, rights granted beneath it).
    pub rules: Vec<(CString, u64)>,
    /// TCP rights handled (0: TCP is left to the network namespace), and (port, rights granted).
    pub handled_net: u64,
    pub net_rules: Vec<(u16, u64)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LandlockError {
    #[error(
        "Landlock is not available on this host (ABI {0}, need {MIN_ABI}); the sandbox refuses to run without it"
    )]
    Unavailable(u32),
    #[error(
        "the strict profile needs Landlock ABI {MIN_ABI_NETWORK} (network rules and scopes); this host has ABI {0}, and the run is refused rather than run with less"
    )]
    NoNetworkRules(u32),
}

/// The agent's ruleset for a host with Landlock `abi` (0: none). With `connect_only`, TCP is
/// handled too: connecting only to those ports, listening never (the strict profile).
pub fn decide(
    abi: u32,
    work: &str,
    connect_only: Option<&[u16]>,
) -> Result<Ruleset, LandlockError> {
    if abi < MIN_ABI {
        return Err(LandlockError::Unavailable(abi));
    }
    if connect_only.is_some() && abi < MIN_ABI_NETWORK {
        return Err(LandlockError::NoNetworkRules(abi));
    }
    let all = fs_rights(abi);
    let read = ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR;
    let read_exec = read | ACCESS_FS_EXECUTE;
    let devices =
        (ACCESS_FS_READ_FILE | ACCESS_FS_WRITE_FILE | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV)
            & all;
    let proc = (read | ACCESS_FS_WRITE_FILE) & all;
    let mut rules = vec![
        ("/", read_exec),
        ("/dev", devices),
        ("/proc", proc),
        ("/tmp", all),
        ("/dev/shm", all),
        (super::fs_view::HOME_MOUNT, all),
    ];
    rules.push((work, all));
    let (handled_net, net_rules) = match connect_only {
        Some(ports) => (
            ACCESS_NET_ALL,
            ports.iter().map(|&p| (p, ACCESS_NET_CONNECT_TCP)).collect(),
        ),
        None => (0, Vec::new()),
    };
    Ok(Ruleset {
        abi,
        handled_fs: all,
        scoped: scopes(abi),
        rules: rules
            .into_iter()
            .filter_map(|(p, r)| CString::new(p).ok().map(|p| (p, r)))
            .collect(),
        handled_net,
        net_rules,
    })
}

/// The host's Landlock ABI version (0 if the kernel has none or it is disabled).
#[cfg(target_os = "linux")]
pub fn host_abi() -> u32 {
    // SAFETY: the version query takes no attribute.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(v).unwrap_or(0)
}

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

#[repr(C)]
struct NetPortAttr {
    allowed_access: u64,
    port: u64,
}

/// Restrict the calling process (and everything it starts) to `ruleset`. Needs
/// `no_new_privs`. Allocation-free: called between `fork` and `execve`.
#[cfg(target_os = "linux")]
pub fn apply(ruleset: &Ruleset) -> Result<(), nix::errno::Errno> {
    use nix::errno::Errno;
    let attr = RulesetAttr {
        handled_access_fs: ruleset.handled_fs,
        handled_access_net: ruleset.handled_net,
        scoped: ruleset.scoped,
    };
    // Older kernels take a shorter attribute (they refuse unknown non-zero trailing fields).
    let size = match ruleset.abi {
        6.. => std::mem::size_of::<RulesetAttr>(),
        4 | 5 => 2 * std::mem::size_of::<u64>(),
        _ => std::mem::size_of::<u64>(),
    };
    // SAFETY: `attr` is a valid landlock_ruleset_attr of at least `size` bytes.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &raw const attr,
            size,
            0u32,
        )
    };
    let fd = Errno::result(fd)? as libc::c_int;
    let result = add_rules(fd, ruleset).and_then(|()| {
        // SAFETY: plain system call on our ruleset descriptor.
        Errno::result(unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) })
            .map(drop)
    });
    // SAFETY: ours.
    unsafe { libc::close(fd) };
    result
}

#[cfg(target_os = "linux")]
fn add_rules(ruleset_fd: libc::c_int, ruleset: &Ruleset) -> Result<(), nix::errno::Errno> {
    use nix::errno::Errno;
    for (path, rights) in &ruleset.rules {
        // SAFETY: valid C string; O_PATH opens no file contents.
        let dir = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        let dir = Errno::result(dir)?;
        let beneath = PathBeneathAttr {
            allowed_access: *rights & ruleset.handled_fs,
            parent_fd: dir,
        };
        // SAFETY: `beneath` is a valid landlock_path_beneath_attr.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset_fd,
                RULE_PATH_BENEATH,
                &raw const beneath,
                0u32,
            )
        };
        // SAFETY: ours.
        unsafe { libc::close(dir) };
        Errno::result(rc)?;
    }
    for &(port, rights) in &ruleset.net_rules {
        let rule = NetPortAttr {
            allowed_access: rights & ruleset.handled_net,
            port: u64::from(port),
        };
        // SAFETY: `rule` is a valid landlock_net_port_attr.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset_fd,
                RULE_NET_PORT,
                &raw const rule,
                0u32,
            )
        };
        Errno::result(rc)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn no_landlock_refuses_the_sandbox() {
        assert_eq!(decide(0, "/work", None), Err(LandlockError::Unavailable(0)));
    }

    #[test]
    fn rights_grow_with_the_abi_and_never_exceed_it() {
        assert_eq!(fs_rights(1), (1 << 13) - 1);
        assert_eq!(fs_rights(2) & ACCESS_FS_REFER, ACCESS_FS_REFER);
        assert_eq!(fs_rights(4) & ACCESS_FS_IOCTL_DEV, 0);
        assert_eq!(fs_rights(7), (1 << 16) - 1);
        for abi in 1..=7 {
            let r = decide(abi, "/work", None).unwrap();
            for (path, rights) in &r.rules {
                assert_eq!(rights & !r.handled_fs, 0, "abi {abi} {path:?}");
            }
        }
        assert_eq!(decide(5, "/work", None).unwrap().scoped, 0);
        assert_eq!(
            decide(7, "/work", None).unwrap().scoped,
            SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        );
    }

    #[test]
    fn only_scratch_and_work_are_writable() {
        let r = decide(7, "/work", None).unwrap();
        let writable: Vec<&str> = r
            .rules
            .iter()
            .filter(|(_, rights)| rights & ACCESS_FS_MAKE_REG != 0)
            .map(|(p, _)| p.to_str().unwrap())
            .collect();
        assert_eq!(writable, ["/tmp", "/dev/shm", "/home/agent", "/work"]);
        let root = &r.rules[0];
        assert_eq!(root.0.to_str().unwrap(), "/");
        assert_eq!(root.1 & ACCESS_FS_WRITE_FILE, 0);
    }
}
