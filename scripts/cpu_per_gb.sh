#!/usr/bin/env bash
# usage: cpu_per_gb.sh BROKER_BINARY CLIENT_BINARY LABEL
# Starts BROKER_BINARY serve on an ephemeral port with a temp data dir, creates topic b
# (3 partitions), produces 1,000,000 x 1 KiB with acks=all through CLIENT_BINARY's
# `bench produce`, and prints the broker's CPU seconds (utime+stime from /proc) per GB.
set -euo pipefail
BIN=$1; CLI=$2; LABEL=$3
DIR=$(mktemp -d /tmp/cpugb.XXXXXX)
"$BIN" serve --listen 127.0.0.1:0 --data-dir "$DIR/data" > "$DIR/log" 2>&1 &
PID=$!
for i in $(seq 1 200); do grep -q "listening on" "$DIR/log" && break; sleep 0.05; done
ADDR=$(grep -o 'listening on [0-9.:]*' "$DIR/log" | awk '{print $3}')
"$CLI" topic create b --partitions 3 --brokers "$ADDR" >/dev/null
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
A=$(cpu)
"$CLI" bench produce --brokers "$ADDR" --topic b --count 1000000 --record-size 1024 --partitions 3 --acks all --json > "$DIR/bench.json"
B=$(cpu)
kill -TERM $PID; wait $PID || true
python3 - "$A" "$B" "$(getconf CLK_TCK)" "$DIR/bench.json" "$LABEL" <<'PY'
import json, sys
a, b, tck, path, label = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
gb = 1_000_000 * 1024 / 1e9
j = json.load(open(path))
mbps = j.get("mb_per_sec", j.get("MB/s", ""))
print(f"{label} broker_cpu_s={(b-a)/tck:.2f} cpu_s_per_GB={(b-a)/tck/gb:.3f} MB/s={mbps}")
PY
rm -rf "$DIR"
