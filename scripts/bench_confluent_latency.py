"""confluent-kafka (librdkafka) produce latency at a fixed rate against a fresh `gregor serve`,
with linger 0 and 5, and the broker's produce stages for the same run (issue 23).

    .venv/bin/python scripts/bench_confluent_latency.py [--rate 50000] [--duration 8] [--repeat 1]

Latency is from the time each record was due (rate schedule) to its delivery callback
(served by poll() every millisecond or so, which adds up to that to each record); client
CPU is the whole process's (Python loop and librdkafka threads). GREGOR_BIN picks the broker.
"""

import argparse
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from gregor_testlib import DEFAULT_BIN, Broker, confluent_common, create_topic_confluent  # noqa: E402

STAGES = ["queued", "append", "durable_wait", "response_write", "total", "fsync_round"]


def scrape(url: str) -> dict:
    """stage -> [(le, cumulative count)] of gregor_produce_stage_seconds."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if not line.startswith("gregor_produce_stage_seconds_bucket{"):
            continue
        labels, value = line[line.index("{") + 1:].split("} ")
        kv = dict(x.split("=", 1) for x in labels.split(","))
        le = kv["le"].strip('"')
        out.setdefault(kv["stage"].strip('"'), []).append(
            (float("inf") if le == "+Inf" else float(le), float(value)))
    return out


def stage_p99(before: dict, after: dict) -> dict:
    res = {}
    for s in STAGES:
        b = dict(before.get(s, []))
        d = [(le, c - b.get(le, 0)) for le, c in sorted(after.get(s, []))]
        total = d[-1][1] if d else 0
        if not total:
            continue
        rank = 0.99 * total
        res[s] = next(le for le, c in d if c >= rank) * 1e3
    return res


def run(b: Broker, topic: str, rate: int, duration: float, linger: int) -> dict:
    from confluent_kafka import Producer

    create_topic_confluent(b.bootstrap, topic, 3)
    p = Producer({**confluent_common(b.bootstrap), "acks": "all", "linger.ms": linger,
                  "enable.idempotence": True, "queue.buffering.max.messages": 1_000_000})
    payload = os.urandom(1024)
    lat = []
    errors = [0]

    def cb(err, msg, due):
        if err is not None:
            errors[0] += 1
        else:
            lat.append(time.perf_counter() - due)

    before = scrape(b.http_url)
    cpu0, t0 = time.process_time(), time.perf_counter()
    n, total = 0, int(rate * duration)
    while n < total:
        now = time.perf_counter()
        due_n = min(total, int((now - t0) * rate) + 1)
        while n < due_n:
            due = t0 + n / rate
            try:
                p.produce(topic, payload, on_delivery=lambda e, m, d=due: cb(e, m, d))
                n += 1
            except BufferError:
                p.poll(0.001)
        p.poll(0)
        left = t0 + n / rate - time.perf_counter()
        if left > 0:
            p.poll(min(left, 0.001))
    p.flush(60)
    secs = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    after = scrape(b.http_url)
    lat.sort()
    q = lambda x: lat[min(len(lat) - 1, int(x * len(lat)))] * 1e3 if lat else float("nan")  # noqa: E731
    return {"linger": linger, "records_per_sec": len(lat) / secs, "p50_ms": q(0.5), "p99_ms": q(0.99),
            "client_cpu_pct": 100 * cpu / secs, "errors": errors[0], "broker_p99_le_ms": stage_p99(before, after)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=50_000)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    import confluent_kafka

    print(f"confluent-kafka {confluent_kafka.version()} (librdkafka {confluent_kafka.libversion()[0]}), "
          f"target {args.rate} records/s, 1 KiB, 3 partitions, acks=all, idempotence")
    results = {0: [], 5: []}
    for i in range(args.repeat):
        for linger in ((0, 5) if i % 2 == 0 else (5, 0)):
            b = Broker(Path(os.environ.get("GREGOR_BIN", DEFAULT_BIN)), http=True).start()
            try:
                r = run(b, f"ck-{linger}-{i}", args.rate, args.duration, linger)
                b.assert_no_panic()
            finally:
                b.cleanup()
            results[linger].append(r)
            stages = ", ".join(f"{k} {v:g}" for k, v in r["broker_p99_le_ms"].items())
            print(f"linger {linger}: {r['records_per_sec']:,.0f} rec/s, p50 {r['p50_ms']:.1f} ms, "
                  f"p99 {r['p99_ms']:.1f} ms, client CPU {r['client_cpu_pct']:.0f} %, "
                  f"errors {r['errors']}; broker p99<= ms: {stages}")
    for linger, rs in results.items():
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        print(f"median linger {linger}: {med('records_per_sec'):,.0f} rec/s, p50 {med('p50_ms'):.1f} ms, "
              f"p99 {med('p99_ms'):.1f} ms, client CPU {med('client_cpu_pct'):.0f} %")


if __name__ == "__main__":
    main()
