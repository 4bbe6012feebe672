//! A whole cogward stack for one test: a real `temporal server start-dev`, the real `cogward`
//! binaries (API + mirror, worker) and a real database, in a temporary directory. Every process
//! is killed when the stack is dropped.

use anyhow::{Context, Result, bail};
use cogward::temporal::{DevServer, start_dev_server, temporal_bin};
use serde_json::{Value, json};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `target/debug`, where the binaries under test are.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/e2e-xxxx → target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn cogward_bin() -> PathBuf {
    let p = bin_dir().join("cogward");
    assert!(
        p.is_file(),
        "{} missing: run `cargo build` first",
        p.display()
    );
    p
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The first port the kernel hands out as a connection's source port: a port picked below it
/// and left unbound for a while (a Temporal server started later, a restarted `serve`) cannot
/// be taken by some connection meanwhile, only by an explicit bind.
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// `n` consecutive free ports below the ephemeral range, at a random place.
fn free_ports(n: u16) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let floor = ephemeral_floor().max(12_000);
    for _ in 0..500 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        let p = 10_000 + (h.finish() % u64::from(floor - 10_000 - n)) as u16;
        if (p..p + n).all(port_free) {
            return p;
        }
    }
    panic!("no {n} free consecutive ports below {floor}");
}

/// A port p with p, p+1 and p+2 free (Temporal's frontend, HTTP and metrics ports).
pub fn free_port_triple() -> u16 {
    free_ports(3)
}

pub fn free_port() -> u16 {
    free_ports(1)
}

fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listening on {port} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Wait until the API on `port` answers and is connected to Temporal.
fn wait_ready(port: u16, timeout: Duration) -> Result<()> {
    use std::io::{Read, Write};
    wait_port(port, timeout)?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut answer = String::new();
        if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ =
                conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let _ = conn.read_to_string(&mut answer);
        }
        if answer.contains("\"temporal\":true") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the API on {port} is not connected to Temporal after {timeout:?}: {answer}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A real `temporal server start-dev`, started the way `cogward dev` starts it.
pub struct Temporal {
    server: Option<DevServer>,
    pub port: u16,
    dir: PathBuf,
}

impl Temporal {
    pub fn start(dir: &Path) -> Result<Self> {
        let port = free_port_triple();
        let server = start_dev_server(([127, 0, 0, 1], port).into(), dir)?;
        Ok(Self {
            server: Some(server),
            port,
            dir: dir.to_path_buf(),
        })
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `kill -9` the server.
    pub fn kill9(&mut self) {
        if let Some(server) = self.server.take() {
            server.kill9();
        }
    }

    /// `kill -9` the server, then start it again on the same database file and port.
    pub fn kill9_and_restart(&mut self) -> Result<()> {
        self.kill9();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !port_free(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.server = Some(start_dev_server(
            ([127, 0, 0, 1], self.port).into(),
            &self.dir,
        )?);
        Ok(())
    }

    /// The `temporal` CLI against this server: its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(temporal_bin()?)
            .args(args)
            .args(["--address", &self.address()])
            .output()?;
        if !out.status.success() {
            bail!(
                "temporal {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `temporal workflow show -w ID --output json`: (event id, event type) of every event.
    pub fn history(&self, workflow_id: &str) -> Result<Vec<(i64, String)>> {
        let out = Command::new(temporal_bin()?)
            .args(["workflow", "show", "-w", workflow_id, "--output", "json"])
            .args(["--address", &self.address()])
            .output()?;
        if !out.status.success() {
            bail!(
                "temporal workflow show: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout)?;
        let events = v["events"].as_array().context("events")?;
        events
            .iter()
            .map(|e| {
                let id = e["eventId"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .or_else(|| e["eventId"].as_i64())
                    .context("eventId")?;
                let ty = e["eventType"].as_str().context("eventType")?.to_string();
                Ok((id, ty))
            })
            .collect()
    }
}

impl Drop for Temporal {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.kill9();
        }
    }
}

pub struct Tokens {
    /// submit, read, operate
    pub ci: String,
    /// approve, read; in approval group `release-managers`
    pub approver: String,
    /// submit, approve, read: may approve others' runs, never its own
    pub lead: String,
}

#[derive(Default)]
pub struct StackOptions {
    /// Run the worker as its own process (so a test can kill it), not inside `cogward serve`.
    pub separate_worker: bool,
    /// A database URL; default a fresh SQLite file.
    pub database_url: Option<String>,
    /// The gateway's configuration (written to `<state>/gateway.json`).
    pub gateway_config: Option<Value>,
    /// More environment for every `cogward` process (provider keys, say).
    pub env: Vec<(String, String)>,
}

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub temporal: Temporal,
    serve: Option<Child>,
    worker: Option<Child>,
    pub api_port: u16,
    /// Where the stack's gateway listens (its own listener, not the API's).
    pub gateway_port: u16,
    /// Where the stack's egress proxy listens.
    pub egress_port: u16,
    pub tokens: Tokens,
    pub database_url: String,
    env: Vec<(String, String)>,
    http: reqwest::Client,
}

/// Each test thread's panic message, kept so that a failing stack can print it again after its
/// logs: CI shows a failure's first and last lines, and the logs would push the message out.
static PANICS: std::sync::Mutex<Vec<(std::thread::ThreadId, String)>> =
    std::sync::Mutex::new(Vec::new());

fn keep_panic_messages() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(mut p) = PANICS.lock() {
                p.push((std::thread::current().id(), info.to_string()));
            }
            default(info);
        }));
    });
}

