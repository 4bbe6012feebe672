//! A control group per run: memory (without swap), process count and CPU weight, with the
//! out-of-memory kills it saw read back as the run's outcome.
//!
//! **Decide** ([`decide`]): the limits from the request, as data. **Apply** ([`Cgroup`]): the
//! runner, root on the host, creates `cogward/sandbox-<host id>` in each hierarchy it needs,
//! writes the limits, and moves the sandbox's init into it before the init may go on (the
//! agent and everything it starts inherit it). The group is named by the run's leased host id,
//! which no other live run holds. cgroup v2 (the unified hierarchy, with the `memory` and
//! `pids` controllers) is used where the host offers it; hosts that still bind those controllers
//! to v1 hierarchies get the same limits there. A host with neither refuses the run.

use cogward_protocol::runner::Limits;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The parent group of every sandbox's.
pub const PARENT: &str = "cogward";

/// The limits a run's group gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Memory (anonymous, page cache, tmpfs) in bytes; no swap.
    pub memory_bytes: u64,
    /// Tasks (processes and threads), the sandbox's init included.
    pub pids: u64,
    /// CPU weight, v2 scale (1–10000, 100 = a fair share).
    pub cpu_weight: u64,
}

/// The group's limits for `limits`: the run's memory, its processes plus the init, a fair
/// share of CPU (the CPU *time* ceiling is RLIMIT_CPU's).
pub fn decide(limits: &Limits) -> CgroupLimits {
    CgroupLimits {
        memory_bytes: limits.memory_bytes,
        pids: limits.max_processes.saturating_add(1),
        cpu_weight: 100,
    }
}

/// v1's `cpu.shares` for a v2 weight (100 ↔ 1024).
pub fn shares_for_weight(weight: u64) -> u64 {
    (weight.saturating_mul(1024) / 100).clamp(2, 262_144)
}

/// Which hierarchies the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One unified hierarchy at this path, with `memory` and `pids` (and maybe `cpu`).
    V2 { root: PathBuf, cpu: bool },
    /// v1 hierarchies, one per controller.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: Option<PathBuf>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "this host offers no cgroup memory and pids controllers (neither cgroup v2 nor v1 under {CGROUP_ROOT}); the run is refused rather than run without them"
    )]
    Unavailable,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The controllers a v2 hierarchy at `root` offers (empty if it is not one).
fn v2_controllers(root: &Path) -> Vec<String> {
    fs::read_to_string(root.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Find the hierarchies under `base` (normally [`CGROUP_ROOT`]).
pub fn detect(base: &Path) -> Result<Layout, CgroupError> {
    for root in [base.to_path_buf(), base.join("unified")] {
        let c = v2_controllers(&root);
        if c.iter().any(|x| x == "memory") && c.iter().any(|x| x == "pids") {
            let cpu = c.iter().any(|x| x == "cpu");
            return Ok(Layout::V2 { root, cpu });
        }
    }
    let v1 = |name: &str| {
        let p = base.join(name);
        p.join("cgroup.procs").exists().then_some(p)
    };
    match (v1("memory"), v1("pids")) {
        (Some(memory), Some(pids)) => Ok(Layout::V1 {
            memory,
            pids,
            cpu: v1("cpu").or_else(|| v1("cpu,cpuacct")),
        }),
        _ => Err(CgroupError::Unavailable),
    }
}

/// A run's group: one directory per hierarchy.
#[derive(Debug)]
pub struct Cgroup {
    layout: Layout,
    dirs: Vec<PathBuf>,
    memory_dir: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(path))
}

/// Remove `dir` if it exists (a group left by a runner that died), then create it.
fn fresh_dir(dir: &Path) -> Result<(), CgroupError> {
    match fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(dir)(e)),
    }
    fs::create_dir(dir).map_err(io_err(dir))
}

