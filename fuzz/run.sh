#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 30 s each) from the committed seed
# corpus; any crash, panic, leak or timeout fails the run and leaves the reproducer in
# fuzz/artifacts/<target>/. The corpus is copied to a temp dir, so runs never modify the repo.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET ...]
#
# Needs the nightly toolchain (libFuzzer's sanitizer flags); installs cargo-fuzz if missing.
# Where no nightly toolchain exists it says so and exits 0 (the decoders' proptests still run
# in `cargo test`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECONDS_PER_TARGET="${1:-30}"
shift || true
TARGETS=("$@")
if [[ ${#TARGETS[@]} -eq 0 ]]; then
    TARGETS=(request_frame request_body record_batch log_recovery)
fi

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "no nightly toolchain here; trying to install it"
    if ! rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
        echo "SKIP fuzzing: no nightly toolchain available on this machine"
        exit 0
    fi
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi

cargo +nightly fuzz build -O >/dev/null 2>&1 || cargo +nightly fuzz build -O
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
failed=()
for t in "${TARGETS[@]}"; do
    mkdir -p "$WORK/$t"
    if [[ -d fuzz/corpus/$t ]]; then
        cp -r "fuzz/corpus/$t/." "$WORK/$t/"
    fi
    echo "--- fuzzing $t for ${SECONDS_PER_TARGET}s"
    if cargo +nightly fuzz run -O "$t" "$WORK/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=4096 -timeout=10 \
        -print_final_stats=1 >"$WORK/$t.log" 2>&1; then
        grep -E "^stat::number_of_executed_units|^stat::average_exec_per_sec" "$WORK/$t.log" | tr '\n' ' '
        echo
    else
        echo "!!! $t found a failure:"
        tail -40 "$WORK/$t.log"
        failed+=("$t")
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz failures: ${failed[*]}"
    exit 1
fi
echo "fuzz: no failures"
