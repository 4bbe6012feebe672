//! seccomp, as data: a rule table decided from the profile, compiled to a classic BPF program
//! before `clone`, installed by the agent process just before `execve` (after `no_new_privs`).
//!
//! The filter allows by default and refuses what a sandboxed agent never needs and what would
//! let it leave or weaken the sandbox: debugging other processes (`ptrace`, `process_vm_*`,
//! `pidfd_getfd`, `kcmp`), mounting and new namespaces (`mount` and the new mount API,
//! `unshare`, `setns`, `clone`/`clone3` with namespace flags), kernel surfaces with a long record
//! of bugs (`bpf`, `keyctl`, `perf_event_open`, `userfaultfd`, `io_uring_*` — which can also
//! open sockets without `socket()`), and socket families other than `AF_UNIX`, `AF_INET` and
//! `AF_INET6` (no `AF_VSOCK`, `AF_NETLINK`, `AF_PACKET`...). A foreign architecture (a 32-bit
//! binary on a 64-bit kernel) is killed, and on x86-64 so is any x32 system call, so no second
//! syscall table walks around the rules.

/// One row of the table: which system call, under which condition, is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Always refused.
    Deny { nr: i64, errno: i32 },
    /// Refused unless the low 32 bits of argument `arg` are one of `allowed`.
    DenyUnlessArgIn {
        nr: i64,
        arg: u8,
        allowed: &'static [u32],
        errno: i32,
    },
    /// Refused when the low 32 bits of argument `arg` have any bit of `mask` set.
    DenyIfArgHasAny {
        nr: i64,
        arg: u8,
        mask: u32,
        errno: i32,
    },
}

impl Rule {
    pub fn nr(&self) -> i64 {
        match *self {
            Rule::Deny { nr, .. }
            | Rule::DenyUnlessArgIn { nr, .. }
            | Rule::DenyIfArgHasAny { nr, .. } => nr,
        }
    }
}

/// Socket families an agent may create: local sockets and TCP/UDP over IPv4/IPv6 (which, in
/// the sandbox's network namespace, reach its own loopback only).
pub const ALLOWED_SOCKET_FAMILIES: [u32; 3] = [
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
];

/// Every `CLONE_NEW*` flag: a process in the sandbox creates no namespace of any kind.
pub const CLONE_NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32
    | 0x80; // CLONE_NEWTIME

/// System calls refused outright, with the reason they are on the list.
#[cfg(target_os = "linux")]
pub const DENIED: &[(i64, &str)] = &[
    (libc::SYS_ptrace, "debugging other processes"),
    (
        libc::SYS_process_vm_readv,
        "reading another process's memory",
    ),
    (
        libc::SYS_process_vm_writev,
        "writing another process's memory",
    ),
    (
        libc::SYS_pidfd_getfd,
        "stealing another process's descriptors",
    ),
    (libc::SYS_kcmp, "comparing other processes' kernel objects"),
    (libc::SYS_mount, "mounting"),
    (libc::SYS_umount2, "unmounting"),
    (libc::SYS_pivot_root, "changing the root"),
    (libc::SYS_chroot, "changing the root"),
    (libc::SYS_fsopen, "the new mount API"),
    (libc::SYS_fsconfig, "the new mount API"),
    (libc::SYS_fsmount, "the new mount API"),
    (libc::SYS_fspick, "the new mount API"),
    (libc::SYS_move_mount, "the new mount API"),
    (libc::SYS_open_tree, "the new mount API"),
    (libc::SYS_mount_setattr, "the new mount API"),
    (libc::SYS_unshare, "new namespaces"),
    (libc::SYS_setns, "entering namespaces"),
    (libc::SYS_bpf, "eBPF"),
    (libc::SYS_keyctl, "the kernel keyring"),
    (libc::SYS_add_key, "the kernel keyring"),
    (libc::SYS_request_key, "the kernel keyring"),
    (libc::SYS_kexec_load, "replacing the kernel"),
    (libc::SYS_kexec_file_load, "replacing the kernel"),
    (libc::SYS_perf_event_open, "performance counters"),
    (
        libc::SYS_userfaultfd,
        "user page-fault handling (race amplifier)",
    ),
    (
        libc::SYS_io_uring_setup,
        "io_uring (sockets without socket())",
    ),
    (libc::SYS_io_uring_enter, "io_uring"),
    (libc::SYS_io_uring_register, "io_uring"),
    (
        libc::SYS_open_by_handle_at,
        "opening files by handle, around the mount view",
    ),
    (libc::SYS_name_to_handle_at, "file handles"),
    (libc::SYS_init_module, "kernel modules"),
    (libc::SYS_finit_module, "kernel modules"),
    (libc::SYS_delete_module, "kernel modules"),
    (libc::SYS_reboot, "rebooting"),
    (libc::SYS_swapon, "swap"),
    (libc::SYS_swapoff, "swap"),
    (libc::SYS_acct, "process accounting"),
    (libc::SYS_quotactl, "disk quotas"),
    (libc::SYS_syslog, "the kernel log"),
    (libc::SYS_settimeofday, "the system clock"),
    (libc::SYS_clock_settime, "the system clock"),
    (libc::SYS_clock_adjtime, "the system clock"),
    (libc::SYS_personality, "execution domains"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_iopl, "I/O port access"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_ioperm, "I/O port access"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_uselib, "legacy library loading"),
];

