//! The gateway: the only way an agent in a runner reaches models and tools.
//!
//! Every call arrives with the run's credential (issued when its runner starts, revoked when
//! its agent exits; see `cogward_activities::credential` and [`keys`]), is decided by the
//! policies bound for the run's tenant and agent, and is recorded in order: its intent (the
//! decisions as `policy.decision` entries `cogward policy replay` re-evaluates, and a
//! `gateway.call_intent` entry with its reservation, plus its `gateway_calls` journal row) before
//! anything is forwarded — a call whose intent cannot be recorded is refused — and its outcome
//! (`gateway.*_call`, the journal row settled) before its answer is released, through the
//! [`spool`] when the ledger cannot take it. A refused call is recorded once, decisions and
//! outcome together.
//!
//! [`model`] serves the provider APIs (Anthropic Messages, OpenAI Chat Completions and
//! Responses); [`mcp`] serves MCP to agents and [`upstream`] reaches the MCP servers.

pub mod config;
pub mod json;
pub mod keys;
pub mod mcp;
pub mod model;
pub mod obligations;
pub mod rpc;
pub mod spool;
pub mod upstream;

use crate::audit::writer::JournalRow;
use crate::audit::{Ledger, NewEntry};
use crate::db::Db;
use crate::policy::Policies;
use anyhow::{Context, Result};
use axum::http::HeaderMap;
use cogward_policy_abi::Request;
use cogward_protocol::approval::GroupRules;
use cogward_protocol::audit::{
    AuditBody, AuditEvent, GatewayCall, GatewayCallIntent, GatewayCallSettled, PolicyApplied,
    Reserved, Tokens,
};
use cogward_protocol::spec::{DecisionRecord, RunStatus};
use config::GatewayConfig;
use serde_json::{Value, json};
use sqlx::Row;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ADMISSION_STRIPES: usize = 64;

pub struct Gateway {
    pub db: Db,
    pub ledger: Ledger,
    pub policies: Arc<Policies>,
    pub config: GatewayConfig,
    pub namespace: String,
    keys: Arc<keys::KeyRing>,
    http: reqwest::Client,
    pub upstreams: upstream::Upstreams,
    /// MCP session id → its run and what its client declared (the database is the record;
    /// this saves a read per request).
    pub sessions: Mutex<HashMap<String, mcp::SessionInfo>>,
    /// Server requests relayed to an agent, by the id the agent got: its run and session, and
    /// where its answer goes.
    pub relays: Mutex<HashMap<String, mcp::PendingRelay>>,
    /// Agent requests in flight that the agent may cancel: by (session, request id as JSON).
    pub cancels: Mutex<HashMap<(String, String), mcp::CancelSender>>,
    /// Outcomes the ledger could not take yet.
    pub spool: spool::Spool,
    /// Where a parked tool call's `Approval` is started or joined.
    pub temporal: crate::temporal::TemporalHandle,
    /// Each approving group's rule, for the chain a parked call's approval asks.
    pub group_rules: GroupRules,
    /// Serialises each tenant's budget decisions with their reservations (striped by tenant),
    /// so concurrent calls cannot all spend the same headroom.
    admission: Vec<tokio::sync::Mutex<()>>,
}

/// The run a call is made for.
#[derive(Debug, Clone, PartialEq)]
pub struct RunIdentity {
    pub run_id: String,
    pub tenant: String,
    pub agent: String,
    /// The MCP servers the run's spec names (an agent-CLI task's `mcp_servers`); `None` for a
    /// `command` runtime, which may use every server of its tenant.
    pub mcp_servers: Option<Vec<String>>,
}

impl RunIdentity {
    /// Whether the run may reach the catalog's MCP server `name` (its tenant's catalog
    /// decides first).
    pub fn may_use_server(&self, name: &str) -> bool {
        self.mcp_servers
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }
}

/// The MCP servers a run's stored spec names, if its runtime is an agent CLI.
fn spec_mcp_servers(spec: &str) -> Option<Vec<String>> {
    let spec: cogward_protocol::spec::RunSpec = serde_json::from_str(spec).ok()?;
    spec.runtime.task().map(|t| t.mcp_servers.clone())
}

