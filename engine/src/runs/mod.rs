//! Runs: the operator API's routes for them (`routes`: submit, list, show, cancel, approve,
//! history; `events`: the live event stream; `evidence`: the run directory's evidence), and their
//! index (`store`: the `runs` table's SQL).

pub mod events;
pub mod evidence;
pub mod routes;
mod store;

pub use store::{RunFilter, RunRecord, Runs, apply_index};