/// The agent's rule table. Every profile gets the whole table: nothing here is needed by an
/// agent runtime, and a profile can only ever add to it.
#[cfg(target_os = "linux")]
pub fn rules() -> Vec<Rule> {
    let mut rules: Vec<Rule> = DENIED
        .iter()
        .map(|&(nr, _)| Rule::Deny {
            nr,
            errno: libc::EPERM,
        })
        .collect();
    rules.push(Rule::DenyUnlessArgIn {
        nr: libc::SYS_socket,
        arg: 0,
        allowed: &ALLOWED_SOCKET_FAMILIES,
        errno: libc::EAFNOSUPPORT,
    });
    rules.push(Rule::DenyUnlessArgIn {
        nr: libc::SYS_socketpair,
        arg: 0,
        allowed: &[libc::AF_UNIX as u32],
        errno: libc::EAFNOSUPPORT,
    });
    rules.push(Rule::DenyIfArgHasAny {
        nr: libc::SYS_clone,
        arg: 0,
        mask: CLONE_NAMESPACE_FLAGS,
        errno: libc::EPERM,
    });
    // clone3's flags sit in memory a filter cannot read: ENOSYS makes libc fall back to clone,
    // whose flags are checked.
    rules.push(Rule::Deny {
        nr: libc::SYS_clone3,
        errno: libc::ENOSYS,
    });
    rules
}

/// The architecture this runner was built for, as `seccomp_data.arch` reports it.
#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

/// x32 system calls carry this bit in their number (same `arch` as x86-64).
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Classic BPF, as seccomp uses it (linux/filter.h, linux/seccomp.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS
const BPF_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JSET_K: u16 = 0x05 | 0x40; // BPF_JMP | BPF_JSET | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
pub const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
pub const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const fn offset_arg_low(arg: u8) -> u32 {
    // seccomp_data.args[arg], low half (little-endian).
    16 + 8 * arg as u32
}

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("system call number {0} does not fit the filter")]
    BadNumber(i64),
    #[error("a rule's argument list is too long for a BPF jump")]
    TooLong,
}

/// Compile `rules` to a program: check the architecture, refuse x32 numbers, then one block per
/// rule (`if nr == N { conditions; return refusal }`), and allow whatever no rule refused.
/// Every jump is local to its block, so no offset outgrows BPF's 8-bit jumps.
pub fn compile(rules: &[Rule]) -> Result<Vec<Insn>, CompileError> {
    let mut prog = vec![
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
    ];
    if cfg!(target_arch = "x86_64") {
        prog.push(jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1));
        prog.push(stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS));
    }
    for rule in rules {
        let nr = u32::try_from(rule.nr()).map_err(|_| CompileError::BadNumber(rule.nr()))?;
        let block = rule_block(rule)?;
        let skip = u8::try_from(block.len()).map_err(|_| CompileError::TooLong)?;
        prog.push(jump(BPF_JEQ_K, nr, 0, skip));
        prog.extend(block);
    }
    prog.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    Ok(prog)
}

/// The instructions after a matching `nr`. Each block ends by re-loading `nr` on the paths
/// that fall through (so the next rule compares the number again) or by returning.
fn rule_block(rule: &Rule) -> Result<Vec<Insn>, CompileError> {
    let refuse = |errno: i32| stmt(BPF_RET_K, SECCOMP_RET_ERRNO | (errno as u32 & 0xffff));
    Ok(match *rule {
        Rule::Deny { errno, .. } => vec![refuse(errno)],
        Rule::DenyUnlessArgIn {
            arg,
            allowed,
            errno,
            ..
        } => {
            // ld arg; for each allowed: jeq v -> allow; refuse; allow.
            let n = u8::try_from(allowed.len()).map_err(|_| CompileError::TooLong)?;
            let mut block = vec![stmt(BPF_LD_W_ABS, offset_arg_low(arg))];
            for (i, &value) in allowed.iter().enumerate() {
                // Jump over the remaining comparisons and the refusal to the allow.
                let to_allow = n - i as u8;
                block.push(jump(BPF_JEQ_K, value, to_allow, 0));
            }
            block.push(refuse(errno));
            block.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
            block
        }
        Rule::DenyIfArgHasAny {
            arg, mask, errno, ..
        } => vec![
            stmt(BPF_LD_W_ABS, offset_arg_low(arg)),
            jump(BPF_JSET_K, mask, 0, 1),
            refuse(errno),
            stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
        ],
    })
}

