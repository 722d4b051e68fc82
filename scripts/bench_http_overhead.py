#!/usr/bin/env python3
"""Produce throughput with the HTTP listener (metrics + console) on vs off (issue 18,
acceptance 4). Runs `gregor bench produce` against two brokers, one started with
`--http 127.0.0.1:0` and scraped every second (as Prometheus would, and the console's
polling), one without; runs are interleaved (off, on, off, on, ...) in one invocation so
machine noise hits both alike. Prints each run and the ratio of the medians.

    python3 scripts/bench_http_overhead.py [--rounds 4] [--duration 5] [--bin target/release/gregor]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from gregor_testlib import DEFAULT_BIN, Broker  # noqa: E402


def bench(bin_path: str, bootstrap: str, duration: int, topic: str) -> float:
    out = subprocess.run(
        [bin_path, "bench", "produce", "--brokers", bootstrap, "--topic", topic,
         "--duration", str(duration), "--record-size", "1024", "--json"],
        check=True, capture_output=True, text=True, timeout=duration + 120,
    ).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    for key in ("records_per_sec", "records_per_second", "rate"):
        if key in summary:
            return float(summary[key])
    return float(summary["records"]) / float(summary["seconds"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--bin", default=str(DEFAULT_BIN))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        off = Broker(Path(a.bin), base_dir=Path(d) / "off").start()
        on = Broker(Path(a.bin), base_dir=Path(d) / "on", http=True).start()
        stop = threading.Event()

        def scraper():
            while not stop.is_set():
                for path in ("/metrics", "/api/overview", "/api/topics/gregor-bench"):
                    try:
                        urllib.request.urlopen(on.http_url + path, timeout=5).read()
                    except Exception:  # noqa: BLE001 - the topic may not exist yet
                        pass
                stop.wait(1.0)

        t = threading.Thread(target=scraper, daemon=True)
        t.start()
        results = {"off": [], "on": []}
        try:
            for r in range(a.rounds):
                order = (("off", off), ("on", on))
                # Alternate which goes first: a bias of the first run in a round (warm
                # caches, the other agents' load) hits both alike.
                for name, b in order if r % 2 == 0 else order[::-1]:
                    rate = bench(a.bin, b.bootstrap, a.duration, "gregor-bench")
                    results[name].append(rate)
                    print(f"round {r + 1} listener {name:3}: {rate:,.0f} records/s", flush=True)
        finally:
            stop.set()
            t.join(10)
            on.cleanup()
            off.cleanup()
    m_off, m_on = statistics.median(results["off"]), statistics.median(results["on"])
    print(f"median off {m_off:,.0f} records/s, on {m_on:,.0f} records/s, on/off = {m_on / m_off:.3f} "
          f"(overhead {100 * (1 - m_on / m_off):+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
