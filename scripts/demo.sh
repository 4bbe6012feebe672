#!/usr/bin/env bash
# The whole stack locally, and example agent runs through it: a Temporal dev server, the cogward
# API + history mirror + worker; an admission policy (WebAssembly, in wasmtime) tested, pushed and
# bound for tenant acme; a run the policy denies, with its decision replayed; a sandboxed run that
# waits at its approval gate, an approval by a second principal, the agent's model call through
# the gateway (decided by the model-access and budget policies); Claude Code itself governed in the
# strict sandbox (its events followed live, an escalated tool call approved, its diff and evidence);
# approvals as workflows, posted to (stand-in) Slack and Jira and answered from there by signed callbacks;
# and the runs' verified, hash-chained ledger printed at the end.
# No model provider is reachable here, so the gateway is configured with tests/fakes/fake_provider.py,
# a stand-in speaking Anthropic's and OpenAI's wire formats; with real keys, use
# examples/gateway.json as <state>/gateway.json instead.
#   scripts/demo.sh          run the example, then stop the stack
#   scripts/demo.sh --keep   leave the stack running (stop it with: kill $(cat .cogward/dev.pid))
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

log "building cogward"
cargo build --workspace --bins --locked
export PATH="$PWD/target/debug:$PATH"
export COGWARD_STATE_DIR="$PWD/.cogward"
export COGWARD_TEMPORAL_ADDRESS="${COGWARD_TEMPORAL_ADDRESS:-http://127.0.0.1:7233}"
export COGWARD_LISTEN="${COGWARD_LISTEN:-127.0.0.1:8080}"
export COGWARD_GATEWAY_LISTEN="${COGWARD_GATEWAY_LISTEN:-127.0.0.1:8082}"
export COGWARD_API="http://$COGWARD_LISTEN"
mkdir -p "$COGWARD_STATE_DIR"

