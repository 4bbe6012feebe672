//! The real agent CLIs, governed unmodified: Claude Code (`claude-code` runtime) and Codex CLI
//! (`codex` runtime), installed from `agents/package-lock.json` by `scripts/setup.sh`, each run
//! in the `strict` sandbox through the real gateway. The model is the scripted one of
//! `tests/fakes/scripted_agent.py` (a fake of the providers, speaking their wire formats): it
//! asks the CLI to write, read and edit a file, run a command, call a permitted MCP tool, a
//! denied one and an escalated one that a human approves, then finish.

use crate::gateway::{PROVIDER_KEY, example_data, push_and_bind};
use crate::mcp::{
    McpStack, decide, everything_js, mcp_stack_with, parked_call, tool_access, tool_call_entries,
};
use serde_json::{Value, json};
use std::time::Duration;

/// Where `scripts/setup.sh` installs the agent CLIs; under CI they must be there.
fn agents_dir() -> Option<String> {
    let dir = std::env::var("COGWARD_AGENTS_DIR")
        .unwrap_or_else(|_| "/opt/cogward-tools/agents".to_string());
    let ok = std::path::Path::new(&dir)
        .join("node_modules/@anthropic-ai/claude-code/package.json")
        .exists();
    if ok {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide the agent CLIs in {dir} (scripts/setup.sh installs them)"
    );
    eprintln!("{dir} has no agent CLIs: run scripts/setup.sh");
    None
}

