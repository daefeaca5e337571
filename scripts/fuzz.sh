#!/usr/bin/env bash
# Run every fuzz target for a bounded time: `bash scripts/fuzz.sh [seconds] [target...]`
#
# Each target of fuzz/ (all of them by default) runs for SECONDS (default 15) with one libFuzzer
# worker, starting from its committed corpus (fuzz/corpus/<target>) and fuzz/protocol.dict. A
# crash, panic, failed invariant, leak or hang fails the script: the input is left in
# fuzz/artifacts/<target>/ and the log says how to reproduce it. Inputs the run finds go to a
# scratch directory, so the committed corpus is left as it was (docs/fuzzing.md says how to grow
# and minimize it).
#
# cargo-fuzz needs the nightly toolchain (`cargo +nightly`). Without it the script says how to
# install it and skips (exit 0), because a machine whose only toolchain is stable cannot fetch
# another; FUZZ_REQUIRED=1 turns that into a failure. cargo-fuzz itself is installed if missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

seconds=${1:-15}
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: bash scripts/fuzz.sh [seconds per target, default 15] [target...]" >&2
    exit 2
fi
shift $(($# > 0 ? 1 : 0))

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: the nightly toolchain is not installed; cargo-fuzz needs it. Install it with:" >&2
    echo "  rustup toolchain install nightly --profile minimal" >&2
    if [[ "${FUZZ_REQUIRED:-0}" == 1 ]]; then
        echo "fuzz: FAILED (FUZZ_REQUIRED=1 and no nightly toolchain)" >&2
        exit 1
    fi
    echo "fuzz: SKIPPED (no nightly toolchain; FUZZ_REQUIRED=1 makes this an error)"
    exit 0
fi

# shellcheck source=scripts/install-deps.sh
source "$ROOT/scripts/install-deps.sh"
ensure_cargo_tool cargo-fuzz

cargo fmt --manifest-path fuzz/Cargo.toml -- --check

targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

started=$SECONDS
# One build for every target (the first run also builds, but would print it in the middle).
cargo +nightly fuzz build

scratch=$(mktemp -d "${TMPDIR:-/tmp}/orders-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target" "fuzz/corpus/$target"
    log="$scratch/$target.log"
    # New inputs go to the first corpus directory (scratch); the committed one is only read.
    if cargo +nightly fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -dict=fuzz/protocol.dict -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        echo "fuzz: $target ok: ${runs:-?} runs in ${seconds}s (${speed:-?} exec/s)"
    else
        echo "fuzz: $target FAILED; the end of its log:" >&2
        tail -n 60 "$log" >&2
        failed+=("$target")
    fi
done

elapsed=$((SECONDS - started))
if ((${#failed[@]} > 0)); then
    echo "fuzz: FAILED: ${failed[*]} (after ${elapsed}s, build included; inputs in fuzz/artifacts/)" >&2
else
    echo "fuzz: every target ran ${seconds}s without a failure (${elapsed}s, build included)"
fi
# The summary line in the plain form CI's log readers count.
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
((${#failed[@]} == 0))
