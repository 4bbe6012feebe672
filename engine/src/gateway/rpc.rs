//! Our own MCP client to upstream servers: JSON-RPC over stdio (a child process, one message
//! per line) or Streamable HTTP (POST, the answer as JSON or as a server-sent event stream).
//!
//! Results are kept as the server wrote them ([`RawValue`]): the gateway passes them on byte
//! for byte unless it must change them (a redaction), so nothing the server said is lost or
//! re-encoded (unknown fields, number spellings, key order). A server's `sampling`,
//! `elicitation` and `roots` requests on an HTTP call's own stream go to whoever the call is for
//! ([`Interim::requests`]); any other request (`ping` aside), and any on stdio, is answered
//! "method not found". Notifications reach the request they belong to ([`Interim`]): a
//! `notifications/progress` by its progress token (on any transport), any notification on an
//! HTTP request's own stream; the rest cannot be attributed (a session serves several runs) and
//! is dropped.
//!
//! Cancellation goes both ways: a request whose [`Interim::cancel`] fires is cancelled upstream
//! (`notifications/cancelled` under the server's id for it) and answered at once with
//! [`CANCELLED`]; the server cancelling a request it sent within one of ours reaches whoever
//! holds that request ([`ServerRequest::cancelled`]), and its answer is then never sent.

use super::json::{Members, members, raw};
use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

/// The protocol version asked for; the server's answer is what the session speaks.
pub const PROTOCOL_VERSION: &str = "2025-11-25";

/// A JSON-RPC error the server answered with.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the server answered error {code}: {message}")]
pub struct ServerError {
    pub code: i64,
    pub message: String,
    /// The error's `data`, as the server sent it.
    pub data: Option<Value>,
}

/// One message from the server, parsed only as far as routing needs.
#[derive(Deserialize)]
struct Incoming {
    #[serde(default)]
    id: Option<Box<RawValue>>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<Value>,
}

/// The error a request cancelled by its caller ends with (no answer is awaited after the
/// server has been told).
pub const CANCELLED: i64 = -32800;

type Reply = std::result::Result<Box<RawValue>, ServerError>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;
/// Where the notifications of a request in flight go, by the progress token it sent (as JSON).
type Sinks = Arc<Mutex<HashMap<String, mpsc::Sender<Box<RawValue>>>>>;

/// Where a request's notifications go while it is in flight: each whole message, as the server
/// wrote it. A full sink drops what does not fit (a flood never holds the request up).
pub struct Interim {
    pub sink: mpsc::Sender<Box<RawValue>>,
    /// The progress token the request's params carry (its JSON text).
    pub progress_token: Option<String>,
    /// Where the server's requests on the request's own HTTP stream go ([`RELAYED`]); without
    /// it, or on stdio (nothing says which request they belong to), they are answered "method
    /// not found".
    pub requests: Option<mpsc::Sender<ServerRequest>>,
    /// Fires (with the caller's reason, or null) when the caller cancels the request.
    pub cancel: Option<tokio::sync::watch::Receiver<Option<Value>>>,
}

/// The server requests a request's [`Interim`] can take: what the gateway's HTTP client
/// declares (capabilities `sampling`, `elicitation`, `roots`).
pub const RELAYED: [&str; 3] = ["sampling/createMessage", "elicitation/create", "roots/list"];

/// A request the server sent within one of ours, for whoever ours is for to answer.
pub struct ServerRequest {
    pub method: String,
    /// The whole message, as the server wrote it.
    pub message: Box<RawValue>,
    /// The answer: a result, or an error object.
    pub answer: oneshot::Sender<std::result::Result<Box<RawValue>, Value>>,
    /// Fires with the server's `notifications/cancelled` params if it cancels the request.
    pub cancelled: oneshot::Receiver<Value>,
}

/// Where a message the server sent goes.
struct Routes<'a> {
    pending: &'a Pending,
    sinks: &'a Sinks,
    /// The request whose HTTP stream the message arrived on.
    stream: Option<&'a Interim>,
}

