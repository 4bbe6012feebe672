//! The cogward engine: the HTTP API, the CLI, the Temporal worker, the history mirror and the
//! audit ledger writer and verifier. `main.rs` only parses flags and calls [`cli::main`].
//!
//! One run, by file: `api/runs.rs` (`POST /v1/runs`) → `workflows/src/agent_run.rs` →
//! `activities/src/lib.rs` (`admit`, `start_runner`) → `activities/src/runner.rs` →
//! `runner/src/main.rs` → back as evidence → `mirror.rs` → `ledger/writer.rs`.

pub mod api;
pub mod cli;
pub mod config;
pub mod db;
pub mod dev;
pub mod egress;
pub mod gateway;
pub mod http_server;
pub mod ledger;
pub mod mirror;
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

    /// Lines of the files under `src/<dir>` (and `src/<dir>.rs`) that name `crate::<other>`.
    fn imports(dir: &str, other: &str) -> Vec<String> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src.join(dir), &mut files);
        files.push(src.join(format!("{dir}.rs")));
        let needle = format!("crate::{other}");
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

    #[test]
    fn the_operator_api_and_the_gateway_never_import_each_other() {
        assert_eq!(imports("api", "gateway"), Vec::<String>::new());
        assert_eq!(imports("gateway", "api"), Vec::<String>::new());
        // The check sees what it looks for: the API does import the ledger.
        assert!(!imports("api", "ledger").is_empty());
    }
}
