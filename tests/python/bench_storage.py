"""Storage benchmarks through the real broker (not part of CI).

    .venv/bin/python tests/python/bench_storage.py fetch   [--mb 1024]
    .venv/bin/python tests/python/bench_storage.py startup [--partitions 1000]

fetch:   writes --mb MB (1 KB records) with confluent-kafka, then reads all of it back from
         the page cache with a confluent-kafka consumer; reports MB/s and the CPU seconds
         the broker and the client process used (from /proc), i.e. where the time goes;
         --perf FILE adds a `perf record` profile of the broker during the read.
startup: creates a topic with --partitions partitions, writes to each, then measures the
         broker's start time (process start to "listening") after a clean stop and after
         kill -9 (the log line "opened partition logs ... elapsed_ms" is the open phase).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition  # noqa: E402

from gregor_testlib import DEFAULT_BIN, Broker, confluent_common, create_topic_confluent  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def fetch(args):
    b = Broker(Path(os.environ.get("GREGOR_BIN", DEFAULT_BIN)), extra_args=("--fsync", "never")).start()
    try:
        topic = "fetchbench"
        create_topic_confluent(b.bootstrap, topic, 1)
        p = Producer({**confluent_common(b.bootstrap), "acks": 1, "linger.ms": 20,
                      "batch.size": 1 << 20, "compression.type": "none"})
        value = os.urandom(1000)
        n = args.mb * 1000
        for i in range(n):
            while True:
                try:
                    p.produce(topic, value=value, partition=0)
                    break
                except BufferError:
                    p.poll(0.01)
        assert p.flush(300) == 0
        c = Consumer({**confluent_common(b.bootstrap), "group.id": "bench", "enable.auto.commit": False,
                      "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20,
                      "queued.max.messages.kbytes": 1 << 20, "enable.partition.eof": True})
        c.assign([TopicPartition(topic, 0, 0)])
        perf = None
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-F", "499", "-g", "-p", str(b.pid), "-o", args.perf],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        broker_cpu0, self_cpu0 = cpu_seconds(b.pid), time.process_time()
        t0 = time.monotonic()
        got = nbytes = 0
        done = False
        while not done:
            for m in c.consume(10000, 1.0):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF and got >= n:
                        done = True
                    continue
                got += 1
                nbytes += len(m.value())
        dt = time.monotonic() - t0
        broker_cpu = cpu_seconds(b.pid) - broker_cpu0
        client_cpu = time.process_time() - self_cpu0
        c.close()
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait(60)
            rep = subprocess.run(["perf", "report", "-i", args.perf, "--stdio", "--no-children",
                                  "--sort", "dso,symbol", "--percent-limit", "2"],
                                 capture_output=True, text=True).stdout
            print("broker CPU profile (perf, self time, >= 2%):")
            print("\n".join(l for l in rep.splitlines() if l.strip() and not l.startswith("#")
                            and "%" in l and not l.lstrip().startswith("|") and not l.lstrip().startswith("-")))
        print(f"fetch: {got} records, {nbytes / 1e6:.0f} MB in {dt:.2f} s = {nbytes / 1e6 / dt:.0f} MB/s")
        print(f"cpu: broker {broker_cpu:.2f} s ({broker_cpu / dt * 100:.0f}% of one core), "
              f"client (librdkafka + python loop) {client_cpu:.2f} s")
    finally:
        b.cleanup()


def startup(args):
    base = Path(tempfile.mkdtemp(prefix="gregor-startup-"))
    b = Broker(Path(os.environ.get("GREGOR_BIN", DEFAULT_BIN)), base_dir=base).start()
    try:
        topic = "many"
        create_topic_confluent(b.bootstrap, topic, args.partitions, timeout=120)
        p = Producer({**confluent_common(b.bootstrap), "acks": "all", "linger.ms": 50})
        value = b"x" * args.record_bytes
        for part in range(args.partitions):
            for i in range(args.records):
                while True:
                    try:
                        p.produce(topic, value=value, partition=part)
                        break
                    except BufferError:
                        p.poll(0.05)
            p.poll(0)
        assert p.flush(300) == 0
        total_mb = args.partitions * args.records * args.record_bytes / 1e6
        print(f"{args.partitions} partitions, {total_mb:.0f} MB of records")
        for how in ("clean", "kill9"):
            if how == "clean":
                assert b.stop() == 0
            else:
                # let one recovery-point checkpoint (10 s) index the active segments
                time.sleep(11)
                b.kill9()
            t0 = time.monotonic()
            b.start(timeout=300)
            dt = time.monotonic() - t0
            log = ANSI.sub("", b.log_text())
            m = re.findall(r"opened partition logs partitions=(\d+) clean_shutdown=(\w+) "
                           r"scanned_bytes=(\d+) replayed_batches=(\d+) elapsed_ms=(\d+)", log)[-1]
            print(f"start after {how:5}: {dt * 1000:.0f} ms to listening; open phase {m[4]} ms "
                  f"({m[0]} partitions, clean_shutdown={m[1]}, {int(m[2]) / 1e6:.1f} MB validated, "
                  f"{m[3]} batches replayed into producer state)")
            if how == "clean":
                p = Producer({**confluent_common(b.bootstrap), "acks": "all", "linger.ms": 50})
                for part in range(args.partitions):
                    p.produce(topic, value=b"y" * 200, partition=part)
                assert p.flush(300) == 0
    finally:
        b.cleanup()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["fetch", "startup"])
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--records", type=int, default=20, help="startup: records per partition")
    ap.add_argument("--record-bytes", type=int, default=1000, help="startup: record size")
    ap.add_argument("--perf", metavar="FILE", help="fetch: record a perf profile of the broker into FILE")
    args = ap.parse_args()
    {"fetch": fetch, "startup": startup}[args.what](args)


if __name__ == "__main__":
    main()
