//! Built-in policy `tool-access` (kind `tool.call`): may this agent see / call this tool?
//!
//! Request: `tenant`, `agent`, `action` and `resource`. The actions, and the full name their
//! resource has (every rule is a glob over full names: `*` any run, `?` one character, see
//! [`glob_match`]):
//!
//! | action | what | `resource` | full name |
//! |---|---|---|---|
//! | `call`, `list` | call a tool, see it in `tools/list` | `{server, tool, arguments}` | `server.tool` (`everything.echo`) |
//! | `prompt.get`, `prompt.list` | get a prompt, see it in `prompts/list` | `{server, prompt, arguments}` | `prompt:server.prompt` |
//! | `resource.read`, `resource.list` | read a resource, see it in `resources/list` (and templates) | `{server, uri}` | `resource:server:uri` |
//! | `complete` | complete an argument of a prompt or resource template | `{server, prompt}` or `{server, uri}` | as above |
//! | `sample`, `elicit`, `roots` | relay the server's sampling (elicitation, roots) request made during a call of `tool` to the agent | `{server, tool}` | `sampling:server.tool`, `elicitation:server.tool`, `roots:server.tool` |
//!
//! So a tool scope such as `everything.*` names no prompt or resource: an agent sees and gets
//! those only where its scope says `prompt:everything.*` or `resource:everything:*` (the change
//! that brought them failed closed). `call`, `prompt.get`, `resource.read`, `sample`, `elicit` and
//! `roots` are *uses*; the others are *listings*.
//!
//! Data (`data.example.json`): per tenant (exact name, else `"*"`):
//!
//! ```text
//! {"tenants": {"<tenant>" | "*": {
//!     "default_scope": [tool glob],           // the scope of agents without an agent entry
//!     "profiles": {"<name>": [tool glob]},    // named scopes agent entries can reuse
//!     "agents": {"<agent name or glob>": {"profiles": ["<name>"], "scope": [tool glob]}},
//!     "deny": [tool glob],                    // nobody in the tenant, whatever their scope
//!     "sensitive": [{"tools": [tool glob], "group": "<approvers>", "reason": "..."}],
//!     "arguments": [{"tools": [tool glob], "pointer": "/json/pointer", "deny": [value glob],
//!                    "reason": "..."}],           // deny a call on an argument's value
//!     "redact": [{"tools": [tool glob], "fields": ["/json/pointer into the result"]}]
//! }}}
//! ```
//!
//! Every field is optional (an empty tenant allows nothing). An agent's scope is the union of
//! its entry's `profiles` and `scope`; the entry is the one keyed by the agent's exact name if
//! there is one, else every entry whose key is a glob matching the name (their scopes unite),
//! else there is none and the agent has the tenant's `default_scope`.
//!
//! Decision, in order:
//! 1. no rules for the tenant, or an action not in the table → `deny`;
//! 2. the tool matches a `deny` glob → `deny` (naming the glob); a tool outside the agent's scope
//!    → `deny` ("tool X is outside agent Y's scope"); both are named when both hold;
//! 3. (a use) an `arguments` rule of the tool whose `pointer` names a value in the call's
//!    `resource.arguments` matching one of its `deny` globs (the value as text: a string
//!    itself, anything else as JSON) → `deny`, naming the argument and the rule's reason;
//! 4. the tool matches a `sensitive` rule (the first in order): a use → `escalate` with a
//!    `require_approval` obligation for the rule's `group`; a listing → `permit` (sensitive tools
//!    stay visible);
//! 5. otherwise `permit`; either way a use some `redact` rule names carries a `redact`
//!    obligation per field (the gateway removes them from the result).
//!
//! [`Policy::new`] indexes every tenant once: agents by exact name (a `BTreeMap`) with glob keys
//! apart, and every tool-glob list split into exact names (a `BTreeSet`), prefixes (globs whose
//! only wildcard is one trailing `*`, looked up by length) and general globs, so that a decision
//! touches only its own tenant's rules and scans only the general globs.
//!
//! [`bench_fixture`] generates realistic data documents and request mixes for benchmarks, and
//! documents how the rules map to Cedar.

use cogward_policy_sdk::{
    Decision, Effect, Policy, Tenants, export_policy, for_tenant, glob_match,
};
use serde::Deserialize;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

