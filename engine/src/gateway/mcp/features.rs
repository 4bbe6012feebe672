//! The upstream servers' features beside tools: prompts (`prompts/list`, `prompts/get`; named
//! `<server>_<prompt>` like tools), resources (`resources/list`, `resources/templates/list`,
//! `resources/read`), argument completion (`completion/complete`) and `logging/setLevel`.
//!
//! - `resources/subscribe` and `resources/unsubscribe` (servers of scope `session` only) are
//!   decided and recorded like reads; the updates reach the agent's standalone stream.
//! - Listings are decided entry by entry (actions `prompt.list`, `resource.list`): what is
//!   denied is not listed.
//! - A prompt get, a resource read and a completion are *uses*: decided (`prompt.get`,
//!   `resource.read`, `complete`), their intent recorded before they are forwarded and their
//!   outcome before the answer is released (`gateway.mcp_request`), a denial answered with a
//!   JSON-RPC error ([`REFUSED`](super::REFUSED)) naming the reasons, an escalation parked for
//!   a human like a tool call.
//! - Resource URIs are never rewritten. A URI goes to the one server, among those the run may
//!   use, that lists it; else whose template matches it; else the only server with resources.
//!   Several claimants is an error naming them; `_meta["cogward/server"]` in the request
//!   chooses one. A server of another tenant, or outside the run's `mcp_servers`, is never a
//!   candidate.
//! - `logging/setLevel` is kept with the agent's session and sent to the servers whose upstream
//!   session is that session's own (scope `session`); a shared or per-run server's session is
//!   not one agent's, so its level is not the agent's to set.

use super::{
    CallJob, Req, RpcError, carry_out, decide, raw_params, reply, resolve, rpc_error, rpc_result,
    servers, to_raw,
};
use crate::audit::canonical_string;
use crate::gateway::config::{McpScope, McpServer};
use crate::gateway::upstream::Caller;
use crate::gateway::{CallRecord, Gateway, RunIdentity, sha256_hex};
use axum::http::StatusCode;
use axum::response::Response;
use cogward_policy_abi::{Effect, kinds};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::time::Instant;

/// The JSON-RPC error code of an unknown resource (MCP resources §Error Handling).
const RESOURCE_NOT_FOUND: i64 = -32002;
/// Log levels of `logging/setLevel` (RFC 5424 severities, as MCP names them).
const LOG_LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// Answer `method` if it is one of this module's; `None` otherwise.
pub(super) async fn dispatch(r: &Req<'_>, method: &str) -> Option<Result<Response, RpcError>> {
    let (gw, run, id, sse) = (r.gw, r.run, r.id, r.sse);
    let listed = |v: Value| Ok(reply(sse, &to_raw(&rpc_result(id, v))));
    Some(match method {
        "logging/setLevel" => set_level(r).await.map(|v| reply(sse, &to_raw(&v))),
        "prompts/list" => {
            listed(json!({"prompts": listing(gw, run, r.caller, Listing::PROMPTS).await}))
        }
        "resources/list" => {
            listed(json!({"resources": listing(gw, run, r.caller, Listing::RESOURCES).await}))
        }
        "resources/templates/list" => listed(
            json!({"resourceTemplates": listing(gw, run, r.caller, Listing::TEMPLATES).await}),
        ),
        "prompts/get" => get_prompt(r).await,
        "resources/read" => on_resource(r, "resources/read").await,
        "resources/subscribe" => on_resource(r, "resources/subscribe").await,
        "resources/unsubscribe" => on_resource(r, "resources/unsubscribe").await,
        "completion/complete" => complete(r).await,
        _ => return None,
    })
}

/// One kind of listing: the upstream method, the action that decides each entry, the entry's
/// field naming it and that field's name in the policy's resource.
pub(super) struct Listing {
    method: &'static str,
    action: &'static str,
    key: &'static str,
    resource_key: &'static str,
    /// Whether the names are namespaced `<server>_<name>` (tools, prompts; never URIs).
    prefixed: bool,
}