/// What the client does with a message the server sent, beside delivering it.
enum Reply2Server {
    /// Send this message back.
    Send(String),
    /// Send the answer to server request `id` once it comes, unless the server cancels it
    /// first (then `cancel` is fired).
    Relayed {
        id: Box<RawValue>,
        answer: oneshot::Receiver<std::result::Result<Box<RawValue>, Value>>,
        cancel: oneshot::Sender<Value>,
    },
}

/// The JSON-RPC response to server request `id`.
fn response_text(id: &RawValue, answer: std::result::Result<Box<RawValue>, Value>) -> String {
    match answer {
        Ok(result) => format!(
            r#"{{"jsonrpc":"2.0","id":{},"result":{}}}"#,
            id.get(),
            result.get()
        ),
        Err(error) => format!(r#"{{"jsonrpc":"2.0","id":{},"error":{error}}}"#, id.get()),
    }
}

/// What to do with a message the server sent (`text`, parsed as `msg`): deliver a response or
/// a notification, answer or relay a request.
fn route(text: &str, msg: Incoming, routes: &Routes<'_>) -> Option<Reply2Server> {
    let pending = routes.pending;
    match (msg.method, msg.id) {
        (Some(method), Some(id)) => {
            if method == "ping" {
                return Some(Reply2Server::Send(response_text(&id, Ok(raw(&json!({}))))));
            }
            let requests = routes.stream.and_then(|i| i.requests.as_ref());
            if let Some(requests) = requests.filter(|_| RELAYED.contains(&method.as_str()))
                && let Ok(message) = RawValue::from_string(text.to_string())
            {
                let (answer, rx) = oneshot::channel();
                let (cancel, cancelled) = oneshot::channel();
                let relayed = requests.try_send(ServerRequest {
                    method: method.clone(),
                    message,
                    answer,
                    cancelled,
                });
                if relayed.is_ok() {
                    return Some(Reply2Server::Relayed {
                        id,
                        answer: rx,
                        cancel,
                    });
                }
            }
            let error = json!({"code": -32601,
                               "message": format!("cogward: the gateway's client does not serve {method} here")});
            Some(Reply2Server::Send(response_text(&id, Err(error))))
        }
        (Some(method), None) => {
            let token = msg
                .params
                .as_ref()
                .and_then(|p| p.get("progressToken"))
                .filter(|_| method == "notifications/progress")
                .map(Value::to_string);
            let by_token = token.and_then(|t| routes.sinks.lock().ok()?.get(&t).cloned());
            if let Some(sink) = by_token.as_ref().or(routes.stream.map(|i| &i.sink))
                && let Ok(raw) = RawValue::from_string(text.to_string())
            {
                let _ = sink.try_send(raw);
            }
            None
        }
        (None, Some(id)) => {
            let Ok(n) = id.get().parse::<u64>() else {
                return None;
            };
            let reply = match (msg.result, msg.error) {
                (Some(result), None) => Ok(result),
                (_, Some(error)) => Err(ServerError {
                    code: error["code"].as_i64().unwrap_or(-32603),
                    message: error["message"].as_str().unwrap_or("").to_string(),
                    data: error.get("data").cloned(),
                }),
                (None, None) => Err(ServerError {
                    code: -32603,
                    message: "a response with neither result nor error".into(),
                    data: None,
                }),
            };
            if let Ok(mut p) = pending.lock()
                && let Some(tx) = p.remove(&n)
            {
                let _ = tx.send(reply);
            }
            None
        }
        (None, None) => None,
    }
}

/// `params` with `_meta.progressToken` set to `token` (JSON text); every other member as it was.
fn with_progress_token(params: &RawValue, token: &str) -> Result<Box<RawValue>> {
    let mut members = members(params)?;
    let mut meta = match members.get("_meta") {
        Some(m) => super::json::members(m)?,
        None => Members::new(),
    };
    meta.insert(
        "progressToken".into(),
        RawValue::from_string(token.to_string())?,
    );
    members.insert("_meta".into(), serde_json::value::to_raw_value(&meta)?);
    Ok(serde_json::value::to_raw_value(&members)?)
}

/// The notification that cancels our request `id`.
fn cancel_text(id: u64, reason: &Value) -> String {
    let mut params = json!({"requestId": id});
    if !reason.is_null() {
        params["reason"] = reason.clone();
    }
    json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}).to_string()
}

