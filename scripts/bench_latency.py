"""Issue 23's produce-latency table and the throughput comparison, in one run, alternating a
new and a baseline build (each build's `gregor serve` with its own `gregor bench`), each run
on a fresh broker with its own temp data dir and ephemeral ports.

    cargo build --release --bin gregor
    .venv/bin/python scripts/bench_latency.py --base /tmp/gregor-main [--new target/release/gregor] \
        [--repeat 3] [--count 300000] [--duration 8] [--rate R] [--json]

1. Throughput at the limit: `bench produce --count C --acks all` (defaults: linger 5, 3
   partitions, 1 KiB), new and base alternated, `--repeat` times.
2. Latency at a fixed load: R = 50 % of the new build's median maximum (or --rate), then
   `bench produce --rate R --duration D --linger-ms L` for L in 0 and 5, alternated the same
   way; the new build's runs also print the broker's produce stages (`--broker-metrics`).
Reports every run and the medians.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from gregor_testlib import Broker  # noqa: E402


def json_docs(text: str) -> list:
    """The JSON documents printed one after another (the summary, then the broker stages)."""
    dec, docs, i = json.JSONDecoder(), [], 0
    text = text.strip()
    while i < len(text):
        doc, j = dec.raw_decode(text, i)
        docs.append(doc)
        i = j
        while i < len(text) and text[i].isspace():
            i += 1
    return docs


def bench(bin_path: Path, args: list, http: bool) -> dict:
    """One `bench produce` against a fresh broker of the same build; adds client CPU seconds."""
    b = Broker(bin_path, http=http).start()
    try:
        extra = ["--broker-metrics", b.http_url.removeprefix("http://")] if http else []
        cmd = [str(bin_path), "bench", "produce", "--brokers", b.bootstrap, "--record-size", "1024",
               "--partitions", "3", "--acks", "all", "--json", *args, *extra]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        docs = json_docs(out)
        res = docs[0]
        res["client_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        res["stages"] = next((d["broker_produce_stages"] for d in docs[1:]
                              if "broker_produce_stages" in d), None)
        b.assert_no_panic()
        return res
    finally:
        b.cleanup()


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", default=str(ROOT / "target" / "release" / "gregor"))
    ap.add_argument("--base", required=True, help="baseline build's gregor binary")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--count", type=int, default=300_000, help="0: skip the max runs (needs --rate)")
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--rate", type=int, default=0, help="default: 50 %% of the new build's max")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    builds = {"new": Path(args.new), "base": Path(args.base)}
    load_before = os.getloadavg()[0]
    runs = {"max": {"new": [], "base": []}}
    order = lambda i: ["new", "base"] if i % 2 == 0 else ["base", "new"]  # noqa: E731
    for i in range(args.repeat if args.count else 0):
        for name in order(i):
            r = bench(builds[name], ["--topic", f"max-{i}", "--count", str(args.count)], False)
            runs["max"][name].append(r)
            print(f"max {name}: {r['records_per_sec']:.0f} rec/s {r['mb_per_sec']:.0f} MB/s",
                  file=sys.stderr)
    rate = args.rate or int(0.5 * med([r["records_per_sec"] for r in runs["max"]["new"]]))
    for linger in (0, 5):
        key = f"linger{linger}"
        runs[key] = {"new": [], "base": []}
        for i in range(args.repeat):
            for name in order(i):
                r = bench(builds[name], ["--topic", f"lat-{linger}-{i}", "--rate", str(rate),
                                         "--duration", str(args.duration), "--linger-ms", str(linger)],
                          name == "new")
                runs[key][name].append(r)
                lat = r.get("latency_ms") or {}
                print(f"{key} {name}: {r['records_per_sec']:.0f} rec/s p50 {lat.get('p50')} "
                      f"p99 {lat.get('p99')} cpu {r['client_cpu_s']:.1f}s", file=sys.stderr)
                if r["stages"]:
                    print("  broker stages p99<= ms: " + ", ".join(
                        f"{s} {v['p99_le_ms']}" for s, v in r["stages"].items()), file=sys.stderr)
    load_after = os.getloadavg()[0]

    summary = {"rate": rate, "load_before": load_before, "load_after": load_after}
    for key, by in runs.items():
        summary[key] = {}
        for name, rs in by.items():
            lat = [r.get("latency_ms") or {} for r in rs]
            summary[key][name] = {
                "records_per_sec": med([r["records_per_sec"] for r in rs]),
                "mb_per_sec": med([r["mb_per_sec"] for r in rs]),
                "p50_ms": med([x["p50"] for x in lat if "p50" in x]),
                "p99_ms": med([x["p99"] for x in lat if "p99" in x]),
                "client_cpu_s": med([r["client_cpu_s"] for r in rs]),
                "runs_records_per_sec": [round(r["records_per_sec"]) for r in rs],
                "runs_p99_ms": [x.get("p99") for x in lat],
                "target_reached": [r.get("target_reached") for r in rs],
            }
    if args.json:
        print(json.dumps({"summary": summary, "runs": runs}, indent=1))
        return
    m = summary["max"]
    print(f"load average {load_before:.1f} before, {load_after:.1f} after; medians of {args.repeat}")
    print()
    if not args.count:
        m = None
    if m:
        print("| build | max acks=all (records/s, MB/s) | runs |")
        print("|---|---|---|")
        for name in ("new", "base"):
            s = m[name]
            print(f"| {name} | {s['records_per_sec']:,.0f} rec/s, {s['mb_per_sec']:.0f} MB/s | "
                  f"{', '.join(f'{x:,}' for x in s['runs_records_per_sec'])} |")
        print(f"\nratio new/base: {m['new']['records_per_sec'] / m['base']['records_per_sec']:.2f}")
    print(f"\ntarget rate {rate:,} records/s" + (" (50 % of the new build's max)" if m else "") + ":\n")
    print("| build | linger 0 | linger 5 ms |")
    print("|---|---|---|")
    for name in ("new", "base"):
        cells = []
        for key in ("linger0", "linger5"):
            s = summary[key][name]
            cells.append(f"{s['records_per_sec']:,.0f} rec/s ({100 * s['records_per_sec'] / rate:.0f} %), "
                         f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms "
                         f"(runs {', '.join(f'{x:.1f}' for x in s['runs_p99_ms'] if x is not None)})")
        print(f"| {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
