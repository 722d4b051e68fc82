"""Measure `gregor bench produce` and confluent-kafka (librdkafka) produce of the same
workload against the same fresh `gregor serve`, in one run.

    cargo build --release
    .venv/bin/python scripts/bench_vs_confluent.py [--count 200000] [--size 1024] [--partitions 3]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from gregor_testlib import DEFAULT_BIN, Broker, create_topic_confluent, confluent_common  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--acks", default="all")
    ap.add_argument("--idempotence", choices=["true", "false"], default="false",
                    help="for both clients (confluent-kafka's default is false)")
    args = ap.parse_args()
    # GREGOR_BIN: the broker to measure against (default: this build's).
    b = Broker(Path(os.environ.get("GREGOR_BIN", DEFAULT_BIN))).start()
    try:
        gregor = json.loads(subprocess.run(
            [str(DEFAULT_BIN), "--brokers", b.bootstrap, "bench", "produce", "--topic", "bench-gregor",
             "--count", str(args.count), "--record-size", str(args.size), "--partitions", str(args.partitions),
             "--acks", args.acks, "--idempotence", args.idempotence, "--json"], capture_output=True, text=True, check=True).stdout)

        from confluent_kafka import Producer
        create_topic_confluent(b.bootstrap, "bench-rdkafka", args.partitions)
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
                    p.produce("bench-rdkafka", payload, on_delivery=cb)
                    break
                except BufferError:
                    p.poll(0.001)
        p.flush(120)
        secs = time.perf_counter() - t0
        rdk = {"records": args.count, "seconds": secs, "records_per_sec": args.count / secs,
               "mb_per_sec": args.count * args.size / 1e6 / secs, "errors": errors[0]}
        print(json.dumps({"workload": vars(args), "gregor_bench": gregor, "confluent_kafka": rdk}, indent=2))
    finally:
        b.cleanup()


if __name__ == "__main__":
    main()