impl RunIdentity {
    /// A policy request about a call of this run's agent (principal `run:<id>`).
    pub fn request(&self, kind: &str, action: &str, resource: Value, context: Value) -> Request {
        Request {
            kind: kind.into(),
            tenant: self.tenant.clone(),
            principal: format!("run:{}", self.run_id),
            agent: self.agent.clone(),
            action: action.into(),
            resource,
            context,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CredentialError {
    #[error("no run credential was presented")]
    Missing,
    #[error("the run credential is not valid")]
    Invalid,
    #[error("run {0} has ended (or its agent has exited); its credential no longer admits calls")]
    Ended(String),
    #[error("run {0}'s agent has not started; its credential admits no calls yet")]
    NotIssued(String),
}

/// The engine's run credentials: minted under the key file's current key, issued and revoked
/// in `run_credentials` (shared by every engine process of the installation).
pub struct RunCredentials {
    pub db: Db,
    pub keys: Arc<keys::KeyRing>,
}

/// How long a revocation waits for calls admitted before it to be recorded.
const REVOKE_SETTLE: Duration = Duration::from_secs(10);

impl cogward_activities::Credentials for RunCredentials {
    fn issue<'a>(&'a self, run_id: &'a str) -> futures::future::BoxFuture<'a, Result<String>> {
        Box::pin(async move {
            let (credential, key_id) = self.keys.mint(run_id)?;
            sqlx::query(
                "INSERT INTO run_credentials (run_id, key_id, issued_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (run_id) DO UPDATE SET key_id = excluded.key_id, \
                 issued_at = excluded.issued_at, revoked_at = NULL",
            )
            .bind(run_id)
            .bind(&key_id)
            .bind(crate::now_rfc3339())
            .execute(&self.db.pool)
            .await
            .context("issuing a run credential")?;
            Ok(credential)
        })
    }

    /// Revoke, then wait until the run's calls admitted before have their outcomes, so no
    /// gateway entry of the run follows its evidence unless one outlives the bound. By now the
    /// agent's connections are closed (its runner has exited), so a call not yet past its
    /// intent is dropped with its connection.
    fn revoke<'a>(&'a self, run_id: &'a str) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE run_credentials SET revoked_at = $2 WHERE run_id = $1 AND revoked_at IS NULL",
            )
            .bind(run_id)
            .bind(crate::now_rfc3339())
            .execute(&self.db.pool)
            .await
            .context("revoking a run credential")?;
            let deadline = Instant::now() + REVOKE_SETTLE;
            while Instant::now() < deadline {
                let pending: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM gateway_calls WHERE run_id = $1 AND outcome = 'pending'",
                )
                .bind(run_id)
                .fetch_one(&self.db.pool)
                .await?;
                if pending == 0 {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tracing::warn!(
                run_id,
                "calls of an exited agent are still in flight; its evidence goes first"
            );
            Ok(())
        })
    }
}