pub type Data = Tenants<TenantRules>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRules {
    #[serde(default)]
    pub default_scope: Vec<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub agents: BTreeMap<String, AgentRules>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub sensitive: Vec<SensitiveRule>,
    #[serde(default)]
    pub arguments: Vec<ArgumentRule>,
    #[serde(default)]
    pub redact: Vec<RedactRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgumentRule {
    pub tools: Vec<String>,
    pub pointer: String,
    pub deny: Vec<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactRule {
    pub tools: Vec<String>,
    pub fields: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRules {
    #[serde(default)]
    pub profiles: Vec<String>,
    #[serde(default)]
    pub scope: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensitiveRule {
    pub tools: Vec<String>,
    pub group: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Request<'a> {
    #[serde(borrow)]
    pub tenant: Cow<'a, str>,
    #[serde(borrow)]
    pub agent: Cow<'a, str>,
    #[serde(borrow)]
    pub action: Cow<'a, str>,
    #[serde(borrow)]
    pub resource: Resource<'a>,
}

/// Strings borrow from the request's bytes unless they contain escapes.
#[derive(Debug, Deserialize)]
pub struct Resource<'a> {
    #[serde(borrow)]
    pub server: Cow<'a, str>,
    /// The tool (`call`, `list`).
    #[serde(borrow, default)]
    pub tool: Cow<'a, str>,
    /// The prompt (`prompt.*`, `complete` of a prompt's argument).
    #[serde(borrow, default)]
    pub prompt: Option<Cow<'a, str>>,
    /// The resource's URI or URI template (`resource.*`, `complete` of a template's argument).
    #[serde(borrow, default)]
    pub uri: Option<Cow<'a, str>>,
    /// The call's or prompt's arguments (`call`, `prompt.get`).
    #[serde(default)]
    pub arguments: Option<Value>,
}

impl Resource<'_> {
    /// What the action is about (`tool`, `prompt`, `resource`), its full name, and whether the
    /// action uses it (rather than lists it); why not, for an unknown action or a missing name.
    fn target(&self, action: &str) -> Result<(&'static str, String, bool), String> {
        let (what, use_) = match action {
            "call" => ("tool", true),
            "list" => ("tool", false),
            "prompt.get" => ("prompt", true),
            "prompt.list" => ("prompt", false),
            "resource.read" => ("resource", true),
            "resource.list" => ("resource", false),
            "complete" if self.prompt.is_some() => ("prompt", false),
            "complete" => ("resource", false),
            "sample" => ("sampling", true),
            "elicit" => ("elicitation", true),
            "roots" => ("roots", true),
            other => {
                return Err(format!(
                    "unknown tool action {other:?} (expected call, list, prompt.get, \
                     prompt.list, resource.read, resource.list, complete, sample, elicit or roots)"
                ));
            }
        };
        let server = &self.server;
        let name = match what {
            "tool" if !self.tool.is_empty() => format!("{server}.{}", self.tool),
            "sampling" | "elicitation" | "roots" if !self.tool.is_empty() => {
                format!("{what}:{server}.{}", self.tool)
            }
            "prompt" => match self.prompt.as_deref() {
                Some(p) if !p.is_empty() => format!("prompt:{server}.{p}"),
                _ => return Err("resource.prompt must not be empty".into()),
            },
            "resource" => match self.uri.as_deref() {
                Some(u) if !u.is_empty() => format!("resource:{server}:{u}"),
                _ => return Err("resource.uri must not be empty".into()),
            },
            _ => return Err("resource.server and resource.tool must not be empty".into()),
        };
        if server.is_empty() {
            return Err("resource.server must not be empty".into());
        }
        Ok((what, name, use_))
    }
}

/// A list of tool globs, split for lookup.
#[derive(Debug, Default)]
struct ToolSet {
    /// A pattern made only of `*`: it matches every tool.
    any: Option<String>,
    exact: BTreeSet<String>,
    /// Prefix (the glob without its trailing `*`) → the glob as written.
    prefixes: BTreeMap<String, String>,
    /// The distinct lengths of the keys of `prefixes`, ascending.
    prefix_lens: Vec<usize>,
    globs: Vec<String>,
}

impl ToolSet {
    fn new<'a>(patterns: impl IntoIterator<Item = &'a String>) -> Result<Self, String> {
        let mut set = ToolSet::default();
        for pattern in patterns {
            set.add(pattern)?;
        }
        set.prefix_lens = set.prefixes.keys().map(String::len).collect();
        set.prefix_lens.sort_unstable();
        set.prefix_lens.dedup();
        Ok(set)
    }

    fn add(&mut self, pattern: &str) -> Result<(), String> {
        if pattern.is_empty() {
            return Err("empty tool pattern".into());
        }
        // Runs of `*` mean what one `*` means.
        let mut norm = String::with_capacity(pattern.len());
        for c in pattern.chars() {
            if !(c == '*' && norm.ends_with('*')) {
                norm.push(c);
            }
        }
        let wild = |s: &str| s.contains(['*', '?']);
        if norm == "*" {
            self.any.get_or_insert_with(|| pattern.to_string());
        } else if !wild(&norm) {
            self.exact.insert(norm);
        } else if let Some(prefix) = norm.strip_suffix('*').filter(|p| !wild(p)) {
            self.prefixes
                .entry(prefix.to_string())
                .or_insert_with(|| pattern.to_string());
        } else {
            self.globs.push(norm);
        }
        Ok(())
    }

    /// The pattern that matches `tool`, if any.
    fn find<'s>(&'s self, tool: &str) -> Option<&'s str> {
        if let Some(any) = &self.any {
            return Some(any);
        }
        if let Some(name) = self.exact.get(tool) {
            return Some(name);
        }
        for &len in &self.prefix_lens {
            if len > tool.len() {
                break;
            }
            if let Some(pattern) = tool.get(..len).and_then(|p| self.prefixes.get(p)) {
                return Some(pattern);
            }
        }
        self.globs
            .iter()
            .find(|g| glob_match(g, tool))
            .map(String::as_str)
    }

    fn matches(&self, tool: &str) -> bool {
        self.find(tool).is_some()
    }
}

#[derive(Debug)]
struct Sensitive {
    tools: ToolSet,
    group: String,
    reason: Option<String>,
}

/// One tenant's rules, indexed.
#[derive(Debug)]
struct TenantIndex {
    deny: ToolSet,
    default_scope: ToolSet,
    exact_agents: BTreeMap<String, ToolSet>,
    /// (agent glob, its scope), in key order.
    glob_agents: Vec<(String, ToolSet)>,
    sensitive: Vec<Sensitive>,
    arguments: Vec<(ToolSet, ArgumentRule)>,
    redact: Vec<(ToolSet, Vec<String>)>,
}

