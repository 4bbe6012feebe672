//! The egress proxy: HTTP `CONNECT` and plain HTTP (absolute-form requests) to the destinations
//! a run's egress profiles allow.
//!
//! It is reached only through a sandbox's proxy port: the runner forwards each connection and
//! writes, before the agent's first byte, a preamble line naming the run's credential
//! (`CGW-EGRESS <credential>`), which the proxy verifies as the gateway does; the agent cannot
//! write that line, only follow it. Per connection, top to bottom: read the preamble and the
//! request head (bounded in size and time) → authenticate the run → find the destination →
//! check it against the run's profiles → resolve it (pinned) → record → connect → relay. A
//! refusal is a `security.egress_denied` ledger entry (run, destination, reason) and a 403; an
//! allowed connection is an `egress.connection` entry, durable before a byte is relayed.

use super::{EgressConfig, resolve};
use crate::audit::NewEntry;
use crate::gateway::{Gateway, RunIdentity};
use anyhow::{Context, Result};
use cogward_activities::runner::EGRESS_PREAMBLE;
use cogward_protocol::audit::{AuditBody, AuditEvent, EgressConnection, EgressDenied};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest preamble plus request head.
const MAX_HEAD: usize = 16 * 1024;
/// How long the preamble and head may take to arrive.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a run's admitted profiles are reused.
const PROFILES_TTL: Duration = Duration::from_secs(1);

pub struct EgressProxy {
    gateway: Arc<Gateway>,
    config: EgressConfig,
    profiles: Mutex<HashMap<String, (Vec<String>, Instant)>>,
}

impl EgressProxy {
    pub fn new(gateway: Arc<Gateway>, config: EgressConfig) -> Self {
        Self {
            gateway,
            config,
            profiles: Mutex::new(HashMap::new()),
        }
    }

    /// Serve connections until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    let proxy = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = proxy.handle(conn).await {
                            tracing::debug!(error = %format!("{e:#}"), "egress connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an egress connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn handle(&self, mut conn: TcpStream) -> Result<()> {
        let _ = conn.set_nodelay(true);
        let (head, rest) = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut conn))
            .await
            .context("the request head did not arrive in time")??;
        let Some((credential, request)) = split_preamble(&head) else {
            // Not from a runner: nothing to attribute, nothing to record.
            return reply(&mut conn, 400, "not a sandbox connection").await;
        };
        let run = match self.gateway.authenticate_credential(credential).await {
            Ok(run) => run,
            Err(_) => return reply(&mut conn, 407, "the run's credential is not valid").await,
        };
        let target = match Target::parse(request) {
            Ok(t) => t,
            Err(reason) => {
                let destination = json!(null);
                self.deny(&run, destination, &reason, &[]).await?;
                return reply(&mut conn, 400, &reason).await;
            }
        };
        let destination = json!(format!("{}:{}", target.host, target.port));
        let profiles = self.run_profiles(&run.run_id).await?;
        let allowed = self
            .config
            .check(&profiles, &target.host, target.port)
            .map(str::to_string);
        let profile = match allowed {
            Ok(p) => p,
            Err(reason) => {
                self.deny(&run, destination, &reason, &profiles).await?;
                return reply(&mut conn, 403, &reason).await;
            }
        };
        let address = match resolve(&self.config, &target.host, target.port).await {
            Ok(a) => a,
            Err(reason) => {
                self.deny(&run, destination, &reason, &profiles).await?;
                return reply(&mut conn, 403, &reason).await;
            }
        };
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await;
        let outcome = match &connected {
            Ok(Ok(_)) => "connected",
            _ => "connect_failed",
        };
        self.append(
            &run,
            EgressConnection {
                destination: destination.clone(),
                address: address.to_string(),
                profile: profile.to_string(),
                method: target.method.clone(),
                outcome: outcome.to_string(),
                run_id: run.run_id.clone(),
                tenant: run.tenant.clone(),
                agent: run.agent.clone(),
            }
            .entry(),
        )
        .await?;
        let Ok(Ok(mut upstream)) = connected else {
            return reply(&mut conn, 502, &format!("{destination} did not answer")).await;
        };
        let _ = upstream.set_nodelay(true);
        match &target.forward_head {
            None => {
                conn.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await?;
            }
            Some(head) => upstream.write_all(head).await?,
        }
        upstream.write_all(&rest).await?;
        tokio::io::copy_bidirectional(&mut conn, &mut upstream).await?;
        Ok(())
    }

    /// The egress profiles the run was submitted (and admitted) with.
    async fn run_profiles(&self, run_id: &str) -> Result<Vec<String>> {
        if let Ok(cache) = self.profiles.lock()
            && let Some((p, at)) = cache.get(run_id)
            && at.elapsed() < PROFILES_TTL
        {
            return Ok(p.clone());
        }
        let spec: String = sqlx::query_scalar("SELECT spec FROM runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_one(&self.gateway.db.pool)
            .await
            .context("reading the run's spec")?;
        let spec: Value = serde_json::from_str(&spec).context("parsing the run's spec")?;
        let profiles: Vec<String> = spec["egress"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(mut cache) = self.profiles.lock() {
            cache.retain(|_, (_, at)| at.elapsed() < PROFILES_TTL);
            cache.insert(run_id.to_string(), (profiles.clone(), Instant::now()));
        }
        Ok(profiles)
    }

    async fn deny(
        &self,
        run: &RunIdentity,
        destination: Value,
        reason: &str,
        profiles: &[String],
    ) -> Result<()> {
        tracing::info!(run_id = %run.run_id, %destination, reason, "egress refused");
        self.append(
            run,
            EgressDenied {
                destination,
                reason: reason.to_string(),
                profiles: profiles.to_vec(),
                run_id: run.run_id.clone(),
                tenant: run.tenant.clone(),
                agent: run.agent.clone(),
            }
            .entry(),
        )
        .await
    }

    /// One ledger entry about `run`.
    async fn append(
        &self,
        run: &RunIdentity,
        (event_type, body): (AuditEvent, Value),
    ) -> Result<()> {
        let entry = NewEntry::app(
            &self.gateway.namespace,
            run.run_id.clone(),
            event_type,
            body,
        );
        self.gateway
            .ledger
            .append(vec![entry])
            .await
            .context("recording the egress decision")?;
        Ok(())
    }
}

/// Read until the end of the request head: (preamble + head, bytes after it).
async fn read_head(conn: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = conn.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the connection closed before its request head");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        anyhow::ensure!(
            buf.len() <= MAX_HEAD,
            "the request head exceeds {MAX_HEAD} bytes"
        );
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The runner's preamble line's credential, and the agent's request head after it.
fn split_preamble(head: &[u8]) -> Option<(&str, &[u8])> {
    let end = find(head, b"\r\n")?;
    let line = std::str::from_utf8(&head[..end]).ok()?;
    let credential = line.strip_prefix(EGRESS_PREAMBLE)?.trim();
    Some((credential, &head[end + 2..]))
}

/// Where a request goes, and what to send the upstream first (plain HTTP only: the head in
/// origin form, without the proxy's own headers).
#[derive(Debug, PartialEq)]
struct Target {
    method: String,
    host: String,
    port: u16,
    forward_head: Option<Vec<u8>>,
}

impl Target {
    fn parse(head: &[u8]) -> Result<Target, String> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err("not an HTTP request".into()),
        }
        let method = req.method.unwrap_or_default().to_string();
        let path = req.path.unwrap_or_default();
        if method == "CONNECT" {
            let (host, port) = split_host_port(path, None)?;
            return Ok(Target {
                method,
                host,
                port,
                forward_head: None,
            });
        }
        let Some(rest) = path.strip_prefix("http://") else {
            return Err(format!(
                "{method} {path}: not a proxy request (CONNECT host:port, or an absolute http:// URL)"
            ));
        };
        let (authority, origin) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = split_host_port(authority, Some(80))?;
        let mut out = format!("{method} {origin} HTTP/1.{}\r\n", req.version.unwrap_or(1));
        for h in req.headers.iter() {
            let name = h.name.to_ascii_lowercase();
            if name == "proxy-authorization" || name == "proxy-connection" {
                continue;
            }
            out.push_str(h.name);
            out.push_str(": ");
            out.push_str(&String::from_utf8_lossy(h.value));
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        Ok(Target {
            method,
            host,
            port,
            forward_head: Some(out.into_bytes()),
        })
    }
}

