//! `AgentRun`: one agent run, from admission to verdict.
//!
//! admit (local activity) → optional approval gate (`approve` / `reject` signals, deadline timer) →
//! `StartRunner` (activity) → summary. A cancellation request stops the run wherever it is: at the
//! gate the run ends `cancelled`; while the runner works, the activity asks the runner to SIGTERM
//! the agent (SIGKILL after the grace) and the workflow waits for its evidence before ending.

use cogward_activities::RunActivities;
use cogward_activities::admission::AdmitInput;
use cogward_activities::notify::{GateNotice, OutcomeNotice};
use cogward_activities::runner::StartRunnerInput;
use cogward_activities::spec::{
    Admission, AdmissionVerdict, ApprovalDecision, ApprovalSignal, ApprovalVerdict, RunInput,
    RunStatus, RunSummary, RunnerEvidence, ToolApproval, ToolApprovalRequest, ToolCallDecision,
};
use cogward_runner::protocol::Outcome;
use std::time::Duration;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityCancellationType, ActivityExecutionError, ActivityOptions, ApplicationFailure,
    LocalActivityOptions, SyncWorkflowContext, WorkflowCancellationToken, WorkflowContext,
    WorkflowContextView, WorkflowResult,
};

/// Time the activities get on top of the run's own limits before Temporal times them out.
const ACTIVITY_MARGIN: Duration = Duration::from_secs(60);
/// A runner's heartbeat timeout: a worker killed mid-run is noticed, and the activity retried on
/// another worker, after at most this long.
pub const RUNNER_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long telling the approvers (or updating what they were told) may take.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(60);

#[workflow]
#[derive(Default)]
pub struct AgentRun {
    summary: Option<RunSummary>,
    /// The first approve/reject received while the gate was open.
    approval: Option<ApprovalDecision>,
    /// Tool calls the gateway parked while the agent ran, with their decisions.
    tool_approvals: Vec<ToolApproval>,
}

impl AgentRun {
    fn set_status(ctx: &WorkflowContext<Self>, status: RunStatus) {
        ctx.state_mut(|s| {
            if let Some(summary) = s.summary.as_mut() {
                summary.status = status;
            }
        });
    }

    fn finish(
        ctx: &WorkflowContext<Self>,
        status: RunStatus,
        reason: Option<String>,
    ) -> WorkflowResult<RunSummary> {
        ctx.state_mut(|s| {
            let approval = s.approval.clone();
            let tool_approvals = s.tool_approvals.clone();
            let summary = s.summary.as_mut().map(|summary| {
                summary.status = status;
                summary.reason = reason;
                summary.approval = approval;
                summary.tool_approvals = tool_approvals;
                summary.clone()
            });
            summary.ok_or_else(|| {
                ApplicationFailure::new(anyhow::anyhow!("run summary missing")).into()
            })
        })
    }

    fn record_approval(&mut self, verdict: ApprovalVerdict, signal: ApprovalSignal) {
        let gate_open = self
            .summary
            .as_ref()
            .is_some_and(|s| s.status == RunStatus::AwaitingApproval);
        if gate_open && self.approval.is_none() {
            self.approval = Some(ApprovalDecision {
                verdict,
                approver: signal.approver,
                comment: signal.comment,
                channel: signal.channel,
            });
        }
    }
}

/// How the runner's evidence translates to the run's verdict.
pub fn verdict(evidence: &RunnerEvidence) -> (RunStatus, Option<String>) {
    match evidence {
        RunnerEvidence::Finished(r) => match (r.outcome, r.exit_code) {
            (Outcome::Exited, Some(0)) => (RunStatus::Succeeded, None),
            (Outcome::Exited, code) => (
                RunStatus::Failed,
                Some(format!("agent exited with code {}", code.unwrap_or(-1))),
            ),
            (Outcome::Signaled, _) => (
                RunStatus::Failed,
                Some(format!("agent killed by signal {}", r.signal.unwrap_or(0))),
            ),
            (Outcome::TimedOut, _) => (
                RunStatus::Failed,
                Some("agent exceeded its wall-clock limit".into()),
            ),
            (Outcome::Cancelled, _) => (RunStatus::Cancelled, None),
            (Outcome::OutOfMemory, _) => (
                RunStatus::Failed,
                Some(format!(
                    "agent ran out of memory: {}",
                    r.detail.clone().unwrap_or_default()
                )),
            ),
            (Outcome::SandboxFailed, _) => (
                RunStatus::Failed,
                Some(format!(
                    "sandbox could not be set up: {}",
                    r.detail.clone().unwrap_or_default()
                )),
            ),
        },
        RunnerEvidence::Lost { detail } => (RunStatus::Failed, Some(detail.clone())),
        RunnerEvidence::NotStarted { detail } => (
            RunStatus::Failed,
            Some(format!("the runner was not started: {detail}")),
        ),
    }
}

