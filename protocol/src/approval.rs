//! What an `Approval` workflow decides, and the rule it decides by: the one home of the
//! approval types every crate shares (the workflow, the engine's API and callbacks, the
//! gateway, the mirror), and of [`Ballot::vote`], the pure function the workflow applies to
//! every decision it receives, unit-tested here.
//!
//! An approval is about one subject (a run's gate, one parked tool call); its workflow id is
//! derived from the subject, so asking twice is joining the same workflow. It asks a chain of
//! stages in turn (a group each, with a deadline); the first sufficient set of distinct approvers
//! decides (`required`, the two-person rule when 2); one rejection by an eligible approver
//! rejects; after the last stage's deadline it expires, which denies.

use crate::spec::{ApprovalDecision, ApprovalVerdict};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What an approval decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApprovalSubject {
    /// Whether run `run_id` may start.
    RunGate { run_id: String },
    /// Whether the parked tool call `call_id` of run `run_id` (bound to its tool, argument digest
    /// and the escalating policy's version) may be forwarded, once.
    ToolCall {
        run_id: String,
        call_id: String,
        tool: String,
        args_sha256: String,
        /// `module_sha256:data_sha256` of the tool-access policy that escalated it.
        policy: String,
    },
}

impl ApprovalSubject {
    /// The Approval workflow's id: derived from what it decides.
    pub fn workflow_id(&self) -> String {
        match self {
            Self::RunGate { run_id } => gate_workflow_id(run_id),
            Self::ToolCall {
                run_id, call_id, ..
            } => tool_call_workflow_id(run_id, call_id),
        }
    }

    pub fn run_id(&self) -> &str {
        match self {
            Self::RunGate { run_id } | Self::ToolCall { run_id, .. } => run_id,
        }
    }

    /// How approvers (and Slack buttons) name it: `run:<run id>`, `tool:<run id>:<call id>`.
    pub fn reference(&self) -> String {
        match self {
            Self::RunGate { run_id } => format!("run:{run_id}"),
            Self::ToolCall {
                run_id, call_id, ..
            } => format!("tool:{run_id}:{call_id}"),
        }
    }

    /// What it is about, for people: "Run `x`", "Tool call `t` of run `x`".
    pub fn described(&self) -> String {
        match self {
            Self::RunGate { run_id } => format!("Run `{run_id}`"),
            Self::ToolCall { run_id, tool, .. } => format!("Tool call `{tool}` of run `{run_id}`"),
        }
    }

    /// One line for people: Temporal's static summary, the Jira issue's summary.
    pub fn title(&self) -> String {
        match self {
            Self::RunGate { run_id } => format!("Approve cogward run {run_id}"),
            Self::ToolCall { run_id, tool, .. } => {
                format!("Approve tool call {tool} of cogward run {run_id}")
            }
        }
    }
}

pub const WORKFLOW_ID_PREFIX: &str = "approval-";

/// Every run gate's approval id begins so.
pub const GATE_ID_PREFIX: &str = "approval-gate-";

pub fn gate_workflow_id(run_id: &str) -> String {
    format!("{GATE_ID_PREFIX}{run_id}")
}

pub fn tool_call_workflow_id(run_id: &str, call_id: &str) -> String {
    format!("{WORKFLOW_ID_PREFIX}tool-{run_id}-{call_id}")
}

/// One stage of the escalation chain: who is asked, for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// The group whose members may decide; `None`: anyone who may approve in the tenant.
    pub group: Option<String>,
    pub timeout_seconds: u64,
}

/// The input of an `Approval` workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub subject: ApprovalSubject,
    pub tenant: String,
    pub agent: String,
    /// Who asked (the run's submitter): never an approver of it.
    pub requested_by: String,
    /// Why a human is asked: the policy's reasons.
    pub reasons: Vec<String>,
    /// The escalation chain, asked in order; at least one stage.
    pub stages: Vec<Stage>,
    /// How many distinct approvers must approve (2: the two-person rule).
    pub required: u32,
}