/// Install `prog` on the calling thread (inherited by everything it starts). Needs
/// `no_new_privs`. Allocation-free: called between `fork` and `execve`.
#[cfg(target_os = "linux")]
pub fn apply(prog: &[Insn]) -> Result<(), nix::errno::Errno> {
    let Ok(len) = libc::c_ushort::try_from(prog.len()) else {
        return Err(nix::errno::Errno::E2BIG);
    };
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr().cast_mut().cast::<libc::sock_filter>(),
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &raw const fprog,
            0,
            0,
        )
    };
    nix::errno::Errno::result(rc).map(drop)
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A classic BPF interpreter for the instructions `compile` emits, over a `seccomp_data`.
    fn run(prog: &[Insn], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let insn = prog[pc];
            pc += 1;
            match insn.code {
                BPF_LD_W_ABS => {
                    let k = insn.k as usize;
                    acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap());
                }
                BPF_RET_K => return insn.k,
                BPF_JEQ_K | BPF_JGE_K | BPF_JSET_K => {
                    let taken = match insn.code {
                        BPF_JEQ_K => acc == insn.k,
                        BPF_JGE_K => acc >= insn.k,
                        _ => acc & insn.k != 0,
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn decide(nr: i64, args: [u64; 6]) -> u32 {
        let prog = compile(&rules()).unwrap();
        run(&prog, AUDIT_ARCH, nr as u32, args)
    }

    const EPERM: u32 = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const EAFNOSUPPORT: u32 = SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32;

    #[test]
    fn every_denied_call_is_refused_with_eperm() {
        for &(nr, why) in DENIED {
            assert_eq!(decide(nr, [0; 6]), EPERM, "{why} ({nr})");
        }
    }

    #[test]
    fn ordinary_calls_are_allowed() {
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_connect,
            libc::SYS_wait4,
            libc::SYS_futex,
        ] {
            assert_eq!(decide(nr, [0; 6]), SECCOMP_RET_ALLOW, "{nr}");
        }
    }

    #[test]
    fn socket_families_other_than_unix_and_ip_are_refused() {
        for family in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6] {
            let args = [family as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0];
            assert_eq!(decide(libc::SYS_socket, args), SECCOMP_RET_ALLOW);
        }
        for family in [
            libc::AF_VSOCK,
            libc::AF_NETLINK,
            libc::AF_PACKET,
            libc::AF_BLUETOOTH,
            libc::AF_ALG,
            libc::AF_KEY,
        ] {
            let args = [family as u64, libc::SOCK_RAW as u64, 0, 0, 0, 0];
            assert_eq!(decide(libc::SYS_socket, args), EAFNOSUPPORT, "{family}");
        }
        // The high half of the argument cannot smuggle an allowed family's low half... nor the
        // other way round: only the low 32 bits are the family (the kernel reads an int).
        let args = [(1u64 << 32) | libc::AF_VSOCK as u64, 0, 0, 0, 0, 0];
        assert_eq!(decide(libc::SYS_socket, args), EAFNOSUPPORT);
        let inet = [libc::AF_INET as u64, 0, 0, 0, 0, 0];
        assert_eq!(decide(libc::SYS_socketpair, inet), EAFNOSUPPORT);
        let unix = [libc::AF_UNIX as u64, 0, 0, 0, 0, 0];
        assert_eq!(decide(libc::SYS_socketpair, unix), SECCOMP_RET_ALLOW);
    }

    #[test]
    fn clone_with_any_namespace_flag_is_refused_and_clone3_falls_back() {
        let fork_like = (libc::CLONE_CHILD_SETTID | libc::SIGCHLD) as u64;
        assert_eq!(
            decide(libc::SYS_clone, [fork_like, 0, 0, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(
            decide(libc::SYS_clone, [thread, 0, 0, 0, 0, 0]),
            SECCOMP_RET_ALLOW
        );
        for flag in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWCGROUP,
            0x80,
        ] {
            let args = [(flag | libc::SIGCHLD) as u64, 0, 0, 0, 0, 0];
            assert_eq!(decide(libc::SYS_clone, args), EPERM, "{flag:#x}");
        }
        assert_eq!(
            decide(libc::SYS_clone3, [0; 6]),
            SECCOMP_RET_ERRNO | libc::ENOSYS as u32
        );
    }

    #[test]
    fn foreign_architectures_and_x32_calls_are_killed() {
        let prog = compile(&rules()).unwrap();
        let i386 = 0x4000_0003;
        assert_eq!(
            run(&prog, i386, libc::SYS_read as u32, [0; 6]),
            SECCOMP_RET_KILL_PROCESS
        );
        if cfg!(target_arch = "x86_64") {
            let x32_ptrace = X32_SYSCALL_BIT | libc::SYS_ptrace as u32;
            assert_eq!(
                run(&prog, AUDIT_ARCH, x32_ptrace, [0; 6]),
                SECCOMP_RET_KILL_PROCESS
            );
        }
    }

    #[test]
    fn the_program_fits_the_kernel_limit() {
        // BPF_MAXINSNS
        assert!(compile(&rules()).unwrap().len() < 4096);
    }
}