impl TenantIndex {
    fn new(rules: TenantRules) -> Result<Self, String> {
        let mut exact_agents = BTreeMap::new();
        let mut glob_agents = Vec::new();
        for (key, agent) in &rules.agents {
            let mut patterns: Vec<&String> = Vec::new();
            for name in &agent.profiles {
                let profile = rules
                    .profiles
                    .get(name)
                    .ok_or_else(|| format!("agent {key} names unknown profile {name}"))?;
                patterns.extend(profile);
            }
            patterns.extend(&agent.scope);
            let set = ToolSet::new(patterns).map_err(|e| format!("agent {key}: {e}"))?;
            if key.contains(['*', '?']) {
                glob_agents.push((key.clone(), set));
            } else {
                exact_agents.insert(key.clone(), set);
            }
        }
        let sensitive = rules
            .sensitive
            .into_iter()
            .map(|s| {
                Ok(Sensitive {
                    tools: ToolSet::new(&s.tools).map_err(|e| format!("sensitive: {e}"))?,
                    group: s.group,
                    reason: s.reason,
                })
            })
            .collect::<Result<_, String>>()?;
        let arguments = rules
            .arguments
            .into_iter()
            .map(|a| {
                if !a.pointer.starts_with('/') {
                    return Err(format!(
                        "arguments: pointer {:?} must start with /",
                        a.pointer
                    ));
                }
                Ok((
                    ToolSet::new(&a.tools).map_err(|e| format!("arguments: {e}"))?,
                    a,
                ))
            })
            .collect::<Result<_, String>>()?;
        let redact = rules
            .redact
            .into_iter()
            .map(|r| {
                if let Some(bad) = r.fields.iter().find(|f| !f.starts_with('/')) {
                    return Err(format!("redact: field {bad:?} must be a JSON pointer"));
                }
                Ok((
                    ToolSet::new(&r.tools).map_err(|e| format!("redact: {e}"))?,
                    r.fields,
                ))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            arguments,
            redact,
            deny: ToolSet::new(&rules.deny).map_err(|e| format!("deny: {e}"))?,
            default_scope: ToolSet::new(&rules.default_scope)
                .map_err(|e| format!("default_scope: {e}"))?,
            exact_agents,
            glob_agents,
            sensitive,
        })
    }

    fn in_scope(&self, agent: &str, tool: &str) -> bool {
        if let Some(scope) = self.exact_agents.get(agent) {
            return scope.matches(tool);
        }
        let mut has_entry = false;
        for (key, scope) in &self.glob_agents {
            if glob_match(key, agent) {
                if scope.matches(tool) {
                    return true;
                }
                has_entry = true;
            }
        }
        !has_entry && self.default_scope.matches(tool)
    }
}

pub struct ToolAccess {
    tenants: BTreeMap<String, TenantIndex>,
}

impl Policy for ToolAccess {
    type Data = Data;
    type Request<'a> = Request<'a>;

    fn new(data: Data) -> Result<Self, String> {
        Ok(Self {
            tenants: data.build(TenantIndex::new)?,
        })
    }

    fn evaluate(&self, r: &Request<'_>) -> Decision {
        let Some(rules) = for_tenant(&self.tenants, &r.tenant) else {
            return Decision::deny(format!("tenant {} has no tool-access rules", r.tenant));
        };
        let (what, tool, call) = match r.resource.target(&r.action) {
            Ok(t) => t,
            Err(why) => return Decision::deny(why),
        };
        let mut reasons = Vec::new();
        if let Some(pattern) = rules.deny.find(&tool) {
            reasons.push(format!(
                "{what} {tool} is denied in tenant {} by rule {pattern}",
                r.tenant
            ));
        }
        if !rules.in_scope(&r.agent, &tool) {
            reasons.push(format!(
                "{what} {tool} is outside agent {}'s scope",
                r.agent
            ));
        }
        if call && let Some(args) = &r.resource.arguments {
            for (tools, rule) in &rules.arguments {
                if !tools.matches(&tool) {
                    continue;
                }
                let Some(value) = args.pointer(&rule.pointer) else {
                    continue;
                };
                let text = match value {
                    Value::String(s) => Cow::Borrowed(s.as_str()),
                    other => Cow::Owned(other.to_string()),
                };
                if let Some(glob) = rule.deny.iter().find(|g| glob_match(g, &text)) {
                    reasons.push(format!(
                        "argument {} of {what} {tool} matches {glob:?}{}",
                        rule.pointer,
                        rule.reason
                            .as_ref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ));
                }
            }
        }
        if !reasons.is_empty() {
            return Decision {
                effect: Effect::Deny,
                reasons,
                obligations: Vec::new(),
            };
        }
        let mut decision = match rules.sensitive.iter().find(|s| s.tools.matches(&tool)) {
            Some(rule) if call => {
                let reason = match &rule.reason {
                    Some(reason) => format!("{what} {tool} is sensitive: {reason}"),
                    None => format!(
                        "{what} {tool} is sensitive: its use needs approval from {}",
                        rule.group
                    ),
                };
                Decision::escalate(&rule.group, reason)
            }
            _ => Decision::permit(),
        };
        if call {
            for (tools, fields) in &rules.redact {
                if tools.matches(&tool) {
                    decision.obligations.extend(
                        fields
                            .iter()
                            .map(|f| cogward_policy_sdk::Obligation::Redact { field: f.clone() }),
                    );
                }
            }
        }
        decision
    }
}

export_policy!(ToolAccess);

// ---------------------------------------------------------------------------------------------
// Benchmark fixture
// ---------------------------------------------------------------------------------------------

const SERVERS: &[&str] = &[
    "github",
    "gitlab",
    "jira",
    "slack",
    "fs",
    "postgres",
    "k8s",
    "sentry",
    "notion",
    "everything",
];
const SAFE_VERBS: &[&str] = &["get", "list", "search", "create", "update", "comment"];
const SENSITIVE_VERBS: &[&str] = &["merge", "deploy", "admin"];
const NOUNS: &[&str] = &[
    "issue", "pr", "file", "branch", "page", "ticket", "job", "table", "secret",
];
/// Profiles; agents `<profile>-<i>` get an exact entry naming their profile. `deploy-*` and
/// `ci-*` agents are covered by glob entries, `guest-*` agents by the default scope.
const PROFILES: &[&str] = &["reviewer", "fixer", "docs", "triage", "ops", "deploy"];
const ROLES: &[&str] = &[
    "reviewer", "fixer", "reviewer", "fixer", "docs", "triage", "ops", "deploy", "ci", "guest",
];
const SENSITIVE_RULES: &[(&str, &str)] = &[
    ("merge", "release-managers"),
    ("deploy", "sre"),
    ("admin", "security"),
];