#[workflow_methods]
impl AgentRun {
    #[run]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: RunInput,
    ) -> WorkflowResult<RunSummary> {
        let spec = input.spec.clone();
        ctx.state_mut(|s| {
            s.summary = Some(RunSummary {
                run_id: input.run_id.clone(),
                agent: spec.agent.clone(),
                tenant: spec.tenant.clone(),
                status: RunStatus::Pending,
                reason: None,
                admission: None,
                approval: None,
                evidence: None,
                tool_approvals: Vec::new(),
            })
        });

        // 1. Admission, decided by the run-admission policy: a local activity, so the decision
        // costs no extra workflow task; it is recorded in history as a marker with its result.
        let admission: Admission = ctx
            .execute_local_activity(
                RunActivities::admit,
                AdmitInput {
                    run_id: input.run_id.clone(),
                    spec: spec.clone(),
                    submitted_by: input.submitted_by.clone(),
                },
                LocalActivityOptions::builder()
                    .start_to_close_timeout(Duration::from_secs(10))
                    .build(),
            )
            .await?;
        let denied = admission.verdict == AdmissionVerdict::Deny;
        let escalated = admission.verdict == AdmissionVerdict::Escalate;
        let reasons = admission.reasons.join("; ");
        ctx.state_mut(|s| {
            if let Some(summary) = s.summary.as_mut() {
                summary.admission = Some(admission.clone());
            }
        });
        if denied {
            return Self::finish(ctx, RunStatus::Denied, Some(reasons));
        }

        // 2. Approval gate: asked for by the spec, or required by the policy (`escalate`).
        if spec.requires_approval || escalated {
            Self::set_status(ctx, RunStatus::AwaitingApproval);
            let deadline = Duration::from_secs(spec.approval_timeout_seconds);
            // The approvers are told (Slack, if configured) while the gate waits.
            let notice = GateNotice {
                run_id: input.run_id.to_string(),
                tenant: spec.tenant.clone(),
                agent: spec.agent.clone(),
                submitted_by: input.submitted_by.clone(),
                group: admission.approval_group.clone(),
                reasons: admission.reasons.clone(),
            };
            let told = ctx.execute_activity(
                RunActivities::notify_approvers,
                notice,
                ActivityOptions::with_start_to_close_timeout(NOTIFY_TIMEOUT).build(),
            );
            let gate = async {
                temporalio_sdk::workflows::select! {
                    _ = ctx.wait_condition(|s| s.approval.is_some()) => {},
                    _ = ctx.timer(deadline) => {},
                };
            };
            let (posted, ()) = temporalio_sdk::workflows::join!(told, gate);
            let decided = ctx.state(|s| s.approval.clone());
            if let Ok(posted) = posted
                && (posted.slack.is_some() || posted.jira.is_some())
            {
                let outcome = match &decided {
                    Some(d) => format!(
                        "{} by {} ({})",
                        match d.verdict {
                            ApprovalVerdict::Approved => "approved",
                            ApprovalVerdict::Rejected => "rejected",
                        },
                        d.approver,
                        d.channel.as_deref().unwrap_or("api")
                    ),
                    None if ctx.cancellation_token().is_cancelled() => "cancelled".into(),
                    None => "expired".into(),
                };
                let _ = ctx
                    .execute_activity(
                        RunActivities::notify_outcome,
                        OutcomeNotice {
                            run_id: input.run_id.to_string(),
                            posted,
                            outcome,
                        },
                        ActivityOptions::with_start_to_close_timeout(NOTIFY_TIMEOUT).build(),
                    )
                    .await;
            }
            let verdict = decided.map(|a| a.verdict);
            match verdict {
                Some(ApprovalVerdict::Approved) => {}
                Some(ApprovalVerdict::Rejected) => {
                    return Self::finish(ctx, RunStatus::Rejected, None);
                }
                None if ctx.cancellation_token().is_cancelled() => {
                    let reason = ctx.cancellation_token().reason();
                    return Self::finish(ctx, RunStatus::Cancelled, reason);
                }
                None => {
                    return Self::finish(
                        ctx,
                        RunStatus::Expired,
                        Some(format!("no approval within {}s", deadline.as_secs())),
                    );
                }
            }
        }
        if ctx.cancellation_token().is_cancelled() {
            let reason = ctx.cancellation_token().reason();
            return Self::finish(ctx, RunStatus::Cancelled, reason);
        }

        // 3. The runner. Cancellation reaches the activity (which stops the agent gracefully)
        // and the workflow waits for the evidence of that stop.
        Self::set_status(ctx, RunStatus::Running);
        let limits = admission.limits;
        let timeout = Duration::from_secs(limits.wall_clock_seconds + 2 * limits.grace_seconds)
            + ACTIVITY_MARGIN;
        let result = ctx
            .execute_activity(
                RunActivities::start_runner,
                StartRunnerInput {
                    run_id: input.run_id.clone(),
                    runtime: spec.runtime.clone(),
                    inputs: spec.inputs.clone(),
                    limits,
                    sandbox_profile: spec.sandbox_profile,
                    tenant: spec.tenant.clone(),
                    secrets: spec.secrets.clone(),
                    spec_sha256: admission.spec_sha256.clone(),
                    admission_policy: admission.decision.policy.clone(),
                    workspace: spec.workspace.clone(),
                },
                ActivityOptions::with_start_to_close_timeout(timeout)
                    .heartbeat_timeout(RUNNER_HEARTBEAT_TIMEOUT)
                    .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
                    .build(),
            )
            .await;
        let evidence: RunnerEvidence = match result {
            Ok(evidence) => evidence,
            Err(ActivityExecutionError::Cancelled(_)) => {
                let reason = ctx.cancellation_token().reason();
                return Self::finish(ctx, RunStatus::Cancelled, reason);
            }
            Err(e) => return Err(e.into()),
        };
        let (mut status, mut reason) = verdict(&evidence);
        ctx.state_mut(|s| {
            if let Some(summary) = s.summary.as_mut() {
                summary.evidence = Some(evidence.clone());
            }
        });
        let token: WorkflowCancellationToken = ctx.cancellation_token();
        if token.is_cancelled() {
            status = RunStatus::Cancelled;
            reason = token.reason().or(reason);
        }
        Self::finish(ctx, status, reason)
    }

    #[signal]
    pub fn approve(&mut self, _ctx: &mut SyncWorkflowContext<Self>, signal: ApprovalSignal) {
        self.record_approval(ApprovalVerdict::Approved, signal);
    }

    #[signal]
    pub fn reject(&mut self, _ctx: &mut SyncWorkflowContext<Self>, signal: ApprovalSignal) {
        self.record_approval(ApprovalVerdict::Rejected, signal);
    }

    /// The gateway parked a tool call of this run's agent for approval. Accepted while the
    /// agent runs, once per call id.
    #[signal]
    pub fn request_tool_approval(
        &mut self,
        _ctx: &mut SyncWorkflowContext<Self>,
        request: ToolApprovalRequest,
    ) {
        let running = self
            .summary
            .as_ref()
            .is_some_and(|s| s.status == RunStatus::Running);
        let known = self
            .tool_approvals
            .iter()
            .any(|a| a.request.call_id == request.call_id);
        if running && !known {
            self.tool_approvals.push(ToolApproval {
                request,
                decision: None,
            });
        }
    }

    /// A human decided a parked tool call; the first decision stands.
    #[signal]
    pub fn decide_tool_call(
        &mut self,
        _ctx: &mut SyncWorkflowContext<Self>,
        decision: ToolCallDecision,
    ) {
        if let Some(a) = self
            .tool_approvals
            .iter_mut()
            .find(|a| a.request.call_id == decision.call_id && a.decision.is_none())
        {
            a.decision = Some(ApprovalDecision {
                verdict: decision.verdict,
                approver: decision.approver,
                comment: decision.comment,
                channel: decision.channel,
            });
        }
    }

    /// The run's current phase and summary.
    #[query]
    pub fn status(&self, _ctx: &WorkflowContextView) -> Option<RunSummary> {
        self.summary.clone().map(|mut s| {
            s.approval = self.approval.clone();
            s.tool_approvals = self.tool_approvals.clone();
            s
        })
    }
}