/// The credential a request carries: `Authorization: Bearer …` (OpenAI clients, MCP) or
/// `x-api-key` (Anthropic clients).
pub fn presented_credential(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .map(str::trim)
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        db: Db,
        ledger: Ledger,
        policies: Arc<Policies>,
        config: GatewayConfig,
        namespace: String,
        spool_dir: std::path::PathBuf,
        keys: Arc<keys::KeyRing>,
        temporal: crate::temporal::TemporalHandle,
        group_rules: GroupRules,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .context("building the gateway's HTTP client")?;
        let upstreams =
            upstream::Upstreams::new(ledger.clone(), namespace.clone(), config.breaker)?;
        Ok(Self {
            db,
            ledger,
            policies,
            config,
            namespace,
            keys,
            http,
            upstreams,
            sessions: Mutex::new(HashMap::new()),
            relays: Mutex::new(HashMap::new()),
            cancels: Mutex::new(HashMap::new()),
            spool: spool::Spool::open(spool_dir)?,
            temporal,
            group_rules,
            admission: (0..ADMISSION_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        })
    }

    /// Hold while deciding a call against its tenant's and run's budgets and recording its
    /// reservation.
    pub async fn admission_lock(&self, tenant: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tenant.hash(&mut h);
        self.admission[(h.finish() % ADMISSION_STRIPES as u64) as usize]
            .lock()
            .await
    }

    /// The run a call is for: its credential must verify under the key, name a known run, and
    /// that run must not have ended.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<RunIdentity, AuthFailure> {
        let presented = presented_credential(headers).ok_or(CredentialError::Missing)?;
        self.authenticate_credential(presented).await
    }

    /// [`Gateway::authenticate`] for a credential however it was presented (the egress proxy
    /// reads it from the runner's preamble).
    pub async fn authenticate_credential(
        &self,
        presented: &str,
    ) -> Result<RunIdentity, AuthFailure> {
        let run_id = self
            .keys
            .verify(presented)
            .ok_or(CredentialError::Invalid)?;
        // Read on every call: a revocation (the agent exited) or the run's end holds from the
        // next call on.
        let row = sqlx::query(
            "SELECT r.tenant, r.agent, r.status, r.spec, c.run_id AS issued, c.revoked_at FROM runs r \
             LEFT JOIN run_credentials c ON c.run_id = r.run_id WHERE r.run_id = $1",
        )
        .bind(run_id)
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or(CredentialError::Invalid)?;
        let status: String = row.try_get("status")?;
        let revoked: Option<String> = row.try_get("revoked_at")?;
        let issued: Option<String> = row.try_get("issued")?;
        let ended = RunStatus::parse(&status).is_none_or(RunStatus::is_terminal);
        if ended || revoked.is_some() {
            return Err(CredentialError::Ended(run_id.to_string()).into());
        }
        if issued.is_none() {
            return Err(CredentialError::NotIssued(run_id.to_string()).into());
        }
        Ok(RunIdentity {
            run_id: run_id.to_string(),
            tenant: row.try_get("tenant")?,
            agent: row.try_get("agent")?,
            mcp_servers: spec_mcp_servers(&row.try_get::<String, _>("spec")?),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Record a permitted call's intent before anything is forwarded: its decisions, and a
    /// `gateway.call_intent` entry with what it reserves, plus its journal row (outcome
    /// `pending`, charged the reservation until the outcome settles it). An error means nothing
    /// may be forwarded.
    pub async fn record_intent(&self, call: &mut CallRecord) -> Result<()> {
        let mut entries = self.decision_entries(call);
        entries.push(self.entry(call, call.intent_summary().entry()));
        let journal = call.journal_row("pending", call.reserved);
        self.ledger
            .append_with_journal(entries, Some(journal))
            .await?;
        call.intent_recorded = true;
        Ok(())
    }

    /// Record a call's outcome (its `event_type`) and settle its
    /// journal row; for a call refused before any intent, its decisions too. An error means the
    /// record is not durable.
    pub async fn record(&self, call: &CallRecord) -> Result<i64> {
        let (entries, journal) = self.outcome_record(call);
        append_record(&self.ledger, entries, journal).await
    }

    /// Settle a forwarded call: its outcome recorded, or (when the ledger cannot take it) kept
    /// in the durable spool and retried from there until it is. An error means neither holds,
    /// so the answer must be withheld; the record is still retried from memory.
    pub async fn settle(self: &Arc<Self>, call: &CallRecord) -> Result<()> {
        let (entries, journal) = self.outcome_record(call);
        let Err(e) = append_record(&self.ledger, entries.clone(), journal.clone()).await else {
            return Ok(());
        };
        tracing::warn!(error = %format!("{e:#}"), call_id = %call.call_id,
                       "a call's outcome could not be recorded; spooling it");
        let record = spool::Spooled { entries, journal };
        match self.spool.keep(&call.call_id, &record) {
            Ok(()) => Ok(()),
            Err(spool_error) => {
                let ledger = self.ledger.clone();
                tokio::spawn(spool::retry_in_memory(ledger, record));
                Err(e.context(format!("spooling it failed too: {spool_error:#}")))
            }
        }
    }

    fn entry(&self, call: &CallRecord, (event, body): (AuditEvent, Value)) -> NewEntry {
        NewEntry::app(&self.namespace, call.run.run_id.clone(), event, body)
    }

    fn decision_entries(&self, call: &CallRecord) -> Vec<NewEntry> {
        call.decisions
            .iter()
            .flat_map(DecisionRecord::ledger_entries)
            .map(|entry| self.entry(call, entry))
            .collect()
    }

    fn outcome_record(&self, call: &CallRecord) -> (Vec<NewEntry>, JournalRow) {
        let mut entries = if call.intent_recorded {
            Vec::new()
        } else {
            self.decision_entries(call)
        };
        entries.push(self.entry(call, call.summary().entry_as(call.event_type)));
        let charged = Reservation {
            input_tokens: call.input_tokens,
            output_tokens: call.output_tokens,
            cost_micro_usd: call.cost_micro_usd,
        };
        (entries, call.journal_row(&call.outcome, charged))
    }

    /// The budget decision for a call of `run` that would add `estimated_tokens` and
    /// `estimated_cost` (micro-USD) and one call to what the run and its tenant have used
    /// (reservations of calls in flight included).
    pub async fn decide_budget(
        &self,
        run: &RunIdentity,
        resource: Value,
        estimated_tokens: u64,
        estimated_cost: u64,
    ) -> Result<DecisionRecord> {
        let usage = self.usage(run).await?;
        self.policies
            .decide_request(run.request(
                cogward_policy_abi::kinds::BUDGET,
                "spend",
                resource,
                json!({
                    "run_tokens": usage.run_tokens,
                    "run_cost_usd": usage.run_cost_micro_usd as f64 / 1e6,
                    "tenant_cost_usd": usage.tenant_cost_micro_usd as f64 / 1e6,
                    "run_calls": usage.run_calls,
                    "estimated_tokens": estimated_tokens,
                    "estimated_cost_usd": estimated_cost as f64 / 1e6,
                }),
            ))
            .await
    }

    /// What a run has used so far, and what its tenant has spent today (from the journal).
    pub async fn usage(&self, run: &RunIdentity) -> Result<Usage> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(input_tokens + output_tokens), 0) AS tokens, \
             COALESCE(SUM(cost_micro_usd), 0) AS cost, \
             COALESCE(SUM(CASE WHEN decision = 'permit' THEN 1 ELSE 0 END), 0) AS calls \
             FROM gateway_calls WHERE run_id = $1",
        )
        .bind(&run.run_id)
        .fetch_one(&self.db.pool)
        .await?;
        let tenant_cost: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(cost_micro_usd), 0) FROM gateway_calls WHERE tenant = $1 AND day = $2",
        )
        .bind(&run.tenant)
        .bind(chrono::Utc::now().format("%Y-%m-%d").to_string())
        .fetch_one(&self.db.pool)
        .await?;
        Ok(Usage {
            run_tokens: row.try_get::<i64, _>("tokens")?.max(0) as u64,
            run_cost_micro_usd: row.try_get::<i64, _>("cost")?.max(0) as u64,
            run_calls: row.try_get::<i64, _>("calls")?.max(0) as u64,
            tenant_cost_micro_usd: tenant_cost.max(0) as u64,
        })
    }
}

