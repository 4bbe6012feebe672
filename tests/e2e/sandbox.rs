//! The sandbox against the engine it runs beside: a hostile agent in a real stack finds none of
//! the engine's files, databases or ports, and the engine keeps its files private whatever the
//! umask it was started with. The escape tests proper are the runner's (`runner/tests/escape.rs`).

use crate::stack::{Stack, StackOptions, spec};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every regular file directly in `dir` with a group or other permission bit.
fn loose_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter(|e| mode(&e.path()) & 0o077 != 0)
        .map(|e| format!("{} {:o}", e.path().display(), mode(&e.path())))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_agent_finds_nothing_of_the_engine_and_its_files_are_private() {
    let stack = Stack::start(StackOptions::default()).unwrap();
    let state = stack.state_dir();
    let temporal = stack.temporal_dir().to_path_buf();
    let mut script = String::new();
    for p in [
        state.clone(),
        state.join("cogward.db"),
        state.join("cogward.db-wal"),
        state.join("tokens.json"),
        state.join("runs"),
        temporal.join("temporal.db"),
    ] {
        script.push_str(&format!(
            "if [ -e '{0}' ]; then echo 'SEES {0}'; fi; ",
            p.display()
        ));
    }
    // The engine's own ports: the API (which the gateway port leads to, but only through the
    // runner's splice) and Temporal's frontend.
    for port in [stack.api_port, stack.temporal.port] {
        script.push_str(&format!(
            "if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo 'REACHED {port}'; fi; "
        ));
    }
    script.push_str("ls / | tr '\\n' ' '; echo; ls -a /work");
    let (id, run) = stack
        .submit_until(
            &spec("hostile", &["bash", "-c", &script]),
            &["succeeded", "failed"],
        )
        .await
        .unwrap();
    assert_eq!(run["status"], "succeeded", "{run}\n{}", stack.logs());
    let out = std::fs::read_to_string(stack.run_dir(&id).join("stdout.log")).unwrap();
    assert!(!out.contains("SEES "), "{out}");
    assert!(!out.contains("REACHED "), "{out}");
    assert!(
        out.contains(".mcp.json"),
        "the agent's own files are there: {out}"
    );

    // Started with umask 000, the engine still keeps everything to root.
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("runs")), 0o700);
    assert_eq!(mode(&stack.run_dir(&id)), 0o700);
    assert!(loose_files(&state).is_empty(), "{:?}", loose_files(&state));
    assert!(loose_files(&stack.run_dir(&id)).is_empty());
    assert_eq!(mode(&temporal), 0o700);
    let temporal_loose: Vec<String> = loose_files(&temporal)
        .into_iter()
        .filter(|f| f.contains("temporal."))
        .collect();
    assert!(temporal_loose.is_empty(), "{temporal_loose:?}");
    assert!(temporal.join("temporal.db").exists());
}

/// A client that sends half a request's headers and stops is disconnected after the header
/// timeout, and the API serves others meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_half_sent_request_is_closed_and_the_api_keeps_serving() {
    let stack = Stack::start(StackOptions::default()).unwrap();
    let mut held: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", stack.api_port)).unwrap();
            s.write_all(b"POST /v1/runs HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let (status, _) = stack
        .call(reqwest::Method::GET, "/healthz", None, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let t0 = Instant::now();
    let s = &mut held[0];
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_secs(20),
        "still open after {waited:?}"
    );
    assert!(
        waited >= cogward::http_server::HEADER_READ_TIMEOUT / 2,
        "closed after {waited:?}: not by the header timeout"
    );
    let (_, run) = stack
        .submit_until(&spec("after-flood", &["true"]), &["succeeded", "failed"])
        .await
        .unwrap();
    assert_eq!(run["status"], "succeeded");
}

