//! The cogward engine: the HTTP API, the CLI, the Temporal worker, the history mirror and the
//! audit ledger writer and verifier. `main.rs` only parses flags and calls [`cli::main`].
//!
//! One run, by file: `runs/routes.rs` (`POST /v1/runs`) → `workflows/src/agent_run.rs` →
//! `activities/src/lib.rs` (`admit`, `start_runner`) → `activities/src/runner.rs` →
//! `runner/src/main.rs` → back as evidence → `audit/mirror.rs` → `audit/writer.rs`.
//!
//! Layout: `http/` is the operator API's surface (state, auth, its one error type, the router);
//! each service owns its routes and its SQL: `runs/`, `approvals/` (+ Slack and Jira callbacks),
//! `policy/`; `gateway/` has its own listener and never meets `http/`; `audit/` (ledger, writer,
//! verify, replay, checkpoint, mirror) depends on no service.

pub mod approvals;
pub mod audit;
pub mod cli;
pub mod config;
pub mod db;
pub mod dev;
pub mod egress;
pub mod gateway;
pub mod http;
pub mod http_server;
pub mod policy;
pub mod runs;
pub mod sse;
pub mod state_dir;
pub mod temporal;
pub mod worker;

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod layout {
    //! The import rules of docs/architecture.md ("Where the code goes"), checked on the source.

    use std::path::{Path, PathBuf};

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Lines of the files under `src/<dir>` (and `src/<dir>.rs`) that name `crate::<other>::`.
    fn imports(dir: &str, other: &str) -> Vec<String> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src.join(dir), &mut files);
        files.push(src.join(format!("{dir}.rs")));
        let needle = format!("crate::{other}::");
        files
            .iter()
            .filter_map(|f| Some((f, std::fs::read_to_string(f).ok()?)))
            .flat_map(|(f, text)| {
                text.lines()
                    .filter(|l| l.contains(&needle))
                    .map(|l| format!("{}: {}", f.display(), l.trim()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The operator API is `http/` and the services whose routes it serves.
    const OPERATOR_API: [&str; 4] = ["http", "runs", "approvals", "policy"];

    #[test]
    fn the_operator_api_and_the_gateway_never_import_each_other() {
        for dir in OPERATOR_API {
            assert_eq!(imports(dir, "gateway"), Vec::<String>::new(), "{dir}");
        }
        // The gateway uses the services (the policy decider), never their routes or the API.
        for routes in ["http", "runs::routes", "approvals", "policy::routes"] {
            assert_eq!(imports("gateway", routes), Vec::<String>::new(), "{routes}");
        }
        // The check sees what it looks for: the services do import the operator API's types,
        // and the gateway the policy decider.
        assert!(!imports("runs", "http").is_empty());
        assert!(!imports("gateway", "policy").is_empty());
    }

    #[test]
    fn the_audit_trail_depends_on_no_service_but_the_index_it_writes() {
        for service in ["http", "approvals", "policy", "gateway", "egress"] {
            assert_eq!(imports("audit", service), Vec::<String>::new(), "{service}");
        }
        // The mirror writes the runs index (status derived from history) through its store.
        let runs: Vec<String> = imports("audit", "runs");
        assert!(
            runs.iter().all(|l| l.contains("crate::runs::apply_index")),
            "{runs:?}"
        );
        assert!(!imports("audit", "db").is_empty());
    }
}