/// Signal `decide`: one person's decision, from one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vote {
    pub approver: String,
    /// The approver's groups, as the engine that authenticated them knows them.
    pub groups: Vec<String>,
    pub verdict: ApprovalVerdict,
    #[serde(default)]
    pub comment: Option<String>,
    /// `api`, `slack`, `jira`.
    pub channel: String,
    /// When the engine received it (RFC 3339).
    pub at: String,
}

impl Vote {
    pub fn decision(&self) -> ApprovalDecision {
        ApprovalDecision {
            verdict: self.verdict,
            approver: self.approver.clone(),
            comment: self.comment.clone(),
            channel: Some(self.channel.clone()),
        }
    }
}

/// How an approval ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalResult {
    Approved,
    Rejected,
    /// No sufficient decision before the last stage's deadline: denied.
    Expired,
    /// Its subject went away (the run was cancelled or ended).
    Cancelled,
}

impl ApprovalResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The workflow's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalOutcome {
    pub result: ApprovalResult,
    /// The votes that counted, in order; the last one decided.
    pub votes: Vec<Vote>,
    /// Decisions the workflow refused, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<(Vote, String)>,
    /// The stage it ended in (0-based).
    pub stage: usize,
}

impl ApprovalOutcome {
    /// The decision that settled it, if a person did.
    pub fn decision(&self) -> Option<ApprovalDecision> {
        match self.result {
            ApprovalResult::Approved | ApprovalResult::Rejected => {
                self.votes.last().map(Vote::decision)
            }
            _ => None,
        }
    }
}

/// The workflow's state, as its `state` query shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ballot {
    pub request: ApprovalRequest,
    /// The stage being asked (0-based).
    pub stage: usize,
    pub votes: Vec<Vote>,
    pub refused: Vec<(Vote, String)>,
    /// Set once decided (approved or rejected).
    pub result: Option<ApprovalResult>,
}

/// Why a vote does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Decided,
    SelfApproval,
    NotInGroup,
    AlreadyVoted,
}

impl Refusal {
    /// The API's error code for it.
    pub fn code(self) -> &'static str {
        match self {
            Self::Decided => "already_decided",
            Self::SelfApproval => "self_approval",
            Self::NotInGroup => "not_in_approval_group",
            Self::AlreadyVoted => "already_voted",
        }
    }
}

impl Ballot {
    pub fn new(request: ApprovalRequest) -> Self {
        Self {
            request,
            stage: 0,
            votes: Vec::new(),
            refused: Vec::new(),
            result: None,
        }
    }

    /// The group asked now.
    pub fn group(&self) -> Option<&str> {
        self.request
            .stages
            .get(self.stage)
            .and_then(|s| s.group.as_deref())
    }

    /// Whether `approver` (in `groups`) may vote now, and if not why.
    pub fn check(&self, approver: &str, groups: &[String]) -> Result<(), Refusal> {
        if self.result.is_some() {
            return Err(Refusal::Decided);
        }
        if approver == self.request.requested_by {
            return Err(Refusal::SelfApproval);
        }
        if let Some(group) = self.group()
            && !groups.iter().any(|g| g == group)
        {
            return Err(Refusal::NotInGroup);
        }
        if self.votes.iter().any(|v| v.approver == approver) {
            return Err(Refusal::AlreadyVoted);
        }
        Ok(())
    }

    /// Count `vote` if it may count (else keep it as refused); the result once decided.
    pub fn vote(&mut self, vote: Vote) -> Option<ApprovalResult> {
        if let Err(why) = self.check(&vote.approver, &vote.groups) {
            if why != Refusal::Decided {
                self.refused.push((vote, why.code().to_string()));
            }
            return self.result;
        }
        let verdict = vote.verdict;
        self.votes.push(vote);
        let approvals = self
            .votes
            .iter()
            .filter(|v| v.verdict == ApprovalVerdict::Approved)
            .count();
        self.result = match verdict {
            ApprovalVerdict::Rejected => Some(ApprovalResult::Rejected),
            ApprovalVerdict::Approved if approvals >= self.request.required.max(1) as usize => {
                Some(ApprovalResult::Approved)
            }
            ApprovalVerdict::Approved => None,
        };
        self.result
    }

