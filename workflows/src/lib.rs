//! cogward's Temporal workflows. Deterministic only: time, randomness and I/O enter through
//! activities, timers, signals and queries, so any workflow can be replayed from its history.

pub mod agent_run;
pub mod approval;
pub mod history;

pub use agent_run::AgentRun;
pub use approval::Approval;

/// The task queue cogward's workers poll.
pub const TASK_QUEUE: &str = "cogward";

#[cfg(test)]
mod tests {
    use cogward_protocol::activities::RunActivities;
    use temporalio_common::ActivityDefinition;

    /// The activity names these workflows schedule, as recorded histories hold them (the
    /// worker registers its implementations under the same definitions); a rename would
    /// strand every open workflow.
    #[test]
    fn activity_names_are_the_ones_in_history() {
        assert_eq!(RunActivities::admit.name(), "RunActivities::admit");
        assert_eq!(
            RunActivities::start_runner.name(),
            "RunActivities::start_runner"
        );
        assert_eq!(
            RunActivities::notify_approvers.name(),
            "RunActivities::notify_approvers"
        );
        assert_eq!(
            RunActivities::notify_outcome.name(),
            "RunActivities::notify_outcome"
        );
    }
}