impl Cgroup {
    /// Create the group `name` with `limits`.
    pub fn create(layout: Layout, name: &str, limits: CgroupLimits) -> Result<Cgroup, CgroupError> {
        let memory = limits.memory_bytes.to_string();
        let pids = limits.pids.to_string();
        let (dirs, memory_dir) = match &layout {
            Layout::V2 { root, cpu } => {
                let parent = root.join(PARENT);
                match fs::create_dir(&parent) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err(&parent)(e)),
                }
                for at in [root, &parent] {
                    let control = at.join("cgroup.subtree_control");
                    write(&control, "+memory +pids")?;
                    if *cpu {
                        // Best effort: v2 refuses the cpu controller while real-time tasks
                        // sit in the root; the weight is then left at its default.
                        let _ = fs::write(&control, "+cpu");
                    }
                }
                let dir = parent.join(name);
                fresh_dir(&dir)?;
                write(&dir.join("memory.max"), &memory)?;
                write(&dir.join("memory.swap.max"), "0").or_else(|e| match e {
                    // No swap accounting on this kernel: there is no swap to limit.
                    CgroupError::Io { ref source, .. }
                        if source.kind() == io::ErrorKind::NotFound =>
                    {
                        Ok(())
                    }
                    e => Err(e),
                })?;
                write(&dir.join("pids.max"), &pids)?;
                let weight = dir.join("cpu.weight");
                if *cpu && weight.exists() {
                    write(&weight, &limits.cpu_weight.to_string())?;
                }
                (vec![dir.clone()], dir)
            }
            Layout::V1 {
                memory: mem_root,
                pids: pids_root,
                cpu,
            } => {
                let mut dirs = Vec::new();
                for root in [Some(mem_root), Some(pids_root), cpu.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    let parent = root.join(PARENT);
                    match fs::create_dir(&parent) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(io_err(&parent)(e)),
                    }
                    let dir = parent.join(name);
                    fresh_dir(&dir)?;
                    dirs.push(dir);
                }
                let mem = dirs[0].clone();
                write(&mem.join("memory.limit_in_bytes"), &memory)?;
                let memsw = mem.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &memory)?;
                }
                write(&dirs[1].join("pids.max"), &pids)?;
                if let Some(cpu_dir) = dirs.get(2) {
                    let shares = shares_for_weight(limits.cpu_weight).to_string();
                    write(&cpu_dir.join("cpu.shares"), &shares)?;
                }
                (dirs, mem)
            }
        };
        Ok(Cgroup {
            layout,
            dirs,
            memory_dir,
        })
    }

    /// Move `pid` (the sandbox's init, before it starts anything) into the group.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// How many processes the out-of-memory killer ended in the group.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.layout {
            Layout::V2 { .. } => "memory.events",
            Layout::V1 { .. } => "memory.oom_control",
        };
        fs::read_to_string(self.memory_dir.join(file))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Which hierarchy, and where: for the run's evidence.
    pub fn describe(&self) -> String {
        let version = match self.layout {
            Layout::V2 { .. } => "v2",
            Layout::V1 { .. } => "v1",
        };
        format!("{version}:{}", self.memory_dir.display())
    }
}

impl Drop for Cgroup {
    /// Remove the group once its processes are gone (they may take a moment to be released).
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        for dir in &self.dirs {
            while fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            cpu_seconds: 1,
            memory_bytes: 256 << 20,
            max_processes: 32,
            wall_clock_seconds: 1,
            grace_seconds: 0,
            max_output_bytes: 0,
            max_file_bytes: 1,
            max_open_files: 1,
        }
    }

    #[test]
    fn limits_come_from_the_request() {
        assert_eq!(
            decide(&limits()),
            CgroupLimits {
                memory_bytes: 256 << 20,
                pids: 33,
                cpu_weight: 100
            }
        );
        assert_eq!(shares_for_weight(100), 1024);
    }

    #[test]
    fn layouts_are_detected_v2_first_and_none_refuses() {
        let base = tempfile::tempdir().unwrap();
        assert!(matches!(detect(base.path()), Err(CgroupError::Unavailable)));
        for c in ["memory", "pids"] {
            fs::create_dir_all(base.path().join(c)).unwrap();
            fs::write(base.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        assert!(matches!(
            detect(base.path()).unwrap(),
            Layout::V1 { cpu: None, .. }
        ));
        fs::create_dir_all(base.path().join("unified")).unwrap();
        fs::write(base.path().join("unified/cgroup.controllers"), "hugetlb").unwrap();
        assert!(matches!(detect(base.path()).unwrap(), Layout::V1 { .. }));
        fs::write(base.path().join("cgroup.controllers"), "cpu memory pids io").unwrap();
        assert_eq!(
            detect(base.path()).unwrap(),
            Layout::V2 {
                root: base.path().to_path_buf(),
                cpu: true
            }
        );
    }
}