/// The isolation profile is the spec's, decided by the run-admission policy and recorded in the
/// run's evidence; one the tenant may not use is denied, an unknown one refused at submission.
#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_profile_is_admitted_by_policy_and_recorded() {
    let stack = Stack::start(StackOptions::default()).unwrap();
    let mut strict = spec("profiles", &["sh", "-c", "echo strict"]);
    strict["sandbox_profile"] = serde_json::json!("strict");
    let (id, run) = stack
        .submit_until(&strict, &["succeeded", "failed"])
        .await
        .unwrap();
    assert_eq!(run["status"], "succeeded", "{run}\n{}", stack.logs());
    let admission = crate::policies::app_entry(&stack, &id, "policy.decision").await;
    assert_eq!(
        admission["request"]["resource"]["sandbox_profile"],
        "strict"
    );
    let evidence = crate::policies::app_entry(&stack, &id, "run.evidence").await;
    let text = evidence.to_string();
    assert!(text.contains(r#""profile":"strict""#), "{text}");
    assert!(text.contains(r#""landlock_abi":"#), "{text}");

    // The default admission data allows standard and strict only.
    let mut microvm = spec("profiles", &["true"]);
    microvm["sandbox_profile"] = serde_json::json!("microvm");
    let (id, run) = stack.submit_until(&microvm, &["denied"]).await.unwrap();
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.contains("sandbox profile microvm is not allowed"),
        "{reason}"
    );
    assert!(
        !stack.run_dir(&id).exists(),
        "a denied run started a runner"
    );

    let mut unknown = spec("profiles", &["true"]);
    unknown["sandbox_profile"] = serde_json::json!("host");
    let (status, problem) = stack.submit(&unknown).await.unwrap();
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("unknown variant `host`")
    );
}

/// Every regular file under `dir`, not following symlinks.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                pending.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// Scoped secrets end to end: resolved for the run's tenant from the secrets file and the
/// engine's environment, delivered as files only the agent can read, recorded by name and
/// digest — and, after the run, in no database, history, ledger, log or run file. Another
/// tenant naming the same secret does not get it.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_the_agent_as_files_and_appear_nowhere_else() {
    use sha2::Digest;
    let file_value = format!("FILE-SECRET-{}", std::process::id());
    let env_value = format!("ENV-SECRET-{}", std::process::id());
    let stack = Stack::start(StackOptions {
        env: vec![("COGWARD_SECRET__SEC__NPM_TOKEN".into(), env_value.clone())],
        ..Default::default()
    })
    .unwrap();
    let secrets_file = stack.state_dir().join("secrets.json");
    std::fs::write(
        &secrets_file,
        serde_json::json!({"tenants": {"sec": {"api_token": file_value}}}).to_string(),
    )
    .unwrap();
    let script = "sha256sum /secrets/api_token /secrets/npm-token | cut -d' ' -f1; \
                  stat -c '%a' /secrets/api_token; env | grep -c SECRET- || true";
    let mut s = spec("sec", &["sh", "-c", script]);
    s["secrets"] = serde_json::json!(["api_token", "npm-token"]);
    let (id, run) = stack
        .submit_until(&s, &["succeeded", "failed"])
        .await
        .unwrap();
    assert_eq!(run["status"], "succeeded", "{run}\n{}", stack.logs());
    let digest = |v: &str| hex::encode(sha2::Sha256::digest(v.as_bytes()));
    let out = std::fs::read_to_string(stack.run_dir(&id).join("stdout.log")).unwrap();
    assert_eq!(
        out,
        format!("{}\n{}\n400\n0\n", digest(&file_value), digest(&env_value)),
        "{out}"
    );
    let evidence = crate::policies::app_entry(&stack, &id, "run.evidence").await;
    let text = evidence.to_string();
    assert!(
        text.contains(&digest(&file_value)) && text.contains("npm-token"),
        "{text}"
    );
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");

    // The same reference from another tenant: not configured there, so no runner starts.
    let mut other = spec("other", &["true"]);
    other["secrets"] = serde_json::json!(["api_token"]);
    let (other_id, run) = stack.submit_until(&other, &["failed"]).await.unwrap();
    let reason = run["reason"].as_str().unwrap();
    assert!(
        reason.contains("not configured for tenant \"other\""),
        "{reason}"
    );
    assert!(!stack.run_dir(&other_id).join("started").exists());

    // Nowhere else: every file of the stack (databases with their WAL, Temporal's history,
    // the ledger, logs, run directories) but the secrets file itself.
    let mut searched = 0;
    for f in walk(stack.temporal_dir()) {
        if f == secrets_file {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap_or_default();
        for value in [&file_value, &env_value] {
            assert!(
                !bytes.windows(value.len()).any(|w| w == value.as_bytes()),
                "a secret is in {}",
                f.display()
            );
        }
        searched += 1;
    }
    assert!(searched > 5, "searched only {searched} files");
}

/// Bombs end their own runs with the outcome that names them, and the stack goes on serving:
/// a fork bomb (process limits), a memory bomb (the control group's OOM kill, recorded), a disk
/// filler (the file-size limit); then an ordinary run succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn bombs_end_their_own_runs_and_the_stack_keeps_serving() {
    let stack = Stack::start(StackOptions {
        env: vec![("COGWARD_SANDBOX_MAX_FILE_MB".into(), "16".into())],
        ..Default::default()
    })
    .unwrap();
    let mut fork_bomb = spec(
        "bombs",
        &["bash", "-c", "b() { b | b & }; b; sleep 2; exit 3"],
    );
    // Room to spare on the wall clock: on a loaded 2-core machine the storm of refused forks
    // can hold the shell's `sleep 2` up for seconds (seen: over 10 s).
    fork_bomb["limits"] = serde_json::json!({"max_processes": 32, "wall_clock_seconds": 40});
    let mut memory_bomb = spec(
        "bombs",
        &["python3", "-c", "x = bytearray(400 * 1024 * 1024)"],
    );
    memory_bomb["limits"] = serde_json::json!({"memory_mb": 128});
    let filler = spec(
        "bombs",
        &["sh", "-c", "dd if=/dev/zero of=big bs=1M count=64"],
    );
    let mut reasons = Vec::new();
    let mut ids = Vec::new();
    for s in [&fork_bomb, &memory_bomb, &filler] {
        let (id, run) = stack
            .submit_until(s, &["succeeded", "failed"])
            .await
            .unwrap();
        reasons.push(run["reason"].as_str().unwrap_or_default().to_string());
        ids.push(id);
    }
    // The fork bomb hit its process limit and the agent went on to its own exit code.
    assert_eq!(reasons[0], "agent exited with code 3", "{reasons:?}");
    assert!(reasons[1].contains("ran out of memory"), "{reasons:?}");
    // dd was killed by SIGXFSZ (25): its shell exits 128 + 25.
    assert_eq!(reasons[2], "agent exited with code 153", "{reasons:?}");
    let big = std::fs::metadata(stack.run_dir(&ids[2]).join("work/big")).unwrap();
    assert!(big.len() <= 16 << 20, "{} bytes written", big.len());
    let (_, run) = stack
        .submit_until(&spec("bombs", &["true"]), &["succeeded", "failed"])
        .await
        .unwrap();
    assert_eq!(run["status"], "succeeded", "{run}");
    let (code, report) = stack.verify().unwrap();
    assert_eq!(code, 0, "{report}");
}

