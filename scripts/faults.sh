#!/usr/bin/env bash
# Fault injection against real Gregor nodes, each in its own network namespace:
#
#   ./scripts/faults.sh --seed SEED --minutes M [--nodes N]
#
# Installs what it needs (iproute2, nftables, faketime via apt; the Python venv with
# confluent-kafka in .venv; the release binary if missing), runs the fault schedule drawn
# from SEED for M minutes (tests/faults/harness.py), checks the recorded history, and
# prints one summary line LAST:
#
#   seed 1234: 1 nodes, 412900 acked, 0 lost, 0 duplicated, 0 reordered, 0 aborted reads, ...
#
# Exit 0: no anomaly; 1: an anomaly (history + broker logs kept in target/faults/SEED/);
# 2: the harness could not run.  Needs root (namespaces, tmpfs mounts).
# Environment: GREGOR_SKIP_INSTALL=1 uses what is there; FAULTS_ARGS="..." passes extra
# harness flags (see `python tests/faults/harness.py --help`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export PYTHONUNBUFFERED=1 CARGO_TERM_PROGRESS_WHEN=never

usage() {
    echo "usage: $0 --seed SEED --minutes M [--nodes N]" >&2
    exit 2
}

SEED="" MINUTES="" NODES=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seed) SEED="${2:-}"; shift 2 ;;
        --minutes) MINUTES="${2:-}"; shift 2 ;;
        --nodes) NODES="${2:-}"; shift 2 ;;
        -h|--help) usage ;;
        *) echo "unknown argument: $1" >&2; usage ;;
    esac
done
[[ "$SEED" =~ ^[0-9]+$ && "$MINUTES" =~ ^[0-9]+(\.[0-9]+)?$ && "$NODES" =~ ^[0-9]+$ ]] || usage
if [[ "$NODES" -eq 0 || "$NODES" -eq 2 ]]; then
    # Two voters lose their quorum with either one down: every fault would stop the cluster.
    echo "seed $SEED: --nodes $NODES: use 1 (a single node) or 3+ (a cluster that keeps a majority)"
    exit 2
fi

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo -n "$@"; fi
}

VENV="$ROOT/.venv"
REQS="$ROOT/tests/python/requirements.txt"

install_deps() {
    local missing=()
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    command -v faketime >/dev/null 2>&1 || missing+=(faketime)
    command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
    command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "installing ${missing[*]} via apt-get"
        as_root apt-get update -qq
        as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # The same venv (and requirements hash) as scripts/test.sh.
    if [[ ! -x "$VENV/bin/python" ]]; then
        python3 -m venv "$VENV" >/dev/null 2>&1 || {
            rm -rf "$VENV"
            as_root apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
            python3 -m venv "$VENV"
        }
    fi
    local want have=""
    want="$(sha256sum "$REQS" | cut -d' ' -f1)"
    [[ -f "$VENV/.requirements.sha256" ]] && have="$(cat "$VENV/.requirements.sha256")"
    if [[ "$want" != "$have" ]]; then
        echo "installing Python requirements into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -r "$REQS"
        echo "$want" >"$VENV/.requirements.sha256"
    fi
}

if [[ "${GREGOR_SKIP_INSTALL:-0}" != "1" ]]; then
    install_deps </dev/null
fi
if [[ ! -x "$ROOT/target/release/gregor" ]]; then
    echo "building target/release/gregor"
    cargo build --release -p gregor </dev/null
fi

echo "fault schedule: seed $SEED, $MINUTES minutes, $NODES node(s)"
rc=0
# shellcheck disable=SC2086
as_root "$VENV/bin/python" "$ROOT/tests/faults/harness.py" --seed "$SEED" --minutes "$MINUTES" \
    --nodes "$NODES" ${FAULTS_ARGS:-} </dev/null || rc=$?
exit $rc