impl Listing {
    pub(super) const TOOLS: Listing = Listing {
        method: "tools/list",
        action: "list",
        key: "name",
        resource_key: "tool",
        prefixed: true,
    };
    const PROMPTS: Listing = Listing {
        method: "prompts/list",
        action: "prompt.list",
        key: "name",
        resource_key: "prompt",
        prefixed: true,
    };
    const RESOURCES: Listing = Listing {
        method: "resources/list",
        action: "resource.list",
        key: "uri",
        resource_key: "uri",
        prefixed: false,
    };
    const TEMPLATES: Listing = Listing {
        method: "resources/templates/list",
        action: "resource.list",
        key: "uriTemplate",
        resource_key: "uri",
        prefixed: false,
    };
}

/// The union of a listing over the servers this run may use, each entry as its server
/// described it (names namespaced where the listing is), without what the policy denies.
pub(super) async fn listing(
    gw: &Gateway,
    run: &RunIdentity,
    caller: &Caller,
    what: Listing,
) -> Vec<Value> {
    let mut out = Vec::new();
    for server in servers(gw, run) {
        let entries = match gw.upstreams.list(server, caller, what.method).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, server = %server.name, method = what.method,
                               "listing an MCP server's entries");
                continue;
            }
        };
        for entry in entries.iter() {
            let Some(key) = entry.get(what.key).and_then(Value::as_str) else {
                continue;
            };
            let resource = json!({"server": server.name, what.resource_key: key});
            let request = run.request(
                kinds::TOOL_CALL,
                what.action,
                resource,
                json!({"run_id": run.run_id}),
            );
            let visible = match gw.policies.decide_request(request).await {
                Ok(r) => r.decision.effect != Effect::Deny,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "deciding a listing entry");
                    false
                }
            };
            if visible {
                let mut v = entry.clone();
                if what.prefixed {
                    v[what.key] = Value::String(format!("{}_{key}", server.name));
                }
                out.push(v);
            }
        }
    }
    out
}

/// The agent session's log level: kept with the session (for its upstream sessions opened
/// later, and across a restart) and sent to its own upstream sessions now.
async fn set_level(r: &Req<'_>) -> Result<Value, RpcError> {
    let (gw, id) = (r.gw, r.id);
    let Some(level) = r
        .params
        .get("level")
        .and_then(Value::as_str)
        .filter(|l| LOG_LEVELS.contains(l))
    else {
        return Err(invalid(
            id,
            format!("`level` must be one of {}", LOG_LEVELS.join(", ")),
        ));
    };
    sqlx::query("UPDATE mcp_sessions SET log_level = $1 WHERE session_id = $2")
        .bind(level)
        .bind(r.session)
        .execute(&gw.db.pool)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "keeping an MCP session's log level");
            rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                id,
                -32603,
                "cogward: the level could not be kept",
            )
        })?;
    if let Ok(mut sessions) = gw.sessions.lock()
        && let Some(info) = sessions.get_mut(r.session)
    {
        info.log_level = Some(level.to_string());
    }
    gw.upstreams.set_level(r.session, level).await;
    Ok(rpc_result(id, json!({})))
}

fn invalid(id: &Value, why: impl std::fmt::Display) -> RpcError {
    rpc_error(StatusCode::OK, id, -32602, format!("Invalid params: {why}"))
}

/// Params for the upstream: the agent's, with `replace`d members.
fn upstream_params(
    body: &[u8],
    id: &Value,
    replace: &[(&str, Value)],
) -> Result<Box<RawValue>, RpcError> {
    let mut params = raw_params(body);
    for (key, value) in replace {
        params.insert((*key).to_string(), to_raw(value));
    }
    serde_json::value::to_raw_value(&params).map_err(|e| invalid(id, e))
}

