//! Reading and validating `request.json`: everything that can be refused is refused here,
//! before the runner claims the run directory (`started`), so a bad request never starts anything.

use crate::sandbox::env::RUNNER_OWNED_VARS;
use cogward_protocol::runner::{GIT_DIR, PROTOCOL_VERSION, RunnerRequest};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("protocol version {got} is not supported (this runner speaks {PROTOCOL_VERSION})")]
    Protocol { got: u32 },
    #[error("run_id is empty")]
    EmptyRunId,
    #[error("argv is empty")]
    EmptyArgv,
    #[error("argv[0] is empty")]
    EmptyProgram,
    #[error("{what} contains a NUL byte")]
    Nul { what: String },
    #[error("env name {0:?} is invalid (empty, or contains '=')")]
    InvalidEnvName(String),
    #[error("env may not set {0}: the runner owns it")]
    ReservedEnv(String),
    #[error("limits.{0} must be greater than zero")]
    ZeroLimit(&'static str),
    #[error(
        "sandbox.host_ids {first}+{count} is empty, overflows or includes 0: the sandbox user must map to unprivileged host ids, never to root"
    )]
    BadIdRange { first: u32, count: u32 },
    #[error("sandbox.lease_dir {0:?} is not an absolute path")]
    BadLeaseDir(String),
    #[error("files: {0:?} is not a plain relative path (components of [A-Za-z0-9._-], no `..`)")]
    BadFilePath(String),
    #[error("gateway.upstream {0:?} is not a host:port socket address")]
    BadGatewayUpstream(String),
    #[error("gateway.port must not be 0")]
    ZeroGatewayPort,
    #[error(
        "secrets: {0:?} is not a plain file name ([A-Za-z0-9._-], not `.` or `..`), or named twice"
    )]
    BadSecretName(String),
    #[error("gateway.{0} must be greater than zero")]
    ZeroGatewayBound(&'static str),
    #[error(
        "checkout: the repository must be an absolute path and the commit a full hex commit id (got {0:?})"
    )]
    BadCheckout(String),
}