    pub fn outcome(&self, result: ApprovalResult) -> ApprovalOutcome {
        ApprovalOutcome {
            result,
            votes: self.votes.clone(),
            refused: self.refused.clone(),
            stage: self.stage,
        }
    }
}

/// A group's approval rule (`channels.json` `groups`): how many of its members must approve, and
/// whom to ask, in order, when they do not decide in time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    #[serde(default)]
    pub required: u32,
    #[serde(default)]
    pub escalate_to: Vec<String>,
}

/// An approval's chain and count, as admission plans it for a run's gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalPlan {
    pub stages: Vec<Stage>,
    pub required: u32,
}

/// The rule key for requests no policy names a group for (anyone who may approve is asked).
pub const ANY_GROUP: &str = "*";

/// Every group's rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRules(pub BTreeMap<String, GroupRule>);

impl GroupRules {
    /// The escalation chain starting at `group` (a policy's, or none), each stage waiting
    /// `timeout_seconds`, and how many approvers it needs (at least `at_least`).
    pub fn chain(&self, group: Option<&str>, timeout_seconds: u64, at_least: u32) -> ApprovalPlan {
        let stage = |group: Option<&str>| Stage {
            group: group.map(str::to_string),
            timeout_seconds,
        };
        let rule = self.0.get(group.unwrap_or(ANY_GROUP));
        let mut stages = vec![stage(group)];
        for next in rule.map(|r| r.escalate_to.as_slice()).unwrap_or_default() {
            stages.push(stage(Some(next)));
        }
        let required = rule.map_or(0, |r| r.required).max(at_least).max(1);
        ApprovalPlan { stages, required }
    }
}

/// An approval asking a stage of its chain, as the approvers are told of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateNotice {
    pub request: ApprovalRequest,
    /// The stage asked (0-based): a later one is an escalation.
    pub stage: usize,
}

impl GateNotice {
    /// The group the stage asks, if it names one.
    pub fn group(&self) -> Option<&str> {
        self.request
            .stages
            .get(self.stage)
            .and_then(|s| s.group.as_deref())
    }

    /// The Jira label the webhook finds the subject by.
    pub fn label(&self) -> String {
        match &self.request.subject {
            ApprovalSubject::RunGate { run_id } => format!("cogward-run-{run_id}"),
            ApprovalSubject::ToolCall {
                run_id, call_id, ..
            } => format!("cogward-tool-{run_id}-{call_id}"),
        }
    }
}

/// Where the notice went (what to update later), or why it did not.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Posted {
    /// The Slack message: its channel id and `ts`.
    pub slack: Option<(String, String)>,
    /// The Jira issue's key.
    #[serde(default)]
    pub jira: Option<String>,
    /// Why a post failed, each.
    #[serde(default)]
    pub errors: Vec<String>,
}