/// Append a call's entries with its journal row; the seq of the last entry.
async fn append_record(
    ledger: &Ledger,
    entries: Vec<NewEntry>,
    journal: JournalRow,
) -> Result<i64> {
    let outcomes = ledger.append_with_journal(entries, Some(journal)).await?;
    match outcomes.last() {
        Some(crate::audit::AppendOutcome::Appended { seq }) => Ok(*seq),
        _ => anyhow::bail!("the call's ledger entry was not appended"),
    }
}

/// A failed authentication: the credential's fault, or ours (the database).
#[derive(Debug)]
pub enum AuthFailure {
    Credential(CredentialError),
    Internal(anyhow::Error),
}

impl From<CredentialError> for AuthFailure {
    fn from(e: CredentialError) -> Self {
        AuthFailure::Credential(e)
    }
}

impl From<sqlx::Error> for AuthFailure {
    fn from(e: sqlx::Error) -> Self {
        AuthFailure::Internal(e.into())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Permitted calls of the run so far (model and tool), in flight included.
    pub run_calls: u64,
    pub run_tokens: u64,
    pub run_cost_micro_usd: u64,
    pub tenant_cost_micro_usd: u64,
}

/// How a call was decided, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallDecision {
    Permit,
    Deny,
    Escalate,
}

impl CallDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            CallDecision::Permit => "permit",
            CallDecision::Deny => "deny",
            CallDecision::Escalate => "escalate",
        }
    }
}