fn split_host_port(authority: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let bad = || format!("{authority}: not host:port");
    if authority.contains('@') {
        return Err(format!(
            "{authority}: credentials in the authority are refused"
        ));
    }
    let port = |p: &str| p.parse::<u16>().map_err(|_| bad());
    let (host, port) = match authority.strip_prefix('[') {
        // An IPv6 literal (refused later: only names are reachable).
        Some(rest) => {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            match after.strip_prefix(':') {
                Some(p) => (host, port(p)?),
                None if after.is_empty() => (host, default_port.ok_or_else(bad)?),
                None => return Err(bad()),
            }
        }
        None => match authority.rsplit_once(':') {
            Some((host, p)) => (host, port(p)?),
            None => (authority, default_port.ok_or_else(bad)?),
        },
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

async fn reply(conn: &mut TcpStream, status: u16, reason: &str) -> Result<()> {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        407 => "Proxy Authentication Required",
        _ => "Bad Gateway",
    };
    let body = format!("cogward egress: {reason}\n");
    let head = format!(
        "HTTP/1.1 {status} {text}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    let _ = conn.shutdown().await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_preamble_is_the_runners_first_line_only() {
        let head = b"CGW-EGRESS cgw1.run.mac\r\nCONNECT a:443 HTTP/1.1\r\n\r\n";
        let (cred, rest) = split_preamble(head).unwrap();
        assert_eq!(cred, "cgw1.run.mac");
        assert!(rest.starts_with(b"CONNECT"));
        assert!(split_preamble(b"CONNECT a:443 HTTP/1.1\r\n\r\n").is_none());
    }

    #[test]
    fn connect_and_absolute_form_requests_name_their_destination() {
        let t =
            Target::parse(b"CONNECT registry.npmjs.org:443 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.forward_head),
            ("registry.npmjs.org", 443, None)
        );
        let t = Target::parse(
            b"GET http://deb.debian.org/debian/dists HTTP/1.1\r\nHost: deb.debian.org\r\nProxy-Authorization: Basic eA==\r\n\r\n",
        )
        .unwrap();
        assert_eq!((t.host.as_str(), t.port), ("deb.debian.org", 80));
        let head = String::from_utf8(t.forward_head.unwrap()).unwrap();
        assert!(head.starts_with("GET /debian/dists HTTP/1.1\r\n"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("proxy-authorization"));
        let t = Target::parse(b"GET http://h.test:8080 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("h.test", 8080));
    }

    #[test]
    fn other_requests_are_refused_with_a_reason() {
        for bad in [
            &b"GET /direct HTTP/1.1\r\n\r\n"[..],
            b"GET https://a.test/ HTTP/1.1\r\n\r\n",
            b"CONNECT a.test HTTP/1.1\r\n\r\n",
            b"CONNECT user@a.test:443 HTTP/1.1\r\n\r\n",
            b"CONNECT a.test:0 HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01garbage\r\n\r\n",
        ] {
            assert!(
                Target::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