/// Deterministic xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let s = seed ^ 0x9E37_79B9_7F4A_7C15;
        Rng(if s == 0 { 0x2545_F491_4F6C_DD1D } else { s })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// A tool pattern of the fixture: `server.verb_noun` with any part left open.
#[derive(Debug, Clone, Copy)]
struct Pat {
    server: Option<&'static str>,
    verb: Option<&'static str>,
    noun: Option<&'static str>,
}

impl Pat {
    fn render(self) -> String {
        match (self.server, self.verb, self.noun) {
            (Some(s), Some(v), Some(n)) => format!("{s}.{v}_{n}"),
            (Some(s), Some(v), None) => format!("{s}.{v}_*"),
            (Some(s), None, Some(n)) => format!("{s}.*_{n}"),
            (Some(s), None, None) => format!("{s}.*"),
            (None, Some(v), Some(n)) => format!("*.{v}_{n}"),
            (None, Some(v), None) => format!("*.{v}_*"),
            (None, None, Some(n)) => format!("*.*_{n}"),
            (None, None, None) => "*".into(),
        }
    }

    /// A concrete (server, tool) this pattern matches.
    fn instantiate(self, rng: &mut Rng) -> (&'static str, String) {
        let server = self.server.unwrap_or_else(|| rng.pick(SERVERS));
        let verb = self.verb.unwrap_or_else(|| random_verb(rng, 10));
        let noun = self.noun.unwrap_or_else(|| rng.pick(NOUNS));
        (server, format!("{verb}_{noun}"))
    }
}

/// A verb: sensitive with `sensitive_pct`% odds, `delete` with 3%, else a safe one.
fn random_verb(rng: &mut Rng, sensitive_pct: usize) -> &'static str {
    let r = rng.below(100);
    if r < sensitive_pct {
        rng.pick(SENSITIVE_VERBS)
    } else if r < sensitive_pct + 3 {
        "delete"
    } else {
        rng.pick(SAFE_VERBS)
    }
}

/// A scope pattern: exact names, `server.verb_*` and `server.*` prefixes and general globs.
fn scope_pat(rng: &mut Rng, sensitive_pct: usize) -> Pat {
    let server = Some(rng.pick(SERVERS));
    let verb = Some(random_verb(rng, sensitive_pct));
    let noun = Some(rng.pick(&NOUNS[..NOUNS.len() - 1]));
    match rng.below(100) {
        0..35 => Pat { server, verb, noun },
        35..60 => Pat {
            server,
            verb,
            noun: None,
        },
        60..70 => Pat {
            server,
            verb: None,
            noun: None,
        },
        70..80 => Pat {
            server: None,
            verb,
            noun: None,
        },
        80..95 => Pat {
            server,
            verb: None,
            noun,
        },
        _ => Pat {
            server: None,
            verb,
            noun,
        },
    }
}

fn render_all(pats: &[Pat]) -> Vec<String> {
    pats.iter().map(|p| p.render()).collect()
}

struct GenTenant {
    name: String,
    deny: Vec<Pat>,
    default_scope: Vec<Pat>,
    /// Every agent identity with its effective scope.
    agents: Vec<(String, Vec<Pat>)>,
}