/// Read and validate `path`.
pub fn load(path: &Path) -> Result<RunnerRequest, RequestError> {
    let bytes = std::fs::read(path).map_err(|source| RequestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let request: RunnerRequest =
        serde_json::from_slice(&bytes).map_err(|source| RequestError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    validate(&request)?;
    Ok(request)
}

/// Refuse anything the sandbox could not apply faithfully. Checked up front because the child
/// side of the sandbox cannot report rich errors, and a request must never half-start.
pub fn validate(request: &RunnerRequest) -> Result<(), RequestError> {
    if request.protocol != PROTOCOL_VERSION {
        return Err(RequestError::Protocol {
            got: request.protocol,
        });
    }
    if request.run_id.is_empty() {
        return Err(RequestError::EmptyRunId);
    }
    check_no_nul("run_id", &request.run_id)?;
    let Some(program) = request.argv.first() else {
        return Err(RequestError::EmptyArgv);
    };
    if program.is_empty() {
        return Err(RequestError::EmptyProgram);
    }
    for (i, arg) in request.argv.iter().enumerate() {
        check_no_nul(&format!("argv[{i}]"), arg)?;
    }
    for (name, value) in &request.env {
        if name.is_empty() || name.contains('=') {
            return Err(RequestError::InvalidEnvName(name.clone()));
        }
        if RUNNER_OWNED_VARS.contains(&name.as_str()) {
            return Err(RequestError::ReservedEnv(name.clone()));
        }
        check_no_nul(&format!("env name {name:?}"), name)?;
        check_no_nul(&format!("env {name}"), value)?;
    }
    let limits = &request.limits;
    for (name, value) in [
        ("cpu_seconds", limits.cpu_seconds),
        ("memory_bytes", limits.memory_bytes),
        ("max_processes", limits.max_processes),
        ("wall_clock_seconds", limits.wall_clock_seconds),
    ] {
        if value == 0 {
            return Err(RequestError::ZeroLimit(name));
        }
    }
    let ids = request.sandbox.host_ids;
    if ids.first == 0 || ids.count == 0 || ids.first.checked_add(ids.count).is_none() {
        return Err(RequestError::BadIdRange {
            first: ids.first,
            count: ids.count,
        });
    }
    if !Path::new(&request.sandbox.lease_dir).is_absolute() {
        return Err(RequestError::BadLeaseDir(request.sandbox.lease_dir.clone()));
    }
    for path in request.files.keys() {
        if !is_plain_relative_path(path) || path.split('/').next() == Some(GIT_DIR) {
            return Err(RequestError::BadFilePath(path.clone()));
        }
    }
    if let Some(c) = &request.checkout {
        let hex =
            matches!(c.commit.len(), 40 | 64) && c.commit.bytes().all(|b| b.is_ascii_hexdigit());
        if !Path::new(&c.repository).is_absolute() || !hex {
            return Err(RequestError::BadCheckout(format!(
                "{} at {}",
                c.repository, c.commit
            )));
        }
    }
    for (path, contents) in &request.home_files {
        if !is_plain_relative_path(path) {
            return Err(RequestError::BadFilePath(path.clone()));
        }
        check_no_nul(&format!("home file {path}"), contents)?;
    }
    let mut names = std::collections::BTreeSet::new();
    for secret in &request.secrets {
        let name = secret.name.as_str();
        if !is_plain_relative_path(name) || name.contains('/') || !names.insert(name) {
            return Err(RequestError::BadSecretName(secret.name.clone()));
        }
    }
    for gateway in request.routes() {
        if gateway.upstream.parse::<std::net::SocketAddr>().is_err() {
            return Err(RequestError::BadGatewayUpstream(gateway.upstream.clone()));
        }
        if gateway.port == 0 {
            return Err(RequestError::ZeroGatewayPort);
        }
        for (name, value) in [
            ("max_connections", u64::from(gateway.max_connections)),
            (
                "first_byte_timeout_seconds",
                gateway.first_byte_timeout_seconds,
            ),
            ("idle_timeout_seconds", gateway.idle_timeout_seconds),
        ] {
            if value == 0 {
                return Err(RequestError::ZeroGatewayBound(name));
            }
        }
    }
    Ok(())
}

/// `a/b.json`, never `/abs`, `../x`, `a//b` or `./a`: every component a plain name.
fn is_plain_relative_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

fn check_no_nul(what: &str, s: &str) -> Result<(), RequestError> {
    if s.contains('\0') {
        return Err(RequestError::Nul {
            what: what.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use cogward_protocol::runner::{Limits, SandboxProfile};
    use std::collections::BTreeMap;

    fn request() -> RunnerRequest {
        RunnerRequest {
            protocol: PROTOCOL_VERSION,
            run_id: "run-1".into(),
            argv: vec!["true".into()],
            env: BTreeMap::new(),
            limits: Limits {
                cpu_seconds: 10,
                memory_bytes: 1 << 30,
                max_processes: 64,
                wall_clock_seconds: 60,
                grace_seconds: 2,
                max_output_bytes: 1 << 20,
                max_file_bytes: 1 << 20,
                max_open_files: 64,
            },
            sandbox: SandboxProfile::default(),
            gateway: None,
            egress_proxy: None,
            files: BTreeMap::new(),
            checkout: None,
            home_files: BTreeMap::new(),
            secrets: Vec::new(),
        }
    }

    #[test]
    fn a_plain_request_is_valid() {
        validate(&request()).unwrap();
    }

    #[test]
    fn wrong_protocol_is_refused() {
        let mut r = request();
        r.protocol = PROTOCOL_VERSION + 1;
        assert!(matches!(validate(&r), Err(RequestError::Protocol { .. })));
    }

    #[test]
    fn empty_argv_and_empty_program_are_refused() {
        let mut r = request();
        r.argv.clear();
        assert!(matches!(validate(&r), Err(RequestError::EmptyArgv)));
        r.argv = vec![String::new()];
        assert!(matches!(validate(&r), Err(RequestError::EmptyProgram)));
    }

    #[test]
    fn nul_bytes_are_refused_everywhere() {
        let mut r = request();
        r.argv.push("a\0b".into());
        assert!(matches!(validate(&r), Err(RequestError::Nul { .. })));
        let mut r = request();
        r.env.insert("X".into(), "a\0b".into());
        assert!(matches!(validate(&r), Err(RequestError::Nul { .. })));
    }

    #[test]
    fn files_must_stay_inside_the_work_dir() {
        for bad in ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "", "a b"] {
            let mut r = request();
            r.files.insert(bad.into(), "x".into());
            assert!(
                matches!(validate(&r), Err(RequestError::BadFilePath(_))),
                "{bad:?}"
            );
        }
        let mut r = request();
        r.files.insert(".codex/config.toml".into(), "x".into());
        validate(&r).unwrap();
        let mut r = request();
        r.home_files.insert("../.ssh/id".into(), "x".into());
        assert!(matches!(validate(&r), Err(RequestError::BadFilePath(_))));
        let mut r = request();
        r.home_files
            .insert(".codex/config.toml".into(), "a\0b".into());
        assert!(matches!(validate(&r), Err(RequestError::Nul { .. })));
    }

    #[test]
    fn runner_owned_and_malformed_env_names_are_refused() {
        for name in ["HOME", "COGWARD_RUN_ID"] {
            let mut r = request();
            r.env.insert(name.into(), "x".into());
            assert!(matches!(validate(&r), Err(RequestError::ReservedEnv(_))));
        }
        for name in ["", "A=B"] {
            let mut r = request();
            r.env.insert(name.into(), "x".into());
            assert!(matches!(validate(&r), Err(RequestError::InvalidEnvName(_))));
        }
        // PATH and LANG are defaults the request may override.
        let mut r = request();
        r.env.insert("PATH".into(), "/bin".into());
        r.env.insert("LANG".into(), "C".into());
        validate(&r).unwrap();
    }

    #[test]
    fn zero_limits_are_refused() {
        let mut r = request();
        r.limits.cpu_seconds = 0;
        assert!(matches!(
            validate(&r),
            Err(RequestError::ZeroLimit("cpu_seconds"))
        ));
        // A zero grace (SIGKILL right after SIGTERM) and zero output cap are legitimate.
        let mut r = request();
        r.limits.grace_seconds = 0;
        r.limits.max_output_bytes = 0;
        validate(&r).unwrap();
    }

    #[test]
    fn mapping_to_host_root_or_an_empty_range_is_refused() {
        for (first, count) in [(0, 10), (100_000, 0), (u32::MAX - 1, 5)] {
            let mut r = request();
            r.sandbox.host_ids = cogward_protocol::runner::IdRange { first, count };
            assert!(
                matches!(validate(&r), Err(RequestError::BadIdRange { .. })),
                "{first}+{count}"
            );
        }
        let mut r = request();
        r.sandbox.lease_dir = "relative/dir".into();
        assert!(matches!(validate(&r), Err(RequestError::BadLeaseDir(_))));
    }

    #[test]
    fn unknown_fields_are_refused_by_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("request.json");
        let mut value = serde_json::to_value(request()).unwrap();
        value["surprise"] = serde_json::json!(1);
        std::fs::write(&path, serde_json::to_vec(&value).unwrap()).unwrap();
        assert!(matches!(load(&path), Err(RequestError::Parse { .. })));
    }
}