fn request_text(id: u64, method: &str, params: &RawValue) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":{},"params":{}}}"#,
        json!(method),
        params.get()
    )
}

/// A connection to one upstream server.
pub enum Client {
    Stdio(StdioClient),
    Http(HttpClient),
}

impl Client {
    /// Start (stdio) or reach (HTTP) the server and complete the MCP handshake; the client and
    /// the server's capabilities.
    pub async fn connect_stdio(
        command: &[String],
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<(Client, Value)> {
        let client = Client::Stdio(StdioClient::spawn(command, env)?);
        // Nothing says whose a stdio server's requests are: none are declared.
        let capabilities = client.initialize(json!({})).await?;
        Ok((client, capabilities))
    }

    /// `capabilities`: what the client declares ([`RELAYED`] requests it can take on a call's
    /// stream).
    pub async fn connect_http(
        http: reqwest::Client,
        url: &str,
        capabilities: Value,
    ) -> Result<(Client, Value)> {
        let client = Client::Http(HttpClient {
            http,
            url: url.to_string(),
            sinks: Arc::default(),
            session: Mutex::new(None),
            protocol: Mutex::new(None),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            listener: Mutex::new(None),
        });
        let capabilities = client.initialize(capabilities).await?;
        Ok((client, capabilities))
    }

    /// The handshake, declaring `capabilities`; the server's capabilities.
    async fn initialize(&self, capabilities: Value) -> Result<Value> {
        let params = RawValue::from_string(
            json!({"protocolVersion": PROTOCOL_VERSION, "capabilities": capabilities,
                   "clientInfo": {"name": "cogward-gateway", "version": env!("CARGO_PKG_VERSION")}})
            .to_string(),
        )?;
        let result = self
            .request("initialize", &params)
            .await?
            .map_err(|e| anyhow!("initialize: {e}"))?;
        let init: Value = serde_json::from_str(result.get()).context("the initialize result")?;
        let version = init["protocolVersion"]
            .as_str()
            .context("the initialize result has no protocolVersion")?;
        if let Client::Http(h) = self
            && let Ok(mut p) = h.protocol.lock()
        {
            *p = Some(version.to_string());
        }
        self.notify("notifications/initialized").await?;
        Ok(init
            .get("capabilities")
            .cloned()
            .unwrap_or_else(|| json!({})))
    }

    pub fn is_closed(&self) -> bool {
        match self {
            Client::Stdio(c) => c.closed.load(Ordering::SeqCst),
            Client::Http(c) => c.closed.load(Ordering::SeqCst),
        }
    }

    /// Send a request; its result or the server's error (`Err` of the outer result: the
    /// transport failed).
    pub async fn request(&self, method: &str, params: &RawValue) -> Result<Reply> {
        self.request_with(method, params, None).await
    }

    /// [`Client::request`], its notifications to `interim` meanwhile.
    pub async fn request_with(
        &self,
        method: &str,
        params: &RawValue,
        mut interim: Option<Interim>,
    ) -> Result<Reply> {
        let (sinks, next_id) = match self {
            Client::Stdio(c) => (&c.sinks, &c.next_id),
            Client::Http(c) => (&c.sinks, &c.next_id),
        };
        let id = next_id.fetch_add(1, Ordering::SeqCst);
        let cancel = interim.as_mut().and_then(|i| i.cancel.take());
        // The request's progress token goes upstream as it is unless another request in
        // flight on this connection (another run's, maybe) holds the same one: then it is
        // replaced by one of ours for this request.
        let mut token = None;
        let mut replaced = None;
        if let Some(i) = &interim
            && let Some(wanted) = &i.progress_token
            && let Ok(mut s) = sinks.lock()
        {
            let mut t = wanted.clone();
            while s.contains_key(&t) {
                t = json!(format!("cw-p-{}", uuid::Uuid::new_v4().simple())).to_string();
            }
            if &t != wanted {
                replaced = Some(with_progress_token(params, &t)?);
            }
            s.insert(t.clone(), i.sink.clone());
            token = Some(t);
        }
        let params = replaced.as_deref().unwrap_or(params);
        let sent = async {
            match self {
                Client::Stdio(c) => c.request(id, method, params).await,
                Client::Http(c) => c.request(id, method, params, interim.as_ref()).await,
            }
        };
        let reply = match cancel {
            None => sent.await,
            Some(mut cancel) => {
                let cancelled = async move {
                    let fired = cancel.wait_for(Option::is_some).await;
                    fired.map(|reason| reason.clone().unwrap_or_default())
                };
                tokio::select! {
                    reply = sent => reply,
                    Ok(reason) = cancelled => {
                        self.cancel(id, &reason).await;
                        Ok(Err(ServerError {
                            code: CANCELLED,
                            message: "cogward: the request was cancelled by its caller".into(),
                            data: None,
                        }))
                    }
                }
            }
        };
        if let (Some(t), Ok(mut s)) = (&token, sinks.lock()) {
            s.remove(t);
        }
        reply
    }

    /// Read the session's standalone stream (`GET`, Streamable HTTP) for as long as the client
    /// lives: the server's notifications there go to `sink` as it wrote them (a full sink drops
    /// them); its requests there are answered (`ping`) or refused (-32601: outside any call
    /// nobody can be asked). A server that offers no stream (405) is left alone; a stream that
    /// ends is resumed after its last event.
    pub fn listen(&self, sink: mpsc::Sender<Box<RawValue>>) {
        let Client::Http(c) = self else {
            return;
        };
        let endpoint = Endpoint {
            http: c.http.clone(),
            url: c.url.clone(),
            session: c.session.lock().ok().and_then(|s| s.clone()),
            protocol: c.protocol.lock().ok().and_then(|p| p.clone()),
        };
        let task = tokio::spawn(async move {
            let mut last_event: Option<String> = None;
            let mut failures = 0u32;
            while failures < MAX_RESUMES as u32 {
                let mut req = endpoint
                    .with_session(endpoint.http.get(&endpoint.url))
                    .header("accept", "text/event-stream");
                if let Some(id) = &last_event {
                    req = req.header("last-event-id", id);
                }
                let mut resp = match req.send().await {
                    Ok(r) if r.status().is_success() => r,
                    Ok(r) if r.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED => return,
                    _ => {
                        failures += 1;
                        tokio::time::sleep(RESUME_DELAY * 10).await;
                        continue;
                    }
                };
                failures = 0;
                let mut buf = String::new();
                while let Ok(Some(chunk)) = resp.chunk().await {
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(event) = crate::sse::take_event(&mut buf) {
                        if let Some(id) = event.id {
                            last_event = Some(id);
                        }
                        let Some(text) = event.data else { continue };
                        let Ok(msg) = serde_json::from_str::<Incoming>(&text) else {
                            continue;
                        };
                        match (msg.method, msg.id) {
                            (Some(method), Some(id)) => {
                                let answer = match method.as_str() {
                                    "ping" => Ok(raw(&json!({}))),
                                    _ => Err(json!({"code": -32601,
                                        "message": format!("cogward: {method} outside a call has nobody to ask")})),
                                };
                                endpoint.post(response_text(&id, answer)).await;
                            }
                            (Some(_), None) => {
                                if let Ok(raw) = RawValue::from_string(text) {
                                    let _ = sink.try_send(raw);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                tokio::time::sleep(RESUME_DELAY).await;
            }
        });
        if let Ok(mut listener) = c.listener.lock() {
            *listener = Some(task);
        }
    }

    /// Send the notification `method` (no params).
    pub async fn notify(&self, method: &str) -> Result<()> {
        self.send(&format!(
            r#"{{"jsonrpc":"2.0","method":{}}}"#,
            json!(method)
        ))
        .await
    }

    /// Tell the server our request `id` is cancelled (best effort: the request is over for us
    /// either way).
    async fn cancel(&self, id: u64, reason: &Value) {
        if let Client::Stdio(c) = self
            && let Ok(mut p) = c.pending.lock()
        {
            p.remove(&id);
        }
        if let Err(e) = self.send(&cancel_text(id, reason)).await {
            tracing::warn!(error = %format!("{e:#}"), "telling a server a request is cancelled");
        }
    }

    async fn send(&self, text: &str) -> Result<()> {
        match self {
            Client::Stdio(c) => c.write(text).await,
            Client::Http(c) => c.post(text).await.map(|_| ()),
        }
    }
}

/// A server started as a child process.
pub struct StdioClient {
    _child: tokio::process::Child,
    stdin: Arc<tokio::sync::Mutex<tokio::process::ChildStdin>>,
    pending: Pending,
    sinks: Sinks,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
}

impl StdioClient {
    fn spawn(command: &[String], env: &std::collections::BTreeMap<String, String>) -> Result<Self> {
        let program = command.first().context("an empty command")?;
        let mut child = tokio::process::Command::new(program)
            .args(&command[1..])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let stdin = Arc::new(tokio::sync::Mutex::new(
            child.stdin.take().context("the child's stdin")?,
        ));
        let stdout = child.stdout.take().context("the child's stdout")?;
        let pending: Pending = Arc::default();
        let sinks: Sinks = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (p, n, c, w) = (
            pending.clone(),
            sinks.clone(),
            closed.clone(),
            stdin.clone(),
        );
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(msg) = serde_json::from_str::<Incoming>(&line) else {
                    continue;
                };
                let routes = Routes {
                    pending: &p,
                    sinks: &n,
                    stream: None,
                };
                // Nothing is relayed from stdio (no stream says whose a request is).
                if let Some(Reply2Server::Send(answer)) = route(&line, msg, &routes) {
                    let mut w = w.lock().await;
                    let _ = w.write_all(format!("{answer}\n").as_bytes()).await;
                    let _ = w.flush().await;
                }
            }
            c.store(true, Ordering::SeqCst);
            // Whoever still waits gets an error now, not at its time limit.
            if let Ok(mut p) = p.lock() {
                p.clear();
            }
        });
        Ok(Self {
            _child: child,
            stdin,
            pending,
            sinks,
            next_id: AtomicU64::new(1),
            closed,
        })
    }

    async fn write(&self, text: &str) -> Result<()> {
        let mut w = self.stdin.lock().await;
        w.write_all(text.as_bytes()).await?;
        w.write_all(b"\n").await?;
        w.flush().await?;
        Ok(())
    }

    async fn request(&self, id: u64, method: &str, params: &RawValue) -> Result<Reply> {
        if self.closed.load(Ordering::SeqCst) {
            bail!("the server's process has exited");
        }
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, tx);
        }
        if let Err(e) = self.write(&request_text(id, method, params)).await {
            self.closed.store(true, Ordering::SeqCst);
            return Err(e.context("writing to the server"));
        }
        rx.await
            .map_err(|_| anyhow!("the server's process exited before answering"))
    }
}

/// A Streamable HTTP server.
pub struct HttpClient {
    http: reqwest::Client,
    url: String,
    sinks: Sinks,
    session: Mutex<Option<String>>,
    protocol: Mutex<Option<String>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// The task reading the session's standalone stream ([`Client::listen`]).
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl HttpClient {
    /// `req` with the session's id and protocol version, once the handshake gave them.
    fn in_session(&self, mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(s) = self.session.lock().ok().and_then(|s| s.clone()) {
            req = req.header("mcp-session-id", s);
        }
        if let Some(v) = self.protocol.lock().ok().and_then(|v| v.clone()) {
            req = req.header("mcp-protocol-version", v);
        }
        req
    }

    /// POST one message; the response (its session id kept from the first answer).
    async fn post(&self, body: &str) -> Result<reqwest::Response> {
        let req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_string());
        let resp = self.in_session(req).send().await.inspect_err(|_| {
            self.closed.store(true, Ordering::SeqCst);
        })?;
        if let Some(s) = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            && let Ok(mut session) = self.session.lock()
            && session.is_none()
        {
            *session = Some(s.to_string());
        }
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND
            && self.session.lock().is_ok_and(|s| s.is_some())
        {
            // The server forgot the session: this connection is done.
            self.closed.store(true, Ordering::SeqCst);
            bail!("the server no longer knows the session (404)");
        }
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            bail!(
                "HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            );
        }
        Ok(resp)
    }