/// One call, as the ledger and the journal record it. Arguments are recorded by digest only.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub call_id: String,
    /// `gateway.model_call`, `gateway.tool_call` or `gateway.mcp_request` (prompts, resources,
    /// completions, relays): [`outcome_event`] of its kind.
    pub event_type: AuditEvent,
    /// `model`, `tool` or `mcp`.
    pub kind: &'static str,
    pub run: RunIdentity,
    /// `provider/model`, `server.tool`, `prompt:server.prompt` or `resource:server:uri`.
    pub target: String,
    pub args_sha256: String,
    pub decisions: Vec<DecisionRecord>,
    pub decision: CallDecision,
    pub reasons: Vec<String>,
    /// `ok`, `denied`, `upstream_error`, ... (see docs/api.md).
    pub outcome: String,
    pub upstream_status: Option<u16>,
    /// The whole call, and of it the time the upstream (provider, MCP server) took.
    pub latency: Duration,
    pub upstream_latency: Duration,
    pub throttle_ms: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micro_usd: u64,
    /// Call-kind specifics (endpoint, streaming, ...).
    pub detail: Value,
    /// What the call holds against its budgets from its intent until its outcome.
    pub reserved: Reservation,
    /// Fields (JSON pointers) a `redact` obligation removes from its result.
    pub redact: Vec<String>,
    /// Whether its intent (and with it its decisions) is in the ledger.
    pub intent_recorded: bool,
}

/// The ledger event that records the outcome of a call of `kind` (`model`, `tool`, `mcp`).
pub fn outcome_event(kind: &str) -> AuditEvent {
    match kind {
        "tool" => AuditEvent::GatewayToolCall,
        "mcp" => AuditEvent::GatewayMcpRequest,
        _ => AuditEvent::GatewayModelCall,
    }
}

/// Tokens and cost a call is charged in the journal: reserved at its intent, measured at its
/// outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reservation {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micro_usd: u64,
}

impl CallRecord {
    /// A call about to be decided: a deny with nothing measured yet, until the gateway says
    /// otherwise.
    pub fn new(
        kind: &'static str,
        run: &RunIdentity,
        target: String,
        args_sha256: String,
        detail: Value,
    ) -> Self {
        Self {
            call_id: uuid::Uuid::new_v4().to_string(),
            event_type: outcome_event(kind),
            kind,
            run: run.clone(),
            target,
            args_sha256,
            decisions: Vec::new(),
            decision: CallDecision::Deny,
            reasons: Vec::new(),
            outcome: "denied".into(),
            upstream_status: None,
            latency: Duration::ZERO,
            upstream_latency: Duration::ZERO,
            throttle_ms: 0,
            input_tokens: 0,
            output_tokens: 0,
            cost_micro_usd: 0,
            detail,
            reserved: Reservation::default(),
            redact: Vec::new(),
            intent_recorded: false,
        }
    }

    fn journal_row(&self, outcome: &str, charged: Reservation) -> JournalRow {
        let now = chrono::Utc::now();
        JournalRow {
            call_id: self.call_id.clone(),
            at: now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            day: now.format("%Y-%m-%d").to_string(),
            run_id: self.run.run_id.clone(),
            tenant: self.run.tenant.clone(),
            agent: self.run.agent.clone(),
            kind: self.kind.to_string(),
            target: self.target.clone(),
            decision: self.decision.as_str().to_string(),
            outcome: outcome.to_string(),
            upstream_status: self.upstream_status.map(i64::from),
            latency_us: self.latency.as_micros() as i64,
            input_tokens: charged.input_tokens as i64,
            output_tokens: charged.output_tokens as i64,
            cost_micro_usd: charged.cost_micro_usd as i64,
            args_sha256: self.args_sha256.clone(),
            policy_sha256: self
                .decisions
                .last()
                .and_then(|d| d.policy.as_ref())
                .map(|p| p.module_sha256.clone()),
        }
    }

    fn intent_summary(&self) -> GatewayCallIntent {
        GatewayCallIntent {
            call_id: self.call_id.clone(),
            run_id: self.run.run_id.clone(),
            tenant: self.run.tenant.clone(),
            agent: self.run.agent.clone(),
            kind: self.kind.to_string(),
            target: self.target.clone(),
            args_sha256: self.args_sha256.clone(),
            decision: self.decision.as_str().to_string(),
            reasons: self.reasons.clone(),
            outcome_event: self.event_type,
            reserved: Reserved {
                input_tokens: self.reserved.input_tokens,
                output_tokens: self.reserved.output_tokens,
                cost_usd: self.reserved.cost_micro_usd as f64 / 1e6,
            },
        }
    }

