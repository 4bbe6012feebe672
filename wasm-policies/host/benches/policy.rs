//! The tool-access policy in wasmtime against the same policy compiled natively and against Cedar:
//! what does a sandboxed, metered WebAssembly decision cost?
//!
//! ```sh
//! cargo bench -p cogward-policy-host --features bench --bench policy
//! ```
//!
//! One realistic fixture (`cogward_policy_tool_access::bench_fixture`: 20 tenants, 1,000 agents,
//! 600 glob rules, 10,000 distinct requests) is decided, in one process, by:
//!
//! a. wasmtime: the built-in `tool-access` module, loaded and prepared in a [`PolicyHost`], one
//!    [`Prepared::evaluate`] per decision (request bytes in, a [`Decision`] out: copy into the
//!    guest, guest JSON parse, decide, guest JSON write, host JSON parse) — with fuel metering on
//!    (`Limits::default()`) and off (`fuel: None`, the epoch deadline the only guard);
//! b. native: the same policy crate, `init_json::<ToolAccess>` once and `evaluate_json` per
//!    decision (the same request bytes in, decision JSON out) — the baseline; and, to show what
//!    the host's decoding costs, the same plus parsing the output into a [`Decision`];
//! c. Cedar (`cedar-policy`, no extensions): the same rules as Cedar policies, mapped as the
//!    fixture's documentation describes, partitioned per tenant (one pair of policy sets per
//!    tenant, plus the `"*"` tenant's if the data has one). Each decision parses the same JSON
//!    request, builds the `Agent` and `Tool` entities and the Cedar request, authorizes against
//!    the tenant's set 1 and, for an allowed `call`, set 2 (sensitive → escalate, with the group
//!    of the first matching rule). The policy sets and the agent → profiles map are built once.
//!
//! First every request is decided by every evaluator and the answers compared (effect, and the
//! approval group for `escalate`); any difference aborts the bench. Then one untimed warm-up pass
//! each, then [`PASSES`] timed passes over all requests, the evaluators' order rotating from pass
//! to pass; every decision is timed on its own (`Instant` around the call, ~20–40 ns of it in
//! each sample). Throughput is single-threaded: decisions / the sum of their times.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicySet, Request as CedarRequest, RestrictedExpression,
};
use cogward_policy_host::builtins::builtin;
use cogward_policy_host::{Decision, Effect, Limits, Obligation, PolicyHost, Prepared};
use cogward_policy_sdk::{evaluate_json, init_json};
use cogward_policy_tool_access::{Data, ToolAccess, bench_fixture};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hint::black_box;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BENCH_COMMAND: &str = "cargo bench -p cogward-policy-host --features bench --bench policy";

const TENANTS: usize = 20;
const AGENTS: usize = 1_000;
const RULES: usize = 600;
const REQUESTS: usize = 10_000;
const SEED: u64 = 7;
/// Timed passes over all requests, per evaluator.
const PASSES: usize = 5;
/// Untimed passes before them (the cross-check pass comes first, on top).
const WARMUP_PASSES: usize = 1;

/// Targets for the wasm evaluators.
const TARGET_P99_US: f64 = 10.0;
const TARGET_P99_VS_NATIVE: f64 = 2.0;

// ---------------------------------------------------------------------------------------------
// What every evaluator must agree on.

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    effect: Effect,
    /// The approval group, for `escalate`.
    group: Option<String>,
}