/// The arguments object of a prompt get (absent is empty).
fn arguments(params: &Value, id: &Value) -> Result<Value, RpcError> {
    match params.get("arguments") {
        None | Some(Value::Null) => Ok(json!({})),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(invalid(id, "`arguments` must be an object")),
    }
}

/// A decided use on its way: its record and its upstream request.
struct Use<'a> {
    server: &'a McpServer,
    method: &'static str,
    action: &'static str,
    /// The policy's resource (without the server).
    resource: Value,
    /// The full name recorded as the call's target.
    target: String,
    /// What the record's `args_sha256` digests.
    digested: Value,
    params: Box<RawValue>,
}

async fn carry_out_use(r: &Req<'_>, u: Use<'_>) -> Result<Response, RpcError> {
    let (gw, run, id) = (r.gw.clone(), r.run, r.id);
    let started = Instant::now();
    let mut resource = u.resource;
    resource["server"] = json!(u.server.name);
    let decision = decide(
        &gw,
        id,
        run.request(
            kinds::TOOL_CALL,
            u.action,
            resource.clone(),
            json!({"run_id": run.run_id}),
        ),
    )
    .await?;
    let mut detail = resource;
    detail["method"] = json!(u.method);
    if let Some(o) = detail.as_object_mut() {
        o.remove("arguments");
    }
    let call = CallRecord::new(
        "mcp",
        run,
        u.target,
        sha256_hex(canonical_string(&u.digested).as_bytes()),
        detail,
    );
    let job = CallJob::new(r, u.server, u.method, u.params, started);
    carry_out(job, call, decision).await
}

async fn get_prompt(r: &Req<'_>) -> Result<Response, RpcError> {
    let (gw, run, id, params, body) = (r.gw, r.run, r.id, r.params, r.body);
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Err(invalid(id, "`name` is required"));
    };
    let unknown = || invalid(id, format!("unknown prompt {name}"));
    let (server, prompt) = resolve(gw, run, name).ok_or_else(unknown)?;
    let known = match gw.upstreams.list(server, r.caller, "prompts/list").await {
        Ok(prompts) => prompts
            .iter()
            .any(|p| p.get("name").and_then(Value::as_str) == Some(prompt)),
        // The server is down: let the request through to the decision and the breaker's answer.
        Err(_) => true,
    };
    if !known {
        return Err(unknown());
    }
    let arguments = arguments(params, id)?;
    let u = Use {
        server,
        method: "prompts/get",
        action: "prompt.get",
        resource: json!({"prompt": prompt, "arguments": arguments}),
        target: format!("prompt:{}.{prompt}", server.name),
        digested: arguments,
        params: upstream_params(body, id, &[("name", json!(prompt))])?,
    };
    carry_out_use(r, u).await
}

/// A read of a resource, or a subscription to its updates (or its end): decided as a read
/// (who may read it may hear it changed). A subscription needs a server whose upstream session
/// is the agent session's own (scope `session`): its updates arrive outside any call, on that
/// session's standalone stream, and go to the agent's (`GET /mcp`).
async fn on_resource(r: &Req<'_>, method: &'static str) -> Result<Response, RpcError> {
    let (gw, run, id, params, body) = (r.gw, r.run, r.id, r.params, r.body);
    let Some(uri) = params.get("uri").and_then(Value::as_str) else {
        return Err(invalid(id, "`uri` is required"));
    };
    let server = route_uri(gw, run, r.caller, id, uri, qualifier(params)).await?;
    if method != "resources/read" && server.scope() != McpScope::Session {
        return Err(rpc_error(
            StatusCode::OK,
            id,
            -32601,
            format!(
                "cogward: {method} needs a server whose upstream session is this agent's own; \
                 {} is shared (docs/operations.md, `scope`)",
                server.name
            ),
        ));
    }
    let u = Use {
        server,
        method,
        action: "resource.read",
        resource: json!({"uri": uri}),
        target: format!("resource:{}:{uri}", server.name),
        digested: json!({"uri": uri}),
        params: upstream_params(body, id, &[])?,
    };
    carry_out_use(r, u).await
}

