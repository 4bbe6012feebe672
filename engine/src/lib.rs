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
