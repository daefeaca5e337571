#!/usr/bin/env bash
# Run the workspace's tests: `bash scripts/test.sh [cargo test args...]`
#
# Ensures PostgreSQL and Redis binaries are installed (the tests start their own private servers
# on free ports through the testkit crate; nothing needs to be running), then runs
# `cargo test --workspace --locked --no-fail-fast "$@"` and prints a one-line summary.
# Also chromium and chromedriver, for the dashboard's tests in a real headless browser
# (TEST_BROWSER=0 skips installing them; those tests then skip, or fail under CI=true).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

# shellcheck source=scripts/install-deps.sh
source "$ROOT/scripts/install-deps.sh"
if [[ "${TEST_BROWSER:-1}" == 1 ]]; then ensure_deps --browser; else ensure_deps; fi

# testkit looks in PG_BIN_DIR / REDIS_SERVER_BIN before PATH; pin what we found.
PG_BIN_DIR=$(pg_bin_dir)
REDIS_SERVER_BIN=${REDIS_SERVER_BIN:-$(command -v redis-server)}
export PG_BIN_DIR REDIS_SERVER_BIN

log=$(mktemp "${TMPDIR:-/tmp}/orders-test.XXXXXX")
trap 'rm -f "$log"' EXIT
started=$SECONDS
status=0
# Keep cargo's colours when a person is watching, although its output goes through tee.
[[ -t 1 ]] && export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-always}
# --no-fail-fast: one failing test binary must not hide the results of the others.
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?

# Sum libtest's "test result: ok. 12 passed; 0 failed; 1 ignored; ..." lines over all binaries.
read -r passed failed ignored < <(sed 's/\x1b\[[0-9;]*m//g' "$log" | awk '
    /^test result:/ { for (i = 1; i <= NF; i++) {
        if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1); if ($(i) ~ /^ignored;?$/) g += $(i-1) } }
    END { print p + 0, f + 0, g + 0 }')
elapsed=$((SECONDS - started))
if ((status == 0)); then
    echo "cargo test --workspace passed in ${elapsed}s"
    echo "tests: $passed passed, $failed failed, $ignored skipped"
else
    echo "tests: FAILED (cargo test exit $status after ${elapsed}s; $passed passed, $failed failed, $ignored skipped)"
fi
exit "$status"
