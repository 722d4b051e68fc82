"""Measure `gregor bench produce` and confluent-kafka (librdkafka) produce of the same
workload against the same fresh `gregor serve`, in one run, alternating the two clients
`--repeat` times (each run on a new topic) and reporting every run and the medians.

    cargo build --release
    .venv/bin/python scripts/bench_vs_confluent.py [--count 200000] [--size 1024] \
        [--partitions 3] [--acks all] [--idempotence false] [--repeat 3]

GREGOR_BIN picks the broker binary (default target/release/gregor); the client is always
this build's target/release/gregor.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from gregor_testlib import DEFAULT_BIN, Broker, confluent_common, create_topic_confluent  # noqa: E402


def run_gregor(b, args, topic):
    out = subprocess.run(
        [str(DEFAULT_BIN), "bench", "produce", "--brokers", b.bootstrap, "--topic", topic,
         "--count", str(args.count), "--record-size", str(args.size), "--partitions", str(args.partitions),
         "--acks", args.acks, "--idempotence", args.idempotence, "--json"],
        capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def run_confluent(b, args, topic):
    from confluent_kafka import Producer

    create_topic_confluent(b.bootstrap, topic, args.partitions)
    p = Producer({**confluent_common(b.bootstrap), "acks": args.acks, "linger.ms": 5,
                  "enable.idempotence": args.idempotence == "true",
                  "queue.buffering.max.messages": 1_000_000, "batch.size": 1_000_000})
    payload = b"x" * args.size
    errors = [0]

    def cb(err, _msg):
        if err is not None:
            errors[0] += 1

    t0 = time.perf_counter()
    for _ in range(args.count):
        while True:
            try:
                p.produce(topic, payload, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.001)
    p.flush(120)
    secs = time.perf_counter() - t0
    return {"records": args.count, "seconds": secs, "records_per_sec": args.count / secs,
            "mb_per_sec": args.count * args.size / 1e6 / secs, "errors": errors[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--acks", default="all")
    ap.add_argument("--idempotence", choices=["true", "false"], default="false",
                    help="for both clients (confluent-kafka's default is false)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    b = Broker(Path(os.environ.get("GREGOR_BIN", DEFAULT_BIN))).start()
    runs = {"gregor_bench": [], "confluent_kafka": []}
    try:
        for i in range(args.repeat):
            order = [("gregor_bench", run_gregor), ("confluent_kafka", run_confluent)]
            if i % 2:
                order.reverse()
            for name, fn in order:
                runs[name].append(fn(b, args, f"bench-{name}-{i}"))
    finally:
        b.cleanup()
    summary = {name: {"median_records_per_sec": statistics.median(r["records_per_sec"] for r in rs),
                      "median_mb_per_sec": statistics.median(r["mb_per_sec"] for r in rs),
                      "runs_mb_per_sec": [round(r["mb_per_sec"], 1) for r in rs]}
               for name, rs in runs.items()}
    print(json.dumps({"workload": vars(args), "summary": summary, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