impl Outcome {
    fn of(d: &Decision) -> Self {
        let group = d.obligations.iter().find_map(|o| match o {
            Obligation::RequireApproval { group } => Some(group.clone()),
            _ => None,
        });
        Self {
            effect: d.effect,
            group: (d.effect == Effect::Escalate).then_some(group).flatten(),
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.group {
            Some(g) => write!(f, "{} ({g})", self.effect.as_str()),
            None => f.write_str(self.effect.as_str()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cedar: the tool-access rules as Cedar policies, per tenant (see `bench_fixture`'s docs).

/// The request fields the Cedar side reads (the same the native policy reads).
#[derive(Deserialize)]
struct ToolRequest {
    tenant: String,
    agent: String,
    action: String,
    resource: ToolResource,
}

#[derive(Deserialize)]
struct ToolResource {
    server: String,
    tool: String,
}

/// One rule tenant's policies.
struct CedarTenant {
    /// deny / scope: `Deny` is `deny`.
    access: PolicySet,
    /// sensitive rules, for an allowed `call`: `Allow` is `escalate`.
    sensitive: PolicySet,
    /// Exact agent key → the `Profile` entities its entry names (the principal's parents).
    parents: HashMap<String, HashSet<EntityUid>>,
    policies: usize,
}

struct Cedar {
    tenants: HashMap<String, CedarTenant>,
    authorizer: Authorizer,
    agent_type: EntityTypeName,
    tool_type: EntityTypeName,
    call: EntityUid,
    list: EntityUid,
}

/// A Cedar string literal.
fn lit(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn set_lit<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let items: Vec<String> = items.into_iter().map(|s| lit(s)).collect();
    format!("[{}]", items.join(", "))
}

fn uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(EntityTypeName::from_str(ty).unwrap(), EntityId::new(id))
}

impl Cedar {
    fn new(data: &Data) -> Result<Self, String> {
        let named: Vec<&String> = data.tenants.keys().filter(|t| *t != "*").collect();
        let mut tenants = HashMap::new();
        for (t, rules) in &data.tenants {
            let ten = if t == "*" {
                format!(
                    "!{}.contains(principal.tenant)",
                    set_lit(named.iter().copied())
                )
            } else {
                format!("principal.tenant == {}", lit(t))
            };
            let any_q = |ps: &[String]| ps.iter().any(|p| p.contains('?'));
            if rules.agents.keys().any(|k| k.contains('?'))
                || any_q(&rules.deny)
                || any_q(&rules.default_scope)
                || rules.profiles.values().any(|p| any_q(p))
                || rules.agents.values().any(|a| any_q(&a.scope))
                || rules.sensitive.iter().any(|s| any_q(&s.tools))
            {
                return Err(format!("tenant {t}: `?` has no Cedar equivalent"));
            }
            let (globs, exact): (Vec<_>, Vec<_>) =
                rules.agents.iter().partition(|(k, _)| k.contains('*'));
            let exact_lit = set_lit(exact.iter().map(|(k, _)| *k));
            let like = |g: &str| format!("resource.name like {}", lit(g));
            let profile = |name: &String| -> Result<&Vec<String>, String> {
                rules
                    .profiles
                    .get(name)
                    .ok_or_else(|| format!("tenant {t}: unknown profile {name}"))
            };

            let mut access = Vec::new();
            for g in &rules.deny {
                access.push(format!(
                    "forbid(principal, action, resource) when {{ {ten} && {} }};",
                    like(g)
                ));
            }
            for (p, patterns) in &rules.profiles {
                for g in patterns {
                    access.push(format!(
                        "permit(principal in Profile::{}, action, resource) when {{ {} }};",
                        lit(&format!("{t}/{p}")),
                        like(g)
                    ));
                }
            }
            let mut parents = HashMap::new();
            for (a, entry) in &exact {
                for g in &entry.scope {
                    access.push(format!(
                        "permit(principal, action, resource) when {{ {ten} && principal.name == {} && {} }};",
                        lit(a),
                        like(g)
                    ));
                }
                for p in &entry.profiles {
                    profile(p)?;
                }
                let ps: HashSet<EntityUid> = entry
                    .profiles
                    .iter()
                    .map(|p| uid("Profile", &format!("{t}/{p}")))
                    .collect();
                parents.insert((*a).clone(), ps);
            }
            for (pat, entry) in &globs {
                let mut patterns: Vec<&String> = Vec::new();
                for p in &entry.profiles {
                    patterns.extend(profile(p)?);
                }
                patterns.extend(&entry.scope);
                for g in patterns {
                    access.push(format!(
                        "permit(principal, action, resource) when {{ {ten} && principal.name like {} && {} }} unless {{ {exact_lit}.contains(principal.name) }};",
                        lit(pat),
                        like(g)
                    ));
                }
            }
            let mut not_covered = format!("{exact_lit}.contains(principal.name)");
            for (pat, _) in &globs {
                not_covered.push_str(&format!(" || principal.name like {}", lit(pat)));
            }
            for g in &rules.default_scope {
                access.push(format!(
                    "permit(principal, action, resource) when {{ {ten} && {} }} unless {{ {not_covered} }};",
                    like(g)
                ));
            }

            let mut sensitive = Vec::new();
            for (i, rule) in rules.sensitive.iter().enumerate() {
                for g in &rule.tools {
                    sensitive.push(format!(
                        "@group({}) @id(\"sensitive-{i:04}\") permit(principal, action == Action::\"call\", resource) when {{ {ten} && {} }};",
                        lit(&rule.group),
                        like(g)
                    ));
                }
            }
            let parse = |texts: &[String]| {
                PolicySet::from_str(&texts.join("\n"))
                    .map_err(|e| format!("tenant {t}: Cedar policies: {e}"))
            };
            tenants.insert(
                t.clone(),
                CedarTenant {
                    access: parse(&access)?,
                    sensitive: parse(&sensitive)?,
                    parents,
                    policies: access.len() + sensitive.len(),
                },
            );
        }
        Ok(Self {
            tenants,
            authorizer: Authorizer::new(),
            agent_type: EntityTypeName::from_str("Agent").unwrap(),
            tool_type: EntityTypeName::from_str("Tool").unwrap(),
            call: uid("Action", "call"),
            list: uid("Action", "list"),
        })
    }

    /// One decision from the JSON request: (effect, approval group). An evaluation error in any
    /// policy is an `Err` (Cedar would skip the policy; the cross-check must not).
    fn decide(&self, request: &[u8]) -> Result<(Effect, Option<&str>), String> {
        let Ok(r) = serde_json::from_slice::<ToolRequest>(request) else {
            return Ok((Effect::Deny, None));
        };
        let Some(rules) = self
            .tenants
            .get(&r.tenant)
            .or_else(|| self.tenants.get("*"))
        else {
            return Ok((Effect::Deny, None));
        };
        let (action, call) = match r.action.as_str() {
            "call" => (&self.call, true),
            "list" => (&self.list, false),
            _ => return Ok((Effect::Deny, None)),
        };
        if r.resource.server.is_empty() || r.resource.tool.is_empty() {
            return Ok((Effect::Deny, None));
        }
        let tool = format!("{}.{}", r.resource.server, r.resource.tool);
        let principal = EntityUid::from_type_name_and_id(
            self.agent_type.clone(),
            EntityId::new(format!("{}/{}", r.tenant, r.agent)),
        );
        let resource =
            EntityUid::from_type_name_and_id(self.tool_type.clone(), EntityId::new(&tool));
        let parents = rules.parents.get(&r.agent).cloned().unwrap_or_default();
        let agent = Entity::new(
            principal.clone(),
            HashMap::from([
                (
                    "tenant".to_string(),
                    RestrictedExpression::new_string(r.tenant),
                ),
                (
                    "name".to_string(),
                    RestrictedExpression::new_string(r.agent),
                ),
            ]),
            parents,
        )
        .map_err(|e| e.to_string())?;
        let tool_entity = Entity::new(
            resource.clone(),
            HashMap::from([("name".to_string(), RestrictedExpression::new_string(tool))]),
            HashSet::new(),
        )
        .map_err(|e| e.to_string())?;
        let entities =
            Entities::from_entities([agent, tool_entity], None).map_err(|e| e.to_string())?;
        let request =
            CedarRequest::new(principal, action.clone(), resource, Context::empty(), None)
                .map_err(|e| e.to_string())?;

        let response = self
            .authorizer
            .is_authorized(&request, &rules.access, &entities);
        if let Some(e) = response.diagnostics().errors().next() {
            return Err(format!("Cedar evaluation error: {e}"));
        }
        if response.decision() == CedarDecision::Deny {
            return Ok((Effect::Deny, None));
        }
        if !call {
            return Ok((Effect::Permit, None));
        }
        let response = self
            .authorizer
            .is_authorized(&request, &rules.sensitive, &entities);
        if let Some(e) = response.diagnostics().errors().next() {
            return Err(format!("Cedar evaluation error: {e}"));
        }
        if response.decision() == CedarDecision::Deny {
            return Ok((Effect::Permit, None));
        }
        // The first matching rule: the lowest @id among the determining policies.
        let first = response
            .diagnostics()
            .reason()
            .filter_map(|id| Some((rules.sensitive.annotation(id, "id")?, id)))
            .min_by_key(|(n, _)| *n)
            .map(|(_, id)| id);
        let group = first.and_then(|id| rules.sensitive.annotation(id, "group"));
        Ok((Effect::Escalate, group))
    }
}

// ---------------------------------------------------------------------------------------------
// The evaluators.

enum Kind {
    Wasm(Arc<Prepared>),
    Native { policy: ToolAccess, out: Vec<u8> },
    NativeDecode { policy: ToolAccess, out: Vec<u8> },
    Cedar(Box<Cedar>),
}

struct Evaluator {
    name: &'static str,
    kind: Kind,
    /// Nanoseconds per decision, all timed passes.
    samples: Vec<u64>,
    /// (p50, p99) µs per timed pass.
    per_pass: Vec<(f64, f64)>,
}

impl Evaluator {
    fn new(name: &'static str, kind: Kind) -> Self {
        Self {
            name,
            kind,
            samples: Vec::with_capacity(PASSES * REQUESTS),
            per_pass: Vec::new(),
        }
    }

    /// The decision, for the cross-check.
    fn outcome(&mut self, request: &[u8]) -> Result<Outcome, String> {
        match &mut self.kind {
            Kind::Wasm(p) => {
                let e = p.evaluate(request);
                match e.fault {
                    Some(f) => Err(format!("wasm fault: {f}")),
                    None => Ok(Outcome::of(&e.decision)),
                }
            }
            Kind::Native { policy, out } | Kind::NativeDecode { policy, out } => {
                evaluate_json(policy, request, out);
                let d: Decision = serde_json::from_slice(out)
                    .map_err(|e| format!("native output is not a decision: {e}"))?;
                Ok(Outcome::of(&d))
            }
            Kind::Cedar(c) => {
                let (effect, group) = c.decide(request)?;
                Ok(Outcome {
                    effect,
                    group: group.map(str::to_string),
                })
            }
        }
    }

    /// One decision, timed; its result is dropped inside the timed section.
    fn timed(&mut self, request: &[u8]) -> Duration {
        match &mut self.kind {
            Kind::Wasm(p) => {
                let start = Instant::now();
                black_box(p.evaluate(black_box(request)));
                start.elapsed()
            }
            Kind::Native { policy, out } => {
                let start = Instant::now();
                evaluate_json(policy, black_box(request), out);
                black_box(&out);
                start.elapsed()
            }
            Kind::NativeDecode { policy, out } => {
                let start = Instant::now();
                evaluate_json(policy, black_box(request), out);
                black_box(serde_json::from_slice::<Decision>(out).ok());
                start.elapsed()
            }
            Kind::Cedar(c) => {
                let start = Instant::now();
                let _ = black_box(c.decide(black_box(request)));
                start.elapsed()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics.

struct Stats {
    p50: f64,
    p99: f64,
    mean: f64,
    per_sec: f64,
}

/// Nearest-rank percentile of sorted nanoseconds, in µs.
fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1_000.0
}

fn stats(samples: &[u64]) -> Stats {
    let mut s = samples.to_vec();
    s.sort_unstable();
    let total_ns: u64 = s.iter().sum();
    Stats {
        p50: pct(&s, 50.0),
        p99: pct(&s, 99.0),
        mean: total_ns as f64 / s.len().max(1) as f64 / 1_000.0,
        per_sec: s.len() as f64 / (total_ns as f64 / 1e9),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn kb(bytes: usize) -> String {
    format!("{:.1} KB", bytes as f64 / 1024.0)
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let started = Instant::now();
    let load_before = loadavg();

    // The fixture.
    let (data, requests) = bench_fixture(TENANTS, AGENTS, RULES, REQUESTS, SEED);
    let data_bytes = serde_json::to_vec(&data).unwrap();
    let requests: Vec<Vec<u8>> = requests
        .iter()
        .map(|r| serde_json::to_vec(r).unwrap())
        .collect();
    let distinct: HashSet<&Vec<u8>> = requests.iter().collect();
    let request_bytes: usize = requests.iter().map(Vec::len).sum();

    // a. wasmtime, fuel on and off.
    let module = builtin("tool-access").expect("built-in tool-access module");
    let fuel_limits = Limits::default();
    let fuel = fuel_limits.fuel;
    let deadline = fuel_limits.deadline;
    let wasm = |limits: Limits| {
        let host = Arc::new(PolicyHost::new(limits).expect("policy host"));
        let t = Instant::now();
        let loaded = host.load(module.wasm).expect("load tool-access");
        let compile = t.elapsed();
        let t = Instant::now();
        let prepared = host
            .prepare(loaded, &data_bytes)
            .expect("prepare tool-access");
        (prepared, compile, t.elapsed())
    };
    let (wasm_fuel, compile_ms, prepare_ms) = wasm(fuel_limits.clone());
    let (wasm_epoch, _, _) = wasm(Limits {
        fuel: None,
        ..Limits::default()
    });

    // b. native.
    let t = Instant::now();
    let native = init_json::<ToolAccess>(&data_bytes).expect("native init");
    let native_init = t.elapsed();
    let native_decode = init_json::<ToolAccess>(&data_bytes).expect("native init");

    // c. Cedar.
    let parsed: Data = serde_json::from_slice(&data_bytes).expect("data document");
    let t = Instant::now();
    let cedar = Cedar::new(&parsed).unwrap_or_else(|e| panic!("building Cedar policies: {e}"));
    let cedar_build = t.elapsed();
    let cedar_policies: usize = cedar.tenants.values().map(|t| t.policies).sum();
    let cedar_sets = cedar.tenants.len();

    let mut evals = vec![
        Evaluator::new("wasm, fuel on", Kind::Wasm(wasm_fuel)),
        Evaluator::new("wasm, fuel off (epoch)", Kind::Wasm(wasm_epoch)),
        Evaluator::new(
            "native",
            Kind::Native {
                policy: native,
                out: Vec::with_capacity(1024),
            },
        ),
        Evaluator::new(
            "native + decode",
            Kind::NativeDecode {
                policy: native_decode,
                out: Vec::with_capacity(1024),
            },
        ),
        Evaluator::new("Cedar, per tenant", Kind::Cedar(Box::new(cedar))),
    ];
    const NATIVE: usize = 2;
    const NATIVE_DECODE: usize = 3;

    // Cross-check: every evaluator, every request, the same answer as native.
    eprintln!(
        "cross-checking {} requests across {} evaluators ...",
        requests.len(),
        evals.len()
    );
    let mut mix: BTreeMap<&str, usize> = BTreeMap::new();
    let mut mismatches = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let expected = match evals[NATIVE].outcome(r) {
            Ok(o) => o,
            Err(e) => panic!("request {i}: native: {e}"),
        };
        *mix.entry(expected.effect.as_str()).or_default() += 1;
        for e in evals.iter_mut() {
            let got = e.outcome(r);
            if got.as_ref() != Ok(&expected) {
                let got = got.map_or_else(|e| format!("error: {e}"), |o| o.to_string());
                mismatches.push(format!(
                    "request {i} {}: native says {expected}, {} says {got}",
                    String::from_utf8_lossy(r),
                    e.name
                ));
            }
        }
    }
    if !mismatches.is_empty() {
        eprintln!("CROSS-CHECK FAILED: {} disagreements:", mismatches.len());
        for m in mismatches.iter().take(20) {
            eprintln!("  {m}");
        }
        std::process::exit(1);
    }
    eprintln!("cross-check passed: {mix:?}");

    // Warm-up, then the timed passes, the evaluators' order rotating per pass.
    for pass in 0..WARMUP_PASSES + PASSES {
        let timed = pass >= WARMUP_PASSES;
        eprintln!(
            "{} pass {} ...",
            if timed { "timed" } else { "warm-up" },
            if timed {
                pass - WARMUP_PASSES + 1
            } else {
                pass + 1
            }
        );
        let n = evals.len();
        for k in 0..n {
            let e = &mut evals[(pass + k) % n];
            let mut this_pass = Vec::with_capacity(requests.len());
            for r in &requests {
                let d = e.timed(r);
                this_pass.push(d.as_nanos() as u64);
            }
            if timed {
                let s = stats(&this_pass);
                e.per_pass.push((s.p50, s.p99));
                e.samples.extend(this_pass);
            }
        }
    }

    // What the timer itself adds to each sample.
    let mut timer: Vec<u64> = (0..100_000)
        .map(|_| {
            let start = Instant::now();
            black_box(());
            start.elapsed().as_nanos() as u64
        })
        .collect();
    timer.sort_unstable();
    let timer_p50_ns = pct(&timer, 50.0) * 1e3;

    // Results.
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let total: usize = mix.values().sum();
    let share = |e: &str| mix.get(e).copied().unwrap_or(0) as f64 * 100.0 / total as f64;
    println!();
    println!("tool-access policy: wasmtime vs native Rust vs Cedar — one decision at a time");
    println!(
        "{cpus} CPUs; load average {load_before} before, {} after; `{BENCH_COMMAND}`",
        loadavg()
    );
    println!(
        "fixture bench_fixture({TENANTS}, {AGENTS}, {RULES}, {REQUESTS}, seed {SEED}): data \
         document {}, {} distinct requests (mean {} bytes); decisions {:.1}% permit, {:.1}% \
         deny, {:.1}% escalate",
        kb(data_bytes.len()),
        distinct.len(),
        request_bytes / requests.len().max(1),
        share("permit"),
        share("deny"),
        share("escalate")
    );
    println!(
        "module tool-access.wasm {} ({} bytes), sha256 {}…; compile {:.0} ms, prepare (data \
         init) {:.1} ms; native init {:.1} ms",
        kb(module.wasm.len()),
        module.wasm.len(),
        &cogward_policy_host::sha256_hex(module.wasm)[..12],
        compile_ms.as_secs_f64() * 1e3,
        prepare_ms.as_secs_f64() * 1e3,
        native_init.as_secs_f64() * 1e3
    );
    println!(
        "wasm limits: fuel on = Limits::default() (fuel {} per decision, epoch deadline {} ms); \
         fuel off = fuel None (epoch deadline {} ms only)",
        fuel.map_or("none".into(), |f| f.to_string()),
        deadline.as_millis(),
        deadline.as_millis()
    );
    println!(
        "Cedar: {cedar_sets} tenant partitions, {cedar_policies} policies ({:.0} per tenant); \
         built in {:.0} ms",
        cedar_policies as f64 / cedar_sets.max(1) as f64,
        cedar_build.as_secs_f64() * 1e3
    );
    println!(
        "timed section: wasm = Prepared::evaluate (copy in, guest JSON parse + decide + JSON \
         write, host parses the Decision); native = evaluate_json (JSON in, JSON out); native + \
         decode = that plus parsing the Decision; Cedar = JSON parse + building the entities \
         and request + is_authorized (set 2 too for an allowed call)"
    );
    println!(
        "cross-check passed: all {} evaluators agree on every request (effect and approval \
         group)",
        evals.len()
    );
    println!(
        "{PASSES} timed passes × {} requests per evaluator ({WARMUP_PASSES} warm-up pass \
         first), order rotating per pass; each decision timed alone; decisions/s = count / sum \
         of per-decision times, single thread; an empty timed section measures \
         {timer_p50_ns:.0} ns (p50), included in every sample",
        requests.len()
    );
    println!();

    let all: Vec<Stats> = evals.iter().map(|e| stats(&e.samples)).collect();
    let base = &all[NATIVE];
    println!(
        "   {:<24} {:>9} {:>9} {:>9} {:>12}   {:>8} {:>8} {:>8}",
        "", "p50 µs", "p99 µs", "mean µs", "decisions/s", "p50 ×", "p99 ×", "thr ×"
    );
    for (e, s) in evals.iter().zip(&all) {
        println!(
            "   {:<24} {:>9.2} {:>9.2} {:>9.2} {:>12.0}   {:>7.2}× {:>7.2}× {:>7.3}×",
            e.name,
            s.p50,
            s.p99,
            s.mean,
            s.per_sec,
            s.p50 / base.p50,
            s.p99 / base.p99,
            s.per_sec / base.per_sec
        );
    }
    println!(
        "   (× = this evaluator / native: latency ratios above 1 and throughput below 1 are slower)"
    );
    println!();
    println!("   per pass, p50 / p99 µs:");
    for e in &evals {
        let passes: Vec<String> = e
            .per_pass
            .iter()
            .map(|(a, b)| format!("{a:.2}/{b:.2}"))
            .collect();
        println!("   {:<24} {}", e.name, passes.join("  "));
    }
    println!();

    println!("targets:");
    for (e, s) in evals.iter().zip(&all) {
        if !matches!(e.kind, Kind::Wasm(_)) {
            continue;
        }
        let ok = |b: bool| if b { "met" } else { "NOT met" };
        println!(
            "   {:<24} p99 {:.2} µs ≤ {TARGET_P99_US:.0} µs: {};  p99 {:.2}× native ≤ \
             {TARGET_P99_VS_NATIVE:.0}×: {}  (vs native + decode: {:.2}×)",
            e.name,
            s.p99,
            ok(s.p99 <= TARGET_P99_US),
            s.p99 / base.p99,
            ok(s.p99 <= TARGET_P99_VS_NATIVE * base.p99),
            s.p99 / all[NATIVE_DECODE].p99
        );
    }
    println!();
    println!("bench took {:.1} s", started.elapsed().as_secs_f64());
}
