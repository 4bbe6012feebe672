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
//! "apply" part ([`namespaces`], [`rlimits`], [`env`](mod@env)); later stages (landlock, seccomp,
//! cgroups, mediated egress) slot in the same way: a field in [`SandboxPlan`], a [`Step`] and a
//! call in the child's sequence.

pub mod env;
pub mod namespaces;
pub mod rlimits;
mod step;

#[cfg(target_os = "linux")]
mod init;
#[cfg(target_os = "linux")]
mod launch;

#[cfg(target_os = "linux")]
pub use launch::{LaunchError, Sandbox, launch};
pub use step::{ChildFailure, Step};

use crate::protocol::RunnerRequest;
use rlimits::RlimitSetting;
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Everything the child applies, decided up front. The child only reads it (no allocation
/// after `clone`).
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxPlan {
    pub argv: Vec<CString>,
    /// Paths `execve` is tried on, in order (see [`env::exec_candidates`]).
    pub exec_candidates: Vec<CString>,
    /// `NAME=value`, sorted.
    pub envp: Vec<CString>,
    /// The agent's cwd and `HOME`.
    pub work_dir: CString,
    pub hostname: CString,
    /// Contents for `/proc/<child>/uid_map` and `gid_map`.
    pub uid_map: String,
    pub gid_map: String,
    /// The ids the sandbox's processes switch to (inside the user namespace).
    pub sandbox_uid: u32,
    pub sandbox_gid: u32,
    pub rlimits: [RlimitSetting; 4],
    /// Bring up the network namespace's own loopback (it reaches nothing outside).
    pub loopback_up: bool,
    /// Listen on this port of the sandbox's loopback and hand the socket to the runner, which
    /// forwards its connections to the gateway (mediated egress).
    pub egress_port: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the work directory {0} is not valid UTF-8 (it becomes HOME)")]
    NonUtf8WorkDir(PathBuf),
    #[error("{0} contains a NUL byte")]
    Nul(String),
}

/// Decide the sandbox for `request`, with `work_dir` (absolute) as the agent's cwd and `HOME`.
pub fn plan(request: &RunnerRequest, work_dir: &Path) -> Result<SandboxPlan, PlanError> {
    let home = work_dir
        .to_str()
        .ok_or_else(|| PlanError::NonUtf8WorkDir(work_dir.to_path_buf()))?;
    let env_map = env::agent_env(&request.env, &request.run_id, home);
    let program = request.argv.first().map(String::as_str).unwrap_or_default();
    let path_var = env_map
        .get("PATH")
        .map(String::as_str)
        .unwrap_or(env::DEFAULT_PATH);
    let profile = &request.sandbox;
    Ok(SandboxPlan {
        argv: cstrings(request.argv.iter().cloned(), "argv")?,
        exec_candidates: cstrings(env::exec_candidates(program, path_var), "program path")?,
        envp: cstrings(env::envp_strings(&env_map), "env")?,
        work_dir: cstring(home.to_string(), "work dir")?,
        hostname: cstring(namespaces::SANDBOX_HOSTNAME.to_string(), "hostname")?,
        uid_map: namespaces::id_map_line(namespaces::SANDBOX_UID, profile.host_uid),
        gid_map: namespaces::id_map_line(namespaces::SANDBOX_GID, profile.host_gid),
        sandbox_uid: namespaces::SANDBOX_UID,
        sandbox_gid: namespaces::SANDBOX_GID,
        rlimits: rlimits::decide(&request.limits),
        loopback_up: true,
        egress_port: request.gateway.as_ref().map(|g| g.port),
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
    use crate::protocol::{Limits, PROTOCOL_VERSION, SandboxProfile};
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
            },
            gateway: None,
            files: BTreeMap::new(),
            sandbox: SandboxProfile {
                host_uid: 200_000,
                host_gid: 200_001,
            },
        }
    }

    fn strs(v: &[CString]) -> Vec<&str> {
        v.iter().map(|c| c.to_str().unwrap()).collect()
    }

    #[test]
    fn plan_holds_exactly_what_will_be_applied() {
        let plan = plan(&request(), Path::new("/runs/9/work")).unwrap();
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
                "HOME=/runs/9/work",
                "LANG=C.UTF-8",
                "PATH=/usr/local/bin:/usr/bin:/bin"
            ]
        );
        assert_eq!(plan.work_dir.to_str().unwrap(), "/runs/9/work");
        assert_eq!(plan.uid_map, "1000 200000 1\n");
        assert_eq!(plan.gid_map, "1000 200001 1\n");
        assert_eq!((plan.sandbox_uid, plan.sandbox_gid), (1000, 1000));
        assert_eq!(plan.rlimits[0].soft, 3);
    }

    #[test]
    fn request_path_is_used_for_the_program_search() {
        let mut r = request();
        r.env = BTreeMap::from([("PATH".to_string(), "/opt/tools".to_string())]);
        let plan = plan(&r, Path::new("/w")).unwrap();
        assert_eq!(strs(&plan.exec_candidates), ["/opt/tools/sh"]);
    }
}
