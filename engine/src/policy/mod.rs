//! Policies in the engine: pushing bundles (validated, content-addressed, versioned), binding
//! them, deciding requests with the bound bundle (the [`PolicyDecider`] the activities use), and
//! replaying a run's recorded decisions.

pub mod cli;
pub mod routes;
pub mod store;

use crate::audit::{Ledger, NewEntry};
use crate::db::Db;
use anyhow::{Context, Result};
use cogward_activities::admission::PolicyDecider;
use cogward_policy_abi::{Decision, Request, kinds};
use cogward_policy_host::builtins::{TestCase, builtin};
use cogward_policy_host::{
    Evaluation, Fault, Limits, LoadedModule, PolicyHost, Prepared, sha256_hex,
};
use cogward_protocol::audit::{AuditBody, AuditEvent, PolicyPushed, PolicyRejected};
use cogward_protocol::spec::{DecisionRecord, PolicyRef};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Binding, Bundle, PolicyStore};

/// The kinds a binding may name.
pub const KINDS: &[&str] = &[
    kinds::RUN_ADMISSION,
    kinds::TOOL_CALL,
    kinds::MODEL_CALL,
    kinds::BUDGET,
    kinds::PROMOTION,
];

/// The data the built-in run-admission policy is bound with on a fresh installation: every
/// agent of every tenant, the `command` runtime, the default sandbox, and these ceilings.
pub const DEFAULT_ADMISSION_DATA: &str = r#"{"tenants":{"*":{"agents":["*"],"runtimes":["command","claude-code","codex"],"sandbox_profiles":["standard","strict"],"egress_profiles":["*"],"max_limits":{"cpu_seconds":3600,"memory_mb":8192,"max_processes":512,"wall_clock_seconds":14400,"grace_seconds":60}}}}"#;

/// The request every pushed module must answer with a well-formed decision.
fn probe_request() -> Value {
    json!({"kind": "cogward.probe", "tenant": "probe", "principal": "probe", "agent": "probe",
           "action": "probe", "resource": {}, "context": {}})
}

/// Ledger namespace of entries that belong to no workflow.
const POLICY_NAMESPACE: &str = "cogward";

pub fn policy_entry(name: &str, (event, body): (AuditEvent, Value)) -> NewEntry {
    NewEntry::app(POLICY_NAMESPACE, format!("policy/{name}"), event, body)
}

/// A bundle to push.
#[derive(Debug)]
pub struct PushRequest {
    pub name: String,
    pub wasm: Vec<u8>,
    pub data: Value,
    pub tests: Vec<TestCase>,
}

#[derive(Debug, serde::Serialize)]
pub struct Pushed {
    #[serde(flatten)]
    pub bundle: Bundle,
    /// False when the same module was already stored (modules are stored once).
    pub module_stored: bool,
    /// False when the latest version already was this (module, data) pair.
    pub created: bool,
    pub tests_passed: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The module, its data or its tests are not acceptable; recorded as a security event.
    #[error("{0}")]
    Rejected(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn check_name(field: &'static str, value: &str) -> Result<(), String> {
    cogward_protocol::spec::check_name(field, value).map_err(|e| e.to_string())
}

/// (tenant, agent, kind).
type BindingKey = (String, String, String);

/// The store, the wasmtime host and the prepared (module, data) pairs in use.
pub struct Policies {
    store: PolicyStore,
    host: Arc<PolicyHost>,
    prepared: Mutex<HashMap<(String, String), Arc<Prepared>>>,
    /// Resolved bindings by (tenant, agent, kind), reused for `binding_ttl` (see
    /// [`Policies::with_binding_cache`]).
    resolved: Mutex<HashMap<BindingKey, (Option<Bundle>, Instant)>>,
    binding_ttl: Duration,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies").finish_non_exhaustive()
    }
}

/// Run blocking (compiling, instantiating) policy work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("policy task panicked")
}

/// Outcome of loading and preparing a stored or pushed bundle.
enum PrepareError {
    /// The module or data is unusable: a decision with it is a deny with this fault.
    Policy(String, Value),
    Internal(anyhow::Error),
}