const API_PROBE: &str = r#"
import json, os, socket, urllib.request, urllib.error
api = int(json.loads(os.environ['COGWARD_INPUTS'])['api'])
gw, tok = os.environ['COGWARD_GATEWAY_URL'], os.environ['COGWARD_RUN_TOKEN']
run = tok.split('.')[2]
for method, path in [('GET', '/v1/runs'), ('GET', f'/v1/runs/{run}'), ('POST', '/v1/runs'),
                     ('POST', f'/v1/runs/{run}/approve'), ('POST', f'/v1/runs/{run}/cancel'),
                     ('GET', '/v1/policies'), ('GET', '/healthz'), ('GET', '/gw/anthropic/v1/runs')]:
    req = urllib.request.Request(gw + path, method=method, data=b'{}' if method == 'POST' else None,
                                 headers={'authorization': 'Bearer ' + tok, 'x-api-key': tok,
                                          'content-type': 'application/json'})
    try:
        r = urllib.request.urlopen(req, timeout=10)
        print('GW', method, path, r.status, r.read().decode()[:100])
    except urllib.error.HTTPError as e:
        print('GW', method, path, e.code, e.read().decode()[:300].replace('\n', ' '))
try:
    socket.create_connection(('127.0.0.1', api), timeout=3)
    print('DIRECT WORKED')
except OSError:
    print('DIRECT failed')
"#;

