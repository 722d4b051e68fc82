#!/usr/bin/env bash
# Rebuilds the fuzzers' seed corpus from real client traffic: runs the third-party client
# tests with GREGOR_CAPTURE_DIR set (every broker they start saves each request frame and
# each produced record batch), then keeps a small, diverse subset per target:
# up to 4 frames per (api key, api version) and up to 60 batches per compression codec,
# each at most 64 KiB.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CAPTURE="$(mktemp -d)"
trap 'rm -rf "$CAPTURE"' EXIT
GREGOR_CAPTURE_DIR="$CAPTURE" .venv/bin/pytest -q tests/python/test_confluent.py \
    tests/python/test_kafka_python.py tests/python/test_kcat.py >/dev/null
rm -rf fuzz/corpus/request_frame fuzz/corpus/record_batch fuzz/corpus/log_recovery
mkdir -p fuzz/corpus/request_frame fuzz/corpus/record_batch fuzz/corpus/log_recovery
.venv/bin/python - "$CAPTURE" <<'PY'
import collections, os, shutil, struct, sys
cap = sys.argv[1]
per_key = collections.Counter()
for name in sorted(os.listdir(os.path.join(cap, "frames"))):
    path = os.path.join(cap, "frames", name)
    data = open(path, "rb").read()
    if len(data) > 65536 or len(data) < 8:
        continue
    key = struct.unpack(">hh", data[4:8])
    if per_key[key] < 4:
        per_key[key] += 1
        shutil.copy(path, os.path.join("fuzz/corpus/request_frame", name))
per_codec = collections.Counter()
for name in sorted(os.listdir(os.path.join(cap, "batches"))):
    path = os.path.join(cap, "batches", name)
    data = open(path, "rb").read()
    if len(data) > 65536 or len(data) < 61:
        continue
    codec = data[22] & 7
    if per_codec[codec] < 60:
        per_codec[codec] += 1
        for target in ("record_batch", "log_recovery"):
            shutil.copy(path, os.path.join("fuzz/corpus", target, name))
print("frames per (api, version):", dict(per_key))
print("batches per codec:", dict(per_codec))
PY