async fn complete(r: &Req<'_>) -> Result<Response, RpcError> {
    let (gw, run, id, params, body, sse) = (r.gw, r.run, r.id, r.params, r.body, r.sse);
    let reference = params.get("ref").cloned().unwrap_or(Value::Null);
    let (server, resource, target, upstream_ref) =
        match reference.get("type").and_then(Value::as_str) {
            Some("ref/prompt") => {
                let name = reference["name"].as_str().unwrap_or_default();
                let (server, prompt) = resolve(gw, run, name)
                    .ok_or_else(|| invalid(id, format!("unknown prompt {name}")))?;
                let mut upstream_ref = reference.clone();
                upstream_ref["name"] = json!(prompt);
                let target = format!("prompt:{}.{prompt}", server.name);
                (server, json!({"prompt": prompt}), target, upstream_ref)
            }
            Some("ref/resource") => {
                let uri = reference["uri"].as_str().unwrap_or_default();
                let server = route_uri(gw, run, r.caller, id, uri, qualifier(params)).await?;
                let target = format!("resource:{}:{uri}", server.name);
                (server, json!({"uri": uri}), target, reference.clone())
            }
            _ => {
                return Err(invalid(id, "`ref` must be a ref/prompt or a ref/resource"));
            }
        };
    let declared = gw
        .upstreams
        .capabilities(server, r.caller)
        .await
        .map(|c| c.get("completions").is_some())
        .unwrap_or(true);
    if !declared {
        // Nothing to ask: the server offers no completions.
        let none = json!({"completion": {"values": [], "hasMore": false}});
        return Ok(reply(sse, &to_raw(&rpc_result(id, none))));
    }
    let u = Use {
        server,
        method: "completion/complete",
        action: "complete",
        resource,
        target,
        digested: json!({"ref": reference, "argument": params.get("argument")}),
        params: upstream_params(body, id, &[("ref", upstream_ref)])?,
    };
    carry_out_use(r, u).await
}

/// The server a request names itself (`_meta["cogward/server"]`), if any.
fn qualifier(params: &Value) -> Option<&str> {
    params
        .get("_meta")
        .and_then(|m| m.get("cogward/server"))
        .and_then(Value::as_str)
}

/// The server a resource URI (or URI template) goes to; a "resource not found" error when no
/// server, or more than one, can claim it.
async fn route_uri<'a>(
    gw: &'a Gateway,
    run: &'a RunIdentity,
    caller: &Caller,
    id: &Value,
    uri: &str,
    qualifier: Option<&str>,
) -> Result<&'a McpServer, RpcError> {
    let not_found = |why: String| {
        rpc_error(
            StatusCode::OK,
            id,
            RESOURCE_NOT_FOUND,
            format!("Resource not found: {uri} ({why})"),
        )
    };
    let mut candidates = Vec::new();
    for server in servers(gw, run) {
        if qualifier.is_some_and(|q| q != server.name) {
            continue;
        }
        let caps = gw.upstreams.capabilities(server, caller).await;
        if caps.is_ok_and(|c| c.get("resources").is_some()) {
            candidates.push(server);
        }
    }
    if let Some(q) = qualifier
        && candidates.is_empty()
    {
        return Err(not_found(format!(
            "no server {q} with resources for this run"
        )));
    }
    let mut by_listing = Vec::new();
    let mut by_template = Vec::new();
    for &server in &candidates {
        let listed = gw.upstreams.list(server, caller, "resources/list").await;
        if listed.is_ok_and(|l| l.iter().any(|r| r["uri"] == uri)) {
            by_listing.push(server);
            continue;
        }
        let templates = gw
            .upstreams
            .list(server, caller, "resources/templates/list")
            .await;
        if templates.is_ok_and(|l| {
            l.iter().any(|t| {
                t["uriTemplate"]
                    .as_str()
                    .is_some_and(|tpl| tpl == uri || template_matches(tpl, uri))
            })
        }) {
            by_template.push(server);
        }
    }
    for claimants in [by_listing, by_template, candidates] {
        match claimants.as_slice() {
            [] => continue,
            [one] => return Ok(one),
            many => {
                let names: Vec<&str> = many.iter().map(|s| s.name.as_str()).collect();
                return Err(not_found(format!(
                    "servers {} all claim it; name one in _meta[\"cogward/server\"]",
                    names.join(", ")
                )));
            }
        }
    }
    Err(not_found("no server of this run has resources".into()))
}