    async fn request(
        &self,
        id: u64,
        method: &str,
        params: &RawValue,
        stream: Option<&Interim>,
    ) -> Result<Reply> {
        let pending: Pending = Arc::default();
        let routes = Routes {
            pending: &pending,
            sinks: &self.sinks,
            stream,
        };
        let (tx, mut rx) = oneshot::channel();
        if let Ok(mut p) = pending.lock() {
            p.insert(id, tx);
        }
        let mut resp = self.post(&request_text(id, method, params)).await?;
        let sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/event-stream"));
        if !sse {
            let body = resp.bytes().await?;
            let msg: Incoming =
                serde_json::from_slice(&body).context("the server's answer is not JSON-RPC")?;
            route(&String::from_utf8_lossy(&body), msg, &routes);
            return rx
                .try_recv()
                .map_err(|_| anyhow!("the server answered something else than this request"));
        }
        // A stream: messages until the response to this request. A server may end the stream
        // before answering (SEP-1699): the answer is then fetched by resuming the stream after
        // the last event seen (GET with Last-Event-ID).
        let mut last_event: Option<String> = None;
        for attempt in 0..=MAX_RESUMES {
            if let Some(reply) = self
                .read_stream(&mut resp, &routes, &mut rx, &mut last_event)
                .await?
            {
                return Ok(reply);
            }
            let Some(event_id) = last_event.clone() else {
                break;
            };
            if attempt == MAX_RESUMES {
                break;
            }
            resp = self.resume(&event_id).await?;
        }
        bail!("the server's stream ended before it answered")
    }

