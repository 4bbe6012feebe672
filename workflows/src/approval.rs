//! `Approval`: one human decision, durable. Its id is derived from its subject (a run's gate,
//! one parked tool call), so a duplicate request joins it rather than starting another.
//!
//! Each stage of the escalation chain is told (Slack, Jira: `notify_approvers`) and waited for
//! until its deadline; then the next stage is asked; after the last it expires (= deny).
//! Decisions arrive as the `decide` signal from any channel (API, Slack, Jira) and are counted by
//! [`Ballot::vote`]: the requester never counts, only the asked group's members do, each person
//! once, one rejection rejects and `required` distinct approvals approve. What was posted is
//! updated with the outcome (`notify_outcome`). Cancelled (its run ended), it ends `cancelled`.

pub mod history;

use cogward_protocol::activities::RunActivities;
use cogward_protocol::approval::{ApprovalOutcome, ApprovalRequest, ApprovalResult, Ballot, Vote};
use cogward_protocol::approval::{GateNotice, OutcomeNotice, Posted};
use std::time::Duration;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityOptions, ApplicationFailure, SyncWorkflowContext, WorkflowContext, WorkflowContextView,
    WorkflowResult,
};

/// How long telling the approvers (or updating what they were told) may take.
pub(crate) const NOTIFY_TIMEOUT: Duration = Duration::from_secs(60);

#[workflow]
#[derive(Default)]
pub struct Approval {
    ballot: Option<Ballot>,
}

#[workflow_methods]
impl Approval {
    #[run]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        request: ApprovalRequest,
    ) -> WorkflowResult<ApprovalOutcome> {
        if request.stages.is_empty() {
            return Err(ApplicationFailure::new(anyhow::anyhow!(
                "an approval needs at least one stage"
            ))
            .into());
        }
        ctx.state_mut(|s| s.ballot = Some(Ballot::new(request.clone())));
        let mut posted: Vec<Posted> = Vec::new();
        let mut result = None;
        for (stage, asked) in request.stages.iter().enumerate() {
            ctx.state_mut(|s| {
                if let Some(b) = s.ballot.as_mut() {
                    b.stage = stage;
                }
            });
            let told = ctx.execute_activity(
                RunActivities::notify_approvers,
                GateNotice {
                    request: request.clone(),
                    stage,
                },
                ActivityOptions::with_start_to_close_timeout(NOTIFY_TIMEOUT).build(),
            );
            let wait = async {
                temporalio_sdk::workflows::select! {
                    _ = ctx.wait_condition(|s| s.ballot.as_ref().is_some_and(|b| b.result.is_some())) => {},
                    _ = ctx.timer(Duration::from_secs(asked.timeout_seconds)) => {},
                };
            };
            let (told, ()) = temporalio_sdk::workflows::join!(told, wait);
            if let Ok(p) = told
                && (p.slack.is_some() || p.jira.is_some())
            {
                posted.push(p);
            }
            result = ctx.state(|s| s.ballot.as_ref().and_then(|b| b.result));
            if result.is_some() || ctx.cancellation_token().is_cancelled() {
                break;
            }
        }
        let result = result.unwrap_or(if ctx.cancellation_token().is_cancelled() {
            ApprovalResult::Cancelled
        } else {
            ApprovalResult::Expired
        });
        let outcome = ctx.state(|s| s.ballot.as_ref().map(|b| b.outcome(result)));
        let outcome =
            outcome.ok_or_else(|| ApplicationFailure::new(anyhow::anyhow!("no ballot")))?;
        let text = match outcome.decision() {
            Some(d) => format!(
                "{} by {} ({})",
                result.as_str(),
                outcome
                    .votes
                    .iter()
                    .filter(|v| v.verdict == d.verdict)
                    .map(|v| v.approver.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                d.channel.as_deref().unwrap_or("api")
            ),
            None => result.as_str().to_string(),
        };
        for posted in posted {
            let _ = ctx
                .execute_activity(
                    RunActivities::notify_outcome,
                    OutcomeNotice {
                        subject: request.subject.clone(),
                        posted,
                        outcome: text.clone(),
                    },
                    ActivityOptions::with_start_to_close_timeout(NOTIFY_TIMEOUT).build(),
                )
                .await;
        }
        Ok(outcome)
    }

    /// One person's decision; counted if it may count (see [`Ballot::vote`]), else kept as
    /// refused.
    #[signal]
    pub fn decide(&mut self, _ctx: &mut SyncWorkflowContext<Self>, vote: Vote) {
        if let Some(b) = self.ballot.as_mut() {
            b.vote(vote);
        }
    }

    /// The request, the stage asked, the votes so far and the result once decided.
    #[query]
    pub fn state(&self, _ctx: &WorkflowContextView) -> Option<Ballot> {
        self.ballot.clone()
    }
}
