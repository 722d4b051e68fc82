#!/usr/bin/env bash
# The one command that runs every Gregor test:
#   Rust: cargo fmt --check, module-cycle check, clippy -D warnings, release build,
#         cargo test (profile ci-test: optimised, with debug assertions and overflow checks on)
#   Python: third-party Kafka clients (confluent-kafka, kafka-python, kcat), /metrics and
#           the web console (Playwright + Debian chromium)
#           and raw-protocol tests against the real release binary.
#
# It installs what it needs itself (kcat and chromium via apt, a Python venv in .venv),
# idempotently, and works without a TTY or stdin (CI=true).
# Exits non-zero if any step fails; later steps still run where they can, so
# one run reports everything.
#
# Environment knobs:
#   GREGOR_SKIP_INSTALL=1   do not touch apt or the venv (use what is there)
#   PYTEST_ARGS="..."       extra arguments for pytest (e.g. "-k restart")
#   CARGO_TEST_TIMEOUT=1200 seconds the test binaries (built first, outside the limit) may
#                           run before they are killed and reported as hung
#   PYTEST_TIMEOUT=2400     the same for the whole pytest run (each test also has 300 s)
#   FUZZ_TIMEOUT=1500       the same for fuzz/run.sh (nightly/cargo-fuzz install and build)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1
export CARGO_TERM_PROGRESS_WHEN=never
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
export PYTHONUNBUFFERED=1

VENV="$ROOT/.venv"
REQS="$ROOT/tests/python/requirements.txt"
FAILED=()

section() {
    printf '\n==================== %s ====================\n' "$*"
}

# Run a step; record failure instead of aborting so later steps still report.
step() {
    local name="$1"
    shift
    section "$name"
    local rc=0
    "$@" </dev/null || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "!!! step '$name' failed (exit $rc)"
        FAILED+=("$name")
        return 1
    fi
    echo "--- step '$name' ok"
}

# Run a command with a wall-clock limit; a hang becomes a failure with a message instead of
# eating CI's budget. `timeout` kills the whole process group (test binaries, brokers).
deadline() {
    local secs="$1" what="$2"
    shift 2
    local rc=0
    timeout --kill-after=30 "$secs" "$@" || rc=$?
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        echo "!!! $what did not finish within ${secs}s: killed (a hang is a failure)"
    fi
    return $rc
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        echo "need root (or sudo) to run: $*" >&2
        return 1
    fi
}

