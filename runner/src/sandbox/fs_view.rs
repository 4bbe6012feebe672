//! The agent's private filesystem view: a root built for the run, as bubblewrap builds one.
//!
//! **Decide** ([`decide`]): from the host (what each system path is: a directory, a file, a
//! symlink, missing) and the profile's extra read-only paths, a table of [`MountOp`]s. Nothing
//! else exists for the agent: the system directories its runtime needs read-only (`/usr`,
//! `/bin`, `/lib*`, `/sbin`, a minimal `/etc` with generated `passwd`/`group`/`hosts` and no
//! `shadow`), its `work/` read-write at [`WORK_MOUNT`], its own size-limited `/tmp`,
//! `/dev/shm` and home ([`HOME_MOUNT`], with the request's `home_files`), a minimal `/dev`
//! and its own `/proc`. Not the cogward state directory, not other
//! runs, not `/root`, `/home`, `/run`, `/var`, not a host socket.
//!
//! **Apply** ([`apply`], in the sandbox's init, before it drops to the sandbox user): a staging
//! tmpfs becomes the root with the host's root under `/oldroot`; the new root is a second tmpfs
//! at `/newroot`, filled by the table (sources read under `/oldroot`); the host's root is
//! detached; `/newroot` becomes `/` (`pivot_root(".", ".")`) and is remounted read-only. The
//! work directory is bound from a descriptor the init opened (`O_NOFOLLOW`, through root-only
//! directories, before it took the sandbox user's filesystem ids), so the state directory stays
//! `0700` and no path the sandbox could change is followed.

use cogward_protocol::runner::SECRETS_DIR;
use std::ffi::CString;

/// Where the agent's work directory appears (its cwd).
pub const WORK_MOUNT: &str = "/work";
/// The agent's `HOME`: a private tmpfs of its own, holding the request's `home_files` (an
/// agent CLI's configuration) and whatever the agent keeps there; never an artifact.
pub const HOME_MOUNT: &str = "/home/agent";
pub const HOME_BYTES: u64 = 256 << 20;
/// Size of the agent's `/tmp` and `/dev/shm` (tmpfs: they count against memory, not disk).
pub const TMP_BYTES: u64 = 512 << 20;
pub const SHM_BYTES: u64 = 64 << 20;

/// Host paths bound read-only at the same place when they exist (symlinks are recreated as
/// symlinks: on merged-/usr systems `/bin` is `usr/bin`).
pub const SYSTEM_PATHS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];

/// `/etc` entries the agent's runtimes read (the dynamic loader, name-service switch, TLS
/// roots, time zone, MIME and protocol tables, shell start-up, Debian's alternatives). Never
/// `shadow`, `gshadow`, `sudoers`, `ssh`, or anything with a key in it.
pub const ETC_ENTRIES: [&str; 24] = [
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "nsswitch.conf",
    "alternatives",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "localtime",
    "timezone",
    "mime.types",
    "protocols",
    "services",
    "networks",
    "host.conf",
    "gai.conf",
    "os-release",
    "debian_version",
    "bash.bashrc",
    "profile",
    "inputrc",
    "environment",
    "gitconfig",
    "npmrc",
];

/// Device nodes bound from the host's `/dev`.
pub const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

/// Generated `/etc` files: the sandbox's users are the agent (uid 1000) and `nobody`.
pub const ETC_PASSWD: &str = "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n\
    agent:x:1000:1000:cogward agent:/home/agent:/bin/sh\n\
    nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
pub const ETC_GROUP: &str = "root:x:0:\nagent:x:1000:\nnogroup:x:65534:\n";
pub const ETC_HOSTS: &str = "127.0.0.1\tlocalhost cogward\n::1\tlocalhost ip6-localhost\n";

/// What a host path is, as far as building the view is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEntry {
    Dir,
    File,
    Symlink(String),
    Missing,
}