impl Policies {
    pub fn new(db: Db, limits: Limits) -> Result<Self> {
        Ok(Self {
            store: PolicyStore::new(db),
            host: Arc::new(PolicyHost::new(limits).map_err(anyhow::Error::msg)?),
            prepared: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashMap::new()),
            binding_ttl: Duration::ZERO,
        })
    }

    /// Reuse a resolved binding for `ttl` instead of reading it for every decision (the
    /// gateway decides every call). A binding made through this instance applies at once; one
    /// made through another process applies within `ttl`.
    pub fn with_binding_cache(mut self, ttl: Duration) -> Self {
        self.binding_ttl = ttl;
        self
    }

    async fn resolve(&self, tenant: &str, agent: &str, kind: &str) -> Result<Option<Bundle>> {
        let key = (tenant.to_string(), agent.to_string(), kind.to_string());
        if !self.binding_ttl.is_zero()
            && let Ok(cache) = self.resolved.lock()
            && let Some((bundle, at)) = cache.get(&key)
            && at.elapsed() < self.binding_ttl
        {
            return Ok(bundle.clone());
        }
        let bundle = self.store.resolve(tenant, agent, kind).await?;
        if !self.binding_ttl.is_zero()
            && let Ok(mut cache) = self.resolved.lock()
        {
            cache.insert(key, (bundle.clone(), Instant::now()));
        }
        Ok(bundle)
    }

    pub fn store(&self) -> &PolicyStore {
        &self.store
    }

    async fn prepare(&self, wasm: Vec<u8>, data: String) -> Result<Arc<Prepared>, PrepareError> {
        let host = self.host.clone();
        let loaded = blocking(move || host.load(&wasm))
            .await
            .map_err(PrepareError::Internal)?;
        let module: Arc<LoadedModule> = loaded.map_err(|e| {
            PrepareError::Policy(
                e.to_string(),
                json!({"fault": "load", "message": e.to_string()}),
            )
        })?;
        let key = (module.sha256.clone(), sha256_hex(data.as_bytes()));
        if let Some(p) = self.cached(&key) {
            return Ok(p);
        }
        let host = self.host.clone();
        blocking(move || host.prepare(module, data.as_bytes()))
            .await
            .map_err(PrepareError::Internal)?
            .map_err(|f: Fault| PrepareError::Policy(f.to_string(), fault_json(&f)))
    }

    /// Keep a prepared policy for later decisions (only stored bundles are kept).
    fn keep(&self, prepared: &Arc<Prepared>) {
        let key = (
            prepared.module_sha256().to_string(),
            prepared.data_sha256().to_string(),
        );
        if let Ok(mut cache) = self.prepared.lock() {
            cache.insert(key, prepared.clone());
        }
    }

    fn cached(&self, key: &(String, String)) -> Option<Arc<Prepared>> {
        self.prepared.lock().ok()?.get(key).cloned()
    }

    /// The prepared policy for a stored bundle.
    async fn prepared_bundle(&self, bundle: &Bundle) -> Result<Arc<Prepared>, PrepareError> {
        let key = (bundle.module_sha256.clone(), bundle.data_sha256.clone());
        if let Some(p) = self.cached(&key) {
            return Ok(p);
        }
        let missing = |what: &str| {
            PrepareError::Internal(anyhow::anyhow!(
                "{what} of policy {} v{} is not in the store",
                bundle.name,
                bundle.version
            ))
        };
        let wasm = self
            .store
            .module(&bundle.module_sha256)
            .await
            .map_err(PrepareError::Internal)?
            .ok_or_else(|| missing("module"))?;
        let data = self
            .store
            .data(&bundle.data_sha256)
            .await
            .map_err(PrepareError::Internal)?
            .ok_or_else(|| missing("data"))?;
        let prepared = self.prepare(wasm, data).await?;
        self.keep(&prepared);
        Ok(prepared)
    }

    /// Validate a bundle (module loads, data accepted, probe and test requests decided as
    /// expected, no fault) and store it. A rejection is recorded in the ledger as
    /// `security.policy_rejected`; a push as `policy.pushed`.
    pub async fn push(
        &self,
        req: PushRequest,
        by: &str,
        ledger: &Ledger,
    ) -> Result<Pushed, PushError> {
        let module_sha256 = sha256_hex(&req.wasm);
        let size = req.wasm.len();
        match self.validate(&req).await {
            Ok((prepared, tests_passed)) => {
                let data = req.data.to_string();
                let data_sha256 = sha256_hex(data.as_bytes());
                let module_stored = self
                    .store
                    .put_module(&module_sha256, cogward_policy_abi::ABI_VERSION, &req.wasm)
                    .await?;
                self.store.put_data(&data_sha256, &data).await?;
                let (bundle, created) = self
                    .store
                    .create_bundle(&req.name, &module_sha256, &data_sha256, by)
                    .await?;
                self.keep(&prepared);
                if created {
                    ledger
                        .append(vec![policy_entry(
                            &req.name,
                            PolicyPushed {
                                name: bundle.name.clone(),
                                version: bundle.version,
                                module_sha256: module_sha256.clone(),
                                data_sha256: data_sha256.clone(),
                                module_stored,
                                tests_passed,
                                by: by.to_string(),
                            }
                            .entry(),
                        )])
                        .await?;
                }
                Ok(Pushed {
                    bundle,
                    module_stored,
                    created,
                    tests_passed,
                })
            }
            Err(PushError::Rejected(reason)) => {
                self.host.evict(&module_sha256);
                // The name may be anything the caller sent: record a bounded prefix.
                let name: String = req.name.chars().take(64).collect();
                let reason: String = reason.chars().take(1000).collect();
                ledger
                    .append(vec![policy_entry(
                        &name,
                        PolicyRejected {
                            name: name.clone(),
                            module_sha256: module_sha256.clone(),
                            size_bytes: size,
                            reason: reason.clone(),
                            by: by.to_string(),
                        }
                        .entry(),
                    )])
                    .await?;
                tracing::warn!(%name, %module_sha256, %reason, "policy push rejected");
                Err(PushError::Rejected(reason))
            }
            Err(e) => Err(e),
        }
    }

    async fn validate(&self, req: &PushRequest) -> Result<(Arc<Prepared>, usize), PushError> {
        check_name("name", &req.name).map_err(PushError::Rejected)?;
        let prepared = match self.prepare(req.wasm.clone(), req.data.to_string()).await {
            Ok(p) => p,
            Err(PrepareError::Policy(reason, _)) => return Err(PushError::Rejected(reason)),
            Err(PrepareError::Internal(e)) => return Err(PushError::Internal(e)),
        };
        let probe = self.evaluate_value(&prepared, &probe_request()).await?;
        if let Some(f) = probe.fault {
            return Err(PushError::Rejected(format!("dry evaluation: {f}")));
        }
        for (i, case) in req.tests.iter().enumerate() {
            let eval = self.evaluate_value(&prepared, &case.request).await?;
            let name = if case.name.is_empty() {
                format!("#{}", i + 1)
            } else {
                case.name.clone()
            };
            if let Some(f) = eval.fault {
                return Err(PushError::Rejected(format!("test {name}: {f}")));
            }
            if eval.decision.effect != case.expect {
                return Err(PushError::Rejected(format!(
                    "test {name}: expected {}, got {} ({})",
                    case.expect.as_str(),
                    eval.decision.effect.as_str(),
                    eval.decision.reasons.join("; ")
                )));
            }
        }
        Ok((prepared, req.tests.len()))
    }

    async fn evaluate_value(
        &self,
        prepared: &Arc<Prepared>,
        request: &Value,
    ) -> Result<Evaluation> {
        let bytes = serde_json::to_vec(request)?;
        let prepared = prepared.clone();
        blocking(move || prepared.evaluate(&bytes)).await
    }

    /// Bind (tenant, agent, kind) to a stored bundle version; recorded as `policy.bound`.
    pub async fn bind(&self, binding: Binding, ledger: &Ledger) -> Result<(), String> {
        if !KINDS.contains(&binding.kind.as_str()) {
            return Err(format!(
                "unknown kind {:?}; kinds are {}",
                binding.kind,
                KINDS.join(", ")
            ));
        }
        for (field, v) in [("tenant", &binding.tenant), ("agent", &binding.agent)] {
            if v != "*" {
                check_name(field, v)?;
            }
        }
        if binding.tenant == "*" && binding.agent != "*" {
            return Err("an agent-specific binding needs a tenant".into());
        }
        match self.store.bundle(&binding.name, binding.version).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(format!(
                    "no policy {} version {}",
                    binding.name, binding.version
                ));
            }
            Err(e) => return Err(format!("{e:#}")),
        }
        self.store
            .bind(&binding)
            .await
            .map_err(|e| format!("{e:#}"))?;
        if let Ok(mut cache) = self.resolved.lock() {
            cache.clear();
        }
        ledger
            .append(vec![policy_entry(&binding.name, binding.entry())])
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(())
    }

    /// On a fresh installation, bind the built-in run-admission policy with
    /// [`DEFAULT_ADMISSION_DATA`] for every tenant, so runs are admitted by policy from the start.
    pub async fn bootstrap(&self, ledger: &Ledger) -> Result<()> {
        if self
            .store
            .resolve("*", "*", kinds::RUN_ADMISSION)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let b = builtin("run-admission").context("built-in run-admission policy missing")?;
        let pushed = self
            .push(
                PushRequest {
                    name: b.name.into(),
                    wasm: b.wasm.to_vec(),
                    data: serde_json::from_str(DEFAULT_ADMISSION_DATA)?,
                    tests: Vec::new(),
                },
                "system",
                ledger,
            )
            .await
            .map_err(|e| anyhow::anyhow!("bootstrapping run-admission: {e}"))?;
        self.bind(
            Binding {
                tenant: "*".into(),
                agent: "*".into(),
                kind: kinds::RUN_ADMISSION.into(),
                name: pushed.bundle.name.clone(),
                version: pushed.bundle.version,
                bound_by: "system".into(),
                bound_at: crate::now_rfc3339(),
            },
            ledger,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        tracing::info!(
            version = pushed.bundle.version,
            "bound the built-in run-admission policy for every tenant"
        );
        Ok(())
    }

    /// Whether a bundle is bound for `kind` for this tenant and agent.
    pub async fn is_bound(&self, tenant: &str, agent: &str, kind: &str) -> Result<bool> {
        Ok(self.resolve(tenant, agent, kind).await?.is_some())
    }

    /// Decide one request with the bundle bound for it.
    pub async fn decide_request(&self, request: Request) -> Result<DecisionRecord> {
        let value = serde_json::to_value(&request)?;
        let bytes = serde_json::to_vec(&value)?;
        let mut record = DecisionRecord {
            kind: request.kind.clone(),
            policy: None,
            request_sha256: sha256_hex(&bytes),
            request: value,
            decision: Decision::deny(format!(
                "no {} policy is bound for tenant {} (agent {})",
                request.kind, request.tenant, request.agent
            )),
            fault: None,
            latency_us: 0,
        };
        let Some(bundle) = self
            .resolve(&request.tenant, &request.agent, &request.kind)
            .await?
        else {
            return Ok(record);
        };
        record.policy = Some(bundle.policy_ref());
        match self.prepared_bundle(&bundle).await {
            Ok(prepared) => {
                let eval = blocking(move || prepared.evaluate(&bytes)).await?;
                record.decision = eval.decision;
                record.fault = eval.fault.as_ref().map(fault_json);
                record.latency_us = eval.elapsed.as_micros() as u64;
            }
            Err(PrepareError::Policy(reason, fault)) => {
                record.decision = Decision::deny(reason);
                record.fault = Some(fault);
            }
            Err(PrepareError::Internal(e)) => return Err(e),
        }
        Ok(record)
    }

    /// Re-evaluate a recorded decision with the exact module and data it names.
    pub async fn reevaluate(&self, record: &DecisionRecord) -> Result<Evaluation> {
        let policy: &PolicyRef = record
            .policy
            .as_ref()
            .context("the decision was made without a bound policy")?;
        let bytes = serde_json::to_vec(&record.request)?;
        anyhow::ensure!(
            sha256_hex(&bytes) == record.request_sha256,
            "recorded request does not match its digest"
        );
        let bundle = Bundle {
            name: policy.name.clone(),
            version: policy.version,
            module_sha256: policy.module_sha256.clone(),
            data_sha256: policy.data_sha256.clone(),
            created_by: String::new(),
            created_at: String::new(),
        };
        match self.prepared_bundle(&bundle).await {
            Ok(prepared) => blocking(move || prepared.evaluate(&bytes)).await,
            Err(PrepareError::Policy(reason, _)) => Ok(Evaluation {
                decision: Decision::deny(reason),
                fault: None,
                elapsed: Default::default(),
            }),
            Err(PrepareError::Internal(e)) => Err(e),
        }
    }
}

