"""Transactional vs plain vs idempotent produce throughput with confluent-kafka, same broker,
same run (formerly a test that asserted nothing; a benchmark is not a test).

    cargo build --release
    .venv/bin/python scripts/bench_txn.py [--count 200000] [--size 100] [--per-txn 1000] [--runs 3]

Each mode produces COUNT records of SIZE bytes (acks=all, linger 5 ms) to a fresh topic;
best of RUNS runs each, because shared cores make single runs noisy. The clock starts once
the producer is ready (init_transactions, or one acknowledged record). Writes
target/txn-bench.json and prints it, dated. GREGOR_BIN picks the broker binary.
"""

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from gregor_testlib import DEFAULT_BIN, Broker, confluent_common, create_topic_confluent, unique_topic  # noqa: E402


def run(bootstrap: str, mode: str, n: int, size: int, per_txn: int) -> float:
    from confluent_kafka import Producer

    value = b"x" * size
    topic = unique_topic(f"bench-{mode}")
    create_topic_confluent(bootstrap, topic, 1)
    conf = {**confluent_common(bootstrap), "linger.ms": 5, "acks": "all"}
    if mode == "idempotent":
        conf["enable.idempotence"] = True
    if mode == "transactional":
        conf["transactional.id"] = unique_topic("bench-tx")
    p = Producer(conf)
    if mode == "transactional":
        p.init_transactions(30)
    else:
        # Not timed: the client's start-up. librdkafka's idempotent producer asks for its
        # producer id on a 500 ms retry timer once the bootstrap connection is retired, which
        # would otherwise dominate a sub-second run. One acknowledged record means ready.
        p.produce(topic, value=value)
        assert p.flush(30) == 0
    start = time.monotonic()
    for i in range(n):
        if mode == "transactional" and i % per_txn == 0:
            if i:
                p.commit_transaction(30)
            p.begin_transaction()
        while True:
            try:
                p.produce(topic, value=value)
                break
            except BufferError:
                p.poll(0.01)
    if mode == "transactional":
        p.commit_transaction(30)
    assert p.flush(60) == 0, "records left unacknowledged"
    return time.monotonic() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--per-txn", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    b = Broker(Path(os.environ.get("GREGOR_BIN", DEFAULT_BIN))).start()
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "loadavg": os.getloadavg()}
    try:
        for mode in ("plain", "idempotent", "transactional"):
            times = [run(b.bootstrap, mode, args.count, args.size, args.per_txn)
                     for _ in range(args.runs)]
            best = min(times)
            results[mode] = {"records": args.count, "record_bytes": args.size, "runs": args.runs,
                             "best_seconds": round(best, 3),
                             "all_seconds": [round(t, 3) for t in times],
                             "records_per_second": round(args.count / best)}
        b.assert_no_panic()
    finally:
        b.cleanup()
    results["transactional_records_per_txn"] = args.per_txn
    results["transactional_vs_plain"] = round(
        results["transactional"]["records_per_second"] / results["plain"]["records_per_second"], 3)
    out = ROOT / "target" / "txn-bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