/// What the view needs to know of the host. [`RealHost`] asks the filesystem; tests pass a table.
pub trait Host {
    /// What `path` is, without following a final symlink.
    fn entry(&self, path: &str) -> HostEntry;
    /// `path` with every symlink resolved (for the profile's extra paths).
    fn canonical(&self, path: &str) -> Option<String>;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RealHost;

impl Host for RealHost {
    fn entry(&self, path: &str) -> HostEntry {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(path) {
                Ok(t) => t
                    .to_str()
                    .map_or(HostEntry::Missing, |t| HostEntry::Symlink(t.to_string())),
                Err(_) => HostEntry::Missing,
            },
            Ok(m) if m.is_dir() => HostEntry::Dir,
            Ok(_) => HostEntry::File,
            Err(_) => HostEntry::Missing,
        }
    }

    fn canonical(&self, path: &str) -> Option<String> {
        std::fs::canonicalize(path)
            .ok()
            .and_then(|p| p.to_str().map(str::to_string))
    }
}

/// One step of building the new root. Paths are absolute in the init's mount namespace at the
/// time of the step: sources under `/oldroot`, targets under `/newroot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    Mkdir {
        path: CString,
        mode: u32,
    },
    /// An empty regular file to bind a file or device onto.
    Touch {
        path: CString,
    },
    /// A size-limited tmpfs (nosuid, nodev).
    Tmpfs {
        path: CString,
        options: CString,
    },
    /// A recursive read-only bind (nosuid, nodev, the source's locked flags kept).
    BindReadOnly {
        source: CString,
        target: CString,
    },
    /// A device node from the host's `/dev` (read-write, nosuid, noexec).
    BindDevice {
        source: CString,
        target: CString,
    },
    /// The run's work directory, from the descriptor the runner passed (read-write, nosuid,
    /// nodev).
    BindWorkDir {
        target: CString,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// A generated file (written before its mount is made read-only).
    WriteFile {
        path: CString,
        contents: CString,
        mode: u32,
    },
    /// A `/proc` for the sandbox's PID namespace (nosuid, nodev, noexec).
    Proc {
        path: CString,
    },
    /// Make a mount made earlier in the table read-only (once it is populated).
    RemountReadOnly {
        path: CString,
    },
}

