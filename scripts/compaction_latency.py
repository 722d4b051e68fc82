#!/usr/bin/env python3
"""Does the compaction cleaner stall produce latency?

Starts the release `gregor` binary on an ephemeral port with a temp data dir, then:

1. fills a compacted topic with `--fill-mib` MiB of 1 KB records over 1,000 keys while
   `min.compaction.lag.ms` holds the cleaner off;
2. measures acks=all produce latency on another topic (one record at a time, each waited
   for) for `--seconds` seconds: the baseline;
3. sets `min.compaction.lag.ms=0` (IncrementalAlterConfigs), so the cleaner rewrites the
   whole compacted log, and measures the same produce latency until the broker logs that
   the pass finished. Only the produces that started while the pass ran (the log line's
   time minus the pass's elapsed_ms) count.

Prints one JSON object: p50/p99/max of both phases, their ratio, and the cleaner's pass.
Both phases run on the same broker in the same run, so the ratio is what to read.

    .venv/bin/python scripts/compaction_latency.py --fill-mib 256
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import (  # noqa: E402
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from gregor_testlib import Broker  # noqa: E402


def percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))]


def summary(lat: list[tuple[float, float]]) -> dict:
    s = sorted(ms for _, ms in lat)
    return {"produces": len(s), "p50_ms": round(percentile(s, 0.5), 3),
            "p99_ms": round(percentile(s, 0.99), 3), "max_ms": round(s[-1], 3)}


def measure(p: Producer, topic: str, until) -> list[tuple[float, float]]:
    """(wall-clock start, latency ms) of each produce until `until()`."""
    lat = []
    value = b"v" * 1000
    while not until():
        wall, t = time.time(), time.perf_counter()
        p.produce(topic, value=value)
        assert p.flush(30) == 0
        lat.append((wall, (time.perf_counter() - t) * 1000))
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fill-mib", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "gregor"))
    args = ap.parse_args()

    conf_file = Path(__import__("tempfile").mkdtemp(prefix="gregor-cl-")) / "broker.toml"
    conf_file.write_text('"log.cleaner.backoff.ms" = 200\n')
    broker = Broker(Path(args.bin), extra_args=("--config", str(conf_file))).start()
    try:
        bs = broker.bootstrap
        admin = AdminClient({"bootstrap.servers": bs})
        compacted, hot = "compacted", "hot"
        futs = admin.create_topics([
            NewTopic(compacted, 1, 1, config={
                "cleanup.policy": "compact", "segment.bytes": str(8 << 20),
                "min.cleanable.dirty.ratio": "0.01", "min.compaction.lag.ms": "3600000"}),
            NewTopic(hot, 1, 1),
        ])
        for f in futs.values():
            f.result()

        fill = Producer({"bootstrap.servers": bs, "acks": "1", "linger.ms": 20})
        n = args.fill_mib * 1024
        value = b"x" * 1000
        for i in range(n):
            while True:
                try:
                    fill.produce(compacted, key=f"key-{i % 1000}".encode(), value=value)
                    break
                except BufferError:
                    fill.poll(0.01)
        assert fill.flush(120) == 0

        p = Producer({"bootstrap.servers": bs, "acks": "all", "linger.ms": 0})
        # Warm up (connection, metadata), then the baseline.
        warm_end = time.monotonic() + 1
        measure(p, hot, lambda: time.monotonic() > warm_end)
        base_end = time.monotonic() + args.seconds
        baseline = measure(p, hot, lambda: time.monotonic() > base_end)

        log = broker.log_path
        before = log.read_text(errors="replace").count("compacted log")
        res = ConfigResource(ConfigResource.Type.TOPIC, compacted, incremental_configs=[
            ConfigEntry("min.compaction.lag.ms", "0", incremental_operation=AlterConfigOpType.SET)])
        for f in admin.incremental_alter_configs([res]).values():
            f.result()
        started = time.monotonic()

        def done() -> bool:
            if time.monotonic() > started + 600:
                raise SystemExit("cleaner did not finish within 600 s")
            return log.read_text(errors="replace").count("compacted log") > before

        during = measure(p, hot, done)
        line = [ln for ln in log.read_text(errors="replace").splitlines() if "compacted log" in ln][-1]
        plain = re.sub(r"\x1b\[[0-9;]*m", "", line)
        clean = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", plain)}
        stamp = re.match(r"\S*?(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", plain)
        end = datetime.fromisoformat(stamp.group(1)).replace(tzinfo=timezone.utc).timestamp()
        begin = end - clean["elapsed_ms"] / 1000
        during = [x for x in during if begin <= x[0] <= end]
        b, d = summary(baseline), summary(during)
        out = {
            "fill_mib": args.fill_mib,
            "baseline": b,
            "while_cleaning": d,
            "p99_ratio": round(d["p99_ms"] / b["p99_ms"], 2),
            "p50_ratio": round(d["p50_ms"] / b["p50_ms"], 2),
            "cleaner_pass": clean,
        }
        print(json.dumps(out, indent=2))
    finally:
        broker.cleanup()
        import shutil
        shutil.rmtree(conf_file.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
