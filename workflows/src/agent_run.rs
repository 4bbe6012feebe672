//! `AgentRun`: one agent run, from admission to verdict.
//!
//! admit (local activity) → optional approval gate (an `Approval` child workflow) →
//! `StartRunner` (activity) → summary. A cancellation request stops the run wherever it is: at the
//! gate the run ends `cancelled`; while the runner works, the activity asks the runner to SIGTERM
//! the agent (SIGKILL after the grace) and the workflow waits for its evidence before ending.

pub mod history;

use crate::approval::Approval;
use cogward_protocol::activities::AdmitInput;
use cogward_protocol::activities::RunActivities;
use cogward_protocol::activities::StartRunnerInput;
use cogward_protocol::approval::{
    ApprovalOutcome, ApprovalPlan, ApprovalRequest, ApprovalResult, ApprovalSubject, Stage,
};
use cogward_protocol::runner::Outcome;
use cogward_protocol::spec::{
    Admission, AdmissionVerdict, ApprovalDecision, RunInput, RunStatus, RunSummary, RunnerEvidence,
    ToolApproval, ToolApprovalAsked, ToolApprovalRequest,
};
use futures::FutureExt;
use std::time::Duration;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityCancellationType, ActivityExecutionError, ActivityOptions, ApplicationFailure,
    ChildWorkflowOptions, LocalActivityOptions, ParentClosePolicy, SyncWorkflowContext,
    WorkflowCancellationToken, WorkflowContext, WorkflowContextView, WorkflowResult,
};

/// Time the activities get on top of the run's own limits before Temporal times them out.
const ACTIVITY_MARGIN: Duration = Duration::from_secs(60);
/// A runner's heartbeat timeout: a worker killed mid-run is noticed, and the activity retried on
/// another worker, after at most this long.
pub const RUNNER_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);

#[workflow]
#[derive(Default)]
pub struct AgentRun {
    summary: Option<RunSummary>,
    /// The decision that opened (or closed) the gate.
    approval: Option<ApprovalDecision>,
    /// Tool calls the gateway parked while the agent ran, with their decisions.
    tool_approvals: Vec<ToolApproval>,
    /// How many of them have their `Approval` child asked for.
    tool_children: usize,
    /// Whether the gate's `Approval` child has started.
    gate_started: bool,
    /// Call ids whose child's start has resolved, with Temporal's refusal if it did not start.
    tool_starts: Vec<(String, Option<String>)>,
}

impl AgentRun {
    fn running(&self) -> bool {
        self.summary
            .as_ref()
            .is_some_and(|s| s.status == RunStatus::Running)
    }

    /// Take a parked tool call's request (once per call id, while the agent runs); whether the
    /// call is now known.
    fn accept(&mut self, request: ToolApprovalRequest) -> bool {
        let known = self
            .tool_approvals
            .iter()
            .any(|a| a.request.call_id == request.call_id);
        if !known && self.running() {
            self.tool_approvals.push(ToolApproval {
                request,
                decision: None,
                result: None,
            });
            return true;
        }
        known
    }

    /// How the start of `call_id`'s child resolved: `None` if not yet.
    fn start_of(&self, call_id: &str) -> Option<ToolApprovalAsked> {
        self.tool_starts
            .iter()
            .find(|(id, _)| id == call_id)
            .map(|(_, refused)| match refused {
                None => ToolApprovalAsked::Started,
                Some(detail) => ToolApprovalAsked::NotStarted {
                    detail: detail.clone(),
                },
            })
    }

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

    /// Start the gate's `Approval` child for `request` (or join it: its id is the subject's)
    /// and wait for its outcome; `None` if the run was cancelled before it could start.
    async fn ask(ctx: &WorkflowContext<Self>, request: ApprovalRequest) -> Option<ApprovalOutcome> {
        let started = ctx
            .start_child_workflow(Approval::run, request.clone(), child_options(&request))
            .await
            .ok()?;
        ctx.state_mut(|s| s.gate_started = true);
        started.result().await.ok()
    }

