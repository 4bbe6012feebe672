//! The egress proxy, end to end: a run reaches the destinations its egress profiles allow (a
//! loopback server mapped to a name by the proxy's configuration), by plain HTTP and CONNECT,
//! and nothing else — not another name or port, not an address, not a name that resolves to
//! loopback, not directly with the proxy bypassed, not through a relay of its own — with every
//! refusal a `security.egress_denied` ledger entry.

use crate::stack::{Stack, StackOptions, spec};
use serde_json::{Value, json};
use std::io::{Read, Write};

/// A tiny HTTP server on loopback: answers every request with `hello from <path>`.
fn http_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("?").to_string();
                let body = format!("hello from {path}");
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

const AGENT: &str = r#"
import json, os, socket, urllib.request
cfg = json.loads(os.environ['COGWARD_INPUTS'])
port, api = int(cfg['port']), int(cfg['api'])
def connect(target, via=7481):
    s = socket.create_connection(('127.0.0.1', via), timeout=10)
    s.sendall(f'CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n'.encode())
    return s, s.recv(4096).decode(errors='replace').split('\r\n')[0]
# Allowed: plain HTTP through the proxy the environment names, and a CONNECT tunnel.
print('HTTP', urllib.request.urlopen(f'http://pkg.test:{port}/plain', timeout=10).read().decode())
s, status = connect(f'pkg.test:{port}')
s.sendall(b'GET /tunnel HTTP/1.1\r\nHost: pkg.test\r\n\r\n')
answer = b''
while chunk := s.recv(4096):
    answer += chunk
print('TUNNEL', status, answer.decode().split('\r\n\r\n')[-1])
# Refused at the proxy.
for target in [f'evil.test:{port}', f'pkg.test:{port + 1}', f'127.0.0.1:{api}', f'localhost:{api}']:
    print('CONNECT', target, connect(target)[1])
# The proxy bypassed: no route, no DNS.
for how, fn in [('direct', lambda: socket.create_connection(('127.0.0.1', port), timeout=3)),
                ('dns', lambda: socket.getaddrinfo('pkg.test', port))]:
    try:
        fn(); print('BYPASS', how, 'WORKED')
    except OSError as e:
        print('BYPASS', how, 'failed')
# A relay of its own inside the sandbox: whatever it relays still ends at the proxy.
import threading
relay = socket.socket(); relay.bind(('127.0.0.1', 9999)); relay.listen(1)
def run_relay():
    c, _ = relay.accept()
    u = socket.create_connection(('127.0.0.1', 7481))
    u.sendall(c.recv(4096)); c.sendall(u.recv(4096)); c.close(); u.close()
threading.Thread(target=run_relay, daemon=True).start()
print('RELAYED', connect('evil.test:443', via=9999)[1])
"#;

async fn ledger_of(stack: &Stack, id: &str, event_type: &str) -> Vec<Value> {
    let ledger = stack.wait_mirrored(id).await.unwrap();
    crate::stack::app_bodies(&ledger, event_type)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_reaches_only_what_its_egress_profiles_allow() {
    let port = http_server();
    let stack = Stack::start(StackOptions::default()).unwrap();
    std::fs::write(
        stack.state_dir().join("egress.json"),
        json!({
            "profiles": {"test-pkgs": {"allow": [
                {"host": "pkg.test", "ports": [port]},
                // Allowed by name, but the name resolves to loopback: refused all the same.
                {"host": "localhost", "ports": [stack.api_port]}
            ]}},
            "hosts": {"pkg.test": ["127.0.0.1"]}
        })
        .to_string(),
    )
    .unwrap();
    // The egress configuration is read at start: restart the API with it.
    let mut stack = stack;
    stack.kill9_and_restart_serve().unwrap();

    let mut s = spec("egress", &["python3", "-c", AGENT]);
    s["inputs"] = json!({"port": port.to_string(), "api": stack.api_port.to_string()});
    s["egress"] = json!(["test-pkgs"]);
    let (id, run) = stack
        .submit_until(&s, &["succeeded", "failed"])
        .await
        .unwrap();
    let out = std::fs::read_to_string(stack.run_dir(&id).join("stdout.log")).unwrap();
    let err = std::fs::read_to_string(stack.run_dir(&id).join("stderr.log")).unwrap();
    assert_eq!(run["status"], "succeeded", "{out}\n{err}\n{}", stack.logs());
    assert!(out.contains("HTTP hello from /plain"), "{out}");
    assert!(
        out.contains("TUNNEL HTTP/1.1 200 Connection Established hello from /tunnel"),
        "{out}"
    );
    for target in [
        format!("evil.test:{port}"),
        format!("pkg.test:{}", port + 1),
        format!("127.0.0.1:{}", stack.api_port),
        format!("localhost:{}", stack.api_port),
    ] {
        assert!(
            out.contains(&format!("CONNECT {target} HTTP/1.1 403 Forbidden")),
            "{target}: {out}"
        );
    }
    assert!(
        out.contains("BYPASS direct failed") && out.contains("BYPASS dns failed"),
        "{out}"
    );
    assert!(out.contains("RELAYED HTTP/1.1 403 Forbidden"), "{out}");

    let denied = ledger_of(&stack, &id, "security.egress_denied").await;
    let destinations: Vec<&str> = denied
        .iter()
        .map(|d| d["destination"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(denied.len(), 5, "{denied:?}");
    assert!(destinations.contains(&"evil.test:443"), "{destinations:?}");
    let loopback = denied
        .iter()
        .find(|d| d["destination"] == format!("localhost:{}", stack.api_port))
        .unwrap();
    assert!(
        loopback["reason"].as_str().unwrap().contains("non-public"),
        "{loopback}"
    );
    assert!(denied.iter().all(|d| d["run_id"] == id.as_str()));
    let allowed = ledger_of(&stack, &id, "egress.connection").await;
    assert_eq!(allowed.len(), 2, "{allowed:?}");
    assert!(
        allowed
            .iter()
            .all(|a| a["profile"] == "test-pkgs" && a["outcome"] == "connected")
    );

    // A run without the profile reaches nothing, and says why.
    let mut bare = spec(
        "egress",
        &[
            "python3",
            "-c",
            &format!(
                "import urllib.request\n\
             try:\n    urllib.request.urlopen('http://pkg.test:{port}/x', timeout=10)\n\
             except Exception as e:\n    print('REFUSED', e)\n"
            ),
        ],
    );
    bare["inputs"] = json!({});
    let (bare_id, run) = stack
        .submit_until(&bare, &["succeeded", "failed"])
        .await
        .unwrap();
    assert_eq!(run["status"], "succeeded");
    let out = std::fs::read_to_string(stack.run_dir(&bare_id).join("stdout.log")).unwrap();
    assert!(out.contains("REFUSED HTTP Error 403"), "{out}");
    let denied = ledger_of(&stack, &bare_id, "security.egress_denied").await;
    assert_eq!(denied.len(), 1);
    assert!(
        denied[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no egress profile")
    );
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
}
