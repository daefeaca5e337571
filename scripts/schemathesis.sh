#!/usr/bin/env bash
# schemathesis against the orders API: `bash scripts/schemathesis.sh`
#
# Installs schemathesis (pinned, in a venv under ${XDG_CACHE_HOME:-~/.cache}/orders-realtime/;
# once) and PostgreSQL if missing, then runs orders-api's schemathesis test: a private
# PostgreSQL with the schema, the API in-process on a free port, and `schemathesis run` on its
# /openapi.json with every check (orders-api/schemathesis.toml), failing on any finding.
# SCHEMATHESIS_SEED=<n> tries another seed than CI's.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

# shellcheck source=scripts/install-deps.sh
source "$ROOT/scripts/install-deps.sh"
ensure_deps --schemathesis
SCHEMATHESIS_BIN=$(ensure_schemathesis)
PG_BIN_DIR=$(pg_bin_dir)
export SCHEMATHESIS_BIN PG_BIN_DIR

cargo test -p orders-api --locked --test schemathesis "$@" -- --nocapture
