//! Upstream MCP servers, through our own client ([`super::rpc`]): started (stdio) or connected
//! (Streamable HTTP) on first use — one upstream session per agent session, per run, or shared
//! by every run, as configured ([`McpScope`]) — reconnected after a failure, and guarded by a
//! circuit breaker. Results are passed on as the server wrote them.
//!
//! A session-scoped server's upstream session is the agent session's own: it is opened with
//! the agent's client capabilities (what of them the gateway relays: sampling, elicitation,
//! roots) and its log level, gets the agent's `logging/setLevel`, and is closed when the agent
//! session ends (`DELETE /mcp`), its run ends, or it has been idle for [`SESSION_IDLE`].
//!
//! The breaker counts consecutive failed calls (transport errors, timeouts; a tool's own
//! `isError` result is not a failure). At `breaker.failures` it opens: calls are refused at once
//! for `breaker.cooldown_seconds`, then one is let through; its success closes the circuit, its
//! failure opens it again. Each transition is a ledger entry (`gateway.breaker_opened`,
//! `gateway.breaker_closed`, workflow id `gateway/<server>`).

use super::config::{Breaker, McpScope, McpServer, McpTransport};
use super::rpc::{Client, Interim};
use crate::audit::{Ledger, NewEntry};
use cogward_protocol::audit::{AuditBody, AuditEvent, BreakerClosed, BreakerOpened};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a server's tool (prompt, resource) list is reused before it is fetched again.
const LIST_TTL: Duration = Duration::from_secs(30);
/// Most entries taken from one server's listing.
const LIST_MAX: usize = 10_000;
/// How long connecting (starting a stdio server, the MCP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a session-scoped upstream session may go unused before it is closed.
pub const SESSION_IDLE: Duration = Duration::from_secs(600);

/// A connection's key: the server, the run (per-run and per-session servers) and the agent
/// session (per-session servers).
type ConnectionKey = (String, Option<String>, Option<String>);

/// Where one key's connection lives; connecting holds it (and nothing else) locked.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

/// Whom a request goes upstream for.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub run_id: String,
    /// The agent's MCP session.
    pub session: Option<String>,
    /// What the agent's client declared at `initialize`.
    pub capabilities: Value,
    /// The level the agent asked for with `logging/setLevel`, if it did.
    pub log_level: Option<String>,
}

/// The notifications a session-scoped server sends outside any call that reach its agent.
const OUTSIDE_CALLS: [&str; 2] = ["notifications/resources/updated", "notifications/message"];
/// Messages waiting for an agent to read its standalone stream; more are dropped.
const AGENT_STREAM_BUFFER: usize = 64;

/// The client capabilities the gateway can serve for a server's requests on a call's stream.
const RELAYABLE: [&str; 3] = ["sampling", "elicitation", "roots"];

/// A listing as fetched, and when.
type Listed = (Arc<Vec<Value>>, Instant);

/// One live connection to a server.
struct Connection {
    client: Client,
    /// What the server declared in its `initialize` result.
    capabilities: Value,
    /// The server's listings by method (`tools/list`, ...), each entry as it described it.
    lists: Mutex<HashMap<&'static str, Listed>>,
    /// When it was last asked for.
    used: Mutex<Instant>,
}

impl Connection {
    /// `logging/setLevel` on this session, if the server declared logging (best effort: a
    /// server that refuses it keeps its level).
    async fn set_level(&self, level: &str) {
        if self.capabilities.get("logging").is_none() {
            return;
        }
        let Ok(params) = RawValue::from_string(json!({"level": level}).to_string()) else {
            return;
        };
        match self.client.request("logging/setLevel", &params).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::info!(error = %e, "a server refused a log level"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "setting a server's log level"),
        }
    }
}