    fn summary(&self) -> GatewayCall {
        GatewayCall {
            call_id: self.call_id.clone(),
            run_id: self.run.run_id.clone(),
            tenant: self.run.tenant.clone(),
            agent: self.run.agent.clone(),
            target: self.target.clone(),
            args_sha256: self.args_sha256.clone(),
            decision: self.decision.as_str().to_string(),
            reasons: self.reasons.clone(),
            policies: self
                .decisions
                .iter()
                .map(|d| PolicyApplied {
                    kind: d.kind.clone(),
                    effect: d.decision.effect.as_str().to_string(),
                    policy: d.policy.clone(),
                    request_sha256: d.request_sha256.clone(),
                })
                .collect(),
            outcome: self.outcome.clone(),
            upstream_status: self.upstream_status,
            latency_us: self.latency.as_micros() as u64,
            upstream_latency_us: self.upstream_latency.as_micros() as u64,
            throttle_ms: self.throttle_ms,
            tokens: Tokens {
                input: self.input_tokens,
                output: self.output_tokens,
            },
            cost_usd: self.cost_micro_usd as f64 / 1e6,
            detail: self.detail.clone(),
        }
    }
}

/// The outcome recorded for a call whose process died between forwarding it and recording
/// what happened.
pub const OUTCOME_UNKNOWN: &str = "outcome_unknown";

/// Settle calls left `pending` longer than any of them can be in flight (their process died
/// between forwarding and recording): a `gateway.*_call` entry with outcome
/// `outcome_unknown`, charged the reservation the journal row holds. A spooled real outcome, if
/// one turns up later, is appended after it. Until the process exits.
pub async fn settle_abandoned_calls(gw: Arc<Gateway>) {
    let every = gw
        .config
        .abandoned_after()
        .clamp(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = settle_abandoned_once(&gw).await {
            tracing::warn!(error = %format!("{e:#}"), "settling abandoned gateway calls");
        }
    }
}

async fn settle_abandoned_once(gw: &Gateway) -> Result<()> {
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(gw.config.abandoned_after()).unwrap_or_default();
    let rows = sqlx::query(
        "SELECT call_id, run_id, tenant, agent, kind, target, decision, upstream_status, \
         latency_us, input_tokens, output_tokens, cost_micro_usd, args_sha256, policy_sha256, at, day \
         FROM gateway_calls WHERE outcome = 'pending' AND at < $1 ORDER BY at LIMIT 100",
    )
    .bind(cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    .fetch_all(&gw.db.pool)
    .await?;
    for row in rows {
        let journal = JournalRow {
            call_id: row.try_get("call_id")?,
            at: row.try_get("at")?,
            day: row.try_get("day")?,
            run_id: row.try_get("run_id")?,
            tenant: row.try_get("tenant")?,
            agent: row.try_get("agent")?,
            kind: row.try_get("kind")?,
            target: row.try_get("target")?,
            decision: row.try_get("decision")?,
            outcome: OUTCOME_UNKNOWN.to_string(),
            upstream_status: row.try_get("upstream_status")?,
            latency_us: row.try_get("latency_us")?,
            input_tokens: row.try_get("input_tokens")?,
            output_tokens: row.try_get("output_tokens")?,
            cost_micro_usd: row.try_get("cost_micro_usd")?,
            args_sha256: row.try_get("args_sha256")?,
            policy_sha256: row.try_get("policy_sha256")?,
        };
        let (event_type, body) = GatewayCallSettled {
            call_id: journal.call_id.clone(),
            run_id: journal.run_id.clone(),
            tenant: journal.tenant.clone(),
            agent: journal.agent.clone(),
            target: journal.target.clone(),
            args_sha256: journal.args_sha256.clone(),
            decision: journal.decision.clone(),
            outcome: OUTCOME_UNKNOWN.to_string(),
            tokens: Tokens {
                input: journal.input_tokens as u64,
                output: journal.output_tokens as u64,
            },
            cost_usd: journal.cost_micro_usd as f64 / 1e6,
            detail: json!({"usage": "reserved",
                           "reason": "the call was forwarded but its outcome was never recorded (its gateway process died)"}),
        }
        .entry_as(outcome_event(&journal.kind));
        let entry = NewEntry::app(&gw.namespace, journal.run_id.clone(), event_type, body);
        tracing::warn!(call_id = %journal.call_id, "settling an abandoned gateway call as outcome_unknown");
        append_record(&gw.ledger, vec![entry], journal).await?;
    }
    Ok(())
}

/// Every few seconds, close the per-run and per-session MCP server sessions of runs that
/// ended, and the per-session ones idle too long (until the process exits).
pub async fn close_servers_of_ended_runs(gw: Arc<Gateway>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        gw.upstreams.close_ended_runs(&gw.db).await;
        gw.upstreams.close_idle_sessions();
    }
}

