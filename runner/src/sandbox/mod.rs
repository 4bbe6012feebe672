//! The sandbox, in two halves.
//!
//! **Decide** ([`plan`]): from the request, compute everything that will be applied — argv,
//! the exact environment, where the program is searched, the id maps, the rlimits — as plain
//! data, unit-tested without privileges.
//!
//! **Apply** (`launch`, Linux only): create the namespaces with `clone`, map the ids from the
//! parent, then in the child run the prepared steps and `execve`. The child reports the first
//! step that fails over a pipe and the runner records `sandbox_failed`; there is no fallback to
//! running unsandboxed.
//!
//! Each isolation mechanism is its own module with a pure "decide" part and a child-side
//! "apply" part ([`namespaces`], [`fs_view`], [`landlock`], [`seccomp`], [`rlimits`],
//! [`env`](mod@env)); later stages (cgroups) slot in the same way: a field in [`SandboxPlan`],
//! a [`Step`] and a call in the child's sequence.

pub mod env;
pub mod fs_view;
pub mod landlock;
pub mod namespaces;
pub mod rlimits;
pub mod seccomp;
mod step;

#[cfg(target_os = "linux")]
mod init;
#[cfg(target_os = "linux")]
mod launch;

#[cfg(target_os = "linux")]
pub use launch::{LaunchError, Sandbox, launch};
pub use step::{ChildFailure, Step};

use cogward_protocol::runner::{ProfileName, RunnerRequest};
use rlimits::RlimitSetting;
use std::ffi::CString;

/// Everything the child applies, decided up front. The child only reads it (no allocation
/// after `clone`).
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxPlan {
    pub argv: Vec<CString>,
    /// Paths `execve` is tried on, in order (see [`env::exec_candidates`]).
    pub exec_candidates: Vec<CString>,
    /// `NAME=value`, sorted.
    pub envp: Vec<CString>,
    /// The agent's cwd and `HOME`, in its view.
    pub work_dir: CString,
    /// The run's `work/` on the host, bound at `work_dir`.
    pub work_source: CString,
    pub hostname: CString,
    /// Contents for `/proc/<child>/uid_map` and `gid_map`.
    pub uid_map: String,
    pub gid_map: String,
    /// The ids the sandbox's processes switch to (inside the user namespace).
    pub sandbox_uid: u32,
    pub sandbox_gid: u32,
    pub rlimits: [RlimitSetting; 6],
    /// Builds the agent's private root (see [`fs_view`]).
    pub fs_view: Vec<fs_view::MountOp>,
    /// The agent's Landlock domain.
    pub landlock: landlock::Ruleset,
    /// The agent's seccomp program, and how many rules it was compiled from.
    pub seccomp: Vec<seccomp::Insn>,
    pub seccomp_rules: usize,
    /// Bring up the network namespace's own loopback (it reaches nothing outside).
    pub loopback_up: bool,
    /// Listen on this port of the sandbox's loopback and hand the socket to the runner, which
    /// forwards its connections to the gateway (mediated egress); then the egress proxy's.
    pub egress_ports: Vec<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0} contains a NUL byte")]
    Nul(String),
    #[error("the filesystem view: {0}")]
    View(#[from] fs_view::ViewError),
    #[error(transparent)]
    Landlock(#[from] landlock::LandlockError),
    #[error("the seccomp filter: {0}")]
    Seccomp(#[from] seccomp::CompileError),
    #[error(
        "the microvm profile needs a micro-VM runner, which this build does not have; the run is refused, not run with less"
    )]
    MicrovmUnavailable,
}

/// What the plan needs to know of the host it runs on.
pub struct HostFacts<'a> {
    /// What the system paths are (see [`fs_view::Host`]).
    pub fs: &'a dyn fs_view::Host,
    /// The kernel's Landlock ABI (0: none).
    pub landlock_abi: u32,
}