/// The approval ended: what the posted messages should now say.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutcomeNotice {
    pub subject: ApprovalSubject,
    pub posted: Posted,
    /// `approved by alice (slack)`, `rejected by bob (api)`, `expired`, `cancelled`.
    pub outcome: String,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request(required: u32) -> ApprovalRequest {
        ApprovalRequest {
            subject: ApprovalSubject::RunGate {
                run_id: "run-1".into(),
            },
            tenant: "t".into(),
            agent: "a".into(),
            requested_by: "ci".into(),
            reasons: vec![],
            stages: vec![
                Stage {
                    group: Some("sec".into()),
                    timeout_seconds: 60,
                },
                Stage {
                    group: Some("leads".into()),
                    timeout_seconds: 60,
                },
            ],
            required,
        }
    }

    fn vote(who: &str, groups: &[&str], verdict: ApprovalVerdict) -> Vote {
        Vote {
            approver: who.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            verdict,
            comment: None,
            channel: "api".into(),
            at: "2026-12-01T00:00:00Z".into(),
        }
    }

    use ApprovalVerdict::{Approved, Rejected};

    #[test]
    fn two_distinct_approvers_release_a_two_person_approval_and_the_same_one_twice_does_not() {
        let mut b = Ballot::new(request(2));
        assert_eq!(b.vote(vote("alice", &["sec"], Approved)), None);
        assert_eq!(b.vote(vote("alice", &["sec"], Approved)), None);
        assert_eq!(b.refused.len(), 1);
        assert_eq!(b.refused[0].1, "already_voted");
        assert_eq!(
            b.vote(vote("bob", &["sec"], Approved)),
            Some(ApprovalResult::Approved)
        );
        let outcome = b.outcome(ApprovalResult::Approved);
        assert_eq!(outcome.votes.len(), 2);
        assert_eq!(outcome.decision().unwrap().approver, "bob");
        // Decided: later votes change nothing and are not kept.
        assert_eq!(
            b.vote(vote("carol", &["sec"], Rejected)),
            Some(ApprovalResult::Approved)
        );
        assert_eq!(b.votes.len(), 2);
    }

    #[test]
    fn the_requester_and_people_outside_the_asked_group_do_not_count() {
        let mut b = Ballot::new(request(1));
        assert_eq!(b.check("ci", &["sec".into()]), Err(Refusal::SelfApproval));
        assert_eq!(b.vote(vote("ci", &["sec"], Approved)), None);
        assert_eq!(b.vote(vote("mallory", &["dev"], Approved)), None);
        // Stage 1 asks the leads: a member of sec no longer counts, a lead does.
        b.stage = 1;
        assert_eq!(b.check("alice", &["sec".into()]), Err(Refusal::NotInGroup));
        assert_eq!(
            b.vote(vote("lee", &["leads"], Rejected)),
            Some(ApprovalResult::Rejected)
        );
        let codes: Vec<&str> = b.refused.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(codes, ["self_approval", "not_in_approval_group"]);
    }

    #[test]
    fn one_rejection_rejects_even_after_an_approval() {
        let mut b = Ballot::new(request(2));
        b.vote(vote("alice", &["sec"], Approved));
        assert_eq!(
            b.vote(vote("bob", &["sec"], Rejected)),
            Some(ApprovalResult::Rejected)
        );
        assert_eq!(
            b.outcome(ApprovalResult::Rejected)
                .decision()
                .unwrap()
                .verdict,
            Rejected
        );
    }

    #[test]
    fn a_groups_rule_gives_the_chain_and_the_count() {
        let rules: GroupRules =
            serde_json::from_str(r#"{"sec": {"required": 2, "escalate_to": ["leads", "ciso"]}}"#)
                .unwrap();
        let plan = rules.chain(Some("sec"), 30, 1);
        let groups: Vec<_> = plan.stages.iter().map(|s| s.group.as_deref()).collect();
        assert_eq!(groups, [Some("sec"), Some("leads"), Some("ciso")]);
        assert_eq!(plan.required, 2);
        let plan = rules.chain(None, 30, 0);
        assert_eq!(plan.stages.len(), 1);
        assert_eq!(plan.required, 1);
        let rules: GroupRules =
            serde_json::from_str(r#"{"*": {"required": 2, "escalate_to": ["leads"]}}"#).unwrap();
        let plan = rules.chain(None, 30, 0);
        let groups: Vec<_> = plan.stages.iter().map(|s| s.group.as_deref()).collect();
        assert_eq!((groups, plan.required), (vec![None, Some("leads")], 2));
        // A spec may ask for more approvers, never fewer.
        assert_eq!(rules.chain(Some("sec"), 30, 3).required, 3);
    }

    #[test]
    fn workflow_ids_are_derived_from_the_subject() {
        let gate = ApprovalSubject::RunGate {
            run_id: "run-1".into(),
        };
        assert_eq!(gate.workflow_id(), "approval-gate-run-1");
        assert_eq!(gate.reference(), "run:run-1");
        let call = ApprovalSubject::ToolCall {
            run_id: "run-1".into(),
            call_id: "c9".into(),
            tool: "fs.write".into(),
            args_sha256: "ab".into(),
            policy: "m:d".into(),
        };
        assert_eq!(call.workflow_id(), "approval-tool-run-1-c9");
        assert_eq!(call.reference(), "tool:run-1:c9");
    }
}
