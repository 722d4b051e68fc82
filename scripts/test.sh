#!/usr/bin/env bash
# The one command that runs every Gregor test:
#   Rust: cargo fmt --check, module-cycle check, clippy -D warnings, release build,
#         cargo test
#   Python: third-party Kafka clients (confluent-kafka, kafka-python, kcat)
#           and raw-protocol tests against the real release binary.
#
# It installs what it needs itself (kcat via apt, a Python venv in .venv),
# idempotently, and works without a TTY or stdin (CI=true).
# Exits non-zero if any step fails; later steps still run where they can, so
# one run reports everything.
#
# Environment knobs:
#   GREGOR_SKIP_INSTALL=1   do not touch apt or the venv (use what is there)
#   PYTEST_ARGS="..."       extra arguments for pytest (e.g. "-k restart")
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
        as_root apt-get update -qq
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
    apt_install kcat
    command -v kcat >/dev/null
}

req_hash() {
    sha256sum "$REQS" | cut -d' ' -f1
}

install_venv() {
    if ! command -v python3 >/dev/null 2>&1; then
        echo "installing python3 via apt-get"
        apt_install python3 python3-venv
    fi
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        rm -rf "$VENV"
        echo "creating venv at $VENV"
        if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
            # Debian's system python needs python3-venv for ensurepip.
            rm -rf "$VENV"
            echo "python3 -m venv failed; installing python3-venv"
            apt_install python3-venv
            python3 -m venv "$VENV"
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
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -r "$REQS"
    echo "$want" >"$VENV/.requirements.sha256"
    "$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(confluent-kafka|kafka-python|pytest|pytest-timeout) ' || true
}

section "environment"
echo "repo:   $ROOT"
echo "CI:     ${CI:-<unset>}"
cargo --version
rustc --version

if [[ "${GREGOR_SKIP_INSTALL:-0}" != "1" ]]; then
    step "install kcat" install_kcat || true
    step "install python venv" install_venv || true
fi

step "cargo fmt --check" cargo fmt --all -- --check || true
step "module cycles" python3 scripts/check_module_cycles.py crates/gregor-broker/src || true
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings || true

BUILD_OK=1
step "cargo build --release" cargo build --release || BUILD_OK=0
step "cargo test" cargo test --workspace --release || true

if [[ $BUILD_OK -eq 1 && -x "$VENV/bin/pytest" ]]; then
    # shellcheck disable=SC2086
    step "pytest (third-party clients, raw protocol)" \
        "$VENV/bin/pytest" tests/python -v --timeout=300 -p no:cacheprovider \
        --junitxml="$ROOT/target/pytest-results.xml" ${PYTEST_ARGS:-} || true
else
    section "pytest (third-party clients, raw protocol)"
    echo "!!! skipped: release build failed or venv missing"
    FAILED+=("pytest (not run)")
fi

# Bounded fuzzing of the decoders and the recovery path (fuzz/run.sh; FUZZ_SECONDS per target).
if [[ "${FUZZ_SECONDS:-30}" != "0" ]]; then
    step "fuzz (bounded, ${FUZZ_SECONDS:-30}s per target)" ./fuzz/run.sh "${FUZZ_SECONDS:-30}" || true
fi

section "summary"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "FAILED steps:"
    printf '  - %s\n' "${FAILED[@]}"
    exit 1
fi
echo "all steps passed"
if [[ -f "$ROOT/target/pytest-results.xml" ]]; then
    # One plain closing line with the third-party test counts.
    python3 - "$ROOT/target/pytest-results.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
print(f"pytest: {tests - failures - errors - skipped} passed, {failures + errors} failed, {skipped} skipped")
PY
fi