    /// Wait for the runner while starting an `Approval` child for each tool call the gateway
    /// parks, and recording each one's decision as it comes.
    async fn while_running<F: std::future::Future>(
        ctx: &WorkflowContext<Self>,
        input: &RunInput,
        runner: F,
    ) -> F::Output {
        let mut runner = std::pin::pin!(runner.fuse());
        // The children's results, polled together with the SDK's own waker (`select_all`; a
        // `FuturesUnordered` would wake with its own, which the SDK refuses as nondeterministic).
        let mut children: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Decided>>>> =
            Vec::new();
        loop {
            let decided = {
                let child = async {
                    if children.is_empty() {
                        futures::future::pending::<()>().await;
                    }
                    let (decided, index, _) =
                        futures::future::select_all(children.iter_mut()).await;
                    Some((decided, index))
                }
                .fuse();
                temporalio_sdk::workflows::select! {
                    r = runner.as_mut() => return r,
                    asked = ctx.wait_condition(|s| s.tool_approvals.len() > s.tool_children) => match asked {
                        Ok(()) => None,
                        // Cancelled: the runner stops the agent, and the children are cancelled
                        // with the run; only the evidence is still to come.
                        Err(_) => return runner.await,
                    },
                    done = std::pin::pin!(child) => done,
                }
            };
            if let Some(((call_id, outcome), index)) = decided {
                drop(children.remove(index));
                let outcome: Option<ApprovalOutcome> = outcome;
                ctx.state_mut(|s| {
                    if let Some(a) = s
                        .tool_approvals
                        .iter_mut()
                        .find(|a| a.request.call_id == call_id)
                    {
                        a.decision = outcome.as_ref().and_then(ApprovalOutcome::decision);
                        a.result = outcome.map(|o| o.result);
                    }
                });
                continue;
            }
            let new: Vec<ToolApprovalRequest> = ctx.state_mut(|s| {
                let new = s.tool_approvals[s.tool_children..]
                    .iter()
                    .map(|a| a.request.clone())
                    .collect();
                s.tool_children = s.tool_approvals.len();
                new
            });
            for r in new {
                let request = ApprovalRequest {
                    subject: ApprovalSubject::ToolCall {
                        run_id: input.run_id.to_string(),
                        call_id: r.call_id.clone(),
                        tool: r.tool.clone(),
                        args_sha256: r.args_sha256.clone(),
                        policy: r.policy.clone(),
                    },
                    tenant: input.spec.tenant.clone(),
                    agent: input.spec.agent.clone(),
                    requested_by: input.submitted_by.clone(),
                    reasons: r.reasons.clone(),
                    stages: r.stages.clone(),
                    required: r.required,
                };
                let started = ctx
                    .start_child_workflow(Approval::run, request.clone(), child_options(&request))
                    .await;
                let refused = match started {
                    Ok(child) => {
                        let call_id = r.call_id.clone();
                        children.push(Box::pin(
                            child.result().map(move |outcome| (call_id, outcome.ok())),
                        ));
                        None
                    }
                    Err(e) => {
                        tracing::warn!(call_id = %r.call_id, error = %e,
                            "the approval of a parked tool call could not start");
                        Some(e.to_string())
                    }
                };
                ctx.state_mut(|s| s.tool_starts.push((r.call_id.clone(), refused)));
            }
        }
    }
}

/// A parked tool call's approval ended: its call id and outcome (none if the child failed).
type Decided = (String, Option<ApprovalOutcome>);

