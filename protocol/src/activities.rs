//! The activities' contracts: each activity's input, and (with the `activities` feature) the
//! definitions workflows schedule them by and the worker registers them under.
//!
//! The names are history: a workflow started by an earlier build schedules
//! `RunActivities::admit`, and a worker must still know it by that name. Changing one is a
//! breaking change of every open workflow.

use crate::runner::ProfileName;
use crate::spec::{PolicyRef, RunId, RunLimits, RunSpec, RuntimeSpec, Workspace};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `admit` activity's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdmitInput {
    pub run_id: RunId,
    pub spec: RunSpec,
    pub submitted_by: String,
}

/// The `start_runner` activity's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartRunnerInput {
    pub run_id: RunId,
    pub runtime: RuntimeSpec,
    pub inputs: BTreeMap<String, String>,
    pub limits: RunLimits,
    /// The admitted isolation profile.
    #[serde(default)]
    pub sandbox_profile: ProfileName,
    #[serde(default)]
    pub tenant: String,
    /// Secret references, resolved for `tenant` when the runner starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// For the run's manifest in the evidence store: the spec's digest and the policy that
    /// admitted it.
    #[serde(default)]
    pub spec_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission_policy: Option<PolicyRef>,
    /// What `work/` starts as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<Workspace>,
}

#[cfg(feature = "activities")]
mod definitions {
    use crate::approval::{GateNotice, OutcomeNotice, Posted};
    use crate::spec::{Admission, RunnerEvidence};
    use temporalio_common::ActivityError;
    use temporalio_macros::activity_definitions;

    /// The activities of the `AgentRun` and `Approval` workflows, as workflows name them
    /// (`RunActivities::admit`, …); `cogward-activities` implements each against its definition
    /// here, and the compiler checks that inputs and outputs agree.
    pub struct RunActivities;

    // These are declarations, not stubs: the SDK's `#[activity_definitions]` takes a signature
    // per activity and requires its body to be exactly `unimplemented!()` (it refuses any
    // other), re-emits it renamed (`__admit`, dead code) and never calls it. What runs is the
    // implementation in `cogward-activities` (`activities/src/lib.rs`), registered on the worker
    // under these definitions' names.
    #[activity_definitions]
    impl RunActivities {
        /// Ask the run-admission policy whether the run may start.
        #[activity]
        pub fn admit(input: super::AdmitInput) -> Result<Admission, ActivityError> {
            unimplemented!()
        }

        /// Tell the approvers of an approval's stage.
        #[activity]
        pub fn notify_approvers(notice: GateNotice) -> Result<Posted, ActivityError> {
            unimplemented!()
        }

        /// Update what was posted with the approval's outcome.
        #[activity]
        pub fn notify_outcome(notice: OutcomeNotice) -> Result<(), ActivityError> {
            unimplemented!()
        }

        /// Start the run's sandboxed runner (or find the one already started); its evidence.
        #[activity]
        pub fn start_runner(
            input: super::StartRunnerInput,
        ) -> Result<RunnerEvidence, ActivityError> {
            unimplemented!()
        }
    }

    /// The definitions' marker types, for `#[activity(definition = …)]`.
    pub mod markers {
        pub use super::run_activities::{Admit, NotifyApprovers, NotifyOutcome, StartRunner};
    }
}

#[cfg(feature = "activities")]
pub use definitions::{RunActivities, markers};