/// A deterministic, realistic data document and request mix for benchmarks (wasm vs native vs
/// Cedar) — the same `seed` always gives the same output.
///
/// # The data document
///
/// `tenants` tenants named `tenant-00`, `tenant-01`, … (no `"*"` entry, so unknown tenants are
/// denied). Tools are `server.verb_noun` over 10 servers, 10 verbs and 9 nouns; every pattern
/// uses `*` only (never `?`). `rules` is the total number of tool patterns in the document
/// (every entry of `default_scope`, `profiles`, agent `scope`, `deny` and sensitive `tools`),
/// split evenly across tenants; per tenant, with `r` its share (at least 16 is used): `deny` has
/// `max(1, r/12)` patterns (`*.delete_*`, `*.*_secret`, then `<server>.admin_*`), `sensitive`
/// `max(1, r/12)` one-pattern rules (`*.merge_*` → group `release-managers`, `*.deploy_*` →
/// `sre`, `*.admin_*` → `security`, then `<server>.<verb>_*` cycling through those groups),
/// `default_scope` `max(1, r/10)`, the `ci-*` agent entry 2, exact agent entries `r/10` extra
/// patterns between them, and the 6 `profiles` (`reviewer`, `fixer`, `docs`, `triage`, `ops`,
/// `deploy`) the rest. Scope patterns are ~35% exact names, ~35% prefixes (`github.get_*`,
/// `github.*`) and ~30% general globs (`*.get_*`, `github.*_pr`, `*.get_pr`).
///
/// `agents` is the total number of agent identities, split evenly across tenants; tenant agent
/// `i` is named `<role>-<i>` with the role cycling through `reviewer, fixer, reviewer, fixer,
/// docs, triage, ops, deploy, ci, guest`. Reviewer, fixer, docs, triage and ops agents (70%)
/// have exact entries (`{"profiles": [role]}`, the first `r/10` with an extra `scope`
/// pattern); `deploy-*` and `ci-*` agents are covered by the glob entries `"deploy-*":
/// {"profiles": ["deploy"]}` and `"ci-*": {"scope": [...]}`, except that the tenant's first
/// deploy agent has an exact entry with the `ops` profile (exact keys win); `guest-*` agents have
/// no entry and get `default_scope`.
///
/// # The requests
///
/// `requests` full [`Request`](cogward_policy_sdk::Request) envelopes (`kind: "tool.call"`, a
/// `principal`, `context: {}`), ~90% `action: "call"`, ~10% `"list"`: ~82% name a known agent
/// and a tool instantiated from one of its scope patterns (mostly `permit`; `escalate` where the
/// tool is sensitive; `deny` where a deny glob overrides), ~8% a known agent and a random tool
/// (mostly `deny`, out of scope), ~5% a tool matching a deny glob, ~3% an unknown agent
/// (`stranger-<n>`, default scope) and ~2% an unknown tenant (`deny`). With `(20, 1000, 600, 5000,
/// 7)` that decides ~74% `permit`, ~20% `deny` and ~6% `escalate`.
///
/// # Mapping to Cedar
///
/// Entities: the principal is `Agent::"<tenant>/<agent>"` (the request's tenant and agent) with
/// attributes `{tenant, name}` and parents `Profile::"<R>/<p>"` for each profile `p` that the
/// exact entry for `<agent>` in `R` names, where `R` is the rule tenant (the request's tenant if
/// the data names it, else `"*"`; always the request's tenant in this fixture) — an agent
/// without an exact entry has no parents. The resource is `Tool::"<server>.<tool>"` with
/// attribute `{name: "<server>.<tool>"}`; the actions are `Action::"call"` and `Action::"list"`;
/// the context is empty. A tool glob `g` is `resource.name like "g"` (Cedar's `like` has the same
/// `*`; `?` has no equivalent, hence none here). For rule tenant `T` let `TEN` be
/// `principal.tenant == "T"` (for `"*"`: `!["<every named tenant>",
/// …].contains(principal.tenant)`), `EXACT` the set literal of `T`'s exact agent keys and `P1`, `P2`, … its glob agent keys.
/// Policy set 1, evaluated for every request, has one policy per pattern in the document (plus
/// the profile patterns of glob agent entries, expanded):
///
/// - `deny` glob `g`: `forbid(principal, action, resource) when { TEN && resource.name like "g" };`
/// - pattern `g` of profile `p`: `permit(principal in Profile::"T/p", action, resource) when {
///   resource.name like "g" };`
/// - `scope` pattern `g` of the exact agent entry `A`: `permit(principal, action, resource) when {
///   TEN && principal.name == "A" && resource.name like "g" };`
/// - pattern `g` of the glob agent entry `P` (its `scope` and its profiles' patterns):
///   `permit(principal, action, resource) when { TEN && principal.name like "P" && resource.name
///   like "g" } unless { EXACT.contains(principal.name) };`
/// - `default_scope` pattern `g`: `permit(principal, action, resource) when { TEN &&
///   resource.name like "g" } unless { EXACT.contains(principal.name) || principal.name like
///   "P1" || principal.name like "P2" || … };`
///
/// Set 1 `Deny` (a forbid, or no permit) is `deny`. Set 1 `Allow` with action `list` is
/// `permit`. Set 1 `Allow` with action `call` consults policy set 2, one policy per sensitive
/// rule `i` and pattern `g`: `@group("G") @id("sensitive-<i, zero-padded>") permit(principal,
/// action == Action::"call", resource) when { TEN && resource.name like "g" };` — `Allow` is
/// `escalate` with the group of the lowest-numbered determining policy (the first matching rule),
/// `Deny` is `permit`. The fixture's requests never hit the policy's other denials (an action
/// other than `call`/`list`, an empty server or tool), which need no Cedar counterpart.
pub fn bench_fixture(
    tenants: usize,
    agents: usize,
    rules: usize,
    requests: usize,
    seed: u64,
) -> (Value, Vec<Value>) {
    let mut rng = Rng::new(seed);
    let tenants = tenants.max(1);
    let mut gen_tenants = Vec::with_capacity(tenants);
    let mut data_tenants = serde_json::Map::new();
    for t in 0..tenants {
        let name = format!("tenant-{t:02}");
        let r = (rules / tenants + usize::from(t < rules % tenants)).max(16);
        let n_agents = agents / tenants + usize::from(t < agents % tenants);
        let n_deny = (r / 12).max(1);
        let n_sensitive = (r / 12).max(1);
        let n_default = (r / 10).max(1);
        let n_ci = 2;
        let n_extra = r / 10;
        let n_profile = r - n_deny - n_sensitive - n_default - n_ci - n_extra;

        let deny: Vec<Pat> = (0..n_deny)
            .map(|i| match i {
                0 => Pat {
                    server: None,
                    verb: Some("delete"),
                    noun: None,
                },
                1 => Pat {
                    server: None,
                    verb: None,
                    noun: Some("secret"),
                },
                _ => Pat {
                    server: Some(rng.pick(SERVERS)),
                    verb: Some("admin"),
                    noun: None,
                },
            })
            .collect();
        let sensitive: Vec<Value> = (0..n_sensitive)
            .map(|i| {
                let (verb, group) = SENSITIVE_RULES[i % SENSITIVE_RULES.len()];
                let pat = Pat {
                    server: (i >= SENSITIVE_RULES.len()).then(|| rng.pick(SERVERS)),
                    verb: Some(verb),
                    noun: None,
                };
                json!({
                    "tools": [pat.render()],
                    "group": group,
                    "reason": format!("{verb} tools need approval from {group}"),
                })
            })
            .collect();
        let default_scope: Vec<Pat> = (0..n_default)
            .map(|_| {
                let mut p = scope_pat(&mut rng, 0);
                p.verb = p.verb.map(|_| rng.pick(&SAFE_VERBS[..3]));
                p
            })
            .collect();
        let mut profiles: Vec<Vec<Pat>> = vec![Vec::new(); PROFILES.len()];
        for i in 0..n_profile {
            let p = i % PROFILES.len();
            // ops and deploy agents merge and deploy: their scopes hold more sensitive tools.
            let sensitive_pct = if p >= 4 { 40 } else { 8 };
            profiles[p].push(scope_pat(&mut rng, sensitive_pct));
        }
        let ci: Vec<Pat> = (0..n_ci).map(|_| scope_pat(&mut rng, 5)).collect();

        let mut agent_entries = serde_json::Map::new();
        let mut gen_agents = Vec::with_capacity(n_agents);
        let mut extras_left = n_extra;
        let mut first_deploy = true;
        for i in 0..n_agents {
            let role = ROLES[i % ROLES.len()];
            let agent = format!("{role}-{i}");
            let profile_of = |name: &str| PROFILES.iter().position(|p| *p == name);
            let scope: Vec<Pat> = match role {
                "deploy" if first_deploy => {
                    first_deploy = false;
                    agent_entries.insert(agent.clone(), json!({"profiles": ["ops"]}));
                    profiles[4].clone()
                }
                "deploy" => profiles[5].clone(),
                "ci" => ci.clone(),
                "guest" => default_scope.clone(),
                _ => {
                    let mut scope = profile_of(role)
                        .map(|p| profiles[p].clone())
                        .unwrap_or_default();
                    let mut entry = json!({"profiles": [role]});
                    if extras_left > 0 {
                        extras_left -= 1;
                        let extra = scope_pat(&mut rng, 5);
                        entry["scope"] = json!([extra.render()]);
                        scope.push(extra);
                    }
                    agent_entries.insert(agent.clone(), entry);
                    scope
                }
            };
            gen_agents.push((agent, scope));
        }
        // Extra patterns nobody took (too few agents) go to the default scope.
        let mut default_scope = default_scope;
        for _ in 0..extras_left {
            default_scope.push(scope_pat(&mut rng, 0));
        }
        agent_entries.insert("deploy-*".into(), json!({"profiles": ["deploy"]}));
        agent_entries.insert("ci-*".into(), json!({"scope": render_all(&ci)}));

        let profile_map: serde_json::Map<String, Value> = PROFILES
            .iter()
            .zip(&profiles)
            .map(|(name, pats)| ((*name).to_string(), json!(render_all(pats))))
            .collect();
        data_tenants.insert(
            name.clone(),
            json!({
                "default_scope": render_all(&default_scope),
                "profiles": profile_map,
                "agents": agent_entries,
                "deny": render_all(&deny),
                "sensitive": sensitive,
            }),
        );
        gen_tenants.push(GenTenant {
            name,
            deny,
            default_scope,
            agents: gen_agents,
        });
    }
    let data = json!({ "tenants": data_tenants });

    let random_tool = |rng: &mut Rng| {
        Pat {
            server: None,
            verb: None,
            noun: None,
        }
        .instantiate(rng)
    };
    let mut out = Vec::with_capacity(requests);
    for n in 0..requests {
        let t = &gen_tenants[rng.below(gen_tenants.len())];
        let kind = rng.below(100);
        let (tenant, agent, (server, tool)) = match kind {
            0..2 => (
                format!("unknown-tenant-{}", n % 7),
                "reviewer-0".to_string(),
                random_tool(&mut rng),
            ),
            2..5 => {
                let tool = match t.default_scope.get(rng.below(t.default_scope.len())) {
                    Some(p) => p.instantiate(&mut rng),
                    None => random_tool(&mut rng),
                };
                (t.name.clone(), format!("stranger-{}", n % 13), tool)
            }
            _ if t.agents.is_empty() => {
                (t.name.clone(), "nobody".to_string(), random_tool(&mut rng))
            }
            5..13 => {
                let (agent, _) = &t.agents[rng.below(t.agents.len())];
                (t.name.clone(), agent.clone(), random_tool(&mut rng))
            }
            13..18 => {
                let (agent, _) = &t.agents[rng.below(t.agents.len())];
                let p = t.deny[rng.below(t.deny.len())];
                (t.name.clone(), agent.clone(), p.instantiate(&mut rng))
            }
            _ => {
                let (agent, scope) = &t.agents[rng.below(t.agents.len())];
                let tool = match scope.get(rng.below(scope.len())) {
                    Some(p) => p.instantiate(&mut rng),
                    None => random_tool(&mut rng),
                };
                (t.name.clone(), agent.clone(), tool)
            }
        };
        let action = if rng.below(10) == 0 { "list" } else { "call" };
        let principal = format!("user-{}@{tenant}", rng.below(50));
        out.push(json!({
            "kind": "tool.call",
            "tenant": tenant,
            "principal": principal,
            "agent": agent,
            "action": action,
            "resource": {"server": server, "tool": tool},
            "context": {},
        }));
    }
    (data, out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use cogward_policy_sdk::Obligation;

    cogward_policy_sdk::example_tests!(ToolAccess);

    fn with_rules(rules: serde_json::Value) -> ToolAccess {
        let data: Data = serde_json::from_value(json!({"tenants": {"acme": rules}})).unwrap();
        ToolAccess::new(data).unwrap()
    }

    fn call(policy: &ToolAccess, tool: &str, arguments: serde_json::Value) -> Decision {
        let text = json!({"tenant": "acme", "agent": "a", "action": "call",
                          "resource": {"server": "shell", "tool": tool, "arguments": arguments}})
        .to_string();
        policy.evaluate(&serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn an_argument_value_can_deny_a_call_and_results_carry_redactions() {
        let policy = with_rules(json!({
            "default_scope": ["shell.*"],
            "arguments": [{"tools": ["shell.run"], "pointer": "/command", "deny": ["*rm -rf*", "sudo *"],
                           "reason": "destructive"},
                          {"tools": ["shell.*"], "pointer": "/opts/depth", "deny": ["9?"]}],
            "redact": [{"tools": ["shell.read"], "fields": ["/structuredContent/token"]}]
        }));
        let d = call(
            &policy,
            "run",
            json!({"command": "cd / && rm -rf --no-preserve-root ."}),
        );
        assert_eq!(d.effect, Effect::Deny);
        assert_eq!(
            d.reasons,
            vec![r#"argument /command of tool shell.run matches "*rm -rf*": destructive"#]
        );
        let d = call(
            &policy,
            "run",
            json!({"command": "ls", "opts": {"depth": 95}}),
        );
        assert_eq!(
            d.effect,
            Effect::Deny,
            "a number is matched as its JSON text"
        );
        assert_eq!(
            call(&policy, "run", json!({"command": "ls"})).effect,
            Effect::Permit
        );
        assert_eq!(call(&policy, "run", json!({})).effect, Effect::Permit);
        let d = call(&policy, "read", json!({"path": "x"}));
        assert_eq!(d.effect, Effect::Permit);
        assert_eq!(
            d.obligations,
            vec![Obligation::Redact {
                field: "/structuredContent/token".into()
            }]
        );
        let bad: Data = serde_json::from_value(json!({"tenants": {"acme": {
            "arguments": [{"tools": ["*"], "pointer": "command", "deny": ["x"]}]}}}))
        .unwrap();
        assert!(ToolAccess::new(bad).is_err(), "a pointer must start with /");
    }

    #[test]
    fn prompts_and_resources_have_their_own_names_and_a_tool_scope_covers_neither() {
        let policy = with_rules(json!({
            "default_scope": ["docs.*", "prompt:docs.review_*", "resource:docs:file:///repo/*",
                              "sampling:docs.*"],
            "deny": ["resource:docs:file:///repo/.env*"],
            "sensitive": [{"tools": ["prompt:docs.review_security"], "group": "security"}],
            "arguments": [{"tools": ["prompt:docs.*"], "pointer": "/code", "deny": ["*BEGIN PRIVATE KEY*"]}]
        }));
        let decide = |action: &str, resource: serde_json::Value| {
            let text =
                json!({"tenant": "acme", "agent": "a", "action": action, "resource": resource})
                    .to_string();
            policy.evaluate(&serde_json::from_str(&text).unwrap())
        };
        let prompt = |p: &str| json!({"server": "docs", "prompt": p});
        let uri = |u: &str| json!({"server": "docs", "uri": u});
        let secret = json!({"server": "docs", "prompt": "review_code",
                            "arguments": {"code": "-----BEGIN PRIVATE KEY-----"}});
        for (action, resource, effect) in [
            ("prompt.list", prompt("review_code"), Effect::Permit),
            ("prompt.get", prompt("review_code"), Effect::Permit),
            ("prompt.get", prompt("summarise"), Effect::Deny),
            ("prompt.get", secret, Effect::Deny),
            ("prompt.get", prompt("review_security"), Effect::Escalate),
            // A sensitive prompt stays visible.
            ("prompt.list", prompt("review_security"), Effect::Permit),
            (
                "resource.read",
                uri("file:///repo/README.md"),
                Effect::Permit,
            ),
            ("resource.list", uri("file:///repo/{path}"), Effect::Permit),
            ("resource.read", uri("file:///repo/.env"), Effect::Deny),
            ("resource.read", uri("file:///etc/passwd"), Effect::Deny),
            ("complete", prompt("review_code"), Effect::Permit),
            ("complete", uri("file:///etc/{x}"), Effect::Deny),
            // A server's sampling (elicitation) request during a tool's call: its own name.
            (
                "sample",
                json!({"server": "docs", "tool": "summarise"}),
                Effect::Permit,
            ),
            (
                "elicit",
                json!({"server": "docs", "tool": "summarise"}),
                Effect::Deny,
            ),
            (
                "roots",
                json!({"server": "docs", "tool": "summarise"}),
                Effect::Deny,
            ),
        ] {
            let d = decide(action, resource.clone());
            assert_eq!(d.effect, effect, "{action} {resource}: {d:?}");
        }
        let d = decide("prompt.get", prompt("summarise"));
        assert_eq!(
            d.reasons,
            vec!["prompt prompt:docs.summarise is outside agent a's scope"]
        );
        let d = decide("resource.read", uri("file:///repo/.env"));
        assert!(d.reasons[0].contains("denied in tenant acme"), "{d:?}");
        // A tool scope (`docs.*`) names none of the server's prompts or resources.
        let tools_only = with_rules(json!({"default_scope": ["docs.*"]}));
        for (action, resource) in [
            ("prompt.get", prompt("review_code")),
            ("resource.read", uri("x.y")),
        ] {
            let text =
                json!({"tenant": "acme", "agent": "a", "action": action, "resource": resource})
                    .to_string();
            let d = tools_only.evaluate(&serde_json::from_str(&text).unwrap());
            assert_eq!(d.effect, Effect::Deny, "{action}");
        }
        for (action, resource) in [
            ("prompt.get", json!({"server": "docs"})),
            ("resource.read", json!({"server": "docs", "uri": ""})),
            ("call", json!({"server": "", "tool": "x"})),
            ("subscribe", uri("file:///repo/a")),
        ] {
            let d = decide(action, resource);
            assert_eq!(d.effect, Effect::Deny, "{action}: {d:?}");
        }
    }

    #[test]
    fn denies_name_their_rules_and_escalation_names_the_group() {
        let d = decide(
            r#"{"tenant":"acme","agent":"reviewer","action":"call","resource":{"server":"fs","tool":"delete_file"}}"#,
        );
        assert_eq!(d.effect, Effect::Deny);
        assert_eq!(
            d.reasons,
            vec![
                "tool fs.delete_file is denied in tenant acme by rule *.delete_*",
                "tool fs.delete_file is outside agent reviewer's scope",
            ]
        );
        let d = decide(
            r#"{"tenant":"acme","agent":"deploy-prod","action":"call","resource":{"server":"github","tool":"merge_pull_request"}}"#,
        );
        assert_eq!(d.effect, Effect::Escalate);
        assert_eq!(
            d.obligations,
            vec![Obligation::RequireApproval {
                group: "release-managers".into()
            }]
        );
        assert!(d.reasons[0].contains("github.merge_pull_request"), "{d:?}");
        let d = decide(r#"{"tenant":"acme","agent":"x","action":"call"}"#);
        assert_eq!(d.effect, Effect::Deny);
        assert!(d.reasons[0].starts_with("malformed request"), "{d:?}");
    }

    #[test]
    fn tool_sets_split_patterns_and_find_the_matching_one() {
        let patterns: Vec<String> = [
            "a.exact",
            "github.get_*",
            "gitlab.**",
            "*.delete_*",
            "fs.read_?ile",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let set = ToolSet::new(&patterns).unwrap();
        assert_eq!(set.exact.len(), 1);
        assert_eq!(set.prefixes.len(), 2);
        assert_eq!(set.globs.len(), 2);
        assert_eq!(set.find("a.exact"), Some("a.exact"));
        assert_eq!(set.find("a.exactly"), None);
        assert_eq!(set.find("github.get_issue"), Some("github.get_*"));
        assert_eq!(set.find("gitlab.merge_pr"), Some("gitlab.**"));
        assert_eq!(set.find("jira.delete_ticket"), Some("*.delete_*"));
        assert_eq!(set.find("fs.read_file"), Some("fs.read_?ile"));
        assert_eq!(set.find("gith"), None);
        assert!(ToolSet::new(&["".to_string()]).is_err());
    }

    #[test]
    fn bad_data_is_refused() {
        for (data, needle) in [
            (
                r#"{"tenants":{"a":{"agents":{"x":{"profiles":["nope"]}}}}}"#,
                "unknown profile nope",
            ),
            (r#"{"tenants":{"a":{"deny":[""]}}}"#, "empty tool pattern"),
            (r#"{"tenants":{"a":{"scope":[]}}}"#, "unknown field"),
        ] {
            let err = cogward_policy_sdk::init_json::<ToolAccess>(data.as_bytes())
                .err()
                .unwrap();
            assert!(err.contains(needle), "{err}");
        }
    }

    /// The semantics straight from the data document, without indexes.
    fn reference(data: &Data, r: &Request) -> Effect {
        let any = |ps: &[String], t: &str| ps.iter().any(|p| glob_match(p, t));
        let Some(rules) = for_tenant(&data.tenants, &r.tenant) else {
            return Effect::Deny;
        };
        if r.action != "call" && r.action != "list" {
            return Effect::Deny;
        }
        let tool = format!("{}.{}", r.resource.server, r.resource.tool);
        if any(&rules.deny, &tool) {
            return Effect::Deny;
        }
        let scope_of = |a: &AgentRules| {
            a.scope.iter().any(|p| glob_match(p, &tool))
                || a.profiles.iter().any(|p| any(&rules.profiles[p], &tool))
        };
        let in_scope = match rules.agents.get(r.agent.as_ref()) {
            Some(a) => scope_of(a),
            None => {
                let globs: Vec<_> = rules
                    .agents
                    .iter()
                    .filter(|(k, _)| k.contains(['*', '?']) && glob_match(k, &r.agent))
                    .collect();
                if globs.is_empty() {
                    any(&rules.default_scope, &tool)
                } else {
                    globs.iter().any(|(_, a)| scope_of(a))
                }
            }
        };
        if !in_scope {
            Effect::Deny
        } else if r.action == "call" && rules.sensitive.iter().any(|s| any(&s.tools, &tool)) {
            Effect::Escalate
        } else {
            Effect::Permit
        }
    }

    #[test]
    fn the_bench_fixture_is_deterministic_realistic_and_decided_like_the_reference() {
        let (data, requests) = bench_fixture(20, 1000, 600, 5000, 7);
        assert_eq!(
            bench_fixture(20, 1000, 600, 5000, 7),
            (data.clone(), requests.clone())
        );
        assert_ne!(bench_fixture(20, 1000, 600, 5000, 8).1, requests);

        let parsed: Data = serde_json::from_value(data.clone()).unwrap();
        assert_eq!(parsed.tenants.len(), 20);
        let mut patterns = 0;
        let mut exact_agents = 0;
        for t in parsed.tenants.values() {
            patterns += t.default_scope.len()
                + t.profiles.values().map(Vec::len).sum::<usize>()
                + t.agents.values().map(|a| a.scope.len()).sum::<usize>()
                + t.deny.len()
                + t.sensitive.iter().map(|s| s.tools.len()).sum::<usize>();
            exact_agents += t.agents.keys().filter(|k| !k.contains('*')).count();
        }
        assert_eq!(patterns, 600);
        assert!((650..=750).contains(&exact_agents), "{exact_agents}");
        assert!(!data.to_string().contains('?'));

        let policy = ToolAccess::new(serde_json::from_value(data).unwrap()).unwrap();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &requests {
            assert_eq!(r["kind"], "tool.call");
            let bytes = r.to_string();
            let req: Request = serde_json::from_str(&bytes).unwrap();
            let d = policy.evaluate(&req);
            assert_eq!(d.effect, reference(&parsed, &req), "{r}: {d:?}");
            *counts.entry(d.effect.as_str()).or_default() += 1;
        }
        let share = |e: &str| counts.get(e).copied().unwrap_or(0) * 100 / requests.len();
        assert!(share("permit") >= 55, "{counts:?}");
        assert!(share("deny") >= 10, "{counts:?}");
        assert!(share("escalate") >= 3, "{counts:?}");
    }

    #[test]
    fn the_bench_fixture_scales_down() {
        for (t, a, r) in [(1, 0, 0), (3, 5, 10), (2, 40, 2000)] {
            let (data, requests) = bench_fixture(t, a, r, 200, 1);
            let policy = ToolAccess::new(serde_json::from_value(data).unwrap()).unwrap();
            for r in &requests {
                let bytes = r.to_string();
                let req: Request = serde_json::from_str(&bytes).unwrap();
                let _ = policy.evaluate(&req);
            }
        }
    }
}