/// A stack whose gateway knows the scripted model on both wires (priced, allowed for acme),
/// with server-everything as MCP server `everything` and acme's tool scope (echo permitted
/// unless its message holds `rm -rf`, get-env hidden, get-sum escalated to release managers).
async fn agent_stack(everything: &str) -> McpStack {
    let m = mcp_stack_with(everything, false, |config| {
        // A server slow to start (3 s, a cold one on a loaded machine): the CLI's first MCP
        // call must still find its tools (Codex without `required` did not).
        config["mcp_servers"][0]["transport"]["stdio"]["command"] =
            json!(["sh", "-c", format!("sleep 3; exec node {everything} stdio")]);
        // A second server of the tenant, in its scope, that the task does not name.
        let other = json!({"name": "other",
                           "transport": {"stdio": {"command": ["node", everything, "stdio"]}}});
        config["mcp_servers"].as_array_mut().unwrap().push(other);
        let prices = config["prices"].as_array_mut().unwrap();
        for provider in ["anthropic", "openai"] {
            prices.push(json!({"provider": provider, "model": "scripted-agent*",
                               "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 5.0}));
        }
    })
    .await;
    let models = json!({"tenants": {"acme": {"tiers": {"standard": [
        {"provider": "anthropic", "models": ["scripted-agent*"]},
        {"provider": "openai", "models": ["scripted-agent*"]}
    ]}}}, "residency": {"anthropic": ["us"], "openai": ["us"]}});
    push_and_bind(
        &m.stack,
        "model-access",
        "models",
        "model.call",
        "acme",
        &models,
    );
    let mut tools = tool_access();
    tools["tenants"]["acme"]["default_scope"]
        .as_array_mut()
        .unwrap()
        .push(json!("other.echo"));
    tools["tenants"]["acme"]["arguments"] = json!([{"tools": ["everything.echo"],
        "pointer": "/message", "deny": ["*rm -rf*"], "reason": "destructive commands are not echoed"}]);
    push_and_bind(
        &m.stack,
        "tool-access",
        "agent-tools",
        "tool.call",
        "acme",
        &tools,
    );
    push_and_bind(
        &m.stack,
        "budget",
        "budget",
        "budget.spend",
        "acme",
        &example_data("budget"),
    );
    m
}

fn agent_spec(runtime: &str, model: &str) -> Value {
    let mut runtime = json!({
        "type": runtime,
        "prompt": "Do the scripted task.",
        "model": model,
        "mcp_servers": ["everything"],
    });
    if runtime["type"] == "claude-code" {
        runtime["allowed_tools"] = json!(["Bash", "Edit", "Write", "Read"]);
        runtime["max_turns"] = json!(30);
    }
    json!({
        "spec_version": 1, "agent": "e2e-agent", "tenant": "acme",
        "runtime": runtime,
        "sandbox_profile": "strict",
        "limits": {"wall_clock_seconds": 300, "cpu_seconds": 300, "memory_mb": 2048,
                   "max_processes": 256, "grace_seconds": 5},
    })
}

/// The run's events, from the API.
async fn events(m: &McpStack, run_id: &str) -> Vec<Value> {
    let (status, v) = m
        .stack
        .call(
            reqwest::Method::GET,
            &format!("/v1/runs/{run_id}/events"),
            Some(&m.stack.tokens.ci),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{v}");
    v["events"].as_array().unwrap().clone()
}

fn has_event(events: &[Value], pred: impl Fn(&Value) -> bool) -> bool {
    events.iter().any(pred)
}

/// Model calls of the scripted model the provider answered.
fn scripted_model_calls(m: &McpStack) -> usize {
    m.provider
        .requests()
        .iter()
        .filter(|r| {
            r["model"]
                .as_str()
                .is_some_and(|m| m.contains("scripted-agent"))
        })
        .count()
}

/// What the agent printed, and the stack's logs, for a failing test's message.
fn run_output(stack: &crate::stack::Stack, run_id: &str) -> String {
    let dir = stack.run_dir(run_id);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    format!(
        "--- stdout\n{}\n--- stderr\n{}\n--- runner.log\n{}\n{}",
        read("stdout.log"),
        read("stderr.log"),
        read("runner.log"),
        stack.logs()
    )
}

/// As run `id`'s agent: its tools are all `everything`'s, and a call of `other`'s is unknown.
async fn only_the_named_servers(stack: &crate::stack::Stack, id: &str) {
    let token = crate::gateway::credential(stack, id);
    let url = stack.gw_url("/mcp");
    let http = reqwest::Client::new();
    let post = |session: Option<String>, body: Value| {
        let mut req = http.post(&url).bearer_auth(&token).json(&body);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        req.send()
    };
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                      "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                 "clientInfo": {"name": "e2e", "version": "1"}}});
    let resp = post(None, init).await.unwrap();
    let session = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let listed: Value = post(
        Some(session.clone()),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(!names.is_empty(), "{listed}");
    assert!(
        names.iter().all(|n| n.starts_with("everything_")),
        "{names:?}"
    );
    let called: Value = post(
        Some(session),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
               "params": {"name": "other_echo", "arguments": {"message": "x"}}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(called["error"]["code"], -32602, "{called}");
}

/// Drive one CLI through the scripted task and check everything a reviewer relies on.
async fn governed_task(runtime: &str) {
    let (Some(everything), Some(_)) = (everything_js(), agents_dir()) else {
        return;
    };
    let m = agent_stack(&everything).await;
    let stack = &m.stack;
    let model = format!("scripted-agent-{runtime}");
    let (status, v) = stack.submit(&agent_spec(runtime, &model)).await.unwrap();
    assert_eq!(status, 201, "{v}");
    let id = v["run_id"].as_str().unwrap().to_string();
    let spec_sha256 = v["spec_sha256"].clone();

    // Followed live from the start: `cogward run events --follow` (as a pipeline would).
    let follower = stack
        .command()
        .env("COGWARD_TOKEN", &stack.tokens.ci)
        .args(["run", "events", &id, "--follow", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let followed = std::thread::spawn(move || follower.wait_with_output().unwrap());

    // The escalated tool call parks; a release manager approves it.
    let call = tokio::select! {
        call = parked_call(stack, &id, 0) => call,
        run = stack.wait_status(&id, &["succeeded", "failed", "denied"], Duration::from_secs(240)) => {
            panic!("the run ended before its tool call parked: {:?}\n{}", run, run_output(stack, &id))
        }
    };
    // While it waits, the events so far are already out: the file change and the command.
    let live = events(&m, &id).await;
    assert!(
        has_event(&live, |e| e["type"] == "file_change")
            && has_event(&live, |e| e["type"] == "command")
            && !has_event(&live, |e| e["type"] == "finished"),
        "{live:?}"
    );
    // The run reaches only the MCP servers its task names, whatever the tenant's scope: as
    // this run's agent, `other` is neither listed nor callable.
    only_the_named_servers(stack, &id).await;
    let (status, v) = decide(stack, &stack.tokens.approver, &id, "approve", &call).await;
    assert_eq!(status, 202, "{v}");
    let run = stack
        .wait_status(&id, &["succeeded", "failed"], Duration::from_secs(240))
        .await
        .unwrap();
    let dir = stack.run_dir(&id);
    let stdout = std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default();
    let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    assert_eq!(
        run["status"],
        "succeeded",
        "{run}\n{}",
        run_output(stack, &id)
    );

    // The work the CLI did, in its work directory.
    let work = dir.join("work");
    assert_eq!(
        std::fs::read_to_string(work.join("hello.txt")).unwrap(),
        "hello from the governed agent\n"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("ran.txt")).unwrap(),
        "ran\n"
    );

    // Its events: the file changes, the command, the three MCP calls and their outcomes.
    let ev = events(&m, &id).await;
    let dump = serde_json::to_string_pretty(&ev).unwrap();
    assert!(
        has_event(&ev, |e| e["type"] == "file_change"
            && e["path"] == "hello.txt"),
        "{dump}"
    );
    assert!(
        has_event(&ev, |e| e["type"] == "command"
            && e["command"]
                .as_str()
                .unwrap()
                .contains("echo ran > ran.txt")),
        "{dump}"
    );
    let result = |tool: &str| {
        ev.iter()
            .find(|e| {
                e["type"] == "tool_result"
                    && e["tool"]
                        .as_str()
                        .unwrap()
                        .replace('-', "_")
                        .ends_with(tool)
            })
            .cloned()
            .unwrap_or_else(|| panic!("no result of {tool}: {dump}"))
    };
    let echoes: Vec<&Value> = ev
        .iter()
        .filter(|e| {
            e["type"] == "tool_result" && e["tool"].as_str().unwrap().ends_with("everything_echo")
        })
        .collect();
    assert_eq!(echoes.len(), 2, "{dump}");
    assert_eq!(echoes[0]["is_error"], false, "{dump}");
    // Refused by the policy on its argument: the CLI got the refusal as the tool's error and
    // carried on.
    assert_eq!(echoes[1]["is_error"], true, "{dump}");
    assert!(
        echoes[1]["output"]
            .as_str()
            .unwrap()
            .contains("destructive commands are not echoed"),
        "{dump}"
    );
    let sum = result("everything_get_sum");
    assert_eq!(sum["is_error"], false, "{dump}");
    assert!(sum["output"].as_str().unwrap().contains("42"), "{dump}");
    assert!(
        has_event(&ev, |e| e["type"] == "message"
            && e["text"]
                .as_str()
                .unwrap()
                .contains("All scripted steps done")),
        "{dump}"
    );
    assert!(has_event(&ev, |e| e["type"] == "model_turn"), "{dump}");

    // Every model call the provider saw is in the ledger, decided and charged; every tool call
    // with its decision.
    let provider_calls = scripted_model_calls(&m);
    assert!(provider_calls >= 8, "{provider_calls} model calls");
    // An outcome the ledger could not take at once is spooled and lands within seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let model_calls = loop {
        let calls: Vec<Value> = sqlx::query_scalar::<_, String>(
            "SELECT body FROM ledger_entries WHERE workflow_id = $1 AND event_type = 'gateway.model_call' ORDER BY seq",
        )
        .bind(&id)
        .fetch_all(&m.db.pool)
        .await
        .unwrap()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
        if calls.len() >= provider_calls || std::time::Instant::now() > deadline {
            break calls;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(
        model_calls.len(),
        provider_calls,
        "the provider saw {provider_calls} calls: {model_calls:?}"
    );
    for c in &model_calls {
        assert_eq!(c["decision"], "permit", "{c}");
        assert_eq!(c["outcome"], "ok", "{c}");
        assert!(c["tokens"]["input"].as_u64().unwrap() > 0, "{c}");
        assert!(c["tokens"]["output"].as_u64().unwrap() > 0, "{c}");
    }
    let tools = tool_call_entries(&m.db, &id).await;
    let outcome = |target: &str| {
        tools
            .iter()
            .filter(|t| t["target"] == target)
            .map(|t| t["outcome"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(outcome("everything.echo"), ["ok", "denied"], "{tools:?}");
    assert_eq!(outcome("everything.get-sum"), ["approved"], "{tools:?}");

    // The follower saw the same events as they happened, and ended with the run.
    let followed = followed.join().unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&followed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        followed.status.success(),
        "{}",
        String::from_utf8_lossy(&followed.stderr)
    );
    assert_eq!(lines, ev, "followed and listed events differ");

    // The evidence a reviewer reads: manifest, diff, transcript, the artifacts by digest; the
    // index's digest is in the ledger with the run's evidence.
    let (status, listed) = stack
        .call(
            reqwest::Method::GET,
            &format!("/v1/runs/{id}/evidence"),
            Some(&stack.tokens.ci),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{listed}");
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    for name in [
        "manifest",
        "diff",
        "transcript",
        "stdout",
        "work/hello.txt",
        "work/ran.txt",
    ] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    let (code, diff, err) = stack.cli(&stack.tokens.ci, &["run", "diff", &id]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        diff.contains("+++ b/hello.txt") && diff.contains("+hello from the governed agent"),
        "{diff}"
    );
    assert!(diff.contains("+++ b/ran.txt"), "{diff}");
    let (code, manifest, err) = stack
        .cli(&stack.tokens.ci, &["run", "evidence", &id, "manifest"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let manifest: Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(manifest["runtime"], runtime, "{manifest}");
    assert_eq!(manifest["model"], model.as_str(), "{manifest}");
    assert_eq!(manifest["sandbox_profile"], "strict", "{manifest}");
    assert!(
        manifest["cli"].as_str().unwrap().starts_with(runtime),
        "{manifest}"
    );
    assert_eq!(manifest["spec_sha256"], spec_sha256, "{manifest}");
    assert!(
        manifest["admission_policy"]["module_sha256"].is_string(),
        "{manifest}"
    );
    let index = listed["index_sha256"].as_str().unwrap();
    let recorded: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM ledger_entries WHERE workflow_id = $1 AND event_type = 'run.evidence' AND body LIKE $2",
    )
    .bind(&id)
    .bind(format!("%{index}%"))
    .fetch_one(&m.db.pool)
    .await
    .unwrap();
    assert_eq!(
        recorded, 1,
        "the evidence index digest is not in the ledger"
    );

    // The provider's key never reached the agent.
    assert!(!stdout.contains(PROVIDER_KEY) && !stderr.contains(PROVIDER_KEY));
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn claude_code_completes_a_governed_task_in_the_strict_sandbox() {
    governed_task("claude-code").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_completes_a_governed_task_in_the_strict_sandbox() {
    governed_task("codex").await;
}

/// The CLI's binaries as the `command` runtime may start them (the e2e stack binds the tools
/// directory read-only into every sandbox).
fn cli_binary(agents: &str, runtime: &str) -> String {
    match runtime {
        "claude-code" => {
            format!("{agents}/node_modules/@anthropic-ai/claude-code-linux-x64/claude")
        }
        _ => format!(
            "{agents}/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
        ),
    }
}

/// The same CLIs with every vendor opt-out removed (no `DISABLE_*` variables for Claude Code;
/// no `[analytics]`, `[feedback]`, `[features]` or update check for Codex), started as plain
/// commands: they try their vendors' hosts, and still reach nothing but the gateway. What they
/// tried through the proxy is refused and in the ledger; nothing was allowed out.
#[tokio::test(flavor = "multi_thread")]
async fn without_their_vendor_opt_outs_the_clis_still_reach_nothing_but_the_gateway() {
    let (Some(everything), Some(agents)) = (everything_js(), agents_dir()) else {
        return;
    };
    let m = agent_stack(&everything).await;
    let stack = &m.stack;
    let claude = format!(
        "cd /work && exec {} -p --output-format stream-json --verbose --no-session-persistence \
         --model scripted-agent-claude-code --permission-mode acceptEdits \
         --allowedTools Bash,Edit,Write,Read --strict-mcp-config -- 'Do the scripted task.'",
        cli_binary(&agents, "claude-code")
    );
    // Codex's configuration without its quiet settings, and a catalog entry for the model.
    let codex = format!(
        "mkdir -p $HOME/.codex && cd /work && \
         python3 -c 'import json; m = json.load(open(\"{agents}/codex-models.json\"))[\"models\"]; \
e = next(x for x in m if not x.get(\"use_responses_lite\")); \
e.update(slug=\"scripted-agent-codex\", display_name=\"s\", supports_search_tool=False); \
json.dump({{\"models\": [e]}}, open(\"/home/agent/.codex/models.json\", \"w\"))' && \
         printf 'model = \"scripted-agent-codex\"\\nmodel_provider = \"gw\"\\napproval_policy = \"never\"\\n\
model_catalog_json = \"/home/agent/.codex/models.json\"\\n[model_providers.gw]\\nname = \"gw\"\\n\
base_url = \"%s\"\\nenv_key = \"OPENAI_API_KEY\"\\nwire_api = \"responses\"\\n' \"$OPENAI_BASE_URL\" \
           > $HOME/.codex/config.toml && \
         exec {} exec --json --skip-git-repo-check --ephemeral --sandbox danger-full-access \
           -- 'Do the scripted task.' </dev/null",
        cli_binary(&agents, "codex")
    );
    let mut ids = Vec::new();
    for script in [claude, codex] {
        let mut s = crate::stack::spec("acme", &["sh", "-c", &script]);
        s["sandbox_profile"] = json!("strict");
        s["limits"] = json!({"wall_clock_seconds": 240, "cpu_seconds": 240, "memory_mb": 2048,
                             "max_processes": 256, "grace_seconds": 5});
        let (status, v) = stack.submit(&s).await.unwrap();
        assert_eq!(status, 201, "{v}");
        ids.push(v["run_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let run = stack
            .wait_status(id, &["succeeded", "failed"], Duration::from_secs(240))
            .await
            .unwrap();
        // Whatever the CLI made of the refusals, it worked through the gateway.
        assert_eq!(
            run["status"],
            "succeeded",
            "{run}\n{}",
            run_output(stack, id)
        );
        let work = stack.run_dir(id).join("work");
        assert_eq!(
            std::fs::read_to_string(work.join("ran.txt")).unwrap_or_default(),
            "ran\n",
            "{}",
            run_output(stack, id)
        );
        let stdout = std::fs::read_to_string(stack.run_dir(id).join("stdout.log")).unwrap();
        assert!(!stdout.contains(PROVIDER_KEY));
    }
    let bodies = |event: &'static str| {
        let pool = m.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT body FROM ledger_entries WHERE event_type = $1")
                .bind(event)
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|b| serde_json::from_str::<Value>(b).unwrap())
                .collect::<Vec<_>>()
        }
    };
    let allowed = bodies("egress.connection").await;
    assert!(allowed.is_empty(), "egress was allowed: {allowed:?}");
    let denied = bodies("security.egress_denied").await;
    let destinations: Vec<String> = denied
        .iter()
        .map(|d| d["destination"].to_string())
        .collect();
    eprintln!("refused vendor destinations: {destinations:?}");
    assert!(!denied.is_empty(), "no vendor traffic was even tried");
    for d in &denied {
        assert!(ids.iter().any(|id| d["run_id"] == id.as_str()), "{d}");
    }
    // Each CLI tried its own vendor: Claude Code Anthropic's API, Codex CLI OpenAI's hosts.
    for (id, vendor) in ids.iter().zip(["anthropic.com", "chatgpt.com"]) {
        assert!(
            denied.iter().any(|d| d["run_id"] == id.as_str()
                && d["destination"].as_str().unwrap_or("").contains(vendor)),
            "{vendor}: {destinations:?}"
        );
    }
    let model_calls = scripted_model_calls(&m);
    assert!(model_calls >= 8, "{model_calls}");
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
}
