#!/usr/bin/env bash
# Runs every test on a fresh machine: installs what is missing, starts PostgreSQL, builds, and runs
# the unit, runner-escape and end-to-end suites (real Temporal dev servers, SQLite, PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source scripts/postgres.sh
trap cogward_pg_stop EXIT

log "building"
cargo build --workspace --locked
log "testing"
cargo test --workspace --locked -- --test-threads "${COGWARD_TEST_THREADS:-2}"