/// The panic message of this thread, if it panicked.
fn panic_message() -> Option<String> {
    let id = std::thread::current().id();
    let p = PANICS.lock().ok()?;
    p.iter()
        .rev()
        .find(|(t, _)| *t == id)
        .map(|(_, m)| m.clone())
}

impl Stack {
    pub fn start(opts: StackOptions) -> Result<Self> {
        keep_panic_messages();
        let dir = tempfile::tempdir()?;
        let temporal = Temporal::start(dir.path())?;
        let database_url = opts.database_url.unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                dir.path().join("state").join("cogward.db").display()
            )
        });
        let mut stack = Self {
            temporal,
            serve: None,
            worker: None,
            api_port: free_port(),
            gateway_port: free_port(),
            egress_port: free_port(),
            tokens: Tokens {
                ci: String::new(),
                approver: String::new(),
                lead: String::new(),
            },
            database_url,
            env: opts.env,
            // A connection per request: the API closes a connection after an oversized request
            // (and idle ones after its header timeout); a pooled client could send the next
            // request on one it is closing.
            http: crate::gateway::fresh_connections(),
            dir,
        };
        if let Some(config) = &opts.gateway_config {
            std::fs::create_dir_all(stack.state_dir())?;
            std::fs::write(
                stack.state_dir().join("gateway.json"),
                serde_json::to_vec_pretty(config)?,
            )?;
        }
        stack.tokens.ci = stack.add_principal("ci", "submit,read,operate", &[])?;
        stack.tokens.approver =
            stack.add_principal("approver", "approve,read", &["release-managers"])?;
        stack.tokens.lead = stack.add_principal("lead", "submit,approve,read", &[])?;
        let serve_args: &[&str] = if opts.separate_worker {
            &["serve"]
        } else {
            &["serve", "--worker"]
        };
        // A port picked free can be taken by another test's process before `serve` binds it:
        // then `serve` exits at once, and it is started again on fresh ports.
        let mut attempts = 0;
        loop {
            stack.serve = Some(stack.spawn(serve_args, "serve.log")?);
            let ready = wait_ready(stack.api_port, Duration::from_secs(30));
            let exited = stack
                .serve
                .as_mut()
                .is_some_and(|s| matches!(s.try_wait(), Ok(Some(_))));
            attempts += 1;
            match ready {
                Ok(()) if !exited => break,
                _ if exited && attempts < 3 => {
                    stack.api_port = free_port();
                    stack.gateway_port = free_port();
                    stack.egress_port = free_port();
                }
                Ok(()) => bail!("serve exited after start:\n{}", stack.logs()),
                Err(e) => return Err(e.context(stack.logs())),
            }
        }
        if opts.separate_worker {
            stack.start_worker()?;
        }
        Ok(stack)
    }

    /// Where the stack's Temporal dev server keeps its database.
    pub fn temporal_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Environment every `cogward` invocation of this stack gets.
    pub fn command(&self) -> Command {
        let mut c = Command::new(cogward_bin());
        c.env("COGWARD_STATE_DIR", self.state_dir())
            .env("DATABASE_URL", &self.database_url)
            .env(
                "COGWARD_TEMPORAL_ADDRESS",
                format!("http://{}", self.temporal.address()),
            )
            .env("COGWARD_LISTEN", format!("127.0.0.1:{}", self.api_port))
            .env(
                "COGWARD_GATEWAY_LISTEN",
                format!("127.0.0.1:{}", self.gateway_port),
            )
            .env(
                "COGWARD_EGRESS_LISTEN",
                format!("127.0.0.1:{}", self.egress_port),
            )
            .env("COGWARD_API", format!("http://127.0.0.1:{}", self.api_port))
            .env("COGWARD_MIRROR_INTERVAL_MS", "100")
            // Agents in the MCP tests run the Python SDK installed there.
            .env("COGWARD_SANDBOX_READ_ONLY", sandbox_read_only())
            .env_remove("COGWARD_TOKEN")
            .env("RUST_LOG", "info,temporalio_sdk_core=warn");
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn spawn(&self, args: &[&str], log: &str) -> Result<Child> {
        std::fs::create_dir_all(self.state_dir())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log))?;
        let mut cmd = self.command();
        // The loosest umask there is: the engine must keep its files private anyway.
        // SAFETY: umask(2) is async-signal-safe and cannot fail.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                nix::sys::stat::umask(nix::sys::stat::Mode::empty());
                Ok(())
            });
        }
        Ok(cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?)
    }

    /// Add a principal to the tokens file (the API reads it at start) and return its token.
    pub fn add_principal(&self, name: &str, roles: &str, groups: &[&str]) -> Result<String> {
        self.add_principal_for(name, roles, groups, "*")
    }

    /// [`Self::add_principal`] acting on `tenants` only (comma-separated globs).
    pub fn add_principal_for(
        &self,
        name: &str,
        roles: &str,
        groups: &[&str],
        tenants: &str,
    ) -> Result<String> {
        std::fs::create_dir_all(self.state_dir())?;
        let mut cmd = self.command();
        cmd.args([
            "tokens",
            "add",
            name,
            "--roles",
            roles,
            "--tenants",
            tenants,
        ]);
        if !groups.is_empty() {
            cmd.args(["--groups", &groups.join(",")]);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!("tokens add: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// `kill -9` the API process (`cogward serve`), then start it again and wait for it.
    pub fn kill9_and_restart_serve(&mut self) -> Result<()> {
        self.kill9_and_restart_serve_listening()?;
        wait_ready(self.api_port, Duration::from_secs(30))
    }

    /// [`Self::kill9_and_restart_serve`], waiting only until the API listens (Temporal may be
    /// down).
    pub fn kill9_and_restart_serve_listening(&mut self) -> Result<()> {
        if let Some(mut s) = self.serve.take() {
            kill9(&mut s);
        }
        let args: &[&str] = if self.worker.is_some() {
            &["serve"]
        } else {
            &["serve", "--worker"]
        };
        self.serve = Some(self.spawn(args, "serve.log")?);
        wait_port(self.api_port, Duration::from_secs(30))
    }

    /// Whether `cogward serve` is still running.
    pub fn serve_alive(&mut self) -> bool {
        self.serve
            .as_mut()
            .is_some_and(|s| matches!(s.try_wait(), Ok(None)))
    }

    pub fn start_worker(&mut self) -> Result<()> {
        self.worker = Some(self.spawn(&["worker"], "worker.log")?);
        Ok(())
    }

    /// `kill -9` the worker process.
    pub fn kill9_worker(&mut self) {
        if let Some(mut w) = self.worker.take() {
            kill9(&mut w);
        }
    }

    /// Run the CLI as `principal` ("ci" or "approver"): (exit code, stdout, stderr).
    pub fn cli(&self, token: &str, args: &[&str]) -> Result<(i32, String, String)> {
        let out = self
            .command()
            .env("COGWARD_TOKEN", token)
            .args(args)
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    /// A URL on the stack's gateway.
    pub fn gw_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gateway_port)
    }

    /// One API call: (status, JSON body).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Value)> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = resp.bytes().await?;
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status >= 400 {
            assert_eq!(
                ctype, "application/problem+json",
                "error without a problem document: {v}"
            );
        }
        Ok((status, v))
    }

    /// Call (with a JSON body, if any), and assert the answer is a problem document with this
    /// status and code.
    pub async fn expect_problem(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
        status: u16,
        code: &str,
    ) {
        let body = body.map(|b| b.to_string().into_bytes());
        let (got, problem) = self.call(method, path, Some(token), body).await.unwrap();
        assert_eq!(
            (got, problem["code"].as_str()),
            (status, Some(code)),
            "{path}: {problem}"
        );
    }

    pub async fn submit(&self, spec: &Value) -> Result<(u16, Value)> {
        self.submit_as(&self.tokens.ci, spec).await
    }

    pub async fn submit_as(&self, token: &str, spec: &Value) -> Result<(u16, Value)> {
        self.call(
            reqwest::Method::POST,
            "/v1/runs",
            Some(token),
            Some(serde_json::to_vec(spec)?),
        )
        .await
    }

    /// Submit as `ci` (it must be accepted: 201), then wait until the run is in one of `want`:
    /// (run id, run).
    pub async fn submit_until(&self, spec: &Value, want: &[&str]) -> Result<(String, Value)> {
        let (status, run) = self.submit(spec).await?;
        anyhow::ensure!(status == 201, "submit: {status} {run}");
        let id = run["run_id"].as_str().context("run_id")?.to_string();
        let run = self.wait_status(&id, want, crate::RUN_TIMEOUT).await?;
        Ok((id, run))
    }

    /// Submit, as `token`, a run of `true` for tenant acme that needs approval (`extra` merged
    /// into its spec); its id once it waits at its gate.
    pub async fn gated_run(&self, token: &str, extra: Value) -> Result<String> {
        let mut s = spec("acme", &["true"]);
        s["requires_approval"] = json!(true);
        for (k, v) in extra.as_object().into_iter().flatten() {
            s[k] = v.clone();
        }
        let (status, run) = self.submit_as(token, &s).await?;
        anyhow::ensure!(status == 201, "submitting: {status} {run}");
        let id = run["run_id"].as_str().context("run_id")?.to_string();
        self.wait_status(&id, &["awaiting_approval"], crate::RUN_TIMEOUT)
            .await?;
        Ok(id)
    }

    pub async fn run(&self, run_id: &str) -> Result<Value> {
        let (status, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/runs/{run_id}"),
                Some(&self.tokens.ci),
                None,
            )
            .await?;
        anyhow::ensure!(status == 200, "GET run {run_id}: {status} {v}");
        Ok(v)
    }

    /// Cancel the run as `ci` (202) and wait until it is `cancelled`.
    pub async fn cancel(&self, run_id: &str) -> Result<()> {
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/runs/{run_id}/cancel"),
                Some(&self.tokens.ci),
                Some(b"{}".to_vec()),
            )
            .await?;
        anyhow::ensure!(status == 202, "cancel {run_id}: {status} {v}");
        self.wait_status(run_id, &["cancelled"], crate::RUN_TIMEOUT)
            .await
            .map(drop)
    }

    /// Poll the run until `status` is one of `want`.
    pub async fn wait_status(
        &self,
        run_id: &str,
        want: &[&str],
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.run(run_id).await?;
            if want.contains(&v["status"].as_str().unwrap_or("")) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "run {run_id} is {} after {timeout:?}, wanted {want:?}",
                    v["status"]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The run's ledger entries once its closing event has been mirrored.
    pub async fn wait_mirrored(&self, run_id: &str) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, v) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/runs/{run_id}/history"),
                    Some(&self.tokens.ci),
                    None,
                )
                .await?;
            anyhow::ensure!(status == 200, "history: {status} {v}");
            if v["complete"] == true {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("run {run_id} never fully mirrored: {v}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every Temporal history event of the run is in the ledger exactly once, in order.
    pub async fn assert_history_mirrored(&self, run_id: &str) -> Result<Value> {
        let ledger = self.wait_mirrored(run_id).await?;
        let temporal = self.temporal.history(run_id)?;
        let mirrored: Vec<(i64, String)> = ledger["entries"]
            .as_array()
            .context("entries")?
            .iter()
            .filter(|e| e["kind"] == "history")
            .map(|e| {
                (
                    e["event_id"].as_i64().unwrap_or(-1),
                    e["event_type"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        assert_eq!(
            mirrored, temporal,
            "ledger history differs from `temporal workflow show`"
        );
        Ok(ledger)
    }

    /// `cogward audit verify --json` against this stack's database.
    pub fn verify(&self) -> Result<(i32, Value)> {
        let out = self
            .command()
            .args(["audit", "verify", "--json"])
            .output()?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("verify output: {}", String::from_utf8_lossy(&out.stderr)))?;
        Ok((out.status.code().unwrap_or(-1), v))
    }

    /// `cogward audit replay WORKFLOW_ID`: whether it succeeded, and its output (stdout; stderr
    /// after it when it failed).
    pub fn replay(&self, workflow_id: &str) -> Result<(bool, String)> {
        let out = self
            .command()
            .args(["audit", "replay", workflow_id])
            .output()?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            text.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        Ok((out.status.success(), text))
    }

    /// `GET /v1/approvals/{id}` as `ci` (200).
    pub async fn approval(&self, id: &str) -> Result<Value> {
        let (status, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/approvals/{id}"),
                Some(&self.tokens.ci),
                None,
            )
            .await?;
        anyhow::ensure!(status == 200, "GET approval {id}: {status} {v}");
        Ok(v)
    }

    /// The run's directory on disk.
    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.state_dir().join("runs").join(run_id)
    }

    /// Everything `serve` has logged so far.
    pub fn serve_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Logs of every process, for a failing test's message.
    pub fn logs(&self) -> String {
        ["serve.log", "worker.log", "temporal.log"]
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                format!(
                    "--- {f}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for c in [self.serve.as_mut(), self.worker.as_mut()]
            .into_iter()
            .flatten()
        {
            kill9(c);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            if let Some(message) = panic_message() {
                // Short enough for CI's tail of the output: where, and how it ends (an
                // assertion's left and right come last).
                let chars: Vec<char> = message.chars().collect();
                let short: String = if chars.len() <= 3000 {
                    message
                } else {
                    let head: String = chars[..1500].iter().collect();
                    let tail: String = chars[chars.len() - 1500..].iter().collect();
                    format!("{head}\n[…]\n{tail}")
                };
                eprintln!("--- the failure, again\n{short}");
            }
        }
    }
}

/// Wait until `path` exists.
pub async fn wait_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bodies of the application entries of `event_type` in a ledger listing
/// (`Stack::wait_mirrored`), in order.
pub fn app_bodies(ledger: &Value, event_type: &str) -> Vec<Value> {
    ledger["entries"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["event_type"] == event_type)
                .filter_map(|e| serde_json::from_str(e["body"].as_str()?).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A minimal valid run spec running `command` for `tenant`.
pub fn spec(tenant: &str, command: &[&str]) -> Value {
    serde_json::json!({
        "spec_version": 1,
        "agent": "e2e-agent",
        "tenant": tenant,
        "runtime": {"type": "command", "command": command},
    })
}

/// A fresh PostgreSQL database on the server named by `COGWARD_TEST_POSTGRES_URL`, or None
/// (with a note on stderr) when the variable is unset.
/// Under CI (`CI` set) the variable must be set: a PostgreSQL test never passes by skipping there.
pub async fn postgres_database() -> Option<String> {
    let Ok(base) = std::env::var("COGWARD_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide COGWARD_TEST_POSTGRES_URL"
        );
        eprintln!("COGWARD_TEST_POSTGRES_URL is unset: no PostgreSQL server to test against");
        return None;
    };
    use sqlx::Connection;
    let name = format!("cogward_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to PostgreSQL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create database");
    let (prefix, _) = base.rsplit_once('/').expect("URL with a database name");
    Some(format!("{prefix}/{name}"))
}

/// The tools directory scripts/setup.sh installs, when it exists (agents see it read-only).
fn sandbox_read_only() -> String {
    let dir = std::env::var("COGWARD_TOOLS_DIR").unwrap_or_else(|_| "/opt/cogward-tools".into());
    if Path::new(&dir).is_dir() {
        dir
    } else {
        String::new()
    }
}

/// A small filesystem of its own (a tmpfs of `size`, e.g. `"24m"`) at `<dir>/disk`, unmounted
/// when the guard drops: a disk a test can fill.
pub struct SmallDisk(pub std::path::PathBuf);

impl SmallDisk {
    pub fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        let disk = dir.join("disk");
        std::fs::create_dir(&disk).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &disk,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .expect("mounting a tmpfs (the tests run as root)");
        SmallDisk(disk)
    }

    /// A SQLite database URL on this disk.
    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.0.join("cogward.db").display())
    }

    /// Fill what is left of the disk; the file to remove to give the space back.
    pub fn fill(&self) -> std::path::PathBuf {
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