/// The sandbox's way out is the gateway's own listener: every operator API path is unknown
/// there (in the provider's error format), and the API's port is not reachable at all.
#[tokio::test(flavor = "multi_thread")]
async fn the_operator_api_is_unreachable_from_a_sandbox() {
    let stack = Stack::start(StackOptions::default()).unwrap();
    let mut s = spec("acme", &["python3", "-c", API_PROBE]);
    s["inputs"] = serde_json::json!({"api": stack.api_port.to_string()});
    let (id, run) = stack
        .submit_until(&s, &["succeeded", "failed"])
        .await
        .unwrap();
    let out = std::fs::read_to_string(stack.run_dir(&id).join("stdout.log")).unwrap();
    let err = std::fs::read_to_string(stack.run_dir(&id).join("stderr.log")).unwrap();
    assert_eq!(run["status"], "succeeded", "{out}\n{err}");
    let probes: Vec<&str> = out.lines().filter(|l| l.starts_with("GW ")).collect();
    assert_eq!(probes.len(), 8, "{out}");
    for line in &probes {
        assert!(line.contains(" 404 "), "reachable from the sandbox: {line}");
        assert!(line.contains("cogward: the gateway serves no"), "{line}");
    }
    assert!(out.contains("DIRECT failed"), "{out}");
    // Nothing happened to the run by the requests it made.
    assert_eq!(run["status"], "succeeded");
}

/// A run that leaves 30,000 files ends with its verdict: the manifest is in the run directory,
/// named by digest in the evidence, and workflow history stays small.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_leaving_30000_files_ends_and_its_history_stays_small() {
    use sha2::Digest;
    let stack = Stack::start(StackOptions::default()).unwrap();
    let script = "import os\nos.makedirs('out', exist_ok=True)\n\
                  for i in range(30000):\n    open(f'out/f{i:05}.txt', 'w').write(str(i))\n";
    let (id, run) = stack
        .submit_until(
            &spec("acme", &["python3", "-c", script]),
            &["succeeded", "failed"],
        )
        .await
        .unwrap();
    assert_eq!(run["status"], "succeeded", "{run}");
    let summary = &run["summary"]["evidence"]["artifacts"];
    // Its 30,000, and what the runner put in work/ for it (.mcp.json).
    assert_eq!(summary["files"], summary["listed"], "{summary}");
    assert_eq!(summary["truncated"], false);
    let bytes = std::fs::read(stack.run_dir(&id).join("manifest.json")).unwrap();
    assert_eq!(summary["sha256"], hex::encode(sha2::Sha256::digest(&bytes)));
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let listed = manifest["artifacts"].as_array().unwrap();
    assert_eq!(listed.len() as u64, summary["files"].as_u64().unwrap());
    let outs = listed
        .iter()
        .filter(|a| a["path"].as_str().unwrap().starts_with("out/"))
        .count();
    assert_eq!(outs, 30000);

    let ledger = stack.wait_mirrored(&id).await.unwrap();
    let sizes: Vec<usize> = ledger["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "history")
        .map(|e| e["body"].as_str().unwrap().len())
        .collect();
    let total: usize = sizes.iter().sum();
    let largest = sizes.iter().max().copied().unwrap_or(0);
    eprintln!(
        "history: {} events, {total} bytes, largest {largest}",
        sizes.len()
    );
    assert!(largest < 16 * 1024, "a history event of {largest} bytes");
    assert!(total < 128 * 1024, "history of {total} bytes");
}