for pair in "COGWARD_LISTEN=$COGWARD_LISTEN" "COGWARD_GATEWAY_LISTEN=$COGWARD_GATEWAY_LISTEN"; do
    addr=${pair#*=}
    if (exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}") 2>/dev/null; then
        echo "something already listens on $addr (a running cogward dev?); stop it or set ${pair%%=*}" >&2
        exit 1
    fi
done
log "starting a stand-in model provider (tests/fakes/fake_provider.py) for the gateway"
export DEMO_PROVIDER_KEY="demo-provider-key-$$"
python3 tests/fakes/fake_provider.py --port 0 --api-key "$DEMO_PROVIDER_KEY" \
    --log "$COGWARD_STATE_DIR/provider.log" >"$COGWARD_STATE_DIR/provider.out" 2>&1 &
echo $! >"$COGWARD_STATE_DIR/provider.pid"
for _ in $(seq 1 50); do grep -q listening "$COGWARD_STATE_DIR/provider.out" && break; sleep 0.1; done
provider_url=$(sed -n 's/^listening on //p' "$COGWARD_STATE_DIR/provider.out")
python3 - "$provider_url" "$COGWARD_EVERYTHING_JS" >"$COGWARD_STATE_DIR/gateway.json" <<'PY'
import json, sys
config = json.load(open("examples/gateway.json"))
for p in config["providers"].values():
    p["base_url"], p["api_key_env"] = sys.argv[1], "DEMO_PROVIDER_KEY"
config["mcp_servers"] = [{"name": "everything", "tenants": ["acme"],
    "transport": {"stdio": {"command": ["node", sys.argv[2], "stdio"]}}}]
print(json.dumps(config, indent=2))
PY
log "starting stand-ins for Slack and Jira (tests/fakes/fake_chat.py): approvals are posted there and answered from there"
export DEMO_SLACK_SECRET="demo-slack-signing-secret-$$" DEMO_SLACK_BOT_TOKEN="xoxb-demo-$$"
export DEMO_JIRA_SECRET="demo-jira-webhook-secret-$$" DEMO_JIRA_API_TOKEN="demo-jira-token-$$"
chat_log="$COGWARD_STATE_DIR/chat.jsonl"
: >"$chat_log"
python3 tests/fakes/fake_chat.py serve --port 0 --log "$chat_log" --slack-token "$DEMO_SLACK_BOT_TOKEN" \
    --jira-user demo@example.com --jira-token "$DEMO_JIRA_API_TOKEN" >"$COGWARD_STATE_DIR/chat.out" 2>&1 &
echo $! >"$COGWARD_STATE_DIR/chat.pid"
for _ in $(seq 1 50); do grep -q listening "$COGWARD_STATE_DIR/chat.out" && break; sleep 0.1; done
chat_url=$(sed -n 's/^listening on //p' "$COGWARD_STATE_DIR/chat.out")
cat >"$COGWARD_STATE_DIR/channels.json" <<JSON
{"slack": {"signing_secret_env": "DEMO_SLACK_SECRET", "api_url": "$chat_url/api",
           "bot_token_env": "DEMO_SLACK_BOT_TOKEN", "channel": "C0APPROVALS",
           "users": {"U0APPROVER": "approver"}},
 "jira": {"webhook_secret_env": "DEMO_JIRA_SECRET", "base_url": "$chat_url",
          "user_email": "demo@example.com", "api_token_env": "DEMO_JIRA_API_TOKEN",
          "project_key": "OPS", "issue_type": "Task",
          "users": {"5b10ac8d82e05b22cc7d4ef5": "approver"},
          "approve_status": "Approved", "reject_status": "Rejected"}}
JSON
log "starting the stack: cogward dev (log: .cogward/dev.log)"
cogward dev >"$COGWARD_STATE_DIR/dev.log" 2>&1 &
echo $! >"$COGWARD_STATE_DIR/dev.pid"
stop_all() {
    kill "$(cat "$COGWARD_STATE_DIR/dev.pid")" "$(cat "$COGWARD_STATE_DIR/provider.pid")" \
        "$(cat "$COGWARD_STATE_DIR/chat.pid")" 2>/dev/null
    wait 2>/dev/null || true
}
if [ "${1:-}" != "--keep" ]; then
    trap stop_all EXIT
fi
for _ in $(seq 1 100); do
    curl -fsS "$COGWARD_API/healthz" >/dev/null 2>&1 && break
    sleep 0.3
done
curl -fsS "$COGWARD_API/healthz" >/dev/null || { tail -30 "$COGWARD_STATE_DIR/dev.log"; exit 1; }

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
submit() { cogward run submit "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["run_id"])'; }
# wait_status RUN_ID STATUS...: poll (up to 40 s) until the run is in one of the statuses; sets $status.
wait_status() {
    local id=$1; shift
    for _ in $(seq 1 200); do
        status=$(cogward run status "$id" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
        for want in "$@"; do [ "$status" = "$want" ] && return 0; done
        sleep 0.2
    done
}
# pending_tool_call RUN_ID TRIES: the first tool call of the run waiting for a decision (polled
# every 0.2 s, TRIES times); sets $call_id.
pending_tool_call() {
    call_id=
    for _ in $(seq 1 "$2"); do
        call_id=$(cogward run tool-calls "$1" --json | python3 -c '
import json, sys
pending = [c["call_id"] for c in json.load(sys.stdin)["tool_calls"] if c["decision"] is None]
print(pending[0] if pending else "")')
        [ -n "$call_id" ] && return 0
        sleep 0.2
    done
}
# posted KIND PREFIX: what the approvers were sent to Slack (a button's value) or Jira (an
# issue's label), polled up to 20 s; sets $posted.
posted() {
    for _ in $(seq 1 100); do
        posted=$(python3 tests/fakes/fake_chat.py posted --log "$chat_log" --kind "$1" --prefix "$2") && return 0
        sleep 0.2
    done
    echo "nothing was posted for $2" >&2; return 1
}
# wait_mirrored RUN_ID: until the run's closing event is in the ledger.
wait_mirrored() {
    for _ in $(seq 1 100); do
        cogward run history "$1" --json | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["complete"] else 1)' && return 0
        sleep 0.2
    done
}

step "a policy author tests acme's admission policy locally (built-in run-admission module + acme's data)"
cogward policy test builtin:run-admission examples/policies/acme-admission.tests.jsonl \
    --data examples/policies/acme-admission.json

step "an operator pushes it (validated, content-addressed, versioned) and binds it for tenant acme"
pushed=$(cogward policy push builtin:run-admission --name acme-admission \
    --data examples/policies/acme-admission.json --tests examples/policies/acme-admission.tests.jsonl)
echo "$pushed"
version=$(echo "$pushed" | grep -o 'version [0-9]*' | head -1 | cut -d' ' -f2)
cogward policy bind --tenant acme --kind run.admission --name acme-admission --version "$version"
cogward policy list

step "the gateway's policies for acme: which models (model-access), how much (budget), which tools (tool-access)"
cogward policy push builtin:model-access --name acme-models \
    --data wasm-policies/policies/model-access/data.example.json
cogward policy bind --tenant acme --kind model.call --name acme-models --version 1
cogward policy push builtin:budget --name acme-budget --data wasm-policies/policies/budget/data.example.json
cogward policy bind --tenant acme --kind budget.spend --name acme-budget --version 1
cogward policy push builtin:tool-access --name acme-tools --data examples/policies/acme-tools.json
cogward policy bind --tenant acme --kind tool.call --name acme-tools --version 1

step "a run the policy denies: unknown agent, too much memory"
denied_id=$(submit examples/denied-run.json)
wait_status "$denied_id" denied
cogward run status "$denied_id"
wait_mirrored "$denied_id"
echo "the decision, re-evaluated with the exact module and data recorded in the ledger:"
cogward policy replay "$denied_id"

step "CI submits a run that needs approval (as principal 'ci')"
run_id=$(submit examples/review-run.json)
echo "run id: $run_id"
wait_status "$run_id" awaiting_approval
cogward run status "$run_id"

step "the submitting pipeline cannot approve it (no approve role; nobody may approve their own run)"
cogward run approve "$run_id" --as ci || true

step "the request is an Approval workflow, posted to Slack with approve/reject buttons"
cogward approvals list
posted slack-value "run:$run_id"
echo "button value: $posted"

step "a human approves from Slack (a signed block_actions callback; Slack user U0APPROVER is principal 'approver')"
python3 tests/fakes/fake_chat.py click --callback "$COGWARD_API/v1/callbacks/slack" \
    --secret "$DEMO_SLACK_SECRET" --user U0APPROVER --action approve --value "$posted"
echo "a forged click is refused:"
python3 tests/fakes/fake_chat.py click --callback "$COGWARD_API/v1/callbacks/slack" \
    --secret "not-the-secret" --user U0APPROVER --action approve --value "$posted" || true

step "the agent's get-sum call waits: the tool-access policy escalated it to release-managers; it is filed in Jira"
pending_tool_call "$run_id" 200
cogward run tool-calls "$run_id"
posted jira-label "cogward-tool-$run_id-$call_id"
echo "Jira issue label: $posted"

step "a release manager moves the Jira issue to Approved (a signed jira:issue_updated webhook)"
python3 tests/fakes/fake_chat.py transition --callback "$COGWARD_API/v1/callbacks/jira" \
    --secret "$DEMO_JIRA_SECRET" --account 5b10ac8d82e05b22cc7d4ef5 --label "$posted" --to Approved \
    --delivery "demo-delivery-$call_id"

step "the verdict"
wait_status "$run_id" succeeded failed rejected expired cancelled denied
review_status=$status
cogward run status "$run_id" --json
echo "agent stdout:"; cat "$COGWARD_STATE_DIR/runs/$run_id/stdout.log"
echo "its sandbox, as the evidence records it:"
cogward run status "$run_id" --json | python3 -c '
import json, sys
sb = json.load(sys.stdin)["summary"]["evidence"]["sandbox"]
print("  profile %(profile)s, host id %(host_id)s (its own), Landlock ABI %(landlock_abi)s, %(seccomp_rules)s seccomp rules, cgroup %(cgroup)s" % sb)'

step "the run's ledger: every Temporal history event plus admission, policy decisions, the model and tool calls, approvals, evidence, verdict"
wait_mirrored "$run_id"
cogward run history "$run_id"

step "what Slack and Jira were told: the requests, then the outcomes (chat.update, a comment)"
python3 - "$chat_log" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    c = json.loads(line)
    b = c["body"]
    text = b.get("text") or b.get("fields", {}).get("summary") or b["body"]["content"][0]["content"][0]["text"]
    print("%-16s %s" % (c["api"], text))
PY

step "temporal workflow list (the real CLI): the runs and their approvals, each its own workflow"
"$COGWARD_TEMPORAL_BIN" workflow list --address "${COGWARD_TEMPORAL_ADDRESS#http://}" | head -n 8

step "temporal workflow show (the real CLI) for the same run"
"$COGWARD_TEMPORAL_BIN" workflow show -w "$run_id" --address "${COGWARD_TEMPORAL_ADDRESS#http://}" | tail -n 5

step "the gateway's calls as the ledger holds them (arguments by digest; no credential appears)"
cogward run history "$run_id" --json | python3 -c '
import json, sys
for e in json.load(sys.stdin)["entries"]:
    if e["event_type"] in ("gateway.model_call", "gateway.tool_call"):
        b = json.loads(e["body"])
        print("%-19s %-28s %-9s %-9s tokens %s approver %s" % (e["event_type"], b["target"], b["decision"],
              b["outcome"], b["tokens"], b["detail"].get("approver")))'

step "Claude Code, governed: a claude-code run in the strict sandbox (the real CLI; its model is the provider stand-in's scripted one)"
cat examples/claude-code-run.json
cc_id=$(submit examples/claude-code-run.json)
echo "run id: $cc_id; following its events live (cogward run events --follow):"
cogward run events "$cc_id" --follow >"$COGWARD_STATE_DIR/cc-events.txt" 2>&1 &
follower=$!
pending_tool_call "$cc_id" 300
echo "the agent's get-sum call is parked for a release manager; what it did so far:"
cat "$COGWARD_STATE_DIR/cc-events.txt"
cogward approvals approve "approval-tool-$cc_id-$call_id" --comment "sum checked"
wait "$follower" || true
echo "all its events, as they were followed:"
cat "$COGWARD_STATE_DIR/cc-events.txt"
wait_status "$cc_id" succeeded failed
cogward run status "$cc_id"
echo "its diff (evidence store, checked against the digest in the ledger):"
cogward run diff "$cc_id"
echo "its evidence:"
cogward run evidence "$cc_id"
echo "its manifest:"
cogward run evidence "$cc_id" manifest; echo
wait_mirrored "$cc_id"
echo "its calls in the ledger:"
cogward run history "$cc_id" --json | python3 -c '
import json, sys
for e in json.load(sys.stdin)["entries"]:
    if e["event_type"] in ("gateway.model_call", "gateway.tool_call"):
        b = json.loads(e["body"])
        print("%-19s %-34s %-9s %-9s tokens %s" % (e["event_type"], b["target"], b["decision"], b["outcome"], b["tokens"]))'
[ "$status" = succeeded ] || { echo "the Claude Code run did not succeed" >&2; exit 1; }

step "cogward audit replay: the run's history, and its gate's Approval's, rebuilt from the ledger alone, replay against this build"
cogward audit replay "$run_id"
cogward audit replay "approval-gate-$run_id"

step "cogward audit verify: the whole chain, offline, from the database alone"
cogward audit verify
[ "$review_status" = succeeded ]