/// The gateway's own listener, the only thing sandboxes are spliced to: the provider APIs and
/// MCP, nothing of the operator API. An unknown path answers in the format of the provider it
/// names (Anthropic's for `/gw/<anthropic-wire provider>/…`, OpenAI's otherwise).
pub fn app(gateway: Arc<Gateway>) -> axum::Router {
    axum::Router::new()
        .merge(model::router())
        .merge(mcp::router())
        .fallback(model::unknown_path)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(gateway)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A tool call permitted by a policy, measured, as the gateway records it.
    fn call() -> CallRecord {
        let run = RunIdentity {
            run_id: "run-1".into(),
            tenant: "acme".into(),
            agent: "a".into(),
            mcp_servers: None,
        };
        let mut call = CallRecord::new(
            "tool",
            &run,
            "everything.echo".into(),
            "ab".repeat(32),
            json!({"endpoint": "tools/call", "streaming": false}),
        );
        call.call_id = "call-1".into();
        call.decisions = vec![serde_json::from_value(json!({
            "kind": "tool.access",
            "policy": {"name": "tool-access", "version": 3, "module_sha256": "m", "data_sha256": "d"},
            "request": {"action": "call"}, "request_sha256": "r",
            "decision": {"effect": "permit", "reasons": ["listed"], "obligations": []},
            "latency_us": 40
        }))
        .unwrap()];
        call.decision = CallDecision::Permit;
        call.reasons = vec!["listed".into()];
        call.outcome = "ok".into();
        call.upstream_status = Some(200);
        call.latency = Duration::from_micros(2500);
        call.upstream_latency = Duration::from_micros(1800);
        call.throttle_ms = 5;
        call.input_tokens = 10;
        call.output_tokens = 20;
        call.cost_micro_usd = 1_500;
        call.reserved = Reservation {
            input_tokens: 100,
            output_tokens: 200,
            cost_micro_usd: 2_500,
        };
        call
    }

    /// The bodies stored for a call's intent and its outcome, exactly as builds before the
    /// typed bodies stored them (the chain hashes these bytes).
    #[test]
    fn a_calls_intent_and_outcome_are_stored_exactly_as_released() {
        let c = call();
        let stored = |(event, body): (AuditEvent, Value)| (event.as_str(), body);
        assert_eq!(
            stored(c.intent_summary().entry()),
            (
                "gateway.call_intent",
                json!({"agent":"a","args_sha256":"ab".repeat(32),"call_id":"call-1",
                       "decision":"permit","kind":"tool","outcome_event":"gateway.tool_call",
                       "reasons":["listed"],
                       "reserved":{"cost_usd":0.0025,"input_tokens":100,"output_tokens":200},
                       "run_id":"run-1","target":"everything.echo","tenant":"acme"})
            )
        );
        let outcome = json!({"agent":"a","args_sha256":"ab".repeat(32),"call_id":"call-1",
            "cost_usd":0.0015,"decision":"permit",
            "detail":{"endpoint":"tools/call","streaming":false},"latency_us":2500,"outcome":"ok",
            "policies":[{"effect":"permit","kind":"tool.access",
                         "policy":{"data_sha256":"d","module_sha256":"m","name":"tool-access","version":3},
                         "request_sha256":"r"}],
            "reasons":["listed"],"run_id":"run-1","target":"everything.echo","tenant":"acme",
            "throttle_ms":5,"tokens":{"input":10,"output":20},"upstream_latency_us":1800,
            "upstream_status":200});
        assert_eq!(
            stored(c.summary().entry_as(c.event_type)),
            ("gateway.tool_call", outcome.clone())
        );
        // No policy bound and no upstream answer: nulls, as before.
        let mut bare = c;
        bare.decisions[0].policy = None;
        bare.upstream_status = None;
        let mut expected = outcome;
        expected["policies"][0]["policy"] = Value::Null;
        expected["upstream_status"] = Value::Null;
        for (event, name) in [
            (AuditEvent::GatewayMcpRequest, "gateway.mcp_request"),
            (AuditEvent::GatewayModelCall, "gateway.model_call"),
        ] {
            assert_eq!(
                stored(bare.summary().entry_as(event)),
                (name, expected.clone())
            );
        }
    }
}