/// Decide the sandbox for `request` on `host`, with the host's `work_source` (absolute) as the
/// agent's work directory: [`fs_view::WORK_MOUNT`] of its own view and its cwd; `HOME` is
/// [`fs_view::HOME_MOUNT`].
pub fn plan(
    request: &RunnerRequest,
    work_source: &std::path::Path,
    host_id: u32,
    secrets: &[(String, String)],
    host: &HostFacts<'_>,
) -> Result<SandboxPlan, PlanError> {
    let work = fs_view::WORK_MOUNT;
    let mut env_map = env::agent_env(&request.env, &request.run_id, fs_view::HOME_MOUNT);
    if !secrets.is_empty() {
        env_map.insert(
            "COGWARD_SECRETS_DIR".to_string(),
            cogward_protocol::runner::SECRETS_DIR.to_string(),
        );
    }
    let program = request.argv.first().map(String::as_str).unwrap_or_default();
    let path_var = env_map
        .get("PATH")
        .map(String::as_str)
        .unwrap_or(env::DEFAULT_PATH);
    let profile = &request.sandbox;
    let egress_ports: Vec<u16> = request.routes().map(|g| g.port).collect();
    let landlock = match profile.name {
        ProfileName::Standard => landlock::decide(host.landlock_abi, work, None)?,
        ProfileName::Strict => landlock::decide(host.landlock_abi, work, Some(&egress_ports))?,
        ProfileName::Microvm => return Err(PlanError::MicrovmUnavailable),
    };
    let rules = seccomp::rules();
    Ok(SandboxPlan {
        argv: cstrings(request.argv.iter().cloned(), "argv")?,
        exec_candidates: cstrings(env::exec_candidates(program, path_var), "program path")?,
        envp: cstrings(env::envp_strings(&env_map), "env")?,
        work_dir: cstring(work.to_string(), "work dir")?,
        work_source: CString::new(work_source.as_os_str().as_encoded_bytes())
            .map_err(|_| PlanError::Nul("work dir".into()))?,
        hostname: cstring(namespaces::SANDBOX_HOSTNAME.to_string(), "hostname")?,
        uid_map: namespaces::id_map_line(namespaces::SANDBOX_UID, host_id),
        gid_map: namespaces::id_map_line(namespaces::SANDBOX_GID, host_id),
        sandbox_uid: namespaces::SANDBOX_UID,
        sandbox_gid: namespaces::SANDBOX_GID,
        rlimits: rlimits::decide(&request.limits),
        fs_view: fs_view::decide(host.fs, &profile.read_only, secrets, &request.home_files)?,
        landlock,
        seccomp: seccomp::compile(&rules)?,
        seccomp_rules: rules.len(),
        loopback_up: true,
        egress_ports: egress_ports.clone(),
    })
}

fn cstring(s: String, what: &str) -> Result<CString, PlanError> {
    CString::new(s).map_err(|_| PlanError::Nul(what.to_string()))
}

