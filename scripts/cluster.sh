#!/usr/bin/env bash
# A local 3-node Gregor cluster for trying it out: every node is a controller (a voter of the
# metadata quorum) and a broker.
#
#   ./scripts/cluster.sh start    build target/release/gregor if missing, start nodes 1-3, wait
#                                 until each listens and every node's metadata lists all three
#   ./scripts/cluster.sh status   each node's pid, ports and liveness, then `gregor cluster info`
#   ./scripts/cluster.sh stop     SIGTERM every node, wait for a clean exit (SIGKILL after 30 s)
#
# Node N: Kafka listener 127.0.0.1:909(1+N) (9092-9094), controller listener
# 127.0.0.1:919(1+N) (9192-9194), data in target/cluster/N/data, log in
# target/cluster/N/gregor.log, pid in target/cluster/N/pid. Clients bootstrap with
# 127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094. `stop` keeps the data: the next `start`
# brings the same cluster back; `rm -rf target/cluster` forgets it.
# Environment: GREGOR_BIN (default target/release/gregor), HOST (default 127.0.0.1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${GREGOR_BIN:-$ROOT/target/release/gregor}"
HOST="${HOST:-127.0.0.1}"
DIR="$ROOT/target/cluster"
NODES=(1 2 3)
START_TIMEOUT=60

kafka_port() { echo $((9091 + $1)); }
controller_port() { echo $((9191 + $1)); }
bootstrap() {
    local n out=()
    for n in "${NODES[@]}"; do out+=("$HOST:$(kafka_port "$n")"); done
    (IFS=,; echo "${out[*]}")
}
voters() {
    local n out=()
    for n in "${NODES[@]}"; do out+=("$n@$HOST:$(controller_port "$n")"); done
    (IFS=,; echo "${out[*]}")
}
pid_of() {
    local f="$DIR/$1/pid"
    [[ -f "$f" ]] && cat "$f"
}
alive() {
    local pid
    pid="$(pid_of "$1")" || return 1
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

# How many brokers node N's Metadata lists (0 while it does not answer).
brokers_listed_by() {
    "$BIN" cluster info --brokers "$HOST:$(kafka_port "$1")" --format json 2>/dev/null |
        python3 -c 'import json, sys; print(len(json.load(sys.stdin)["brokers"]))' 2>/dev/null || echo 0
}

start() {
    if [[ ! -x "$BIN" ]]; then
        echo "building $BIN"
        (cd "$ROOT" && cargo build --release -p gregor)
    fi
    local n
    for n in "${NODES[@]}"; do
        if alive "$n"; then
            echo "node $n already running (pid $(pid_of "$n"))"
            continue
        fi
        mkdir -p "$DIR/$n/data"
        local log="$DIR/$n/gregor.log"
        echo "# $(date -u +%FT%TZ) start" >>"$log"
        # setsid: the nodes outlive this shell and its terminal's Ctrl-C.
        setsid "$BIN" serve --node-id "$n" \
            --listen "$HOST:$(kafka_port "$n")" \
            --controller-listen "$HOST:$(controller_port "$n")" \
            --controller-quorum-voters "$(voters)" \
            --data-dir "$DIR/$n/data" >>"$log" 2>&1 </dev/null &
        echo $! >"$DIR/$n/pid"
        echo "node $n: pid $!, kafka $HOST:$(kafka_port "$n"), controller $HOST:$(controller_port "$n"), log $log"
    done
    # Ready: every node printed its listening line (after its last start) and its metadata
    # lists all three brokers.
    local deadline=$((SECONDS + START_TIMEOUT))
    for n in "${NODES[@]}"; do
        local port
        port="$(kafka_port "$n")"
        until tac "$DIR/$n/gregor.log" | sed '/^# .* start$/q' | grep -q "^gregor listening on .*:$port\$"; do
            if ! alive "$n"; then
                echo "node $n exited; last lines of $DIR/$n/gregor.log:" >&2
                tail -n 20 "$DIR/$n/gregor.log" >&2
                return 1
            fi
            if ((SECONDS > deadline)); then
                echo "node $n not listening after ${START_TIMEOUT}s; see $DIR/$n/gregor.log" >&2
                return 1
            fi
            sleep 0.1
        done
    done
    for n in "${NODES[@]}"; do
        until [[ "$(brokers_listed_by "$n")" -eq ${#NODES[@]} ]]; do
            if ((SECONDS > deadline)); then
                echo "node $n's metadata does not list ${#NODES[@]} brokers after ${START_TIMEOUT}s" >&2
                "$BIN" cluster info --brokers "$HOST:$(kafka_port "$n")" >&2 || true
                return 1
            fi
            sleep 0.1
        done
    done
    echo "cluster ready: bootstrap $(bootstrap)"
}

stop() {
    local n pid
    for n in "${NODES[@]}"; do
        if alive "$n"; then
            pid="$(pid_of "$n")"
            kill -TERM "$pid"
            echo "node $n: SIGTERM to pid $pid"
        fi
    done
    for n in "${NODES[@]}"; do
        local waited=0
        while alive "$n"; do
            if ((waited >= 300)); then
                pid="$(pid_of "$n")"
                echo "node $n (pid $pid) still running after 30s: SIGKILL" >&2
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
        rm -f "$DIR/$n/pid"
    done
    echo "cluster stopped (data kept in $DIR)"
}

status() {
    local n up=0
    for n in "${NODES[@]}"; do
        if alive "$n"; then
            up=$((up + 1))
            echo "node $n: running, pid $(pid_of "$n"), kafka $HOST:$(kafka_port "$n"), controller $HOST:$(controller_port "$n")"
        else
            echo "node $n: stopped"
        fi
    done
    if ((up > 0)); then
        "$BIN" cluster info --brokers "$(bootstrap)"
    fi
    ((up == ${#NODES[@]}))
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
