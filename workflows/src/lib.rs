//! cogward's Temporal workflows. Deterministic only: time, randomness and I/O enter through
//! activities, timers, signals and queries, so any workflow can be replayed from its history.

pub mod agent_run;
pub mod approval;
pub mod history;

pub use agent_run::AgentRun;
pub use approval::Approval;

/// The task queue cogward's workers poll.
pub const TASK_QUEUE: &str = "cogward";