impl MountOp {
    /// The path the step creates or mounts on, for error messages.
    pub fn describe(&self) -> String {
        let (what, path) = match self {
            MountOp::Mkdir { path, .. } => ("creating", path),
            MountOp::Touch { path } => ("creating", path),
            MountOp::Tmpfs { path, .. } => ("mounting a tmpfs on", path),
            MountOp::BindReadOnly { source, .. } => ("binding read-only", source),
            MountOp::BindDevice { source, .. } => ("binding the device", source),
            MountOp::BindWorkDir { target } => ("binding the work directory on", target),
            MountOp::Symlink { link, .. } => ("creating the symlink", link),
            MountOp::WriteFile { path, .. } => ("writing", path),
            MountOp::Proc { path } => ("mounting proc on", path),
            MountOp::RemountReadOnly { path } => ("making read-only", path),
        };
        let path = path.to_string_lossy();
        let path = path
            .strip_prefix("/newroot")
            .or_else(|| path.strip_prefix("/oldroot"))
            .unwrap_or(&path);
        format!("{what} {path}")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ViewError {
    #[error("read-only path {0:?} must be absolute and normalised (no `..`, `.` or `//`)")]
    NotAbsolute(String),
    #[error("read-only path {0:?} may not be `/` or shadow the sandbox's own {1}")]
    Reserved(String, &'static str),
    #[error("read-only path {0} does not exist on this host")]
    Missing(String),
    #[error("{0} contains a NUL byte")]
    Nul(String),
}

/// The table that builds the agent's root. `read_only` are the profile's extra paths (a
/// runtime's own install directory, say), bound at the same place; each must exist. `secrets`
/// (name, value) become files of a tmpfs of their own at [`SECRETS_DIR`], readable by the
/// agent's uid alone (0400 in a 0700 directory, then read-only). `home_files` (relative path,
/// contents; validated by the request) are written into the agent's home, 0600.
pub fn decide(
    host: &dyn Host,
    read_only: &[String],
    secrets: &[(String, String)],
    home_files: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<MountOp>, ViewError> {
    let mut b = Builder::default();
    for path in SYSTEM_PATHS {
        b.host_entry(host, path, path)?;
    }
    b.mkdir("/etc", 0o755)?;
    for name in ETC_ENTRIES {
        let path = format!("/etc/{name}");
        b.host_entry(host, &path, &path)?;
    }
    for (name, contents) in [
        ("passwd", ETC_PASSWD),
        ("group", ETC_GROUP),
        ("hosts", ETC_HOSTS),
        ("hostname", "cogward\n"),
    ] {
        b.ops.push(MountOp::WriteFile {
            path: newroot(&format!("/etc/{name}"))?,
            contents: cstring(contents)?,
            mode: 0o644,
        });
    }
    for path in read_only {
        let normal = normalised(path).ok_or_else(|| ViewError::NotAbsolute(path.clone()))?;
        if let Some(own) = reserved(&normal) {
            return Err(ViewError::Reserved(path.clone(), own));
        }
        let source = host
            .canonical(&normal)
            .ok_or_else(|| ViewError::Missing(path.clone()))?;
        match host.entry(&source) {
            HostEntry::Missing | HostEntry::Symlink(_) => {
                return Err(ViewError::Missing(path.clone()));
            }
            entry => b.bind_read_only(&entry, &source, &normal)?,
        }
    }
    b.mkdir("/dev", 0o755)?;
    b.ops.push(MountOp::Tmpfs {
        path: newroot("/dev")?,
        options: cstring("size=64k,nr_inodes=64,mode=0755")?,
    });
    for dev in DEVICES {
        let path = format!("/dev/{dev}");
        b.ops.push(MountOp::Touch {
            path: newroot(&path)?,
        });
        b.ops.push(MountOp::BindDevice {
            source: oldroot(&path)?,
            target: newroot(&path)?,
        });
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        b.ops.push(MountOp::Symlink {
            target: cstring(target)?,
            link: newroot(link)?,
        });
    }
    // Populated: nothing more is created in /dev (/dev/shm is a mount of its own).
    b.mkdir("/dev/shm", 0o755)?;
    b.ops.push(MountOp::RemountReadOnly {
        path: newroot("/dev")?,
    });
    for (path, bytes) in [("/dev/shm", SHM_BYTES), ("/tmp", TMP_BYTES)] {
        b.mkdir(path, 0o755)?;
        b.ops.push(MountOp::Tmpfs {
            path: newroot(path)?,
            options: cstring(&format!("size={bytes},mode=1777"))?,
        });
    }
    b.mkdir("/proc", 0o555)?;
    b.ops.push(MountOp::Proc {
        path: newroot("/proc")?,
    });
    b.mkdir(WORK_MOUNT, 0o755)?;
    b.ops.push(MountOp::BindWorkDir {
        target: newroot(WORK_MOUNT)?,
    });
    b.parents(HOME_MOUNT)?;
    b.mkdir(HOME_MOUNT, 0o700)?;
    b.ops.push(MountOp::Tmpfs {
        path: newroot(HOME_MOUNT)?,
        options: cstring(&format!("size={HOME_BYTES},mode=0700"))?,
    });
    for (rel, contents) in home_files {
        let path = format!("{HOME_MOUNT}/{rel}");
        b.parents(&path)?;
        b.ops.push(MountOp::WriteFile {
            path: newroot(&path)?,
            contents: CString::new(contents.as_str())
                .map_err(|_| ViewError::Nul(format!("home file {rel}")))?,
            mode: 0o600,
        });
    }
    if !secrets.is_empty() {
        let bytes: usize = secrets.iter().map(|(_, v)| v.len() + 4096).sum();
        b.mkdir(SECRETS_DIR, 0o755)?;
        b.ops.push(MountOp::Tmpfs {
            path: newroot(SECRETS_DIR)?,
            options: cstring(&format!(
                "size={},nr_inodes={},mode=0700",
                bytes + 65536,
                secrets.len() + 16
            ))?,
        });
        for (name, value) in secrets {
            b.ops.push(MountOp::WriteFile {
                path: newroot(&format!("{SECRETS_DIR}/{name}"))?,
                contents: CString::new(value.as_str())
                    .map_err(|_| ViewError::Nul(format!("secret {name}")))?,
                mode: 0o400,
            });
        }
        b.ops.push(MountOp::RemountReadOnly {
            path: newroot(SECRETS_DIR)?,
        });
    }
    Ok(b.ops)
}

/// What the sandbox itself puts at `path` (so a profile may not bind over it).
fn reserved(path: &str) -> Option<&'static str> {
    [
        "/etc",
        "/dev",
        "/proc",
        "/tmp",
        WORK_MOUNT,
        HOME_MOUNT,
        SECRETS_DIR,
    ]
    .into_iter()
    .find(|own| path == *own || path.starts_with(&format!("{own}/")))
    .or((path == "/").then_some("root"))
}

#[derive(Default)]
struct Builder {
    ops: Vec<MountOp>,
    /// Directories already created under the new root.
    made: Vec<String>,
}

impl Builder {
    fn mkdir(&mut self, path: &str, mode: u32) -> Result<(), ViewError> {
        if self.made.iter().any(|m| m == path) {
            return Ok(());
        }
        self.made.push(path.to_string());
        self.ops.push(MountOp::Mkdir {
            path: newroot(path)?,
            mode,
        });
        Ok(())
    }

    /// Every missing parent of `path` (not `path` itself).
    fn parents(&mut self, path: &str) -> Result<(), ViewError> {
        let mut at = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in parts.iter().take(parts.len().saturating_sub(1)) {
            at.push('/');
            at.push_str(part);
            self.mkdir(&at, 0o755)?;
        }
        Ok(())
    }

    /// Mirror the host's `source` at `target`: symlinks recreated, directories and files bound
    /// read-only, missing entries left out.
    fn host_entry(&mut self, host: &dyn Host, source: &str, target: &str) -> Result<(), ViewError> {
        match host.entry(source) {
            HostEntry::Missing => Ok(()),
            HostEntry::Symlink(to) => {
                self.parents(target)?;
                self.ops.push(MountOp::Symlink {
                    target: cstring(&to)?,
                    link: newroot(target)?,
                });
                Ok(())
            }
            entry => self.bind_read_only(&entry, source, target),
        }
    }

    fn bind_read_only(
        &mut self,
        entry: &HostEntry,
        source: &str,
        target: &str,
    ) -> Result<(), ViewError> {
        self.parents(target)?;
        if *entry == HostEntry::Dir {
            self.mkdir(target, 0o755)?;
        } else {
            self.ops.push(MountOp::Touch {
                path: newroot(target)?,
            });
        }
        self.ops.push(MountOp::BindReadOnly {
            source: oldroot(source)?,
            target: newroot(target)?,
        });
        Ok(())
    }
}

/// `path` if it is absolute with plain components (no `.`, `..`, empty or trailing `/`).
fn normalised(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let plain = rest.is_empty()
        || rest
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    plain.then(|| path.to_string())
}

fn cstring(s: &str) -> Result<CString, ViewError> {
    CString::new(s).map_err(|_| ViewError::Nul(s.to_string()))
}

fn newroot(path: &str) -> Result<CString, ViewError> {
    cstring(&format!("/newroot{path}"))
}

fn oldroot(path: &str) -> Result<CString, ViewError> {
    cstring(&format!("/oldroot{path}"))
}

#[cfg(target_os = "linux")]
pub use apply::{FsStep, apply};

#[cfg(target_os = "linux")]
mod apply {
    //! Child side: between `clone` and `execve`, allocation-free system calls on the prepared
    //! table.

    use super::MountOp;
    use nix::errno::Errno;
    use std::ffi::CStr;

    /// Which part of [`apply`] failed: a fixed step, or the table's entry at an index.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum FsStep {
        Staging,
        Op(usize),
        DetachHost,
        EnterRoot,
        ReadOnlyRoot,
    }

    fn rc(ret: libc::c_int) -> Result<(), Errno> {
        Errno::result(ret).map(drop)
    }

    fn mount(
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> Result<(), Errno> {
        let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
        // SAFETY: valid C strings or NULL.
        rc(unsafe {
            libc::mount(
                ptr(source),
                target.as_ptr(),
                ptr(fstype),
                flags,
                ptr(data).cast(),
            )
        })
    }

    fn mkdir(path: &CStr, mode: u32) -> Result<(), Errno> {
        // SAFETY: valid C string.
        match rc(unsafe { libc::mkdir(path.as_ptr(), mode as libc::mode_t) }) {
            Err(Errno::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// The flags the kernel will not let a user namespace clear on a bind of a host mount
    /// (nosuid, nodev, noexec, the atime flags): read them and keep them on the remount.
    fn locked_flags(path: &CStr) -> Result<libc::c_ulong, Errno> {
        // SAFETY: statvfs fills the zeroed struct.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        rc(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
        let mut flags = 0;
        for (st_flag, ms_flag) in [
            (libc::ST_NOSUID, libc::MS_NOSUID),
            (libc::ST_NODEV, libc::MS_NODEV),
            (libc::ST_NOEXEC, libc::MS_NOEXEC),
            (libc::ST_NOATIME, libc::MS_NOATIME),
            (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
            (libc::ST_RELATIME, libc::MS_RELATIME),
        ] {
            if st.f_flag & st_flag != 0 {
                flags |= ms_flag;
            }
        }
        Ok(flags)
    }

    fn bind(
        source: &CStr,
        target: &CStr,
        recursive: bool,
        extra: libc::c_ulong,
    ) -> Result<(), Errno> {
        let rec = if recursive { libc::MS_REC } else { 0 };
        mount(Some(source), target, None, libc::MS_BIND | rec, None)?;
        let flags = locked_flags(target)? | extra;
        mount(
            None,
            target,
            None,
            libc::MS_REMOUNT | libc::MS_BIND | flags,
            None,
        )
    }

    fn run_op(op: &MountOp, work_dir: libc::c_int) -> Result<(), Errno> {
        let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
        match op {
            MountOp::Mkdir { path, mode } => mkdir(path, *mode),
            MountOp::Touch { path } => {
                // SAFETY: valid C string; the descriptor is closed right away.
                let fd = unsafe {
                    libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                        0o644,
                    )
                };
                Errno::result(fd).map(|fd| {
                    // SAFETY: ours.
                    unsafe { libc::close(fd) };
                })
            }
            MountOp::Tmpfs { path, options } => mount(
                Some(c"tmpfs"),
                path,
                Some(c"tmpfs"),
                nosuid_nodev,
                Some(options),
            ),
            MountOp::BindReadOnly { source, target } => {
                bind(source, target, true, libc::MS_RDONLY | nosuid_nodev)
            }
            MountOp::BindDevice { source, target } => {
                bind(source, target, false, libc::MS_NOSUID | libc::MS_NOEXEC)
            }
            MountOp::BindWorkDir { target } => {
                // "." is the work directory the init opened in its own mount namespace (a
                // mount of another namespace cannot be bound).
                // SAFETY: fchdir on a descriptor we hold.
                rc(unsafe { libc::fchdir(work_dir) })?;
                let bound = bind(c".", target, false, nosuid_nodev);
                chdir(c"/").and(bound)
            }
            MountOp::Symlink { target, link } => {
                // SAFETY: valid C strings.
                rc(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })
            }
            MountOp::WriteFile {
                path,
                contents,
                mode,
            } => {
                // SAFETY: valid C string.
                let fd = unsafe {
                    libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                        *mode as libc::c_uint,
                    )
                };
                let fd = Errno::result(fd)?;
                let bytes = contents.to_bytes();
                // SAFETY: writing our buffer to our descriptor, then closing it.
                let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
                unsafe { libc::close(fd) };
                match n {
                    n if n < 0 => Err(Errno::last()),
                    n if n as usize != bytes.len() => Err(Errno::EIO),
                    _ => Ok(()),
                }
            }
            MountOp::Proc { path } => mount(
                Some(c"proc"),
                path,
                Some(c"proc"),
                nosuid_nodev | libc::MS_NOEXEC,
                None,
            ),
            MountOp::RemountReadOnly { path } => mount(
                None,
                path,
                None,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | nosuid_nodev,
                None,
            ),
        }
    }

    fn pivot_root(new_root: &CStr, put_old: &CStr) -> Result<(), Errno> {
        // SAFETY: valid C strings.
        rc(
            unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) }
                as libc::c_int,
        )
    }

    fn chdir(path: &CStr) -> Result<(), Errno> {
        // SAFETY: valid C string.
        rc(unsafe { libc::chdir(path.as_ptr()) })
    }

    /// Build the new root from `ops` and enter it. `work_dir` is a descriptor of the run's work
    /// directory opened in this mount namespace. Mounts must already be private.
    pub fn apply(ops: &[MountOp], work_dir: libc::c_int) -> Result<(), (FsStep, Errno)> {
        let staging = |r: Result<(), Errno>| r.map_err(|e| (FsStep::Staging, e));
        staging(mount(
            Some(c"tmpfs"),
            c"/tmp",
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(c"size=64k,mode=0700"),
        ))?;
        staging(mkdir(c"/tmp/newroot", 0o755))?;
        staging(mkdir(c"/tmp/oldroot", 0o700))?;
        staging(pivot_root(c"/tmp", c"/tmp/oldroot"))?;
        staging(chdir(c"/"))?;
        staging(mount(
            Some(c"tmpfs"),
            c"/newroot",
            Some(c"tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(c"size=1m,nr_inodes=4096,mode=0755"),
        ))?;
        for (i, op) in ops.iter().enumerate() {
            run_op(op, work_dir).map_err(|e| (FsStep::Op(i), e))?;
        }
        // SAFETY: valid C string.
        rc(unsafe { libc::umount2(c"/oldroot".as_ptr(), libc::MNT_DETACH) })
            .map_err(|e| (FsStep::DetachHost, e))?;
        let enter = |r: Result<(), Errno>| r.map_err(|e| (FsStep::EnterRoot, e));
        enter(chdir(c"/newroot"))?;
        // The staging root ends up stacked on the new one, and is detached at once.
        enter(pivot_root(c".", c"."))?;
        // SAFETY: valid C string.
        enter(rc(unsafe {
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH)
        }))?;
        enter(chdir(c"/"))?;
        mount(
            None,
            c"/",
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            None,
        )
        .map_err(|e| (FsStep::ReadOnlyRoot, e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    /// A Debian-like host: merged /usr, a tools directory, a shadow file.
    struct FakeHost(BTreeMap<&'static str, HostEntry>);

    fn debian() -> FakeHost {
        let mut m = BTreeMap::new();
        m.insert("/usr", HostEntry::Dir);
        m.insert("/bin", HostEntry::Symlink("usr/bin".into()));
        m.insert("/lib", HostEntry::Symlink("usr/lib".into()));
        m.insert("/lib64", HostEntry::Symlink("usr/lib64".into()));
        m.insert("/sbin", HostEntry::Symlink("usr/sbin".into()));
        m.insert("/etc/ld.so.cache", HostEntry::File);
        m.insert("/etc/ssl", HostEntry::Dir);
        m.insert("/etc/shadow", HostEntry::File);
        m.insert(
            "/etc/localtime",
            HostEntry::Symlink("/usr/share/zoneinfo/Etc/UTC".into()),
        );
        m.insert("/opt/tools", HostEntry::Dir);
        FakeHost(m)
    }

    impl Host for FakeHost {
        fn entry(&self, path: &str) -> HostEntry {
            self.0.get(path).cloned().unwrap_or(HostEntry::Missing)
        }
        fn canonical(&self, path: &str) -> Option<String> {
            (self.entry(path) != HostEntry::Missing).then(|| path.to_string())
        }
    }

    fn s(c: &CString) -> &str {
        c.to_str().unwrap()
    }

    fn targets(ops: &[MountOp]) -> Vec<String> {
        ops.iter()
            .filter_map(|op| match op {
                MountOp::BindReadOnly { target, .. }
                | MountOp::BindDevice { target, .. }
                | MountOp::BindWorkDir { target } => Some(s(target).to_string()),
                MountOp::Tmpfs { path, .. } | MountOp::Proc { path } => Some(s(path).to_string()),
                MountOp::Symlink { link, .. } => Some(s(link).to_string()),
                MountOp::WriteFile { path, .. } => Some(s(path).to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_view_holds_exactly_the_system_the_work_dir_and_private_scratch() {
        let ops = decide(&debian(), &["/opt/tools".into()], &[], &Default::default()).unwrap();
        let t = targets(&ops);
        for expected in [
            "/newroot/usr",
            "/newroot/bin",
            "/newroot/etc/ld.so.cache",
            "/newroot/etc/ssl",
            "/newroot/etc/localtime",
            "/newroot/etc/passwd",
            "/newroot/etc/hosts",
            "/newroot/opt/tools",
            "/newroot/dev",
            "/newroot/dev/null",
            "/newroot/dev/urandom",
            "/newroot/dev/shm",
            "/newroot/tmp",
            "/newroot/proc",
            "/newroot/work",
            "/newroot/home/agent",
        ] {
            assert!(t.iter().any(|x| x == expected), "{expected} not in {t:?}");
        }
        for absent in ["shadow", "/root", "/run", "/var", "/sys", "lib32"] {
            assert!(!t.iter().any(|x| x.contains(absent)), "{absent} in {t:?}");
        }
        // Of the host's /home, nothing: only the agent's own tmpfs is there.
        let home: Vec<_> = t.iter().filter(|x| x.contains("/home")).collect();
        assert_eq!(home, ["/newroot/home/agent"]);
        // Sources are read under the host's old root; nothing is bound from elsewhere.
        for op in &ops {
            if let MountOp::BindReadOnly { source, .. } | MountOp::BindDevice { source, .. } = op {
                assert!(s(source).starts_with("/oldroot/"), "{op:?}");
            }
        }
    }

    #[test]
    fn home_files_are_written_into_the_agents_own_home_after_it_is_mounted() {
        let files = std::collections::BTreeMap::from([
            (
                ".codex/config.toml".to_string(),
                "model = \"m\"".to_string(),
            ),
            (".cogward/mcp.json".to_string(), "{}".to_string()),
        ]);
        let ops = decide(&debian(), &[], &[], &files).unwrap();
        let at = |wanted: &str| {
            ops.iter()
                .position(|op| targets(std::slice::from_ref(op)) == [wanted])
                .unwrap_or_else(|| panic!("{wanted} not in the view"))
        };
        let home = at("/newroot/home/agent");
        let config = at("/newroot/home/agent/.codex/config.toml");
        assert!(home < config && home < at("/newroot/home/agent/.cogward/mcp.json"));
        assert!(matches!(
            &ops[config],
            MountOp::WriteFile { mode: 0o600, .. }
        ));
        assert!(ops.contains(&MountOp::Mkdir {
            path: c"/newroot/home/agent/.codex".into(),
            mode: 0o755,
        }));
        // No read-only bind may shadow it.
        assert!(matches!(
            decide(&debian(), &["/home/agent/x".into()], &[], &files),
            Err(ViewError::Reserved(..))
        ));
    }

    #[test]
    fn merged_usr_symlinks_are_recreated_not_bound() {
        let ops = decide(&debian(), &[], &[], &Default::default()).unwrap();
        assert!(ops.contains(&MountOp::Symlink {
            target: c"usr/bin".into(),
            link: c"/newroot/bin".into(),
        }));
        assert!(!ops.iter().any(|op| matches!(op,
            MountOp::BindReadOnly { target, .. } if s(target) == "/newroot/bin")));
    }

    #[test]
    fn directories_exist_before_anything_is_mounted_on_or_in_them() {
        let ops = decide(&debian(), &["/opt/tools".into()], &[], &Default::default()).unwrap();
        let mut made = vec!["/newroot".to_string()];
        for op in &ops {
            let (path, creates_dir) = match op {
                MountOp::Mkdir { path, .. } => (s(path), true),
                MountOp::Touch { path } | MountOp::WriteFile { path, .. } => (s(path), false),
                MountOp::Symlink { link, .. } => (s(link), false),
                MountOp::Tmpfs { path, .. }
                | MountOp::Proc { path }
                | MountOp::RemountReadOnly { path } => {
                    assert!(made.iter().any(|m| m == s(path)), "{op:?} before mkdir");
                    continue;
                }
                MountOp::BindReadOnly { target, .. }
                | MountOp::BindDevice { target, .. }
                | MountOp::BindWorkDir { target } => {
                    let t = s(target);
                    let exists = made.iter().any(|m| m == t)
                        || ops.contains(&MountOp::Touch {
                            path: target.clone(),
                        });
                    assert!(exists, "{op:?} onto nothing");
                    continue;
                }
            };
            let parent = Path::new(path).parent().unwrap().to_str().unwrap();
            assert!(made.iter().any(|m| m == parent), "{op:?}: no {parent}");
            if creates_dir {
                made.push(path.to_string());
            }
        }
    }

    #[test]
    fn bad_or_missing_read_only_paths_are_refused() {
        let host = debian();
        for bad in [
            "relative",
            "/opt/../etc",
            "/opt//tools",
            "/opt/tools/",
            "/opt/./t",
        ] {
            assert_eq!(
                decide(&host, &[bad.into()], &[], &Default::default()),
                Err(ViewError::NotAbsolute(bad.into())),
                "{bad}"
            );
        }
        for reserved in [
            "/",
            "/etc",
            "/etc/shadow",
            "/proc/1",
            "/work",
            "/tmp/x",
            "/dev",
        ] {
            assert!(
                matches!(
                    decide(&host, &[reserved.into()], &[], &Default::default()),
                    Err(ViewError::Reserved(..))
                ),
                "{reserved}"
            );
        }
        assert_eq!(
            decide(&host, &["/opt/missing".into()], &[], &Default::default()),
            Err(ViewError::Missing("/opt/missing".into()))
        );
    }

    #[test]
    fn secrets_get_a_private_tmpfs_of_their_own_made_read_only() {
        let secrets = [("token".to_string(), "s3cr3t".to_string())];
        let ops = decide(&debian(), &[], &secrets, &Default::default()).unwrap();
        let at = |want: &MountOp| ops.iter().position(|op| op == want).unwrap();
        let file = at(&MountOp::WriteFile {
            path: c"/newroot/secrets/token".into(),
            contents: c"s3cr3t".into(),
            mode: 0o400,
        });
        let ro = at(&MountOp::RemountReadOnly {
            path: c"/newroot/secrets".into(),
        });
        let tmpfs = ops
            .iter()
            .position(|op| {
                matches!(op, MountOp::Tmpfs { path, options }
                if s(path) == "/newroot/secrets" && s(options).ends_with("mode=0700"))
            })
            .unwrap();
        assert!(tmpfs < file && file < ro);
        assert!(
            !decide(&debian(), &[], &[], &Default::default())
                .unwrap()
                .iter()
                .any(|op| format!("{op:?}").contains("secrets"))
        );
    }

    #[test]
    fn generated_identity_files_name_only_the_sandbox_users() {
        assert!(ETC_PASSWD.contains("agent:x:1000:1000:"));
        assert!(!ETC_PASSWD.contains("/root"));
        assert_eq!(ETC_PASSWD.lines().count(), 3);
        assert!(
            !ETC_ENTRIES
                .iter()
                .any(|e| e.contains("shadow") || *e == "passwd")
        );
    }
}