/// An approval's child options: its derived id, a readable summary and details in Temporal's
/// UI, and cancelled when the run closes.
fn child_options(request: &ApprovalRequest) -> ChildWorkflowOptions {
    let mut details = format!(
        "**{}**\n\nTenant `{}`, agent `{}`, requested by `{}`; {} distinct approver(s).\n\n",
        request.subject.title(),
        request.tenant,
        request.agent,
        request.requested_by,
        request.required
    );
    for (i, stage) in request.stages.iter().enumerate() {
        details.push_str(&format!(
            "{}. group `{}` for {}s\n",
            i + 1,
            stage.group.as_deref().unwrap_or("any approver"),
            stage.timeout_seconds
        ));
    }
    if !request.reasons.is_empty() {
        details.push_str(&format!("\nWhy: {}\n", request.reasons.join("; ")));
    }
    // Temporal shows at most 200 bytes of a summary: cut at a character boundary.
    let title = request.subject.title();
    let summary = title[..title.floor_char_boundary(200)].to_string();
    ChildWorkflowOptions::builder()
        .workflow_id(request.subject.workflow_id())
        .static_summary(summary)
        .static_details(details)
        .parent_close_policy(ParentClosePolicy::RequestCancel)
        .build()
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

        // 2. Approval gate: asked for by the spec, or required by the policy (`escalate`). An
        // `Approval` child workflow decides it (its chain and count planned at admission).
        if spec.requires_approval || escalated {
            Self::set_status(ctx, RunStatus::AwaitingApproval);
            let plan = admission.approval.clone().unwrap_or_else(|| ApprovalPlan {
                stages: vec![Stage {
                    group: admission.approval_group.clone(),
                    timeout_seconds: spec.approval_timeout_seconds,
                }],
                required: 1,
            });
            let request = ApprovalRequest {
                subject: ApprovalSubject::RunGate {
                    run_id: input.run_id.to_string(),
                },
                tenant: spec.tenant.clone(),
                agent: spec.agent.clone(),
                requested_by: input.submitted_by.clone(),
                reasons: admission.reasons.clone(),
                stages: plan.stages,
                required: plan.required,
            };
            let waited: u64 = request.stages.iter().map(|s| s.timeout_seconds).sum();
            let outcome = Self::ask(ctx, request).await;
            let outcome = match outcome {
                Some(o) => o,
                None => {
                    let reason = ctx.cancellation_token().reason();
                    return Self::finish(ctx, RunStatus::Cancelled, reason);
                }
            };
            ctx.state_mut(|s| s.approval = outcome.decision());
            match outcome.result {
                ApprovalResult::Approved => {}
                ApprovalResult::Rejected => {
                    return Self::finish(ctx, RunStatus::Rejected, None);
                }
                ApprovalResult::Cancelled => {
                    let reason = ctx.cancellation_token().reason();
                    return Self::finish(ctx, RunStatus::Cancelled, reason);
                }
                ApprovalResult::Expired => {
                    return Self::finish(
                        ctx,
                        RunStatus::Expired,
                        Some(format!("no approval within {waited}s")),
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
        let runner = ctx.execute_activity(
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
        );
        let result = Self::while_running(ctx, &input, runner).await;
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

    /// The gateway parked a tool call of this run's agent for approval: the run starts the
    /// call's `Approval` child (once per call id, while the agent runs), and the answer comes
    /// once that child has started, so the gateway then waits on the child's result directly.
    #[update]
    pub async fn ask_tool_approval(
        ctx: &mut WorkflowContext<Self>,
        request: ToolApprovalRequest,
    ) -> ToolApprovalAsked {
        let call_id = request.call_id.clone();
        if !ctx.state_mut(|s| s.accept(request)) {
            return ToolApprovalAsked::NotRunning;
        }
        // Cancelled: the answer is whatever the state says by then.
        let _ = ctx
            .wait_condition(|s| s.start_of(&call_id).is_some() || !s.running())
            .await;
        ctx.state(|s| s.start_of(&call_id))
            .unwrap_or(ToolApprovalAsked::NotRunning)
    }

    /// Whether the run's gate `Approval` has started, answered once it has or once the run is
    /// past its gate (denied, running, ended): a vote that arrives before the run asked for its
    /// approval (right after the submit) waits on this instead of retrying.
    #[update]
    pub async fn gate_asked(ctx: &mut WorkflowContext<Self>) -> bool {
        let _ = ctx
            .wait_condition(|s| {
                s.gate_started
                    || s.summary.as_ref().is_some_and(|s| {
                        !matches!(s.status, RunStatus::Pending | RunStatus::AwaitingApproval)
                    })
            })
            .await;
        ctx.state(|s| s.gate_started)
    }

    /// The same request as a signal, as gateways of builds before `ask_tool_approval` sent it:
    /// kept so that their runs' histories still replay (`audit replay`, a worker of this build
    /// resuming them); nothing of this build sends it.
    #[signal]
    pub fn request_tool_approval(
        &mut self,
        _ctx: &mut SyncWorkflowContext<Self>,
        request: ToolApprovalRequest,
    ) {
        self.accept(request);
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