#[derive(Debug, Default)]
struct BreakerState {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    /// A trial call is in flight after the cool-down.
    probing: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("MCP server {0} is unavailable (circuit open after repeated failures)")]
    CircuitOpen(String),
    #[error("MCP server {server}: {detail}")]
    Failed { server: String, detail: String },
    #[error("MCP server {server} refused the call (error {code}): {message}")]
    Refused {
        server: String,
        code: i64,
        message: String,
        data: Option<Value>,
    },
}

pub struct Upstreams {
    ledger: Ledger,
    namespace: String,
    breaker: Breaker,
    http: reqwest::Client,
    connections: Mutex<HashMap<ConnectionKey, Slot>>,
    /// Agent sessions' standalone streams (`GET /mcp`), by session: where the notifications
    /// their session-scoped servers send outside any call go.
    agent_streams: Arc<Mutex<HashMap<String, mpsc::Sender<Box<RawValue>>>>>,
    breakers: Mutex<HashMap<String, BreakerState>>,
}

impl Upstreams {
    pub fn new(ledger: Ledger, namespace: String, breaker: Breaker) -> anyhow::Result<Self> {
        // Connections to HTTP servers are kept alive between calls.
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            ledger,
            namespace,
            breaker,
            http,
            connections: Mutex::new(HashMap::new()),
            agent_streams: Arc::default(),
            breakers: Mutex::new(HashMap::new()),
        })
    }

    fn key(server: &McpServer, caller: &Caller) -> ConnectionKey {
        let run = Some(caller.run_id.clone());
        match server.scope() {
            McpScope::Shared => (server.name.clone(), None, None),
            McpScope::Run => (server.name.clone(), run, None),
            McpScope::Session => (server.name.clone(), run, caller.session.clone()),
        }
    }

    async fn connection(
        &self,
        server: &McpServer,
        caller: &Caller,
    ) -> Result<Arc<Connection>, UpstreamError> {
        let slot = {
            let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            connections
                .entry(Self::key(server, caller))
                .or_default()
                .clone()
        };
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.client.is_closed()
        {
            if let Ok(mut used) = c.used.lock() {
                *used = Instant::now();
            }
            return Ok(c.clone());
        }
        let failed = |detail: String| UpstreamError::Failed {
            server: server.name.clone(),
            detail,
        };
        let (client, capabilities) =
            tokio::time::timeout(CONNECT_TIMEOUT, self.connect(server, caller))
                .await
                .map_err(|_| failed(format!("connecting took over {CONNECT_TIMEOUT:?}")))?
                .map_err(|e| failed(format!("connecting: {e:#}")))?;
        let connection = Arc::new(Connection {
            client,
            capabilities,
            lists: Mutex::new(HashMap::new()),
            used: Mutex::new(Instant::now()),
        });
        if server.scope() == McpScope::Session
            && let Some(session) = &caller.session
        {
            if let Some(level) = &caller.log_level {
                connection.set_level(level).await;
            }
            self.listen(&connection, session);
        }
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn connect(
        &self,
        server: &McpServer,
        caller: &Caller,
    ) -> anyhow::Result<(Client, Value)> {
        match &server.transport {
            McpTransport::Stdio { command, env } => Client::connect_stdio(command, env).await,
            McpTransport::Http { url } => {
                // A server's requests within a call arrive on that call's stream, so they can be
                // relayed to the call's agent: a session of the agent's own declares what its
                // client did, a shared one all the gateway can relay.
                let declared: serde_json::Map<String, Value> = match server.scope() {
                    McpScope::Session => RELAYABLE
                        .iter()
                        .filter_map(|k| Some((k.to_string(), caller.capabilities.get(*k)?.clone())))
                        .collect(),
                    _ => RELAYABLE
                        .iter()
                        .map(|k| (k.to_string(), json!({})))
                        .collect(),
                };
                Client::connect_http(self.http.clone(), url, Value::Object(declared)).await
            }
        }
    }

    /// Forget a connection that failed, so the next call connects afresh.
    fn drop_connection(&self, server: &McpServer, caller: &Caller) {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections.remove(&Self::key(server, caller));
    }

    /// The agent session `session` set its log level: tell its own upstream sessions that
    /// declared logging (the shared and per-run ones are not its alone).
    pub async fn set_level(&self, session: &str, level: &str) {
        for c in self.live_connections(|(_, _, s)| s.as_deref() == Some(session)) {
            c.set_level(level).await;
        }
    }

    /// Read a session-scoped server's standalone stream: its resource updates and log messages
    /// go to the agent session's own stream, if it has one open (else, or when it is full, they
    /// are dropped).
    fn listen(&self, connection: &Connection, session: &str) {
        let (tx, mut rx) = mpsc::channel::<Box<RawValue>>(AGENT_STREAM_BUFFER);
        connection.client.listen(tx);
        let streams = self.agent_streams.clone();
        let session = session.to_string();
        tokio::spawn(async move {
            while let Some(note) = rx.recv().await {
                let method = serde_json::from_str::<Value>(note.get())
                    .ok()
                    .and_then(|v| v["method"].as_str().map(str::to_string));
                if !method.is_some_and(|m| OUTSIDE_CALLS.contains(&m.as_str())) {
                    continue;
                }
                let stream = streams.lock().ok().and_then(|s| s.get(&session).cloned());
                if let Some(stream) = stream {
                    let _ = stream.try_send(note);
                }
            }
        });
    }

    /// The agent session `session` opened its standalone stream (the one before it, if any, no
    /// longer gets anything).
    pub fn attach_stream(&self, session: &str) -> mpsc::Receiver<Box<RawValue>> {
        let (tx, rx) = mpsc::channel(AGENT_STREAM_BUFFER);
        if let Ok(mut streams) = self.agent_streams.lock() {
            streams.retain(|_, s| !s.is_closed());
            streams.insert(session.to_string(), tx);
        }
        rx
    }

    /// Pass the agent's notification `method` (no params) to its own upstream sessions.
    pub async fn notify_session(&self, session: &str, method: &str) {
        for c in self.live_connections(|(_, _, s)| s.as_deref() == Some(session)) {
            if let Err(e) = c.client.notify(method).await {
                tracing::warn!(error = %format!("{e:#}"), method, "passing a notification upstream");
            }
        }
    }

    /// The agent session `session` ended: close its upstream sessions.
    pub fn close_session(&self, session: &str) {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections.retain(|(_, _, s), _| s.as_deref() != Some(session));
        if let Ok(mut streams) = self.agent_streams.lock() {
            streams.remove(session);
        }
    }

    /// Close the per-session servers' sessions nobody used for [`SESSION_IDLE`] (and that no
    /// request holds); an agent's next request opens a new one. Forget standalone streams their
    /// agents closed.
    pub fn close_idle_sessions(&self) {
        if let Ok(mut streams) = self.agent_streams.lock() {
            streams.retain(|_, s| !s.is_closed());
        }
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections.retain(|(_, _, session), slot| {
            let Ok(slot) = slot.try_lock() else {
                return true;
            };
            let idle = slot.as_ref().is_none_or(|c| {
                Arc::strong_count(c) == 1
                    && c.used.lock().is_ok_and(|u| u.elapsed() >= SESSION_IDLE)
            });
            session.is_none() || !idle
        });
    }

    /// The connections whose key `pick` chooses, connected now.
    fn live_connections(&self, pick: impl Fn(&ConnectionKey) -> bool) -> Vec<Arc<Connection>> {
        let connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections
            .iter()
            .filter(|(k, _)| pick(k))
            .filter_map(|(_, slot)| slot.try_lock().ok()?.clone())
            .collect()
    }

    /// Close the per-run and per-session servers of runs that ended (a stdio server's process
    /// ends with its connection).
    pub async fn close_ended_runs(&self, db: &crate::db::Db) {
        let runs: std::collections::BTreeSet<String> = {
            let connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            connections
                .keys()
                .filter_map(|(_, run, _)| run.clone())
                .collect()
        };
        for run_id in runs {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM runs WHERE run_id = $1")
                    .bind(&run_id)
                    .fetch_optional(&db.pool)
                    .await
                    .unwrap_or(Some("running".into()));
            let ended = status
                .as_deref()
                .and_then(cogward_protocol::spec::RunStatus::parse)
                .is_none_or(cogward_protocol::spec::RunStatus::is_terminal);
            if ended {
                tracing::info!(run_id, "closing the run's MCP server sessions");
                let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
                connections.retain(|(_, run, _), _| run.as_deref() != Some(run_id.as_str()));
            }
        }
    }

    /// The server's tools (cached for a while), each as the server described it.
    pub async fn tools(
        &self,
        server: &McpServer,
        caller: &Caller,
    ) -> Result<Arc<Vec<Value>>, UpstreamError> {
        self.list(server, caller, "tools/list").await
    }

    /// A listing of the server's, all pages of it (cached for a while): `tools/list`,
    /// `prompts/list`, `resources/list` or `resources/templates/list`, each entry as the server
    /// described it; empty when the server did not declare the feature (tools are always asked
    /// for).
    pub async fn list(
        &self,
        server: &McpServer,
        caller: &Caller,
        method: &'static str,
    ) -> Result<Arc<Vec<Value>>, UpstreamError> {
        let (capability, field) = match method {
            "prompts/list" => (Some("prompts"), "prompts"),
            "resources/list" => (Some("resources"), "resources"),
            "resources/templates/list" => (Some("resources"), "resourceTemplates"),
            _ => (None, "tools"),
        };
        // What needs no request needs no breaker either: nothing to probe, nothing answered.
        let c = self.live(server, caller).await?;
        if let Some(cap) = capability
            && c.capabilities.get(cap).is_none()
        {
            return Ok(Arc::new(Vec::new()));
        }
        if let Ok(cached) = c.lists.lock()
            && let Some((entries, at)) = cached.get(method)
            && at.elapsed() < LIST_TTL
        {
            return Ok(entries.clone());
        }
        self.guarded(server, caller, |c| async move {
            let mut entries = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let params = match &cursor {
                    Some(c) => json!({"cursor": c}),
                    None => json!({}),
                };
                let params = RawValue::from_string(params.to_string())?;
                let page = c
                    .client
                    .request(method, &params)
                    .await?
                    .map_err(|e| anyhow::anyhow!("{method}: {e}"))?;
                let page: Value = serde_json::from_str(page.get())?;
                entries.extend(page[field].as_array().cloned().unwrap_or_default());
                match page["nextCursor"].as_str() {
                    Some(next) if !next.is_empty() && entries.len() < LIST_MAX => {
                        cursor = Some(next.to_string())
                    }
                    _ => break,
                }
            }
            let entries = Arc::new(entries);
            if let Ok(mut cached) = c.lists.lock() {
                cached.insert(method, (entries.clone(), Instant::now()));
            }
            Ok(entries)
        })
        .await
    }

    /// What the server declared in its `initialize` result (connecting if need be).
    pub async fn capabilities(
        &self,
        server: &McpServer,
        caller: &Caller,
    ) -> Result<Value, UpstreamError> {
        Ok(self.live(server, caller).await?.capabilities.clone())
    }

    /// The server's connection (connecting if need be) for what is not a call: it never takes
    /// the half-open probe or closes the circuit, but a failure to connect counts like any other.
    async fn live(
        &self,
        server: &McpServer,
        caller: &Caller,
    ) -> Result<Arc<Connection>, UpstreamError> {
        if self.cooling_down(&server.name) {
            return Err(UpstreamError::CircuitOpen(server.name.clone()));
        }
        let connected = self.connection(server, caller).await;
        if let Err(e) = &connected {
            self.failed(&server.name, &e.to_string()).await;
        }
        connected
    }

    /// Send `method` with `params` (its notifications to `interim` meanwhile); the result as the
    /// server wrote it. The server refusing the
    /// request itself (a JSON-RPC error) is not a failure of the connection, for the breaker
    /// or otherwise.
    pub async fn request(
        &self,
        server: &McpServer,
        caller: &Caller,
        method: &str,
        params: Box<RawValue>,
        interim: Option<Interim>,
    ) -> Result<Box<RawValue>, UpstreamError> {
        self.guarded(server, caller, |c| async move {
            c.client.request_with(method, &params, interim).await
        })
        .await?
        .map_err(|e| UpstreamError::Refused {
            server: server.name.clone(),
            code: e.code,
            message: e.message,
            data: e.data,
        })
    }

    /// Run `op` on the server's connection under its time limit and its breaker.
    async fn guarded<T, F, Fut>(
        &self,
        server: &McpServer,
        caller: &Caller,
        op: F,
    ) -> Result<T, UpstreamError>
    where
        F: FnOnce(Arc<Connection>) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        self.admit(&server.name)?;
        let limit = Duration::from_secs(server.timeout_seconds);
        let result = match self.connection(server, caller).await {
            Ok(c) => match tokio::time::timeout(limit, op(c)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err(format!("no answer within {limit:?}")),
            },
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(v) => {
                self.succeeded(&server.name).await;
                Ok(v)
            }
            Err(detail) => {
                self.drop_connection(server, caller);
                self.failed(&server.name, &detail).await;
                Err(UpstreamError::Failed {
                    server: server.name.clone(),
                    detail,
                })
            }
        }
    }

    /// May a call go to `server` now?
    fn admit(&self, server: &str) -> Result<(), UpstreamError> {
        let Ok(mut breakers) = self.breakers.lock() else {
            return Ok(());
        };
        let b = breakers.entry(server.to_string()).or_default();
        match b.open_until {
            Some(until) if Instant::now() < until || b.probing => {
                Err(UpstreamError::CircuitOpen(server.to_string()))
            }
            Some(_) => {
                b.probing = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Is `server`'s circuit open and still cooling down?
    fn cooling_down(&self, server: &str) -> bool {
        self.breakers.lock().is_ok_and(|b| {
            b.get(server)
                .and_then(|b| b.open_until)
                .is_some_and(|until| Instant::now() < until)
        })
    }

    async fn succeeded(&self, server: &str) {
        let closed = {
            let Ok(mut breakers) = self.breakers.lock() else {
                return;
            };
            let b = breakers.entry(server.to_string()).or_default();
            let was_open = b.open_until.is_some();
            *b = BreakerState::default();
            was_open
        };
        if closed {
            self.breaker_entry(
                server,
                BreakerClosed {
                    server: server.to_string(),
                }
                .entry(),
            )
            .await;
        }
    }

    async fn failed(&self, server: &str, detail: &str) {
        let opened = {
            let Ok(mut breakers) = self.breakers.lock() else {
                return;
            };
            let b = breakers.entry(server.to_string()).or_default();
            b.consecutive_failures += 1;
            let trip = b.probing || b.consecutive_failures >= self.breaker.failures.max(1);
            b.probing = false;
            if trip {
                b.open_until =
                    Some(Instant::now() + Duration::from_secs(self.breaker.cooldown_seconds));
            }
            trip.then_some(b.consecutive_failures)
        };
        if let Some(failures) = opened {
            tracing::warn!(server, failures, detail, "MCP server circuit opened");
            self.breaker_entry(
                server,
                BreakerOpened {
                    server: server.to_string(),
                    consecutive_failures: failures,
                    cooldown_seconds: self.breaker.cooldown_seconds,
                    last_error: detail.to_string(),
                }
                .entry(),
            )
            .await;
        }
    }

    async fn breaker_entry(&self, server: &str, (event_type, body): (AuditEvent, Value)) {
        let entry = NewEntry::app(
            &self.namespace,
            format!("gateway/{server}"),
            event_type,
            body,
        );
        if let Err(e) = self.ledger.append(vec![entry]).await {
            tracing::error!(error = %format!("{e:#}"), server, "recording a breaker transition");
        }
    }
}