/// `git` with no configuration of the machine's, in `dir`.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=e2e", "-c", "user.email=e2e@example.com"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A run whose workspace is a repository's tag starts in a checkout of that commit (its
/// `.git` the agent's to use), and its diff is against that commit, as `git diff` spells it:
/// `git apply` takes it on a clone of the commit. The agent rigs its `.git` (fsmonitor, an
/// external diff, a hook) and links a host file: the engine runs no git in the agent's
/// checkout, so none of it runs, and nothing outside `work/` is read. A repository the engine
/// does not have, or a ref that is no commit of it, ends the run with the reason; a ref
/// spelled as an option is refused at submission (422 `invalid_spec`).
#[tokio::test(flavor = "multi_thread")]
async fn a_git_workspace_is_checked_out_and_its_diff_applies_to_its_commit() {
    let stack = Stack::start(StackOptions::default()).unwrap();
    let repo = stack.state_dir().join("repositories/app");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README.md"), "v1 readme\n").unwrap();
    std::fs::write(repo.join("src/old.txt"), "to be removed\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "v1"]);
    git(&repo, &["tag", "v1"]);
    let v1 = git(&repo, &["rev-parse", "v1"]);
    std::fs::write(repo.join("README.md"), "v2 readme\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "v2"]);

    let mark = format!("/tmp/cogward-pwned-{}", uuid::Uuid::new_v4().simple());
    let script = format!(
        "set -e\n\
         test \"$(cat README.md)\" = 'v1 readme'\n\
         test -d .git\n\
         echo \"an agent's line\" >> README.md\n\
         rm src/old.txt\n\
         printf 'new\\n' > added.txt\n\
         printf '[core]\\n\\tfsmonitor = touch {mark}\\n[diff]\\n\\texternal = touch {mark}\\n' >> .git/config\n\
         mkdir -p .git/hooks\n\
         printf '#!/bin/sh\\ntouch {mark}\\n' > .git/hooks/post-checkout\n\
         chmod +x .git/hooks/post-checkout\n\
         ln -s /etc/passwd passwd-link\n"
    );
    let mut run_spec = spec("acme", &["sh", "-c", &script]);
    run_spec["workspace"] = json!({"git": {"repository": "app", "ref": "v1"}});
    let (id, run) = stack
        .submit_until(&run_spec, &["succeeded", "failed"])
        .await
        .unwrap();
    assert_eq!(run["status"], "succeeded", "{run}\n{}", stack.logs());
    let (code, diff, err) = stack.cli(&stack.tokens.ci, &["run", "diff", &id]).unwrap();
    assert_eq!(code, 0, "{err}");
    for expected in [
        "diff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\n",
        "+an agent's line\n",
        "diff --git a/src/old.txt b/src/old.txt\ndeleted file mode 100644\n--- a/src/old.txt\n+++ /dev/null\n",
        "diff --git a/added.txt b/added.txt\nnew file mode 100644\n--- /dev/null\n+++ b/added.txt\n",
    ] {
        assert!(diff.contains(expected), "{expected:?} not in:\n{diff}");
    }
    assert!(!diff.contains(".git/"), "{diff}");
    assert!(!diff.contains("root:"), "{diff}");
    assert!(
        !Path::new(&mark).exists(),
        "the agent's git configuration ran on the host"
    );

    // The diff is the commit's: git applies it to a clone of v1.
    let check = tempfile::tempdir().unwrap();
    let clone = check.path().join("app");
    git(
        check.path(),
        &[
            "clone",
            "-q",
            repo.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    git(&clone, &["checkout", "-q", "--detach", "v1"]);
    std::fs::write(check.path().join("run.diff"), &diff).unwrap();
    git(
        &clone,
        &["apply", check.path().join("run.diff").to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read_to_string(clone.join("README.md")).unwrap(),
        "v1 readme\nan agent's line\n"
    );
    assert!(!clone.join("src/old.txt").exists());
    let (code, manifest, err) = stack
        .cli(&stack.tokens.ci, &["run", "evidence", &id, "manifest"])
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let manifest: Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(
        manifest["workspace"],
        json!({"repository": "app", "ref": "v1", "commit": v1}),
        "{manifest}"
    );

    for (workspace, reason) in [
        (
            json!({"git": {"repository": "nope"}}),
            "\"nope\" is not one of this engine's",
        ),
        (
            json!({"git": {"repository": "app", "ref": "gone"}}),
            "\"gone\" is not a commit of repository app",
        ),
    ] {
        let mut s = spec("acme", &["true"]);
        s["workspace"] = workspace;
        let (_, run) = stack
            .submit_until(&s, &["succeeded", "failed"])
            .await
            .unwrap();
        assert_eq!(run["status"], "failed", "{run}");
        assert!(run["reason"].as_str().unwrap().contains(reason), "{run}");
    }
    let mut s = spec("acme", &["true"]);
    s["workspace"] = json!({"git": {"repository": "app", "ref": "--upload-pack=touch /tmp/x"}});
    let (status, body) = stack
        .call(
            reqwest::Method::POST,
            "/v1/runs",
            Some(&stack.tokens.ci),
            Some(serde_json::to_vec(&s).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("workspace.git.ref"), "{body}");
}