    /// Read SSE events until the response (`Some`) or the end of the stream (`None`), answering
    /// the server's requests and noting the last event id. A relayed request's answer is
    /// awaited while the stream is still read: the server may cancel the request meanwhile.
    async fn read_stream(
        &self,
        resp: &mut reqwest::Response,
        routes: &Routes<'_>,
        rx: &mut oneshot::Receiver<Reply>,
        last_event: &mut Option<String>,
    ) -> Result<Option<Reply>> {
        use futures::StreamExt;
        type Answer = std::result::Result<Box<RawValue>, Value>;
        let mut buf = String::new();
        // The server's requests relayed and not answered yet: their cancellation by id.
        let mut relayed: HashMap<String, oneshot::Sender<Value>> = HashMap::new();
        let mut answers = futures::stream::FuturesUnordered::new();
        loop {
            let chunk = tokio::select! {
                chunk = resp.chunk() => chunk?,
                Some((id, answer)) = answers.next() => {
                    let (id, answer): (Box<RawValue>, Answer) = (id, answer);
                    // Unless the server cancelled it: then it wants no answer.
                    if relayed.remove(id.get()).is_some() {
                        let _ = self.post(&response_text(&id, answer)).await;
                    }
                    continue;
                }
            };
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(event) = crate::sse::take_event(&mut buf) {
                if let Some(id) = event.id {
                    *last_event = Some(id);
                }
                let Some(text) = event.data else {
                    continue;
                };
                let Ok(msg) = serde_json::from_str::<Incoming>(&text) else {
                    continue;
                };
                if msg.method.as_deref() == Some("notifications/cancelled")
                    && let Some(params) = &msg.params
                    && let Some(cancel) = relayed.remove(&params["requestId"].to_string())
                {
                    let _ = cancel.send(params.clone());
                    continue;
                }
                match route(&text, msg, routes) {
                    Some(Reply2Server::Send(answer)) => {
                        let _ = self.post(&answer).await;
                    }
                    // The server waits for this answer before it goes on with the request.
                    Some(Reply2Server::Relayed { id, answer, cancel }) => {
                        relayed.insert(id.get().to_string(), cancel);
                        answers.push(async move {
                            let answer = answer.await.unwrap_or_else(|_| {
                                Err(json!({"code": -32603, "message": "cogward: the request was not answered"}))
                            });
                            (id, answer)
                        });
                    }
                    None => {}
                }
                if let Ok(reply) = rx.try_recv() {
                    return Ok(Some(reply));
                }
            }
        }
    }