fn fault_json(f: &Fault) -> Value {
    serde_json::to_value(f).unwrap_or_else(|_| json!({"fault": "unknown"}))
}

impl PolicyDecider for Policies {
    fn decide(
        &self,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = Result<DecisionRecord>> + Send + '_>> {
        Box::pin(self.decide_request(request))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use cogward_policy_abi::Effect;

    fn request(tenant: &str, agent: &str) -> Request {
        Request {
            kind: kinds::RUN_ADMISSION.into(),
            tenant: tenant.into(),
            principal: "ci".into(),
            agent: agent.into(),
            action: "run.start".into(),
            resource: json!({"runtime": "command", "program": "/bin/sh", "sandbox_profile": "standard"}),
            context: json!({"limits": {"cpu_seconds": 1}}),
        }
    }

    fn binding(tenant: &str, agent: &str, name: &str) -> Binding {
        Binding {
            tenant: tenant.into(),
            agent: agent.into(),
            kind: kinds::RUN_ADMISSION.into(),
            name: name.into(),
            version: 1,
            bound_by: "test".into(),
            bound_at: crate::now_rfc3339(),
        }
    }

    /// A bundle of the built-in admission module whose data allows exactly `agents` everywhere.
    async fn push_allowing(p: &Policies, ledger: &Ledger, name: &str, agents: &[&str]) {
        let data = json!({"tenants": {"*": {"agents": agents, "runtimes": ["command"],
            "sandbox_profiles": ["standard"], "max_limits": {"cpu_seconds": 10}}}});
        let wasm = builtin("run-admission").unwrap().wasm.to_vec();
        let req = PushRequest {
            name: name.into(),
            wasm,
            data,
            tests: Vec::new(),
        };
        p.push(req, "test", ledger).await.unwrap();
    }

    #[tokio::test]
    async fn the_most_specific_binding_decides_and_no_binding_denies() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
        let ledger = Ledger::start(db.clone());
        let p = Policies::new(db, Limits::default()).unwrap();

        let r = p.decide_request(request("acme", "bot")).await.unwrap();
        assert_eq!(r.decision.effect, Effect::Deny);
        assert!(r.policy.is_none());
        assert!(r.decision.reasons[0].contains("no run.admission policy is bound"));

        push_allowing(&p, &ledger, "everyone", &["*"]).await;
        push_allowing(&p, &ledger, "nobody", &[]).await;
        push_allowing(&p, &ledger, "only-bot", &["bot"]).await;
        p.bind(binding("*", "*", "everyone"), &ledger)
            .await
            .unwrap();
        p.bind(binding("acme", "*", "nobody"), &ledger)
            .await
            .unwrap();
        p.bind(binding("acme", "bot", "only-bot"), &ledger)
            .await
            .unwrap();
        for (tenant, agent, policy, effect) in [
            ("globex", "bot", "everyone", Effect::Permit),
            ("acme", "other", "nobody", Effect::Deny),
            ("acme", "bot", "only-bot", Effect::Permit),
        ] {
            let r = p.decide_request(request(tenant, agent)).await.unwrap();
            assert_eq!(r.policy.as_ref().unwrap().name, policy, "{tenant}/{agent}");
            assert_eq!(r.decision.effect, effect, "{tenant}/{agent}");
            assert_eq!(p.reevaluate(&r).await.unwrap().decision, r.decision);
        }
        // Rebinding takes effect on the next decision.
        p.bind(binding("acme", "bot", "nobody"), &ledger)
            .await
            .unwrap();
        let r = p.decide_request(request("acme", "bot")).await.unwrap();
        assert_eq!(r.decision.effect, Effect::Deny);
        // Three bundles of one module: stored once.
        assert_eq!(p.store().module_count().await.unwrap(), 1);
        // Bindings to nothing, or of an unknown kind, are refused.
        assert!(
            p.bind(binding("acme", "*", "missing"), &ledger)
                .await
                .is_err()
        );
        let mut b = binding("acme", "*", "everyone");
        b.kind = "launch.missiles".into();
        assert!(p.bind(b, &ledger).await.is_err());
    }
}