APT_UPDATED=0
apt_install() {
    if [[ $APT_UPDATED -eq 0 ]]; then
        as_root apt-get update -qq || return 1
        APT_UPDATED=1
    fi
    as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

install_kcat() {
    if command -v kcat >/dev/null 2>&1; then
        echo "kcat present: $(command -v kcat)"
        return 0
    fi
    echo "installing kcat via apt-get"
    apt_install kcat || return 1
    command -v kcat >/dev/null
}

# The Go client tests (tests/python/test_go_sarama.py) build sarama offline from Debian's
# packages: no module proxy, no network.
install_go_sarama() {
    if command -v go >/dev/null 2>&1 && [[ -d /usr/share/gocode/src/github.com/Shopify/sarama ]]; then
        echo "go and sarama present: $(go version)"
        return 0
    fi
    echo "installing golang-go and golang-github-shopify-sarama-dev via apt-get"
    apt_install golang-go golang-github-shopify-sarama-dev
    command -v go >/dev/null
}

# The console test (tests/python/test_console.py) drives Debian's chromium through
# Playwright (pip, in the venv); Playwright's own browser download is never used.
install_chromium() {
    if command -v chromium >/dev/null 2>&1; then
        echo "chromium present: $(command -v chromium)"
        return 0
    fi
    echo "installing chromium via apt-get"
    apt_install chromium fonts-dejavu-core || return 1
    command -v chromium >/dev/null
}

req_hash() {
    sha256sum "$REQS" | cut -d' ' -f1
}

install_venv() {
    if ! command -v python3 >/dev/null 2>&1; then
        echo "installing python3 via apt-get"
        apt_install python3 python3-venv || return 1
    fi
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        rm -rf "$VENV"
        echo "creating venv at $VENV"
        if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
            # Debian's system python needs python3-venv for ensurepip.
            rm -rf "$VENV"
            echo "python3 -m venv failed; installing python3-venv"
            apt_install python3-venv || return 1
            python3 -m venv "$VENV" || return 1
        fi
    fi
    local want have=""
    want="$(req_hash)"
    [[ -f "$VENV/.requirements.sha256" ]] && have="$(cat "$VENV/.requirements.sha256")"
    if [[ "$want" == "$have" ]]; then
        echo "venv up to date (requirements hash $want)"
        return 0
    fi
    echo "installing Python requirements into $VENV"
    # `step` runs this in an `||` list, where set -e does not apply: check every command.
    # The hash is written only after the install succeeded, so a failed one is retried.
    rm -f "$VENV/.requirements.sha256"
    "$VENV/bin/python" -m pip install -q --upgrade pip ||
        echo "warning: pip self-upgrade failed; installing with the venv's pip"
    if ! "$VENV/bin/python" -m pip install -q -r "$REQS"; then
        echo "!!! pip install -r $REQS failed"
        return 1
    fi
    echo "$want" >"$VENV/.requirements.sha256"
    "$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(confluent-kafka|kafka-python|pytest|pytest-timeout) ' || true
}

# test_hostile_clients.py holds 2,000 idle connections open against one broker (client and
# broker sockets in the same limit when both run here): raise the open-file limit.
raise_nofile() {
    local want=65536 hard
    hard="$(ulimit -Hn)"
    if [[ "$hard" != "unlimited" && "$hard" -lt "$want" ]]; then
        want="$hard"
    fi
    if [[ "$(ulimit -Sn)" != "unlimited" && "$(ulimit -Sn)" -lt "$want" ]]; then
        ulimit -Sn "$want" || true
    fi
}
raise_nofile

section "environment"
echo "repo:   $ROOT"
echo "nofile: $(ulimit -Sn) (soft limit on open files)"
echo "CI:     ${CI:-<unset>}"
cargo --version
rustc --version

if [[ "${GREGOR_SKIP_INSTALL:-0}" != "1" ]]; then
    step "install kcat" install_kcat || true
    step "install go + sarama" install_go_sarama || true
    step "install chromium" install_chromium || true
    step "install python venv" install_venv || true
fi

step "cargo fmt --check" cargo fmt --all -- --check || true
step "module cycles" python3 scripts/check_module_cycles.py crates/gregor-broker/src || true
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings || true

BUILD_OK=1
step "cargo build --release" cargo build --release || BUILD_OK=0
# Profile ci-test (Cargo.toml): release optimisation plus debug_assert! and overflow checks,
# so the assertions run somewhere without a second, unoptimised test pass.
# Compiling is not what can hang: build the tests first, then run them under the limit.
cargo_test_ci() {
    cargo test --workspace --profile ci-test --no-run || return $?
    deadline "${CARGO_TEST_TIMEOUT:-1200}" "cargo test" cargo test --workspace --profile ci-test
}
step "cargo test (profile ci-test)" cargo_test_ci || true

rm -f "$ROOT/target/pytest-results.xml" # never report an earlier run's counts
if [[ $BUILD_OK -eq 1 && -x "$VENV/bin/pytest" ]]; then
    # shellcheck disable=SC2086
    step "pytest (third-party clients, raw protocol)" \
        deadline "${PYTEST_TIMEOUT:-2400}" "pytest" \
        "$VENV/bin/pytest" tests/python -v --timeout=300 -p no:cacheprovider \
        --junitxml="$ROOT/target/pytest-results.xml" ${PYTEST_ARGS:-} || true
else
    section "pytest (third-party clients, raw protocol)"
    echo "!!! skipped: release build failed or venv missing"
    FAILED+=("pytest (not run)")
fi

# Fault injection (tests/faults, needs root): a short seeded schedule against one node
# (FAULTS_MINUTES=0 skips it), one against a 3-node cluster (FAULTS3_MINUTES=0 skips it;
# heal waits between faults add up to a minute), then the checker's own tests and the
# netns partition tests.
if [[ $BUILD_OK -eq 1 && -x "$VENV/bin/pytest" ]]; then
    FAULTS_SEED="${FAULTS_SEED:-$(date +%Y%m%d)}"
    if [[ "${FAULTS_MINUTES:-2}" != "0" ]]; then
        step "faults (seed $FAULTS_SEED)" env FAULTS_ARGS="${FAULTS_ARGS:-}" \
            ./scripts/faults.sh --seed "$FAULTS_SEED" --minutes "${FAULTS_MINUTES:-2}" || true
    fi
    if [[ "${FAULTS3_MINUTES:-2}" != "0" ]]; then
        step "faults, 3 nodes (seed $FAULTS_SEED)" env FAULTS_ARGS="${FAULTS_ARGS:-}" \
            ./scripts/faults.sh --seed "$FAULTS_SEED" --minutes "${FAULTS3_MINUTES:-2}" \
            --nodes 3 || true
    fi
    step "fault harness tests" "$VENV/bin/pytest" tests/faults -q -p no:cacheprovider --timeout=900 || true
fi

# Bounded fuzzing of the decoders and the recovery path (fuzz/run.sh; FUZZ_SECONDS per target).
if [[ "${FUZZ_SECONDS:-30}" != "0" ]]; then
    step "fuzz (bounded, ${FUZZ_SECONDS:-30}s per target)" \
        deadline "${FUZZ_TIMEOUT:-1500}" "fuzzing" ./fuzz/run.sh "${FUZZ_SECONDS:-30}" || true
fi

section "summary"
if [[ -f "$ROOT/target/pytest-results.xml" ]]; then
    # One plain line with the third-party test counts, whether or not a step failed.
    python3 - "$ROOT/target/pytest-results.xml" <<'PY' || echo "pytest: no readable results file"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
print(f"pytest: {tests - failures - errors - skipped} passed, {failures + errors} failed, {skipped} skipped")
PY
fi
if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "FAILED steps:"
    printf '  - %s\n' "${FAILED[@]}"
    exit 1
fi
echo "all steps passed"