    /// Resume the session's stream after `event_id`.
    async fn resume(&self, event_id: &str) -> Result<reqwest::Response> {
        tokio::time::sleep(RESUME_DELAY).await;
        let req = self
            .http
            .get(&self.url)
            .header("accept", "text/event-stream")
            .header("last-event-id", event_id);
        let resp = self.in_session(req).send().await?;
        if !resp.status().is_success() {
            bail!("resuming the stream: HTTP {}", resp.status());
        }
        Ok(resp)
    }
}

/// Where an HTTP session's standalone stream is read from, apart from its client.
struct Endpoint {
    http: reqwest::Client,
    url: String,
    session: Option<String>,
    protocol: Option<String>,
}

impl Endpoint {
    fn with_session(&self, mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        if let Some(v) = &self.protocol {
            req = req.header("mcp-protocol-version", v);
        }
        req
    }

    /// POST one message, best effort.
    async fn post(&self, body: String) {
        let req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        let _ = self.with_session(req).send().await;
    }
}

/// How often a request's stream is resumed before the request counts as failed.
const MAX_RESUMES: usize = 5;
/// How long before a stream is resumed (the server's `retry:` hint is not awaited longer).
const RESUME_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

impl Drop for HttpClient {
    fn drop(&mut self) {
        if let Some(task) = self.listener.lock().ok().and_then(|mut l| l.take()) {
            task.abort();
        }
        // Tell the server the session is over (best effort).
        let session = self.session.lock().ok().and_then(|s| s.clone());
        if let (Some(session), Ok(rt)) = (session, tokio::runtime::Handle::try_current()) {
            let req = self
                .http
                .delete(&self.url)
                .header("mcp-session-id", session);
            rt.spawn(async move {
                let _ = req.send().await;
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Route `text` with no request streaming; what goes back to the server, if anything.
    fn routed(text: &str, pending: &Pending) -> Option<String> {
        let sinks = Sinks::default();
        let routes = Routes {
            pending,
            sinks: &sinks,
            stream: None,
        };
        match route(text, serde_json::from_str(text).unwrap(), &routes)? {
            Reply2Server::Send(s) => Some(s),
            Reply2Server::Relayed { .. } => panic!("relayed without a stream"),
        }
    }

    #[test]
    fn responses_reach_their_request_and_server_requests_are_answered() {
        let pending: Pending = Arc::default();
        let (tx, mut rx) = oneshot::channel();
        pending.lock().unwrap().insert(7, tx);
        // Kept as written: key order, the float's spelling, a big integer, an unknown field.
        let text = r#"{"jsonrpc":"2.0","id":7,"result":{"z":1,"a":0.7,"n":12345678901234567890,"x-extra":true}}"#;
        assert!(routed(text, &pending).is_none());
        let got = rx.try_recv().unwrap().unwrap();
        assert_eq!(
            got.get(),
            r#"{"z":1,"a":0.7,"n":12345678901234567890,"x-extra":true}"#
        );
        let ping = r#"{"jsonrpc":"2.0","id":"s1","method":"ping"}"#;
        let pong: Value = serde_json::from_str(&routed(ping, &pending).unwrap()).unwrap();
        assert_eq!(pong, json!({"jsonrpc": "2.0", "id": "s1", "result": {}}));
        // Outside a call's stream (stdio, say) a sampling request cannot be relayed.
        let sampling = r#"{"jsonrpc":"2.0","id":3,"method":"sampling/createMessage","params":{}}"#;
        let answer: Value = serde_json::from_str(&routed(sampling, &pending).unwrap()).unwrap();
        assert_eq!(answer["error"]["code"], -32601);
        assert_eq!(answer["id"], 3);
        let note = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#;
        assert!(routed(note, &pending).is_none());
        let (tx, mut rx) = oneshot::channel();
        pending.lock().unwrap().insert(8, tx);
        let err =
            r#"{"jsonrpc":"2.0","id":8,"error":{"code":-32602,"message":"bad","data":{"x":1}}}"#;
        routed(err, &pending);
        let err = rx.try_recv().unwrap().unwrap_err();
        assert_eq!((err.code, err.data), (-32602, Some(json!({"x": 1}))));
    }

    #[test]
    fn notifications_and_requests_reach_the_call_they_belong_to_and_only_it() {
        let pending: Pending = Arc::default();
        let sinks: Sinks = Arc::default();
        let (mine, mut mine_rx) = mpsc::channel(2);
        let (other, mut other_rx) = mpsc::channel(2);
        let (requests, mut requests_rx) = mpsc::channel(1);
        sinks
            .lock()
            .unwrap()
            .insert(r#""cw-p-1""#.into(), mine.clone());
        sinks.lock().unwrap().insert(r#""cw-p-2""#.into(), other);
        let my_call = Interim {
            sink: mine.clone(),
            progress_token: None,
            requests: Some(requests),
            cancel: None,
        };
        let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"cw-p-1","progress":0.5}}"#;
        let log = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}"#;
        let on = |text: &str, stream: Option<&Interim>| {
            let routes = Routes {
                pending: &pending,
                sinks: &sinks,
                stream,
            };
            route(text, serde_json::from_str(text).unwrap(), &routes)
        };
        // By token, on any transport; as the server wrote it.
        on(progress, None);
        assert_eq!(mine_rx.try_recv().unwrap().get(), progress);
        assert!(other_rx.try_recv().is_err());
        // A log line on no request's stream (stdio) cannot be attributed: dropped.
        on(log, None);
        assert!(mine_rx.try_recv().is_err() && other_rx.try_recv().is_err());
        // On a request's own HTTP stream it is that request's.
        on(log, Some(&my_call));
        assert_eq!(mine_rx.try_recv().unwrap().get(), log);
        // A sampling request on the call's stream is the call's to answer, as the server
        // wrote it; the answer goes back under the server's id.
        let sampling = r#"{"jsonrpc":"2.0","id":"s-9","method":"sampling/createMessage","params":{"maxTokens":5}}"#;
        let Some(Reply2Server::Relayed { id, answer, .. }) = on(sampling, Some(&my_call)) else {
            panic!("not relayed");
        };
        let relayed = requests_rx.try_recv().unwrap();
        assert_eq!(relayed.message.get(), sampling);
        relayed
            .answer
            .send(Ok(raw(&json!({"role": "assistant"}))))
            .unwrap();
        let answer = answer.blocking_recv().unwrap();
        assert_eq!(
            response_text(&id, answer),
            r#"{"jsonrpc":"2.0","id":"s-9","result":{"role":"assistant"}}"#
        );
        // Anything else is answered at once.
        let other = r#"{"jsonrpc":"2.0","id":4,"method":"tasks/list"}"#;
        assert!(matches!(
            on(other, Some(&my_call)),
            Some(Reply2Server::Send(_))
        ));
        // A flood is dropped once the sink is full, never waited for.
        for _ in 0..10 {
            on(progress, None);
        }
        assert!(mine_rx.try_recv().is_ok() && mine_rx.try_recv().is_ok());
        assert!(mine_rx.try_recv().is_err());
    }
}
