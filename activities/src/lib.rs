//! cogward's Temporal activities: every side effect of a workflow lives here, one file per
//! family. The types they take and return are in `cogward-protocol`, and so are the definitions
//! (names, inputs, outputs) each activity here is implemented against.
//!
//! Activities run at least once. Each one here is written so that a retry of the same run
//! attempt observes the first attempt's effect instead of repeating it.

pub mod admission;
pub mod agent_cli;
pub mod agent_events;
pub mod credential;
pub mod evidence;
pub mod notify;
pub mod runner;
pub mod secrets;
pub mod workspace;

use admission::PolicyDecider;
use cogward_protocol::activities::{AdmitInput, StartRunnerInput, markers};
use cogward_protocol::approval::{GateNotice, GroupRules, OutcomeNotice, Posted};
use cogward_protocol::runner::SandboxProfile;
use cogward_protocol::spec::{Admission, RunnerEvidence};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tracing::Instrument;

/// What the activities need from the engine's configuration.
#[derive(Debug, Clone)]
pub struct ActivitiesConfig {
    /// Run directories live under `<state_dir>/runs/<run id>`.
    pub state_dir: PathBuf,
    /// The `cogward-runner` binary.
    pub runner_bin: PathBuf,
    pub sandbox: SandboxProfile,
    /// Output cap per stream, in bytes.
    pub max_output_bytes: u64,
    /// RLIMIT_FSIZE and RLIMIT_NOFILE for every agent (engine-wide until the spec carries them).
    pub max_file_bytes: u64,
    pub max_open_files: u64,
    /// Where runs' secrets are resolved from (besides the environment; see [`secrets`]).
    pub secrets_file: Option<PathBuf>,
    /// How often the runner's events are read and the activity heartbeats.
    pub poll_interval: Duration,
    /// The gateway every run reaches its models and tools through; `None` leaves runs with no
    /// way out of their sandbox at all.
    pub gateway: Option<GatewayAccess>,
    /// Where the agent CLIs (the `claude-code` and `codex` runtimes) are installed.
    pub agent_clis: agent_cli::AgentClis,
    /// The repositories a run's workspace may check out ([`workspace`]).
    pub repositories_dir: PathBuf,
    /// Where approvals are posted ([`notify`]), if anywhere.
    pub posters: notify::Posters,
    /// Each approving group's rule: how many must approve, whom to escalate to.
    pub group_rules: GroupRules,
}

/// Where runners forward their sandbox's gateway port, and who issues and revokes run
/// credentials ([`credential`]).
#[derive(Clone)]
pub struct GatewayAccess {
    /// `host:port` of the engine's gateway, as the runner (in the host's network) reaches it.
    pub upstream: String,
    pub credentials: std::sync::Arc<dyn Credentials>,
    /// `host:port` of the engine's egress proxy, if it runs: the sandbox's second way out.
    pub egress_proxy: Option<String>,
}

impl std::fmt::Debug for GatewayAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayAccess")
            .field("upstream", &self.upstream)
            .field("egress_proxy", &self.egress_proxy)
            .finish_non_exhaustive()
    }
}

/// The engine's side of run credentials: a credential admits calls from when it is issued
/// (just before the runner starts) until it is revoked (as soon as the agent has exited, before
/// the run's evidence is returned), and at no other time.
pub trait Credentials: Send + Sync {
    /// Issue `run_id`'s credential (again, for a retried start); the credential.
    fn issue<'a>(
        &'a self,
        run_id: &'a str,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<String>>;
    /// Revoke it, and wait (bounded) for calls admitted before to be recorded.
    fn revoke<'a>(&'a self, run_id: &'a str) -> futures::future::BoxFuture<'a, anyhow::Result<()>>;
}

/// The activities of the `AgentRun` workflow, registered on the worker as one set.
#[derive(Debug, Clone)]
pub struct RunActivities {
    pub(crate) config: Arc<ActivitiesConfig>,
    policies: Arc<dyn PolicyDecider>,
}

impl RunActivities {
    pub fn new(config: ActivitiesConfig, policies: Arc<dyn PolicyDecider>) -> Self {
        Self {
            config: Arc::new(config),
            policies,
        }
    }
}

#[activities]
impl RunActivities {
    /// Ask the run-admission policy whether the run may start. The decision record (policy,
    /// module and data digests, request, decision, latency) goes into the activity result, and
    /// from workflow history into the audit ledger.
    #[activity(definition = markers::Admit)]
    pub async fn admit(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: AdmitInput,
    ) -> Result<Admission, ActivityError> {
        let record = self
            .policies
            .decide(admission::request(&input))
            .await
            .map_err(|e| ActivityError::from(e.context("deciding admission")))?;
        let admission = admission::verdict(&input.spec, record, &self.config.group_rules);
        tracing::info!(run_id = %input.run_id, verdict = ?admission.verdict, "admission decided");
        Ok(admission)
    }

    /// Tell the approvers of an approval's stage (Slack, Jira, as configured); never fails.
    #[activity(definition = markers::NotifyApprovers)]
    pub async fn notify_approvers(
        self: Arc<Self>,
        _ctx: ActivityContext,
        notice: GateNotice,
    ) -> Result<Posted, ActivityError> {
        Ok(notify::tell_gate(&self.config.posters, &notice).await)
    }

    /// Update what was posted with the approval's outcome; never fails.
    #[activity(definition = markers::NotifyOutcome)]
    pub async fn notify_outcome(
        self: Arc<Self>,
        _ctx: ActivityContext,
        notice: OutcomeNotice,
    ) -> Result<(), ActivityError> {
        notify::tell_outcome(&self.config.posters, &notice).await;
        Ok(())
    }

    /// Start the run's sandboxed runner (or find the one already started) and return its
    /// evidence. See [`crate::runner`].
    #[activity(definition = markers::StartRunner)]
    pub async fn start_runner(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: StartRunnerInput,
    ) -> Result<RunnerEvidence, ActivityError> {
        let span = tracing::info_span!("start_runner", run_id = %input.run_id, attempt = ctx.info().attempt);
        crate::runner::start_runner(&self.config, &ctx, input)
            .instrument(span)
            .await
    }
}