/// Whether `uri` is an expansion of the RFC 6570 `template` (the expressions MCP servers use):
/// `{x}` and `{x,y}` stand for text without `/ ? #`, `{+x}` and `{#x}` for any text,
/// `{/x}` `{.x}` for a segment after that character, `{?x}` `{&x}` for the rest of the URI.
fn template_matches(template: &str, uri: &str) -> bool {
    #[derive(Clone, Copy)]
    enum Part<'t> {
        Literal(&'t str),
        /// Text of one or more characters, none of them in the stop set (`None`: any).
        Value(Option<&'static str>),
        /// A character, then a value without `/`.
        Prefixed(char),
        Rest,
    }
    let mut parts = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        match rest.find('{') {
            Some(0) => {
                let Some(end) = rest.find('}') else {
                    return false;
                };
                let expr = &rest[1..end];
                parts.push(match expr.chars().next() {
                    Some('+' | '#') => Part::Value(None),
                    Some(c @ ('/' | '.')) => Part::Prefixed(c),
                    Some('?' | '&') => Part::Rest,
                    _ => Part::Value(Some("/?#")),
                });
                rest = &rest[end + 1..];
            }
            Some(i) => {
                parts.push(Part::Literal(&rest[..i]));
                rest = &rest[i..];
            }
            None => {
                parts.push(Part::Literal(rest));
                rest = "";
            }
        }
    }
    fn matches(parts: &[Part<'_>], s: &str) -> bool {
        let Some((first, more)) = parts.split_first() else {
            return s.is_empty();
        };
        let value = |stop: Option<&str>, s: &str| -> bool {
            // Try every non-empty prefix made of allowed characters.
            for (i, c) in s.char_indices() {
                if stop.is_some_and(|stop| stop.contains(c)) {
                    return false;
                }
                if matches(more, &s[i + c.len_utf8()..]) {
                    return true;
                }
            }
            false
        };
        match *first {
            Part::Literal(l) => s.strip_prefix(l).is_some_and(|s| matches(more, s)),
            Part::Value(stop) => value(stop, s),
            Part::Prefixed(c) => s.strip_prefix(c).is_some_and(|s| value(Some("/?#"), s)),
            Part::Rest => more.is_empty() && (s.is_empty() || s.starts_with(['?', '&'])),
        }
    }
    matches(&parts, uri)
}

#[cfg(test)]
mod tests {
    use super::template_matches;

    #[test]
    fn uri_templates_match_their_expansions_only() {
        for (template, uri, expected) in [
            (
                "test://template/{id}/data",
                "test://template/123/data",
                true,
            ),
            ("test://template/{id}/data", "test://template//data", false),
            (
                "test://template/{id}/data",
                "test://template/1/2/data",
                false,
            ),
            ("file:///{+path}", "file:///repo/src/main.rs", true),
            ("file:///{path}", "file:///repo/src/main.rs", false),
            ("repo://{owner}/{name}{?ref}", "repo://a/b", true),
            ("repo://{owner}/{name}{?ref}", "repo://a/b?ref=main", true),
            ("repo://{owner}{/name}", "repo://a/b", true),
            ("static://x", "static://x", true),
            ("static://x", "static://xy", false),
            ("broken://{x", "broken://{x", false),
        ] {
            assert_eq!(
                template_matches(template, uri),
                expected,
                "{template} {uri}"
            );
        }
    }
}