fn cstrings(
    items: impl IntoIterator<Item = String>,
    what: &str,
) -> Result<Vec<CString>, PlanError> {
    items.into_iter().map(|s| cstring(s, what)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use cogward_protocol::runner::{Limits, PROTOCOL_VERSION, SandboxProfile};
    use std::collections::BTreeMap;

    fn request() -> RunnerRequest {
        RunnerRequest {
            protocol: PROTOCOL_VERSION,
            run_id: "run-9".into(),
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: [("FOO".to_string(), "bar".to_string())].into(),
            limits: Limits {
                cpu_seconds: 3,
                memory_bytes: 1 << 28,
                max_processes: 16,
                wall_clock_seconds: 30,
                grace_seconds: 1,
                max_output_bytes: 100,
                max_file_bytes: 1 << 20,
                max_open_files: 64,
            },
            gateway: None,
            egress_proxy: None,
            files: BTreeMap::new(),
            checkout: None,
            home_files: BTreeMap::new(),
            secrets: Vec::new(),
            sandbox: SandboxProfile::default(),
        }
    }

    fn strs(v: &[CString]) -> Vec<&str> {
        v.iter().map(|c| c.to_str().unwrap()).collect()
    }

    fn host() -> HostFacts<'static> {
        HostFacts {
            fs: &fs_view::RealHost,
            landlock_abi: 7,
        }
    }

    #[test]
    fn plan_holds_exactly_what_will_be_applied() {
        let plan = plan(
            &request(),
            std::path::Path::new("/runs/9/work"),
            200_000,
            &[],
            &host(),
        )
        .unwrap();
        assert_eq!(strs(&plan.argv), ["sh", "-c", "echo hi"]);
        assert_eq!(
            strs(&plan.exec_candidates),
            ["/usr/local/bin/sh", "/usr/bin/sh", "/bin/sh"]
        );
        assert_eq!(
            strs(&plan.envp),
            [
                "COGWARD_RUN_ID=run-9",
                "FOO=bar",
                "HOME=/home/agent",
                "LANG=C.UTF-8",
                "PATH=/usr/local/bin:/usr/bin:/bin"
            ]
        );
        assert_eq!(plan.work_dir.to_str().unwrap(), "/work");
        assert_eq!(plan.uid_map, "1000 200000 1\n");
        assert_eq!(plan.gid_map, "1000 200000 1\n");
        assert_eq!((plan.sandbox_uid, plan.sandbox_gid), (1000, 1000));
        assert_eq!(plan.rlimits[0].soft, 3);
        assert!(plan.fs_view.contains(&fs_view::MountOp::BindWorkDir {
            target: c"/newroot/work".into()
        }));
        assert_eq!(plan.landlock.abi, 7);
        assert_eq!(plan.seccomp_rules, seccomp::rules().len());
    }

    #[test]
    fn strict_limits_tcp_to_the_egress_ports_and_needs_landlock_6() {
        let mut r = request();
        r.sandbox.name = ProfileName::Strict;
        r.gateway = Some(cogward_protocol::runner::GatewayEgress::new(
            "127.0.0.1:1".into(),
            7480,
        ));
        let p = plan(&r, std::path::Path::new("/w"), 200_000, &[], &host()).unwrap();
        assert_eq!(p.landlock.handled_net, landlock::ACCESS_NET_ALL);
        assert_eq!(
            p.landlock.net_rules,
            [(7480, landlock::ACCESS_NET_CONNECT_TCP)]
        );
        let standard = plan(
            &request(),
            std::path::Path::new("/w"),
            200_000,
            &[],
            &host(),
        )
        .unwrap();
        assert_eq!(standard.landlock.handled_net, 0);
        let old = HostFacts {
            fs: &fs_view::RealHost,
            landlock_abi: 5,
        };
        let err = plan(&r, std::path::Path::new("/w"), 200_000, &[], &old).unwrap_err();
        assert!(err.to_string().contains("ABI 6"), "{err}");
    }

    #[test]
    fn microvm_is_refused_never_downgraded() {
        let mut r = request();
        r.sandbox.name = ProfileName::Microvm;
        assert!(matches!(
            plan(&r, std::path::Path::new("/w"), 200_000, &[], &host()),
            Err(PlanError::MicrovmUnavailable)
        ));
    }

    #[test]
    fn a_host_without_landlock_gets_no_sandbox_at_all() {
        let facts = HostFacts {
            fs: &fs_view::RealHost,
            landlock_abi: 0,
        };
        assert!(matches!(
            plan(&request(), std::path::Path::new("/w"), 200_000, &[], &facts),
            Err(PlanError::Landlock(_))
        ));
    }

    #[test]
    fn request_path_is_used_for_the_program_search() {
        let mut r = request();
        r.env = BTreeMap::from([("PATH".to_string(), "/opt/tools".to_string())]);
        let plan = plan(&r, std::path::Path::new("/w"), 200_000, &[], &host()).unwrap();
        assert_eq!(strs(&plan.exec_candidates), ["/opt/tools/sh"]);
    }
}
