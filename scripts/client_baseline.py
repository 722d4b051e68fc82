#!/usr/bin/env python3
"""Produce/consume throughput baseline with confluent-kafka (librdkafka).

Usage: .venv/bin/python scripts/client_baseline.py BOOTSTRAP [--records N] [--size BYTES]
                                                             [--partitions P] [--acks all|1|0]

Creates a fresh topic, produces N records of SIZE bytes, then consumes them all back with
manual assignment, and prints records/s and MB/s for both phases. Not part of CI: a
measurement tool whose numbers go into notes as a baseline for later work.
"""
import argparse
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bootstrap")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--acks", default="all")
    ap.add_argument("--compression", default="none")
    args = ap.parse_args()

    topic = f"baseline-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    admin.create_topics([NewTopic(topic, args.partitions, 1)])[topic].result(30)

    payload = b"x" * args.size
    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "acks": args.acks,
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "compression.type": args.compression,
        "queue.buffering.max.messages": 1_000_000,
    })
    failures = 0

    def on_delivery(err, _msg):
        nonlocal failures
        if err is not None:
            failures += 1

    start = time.perf_counter()
    for i in range(args.records):
        while True:
            try:
                producer.produce(topic, payload, key=str(i).encode(), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    produce_s = time.perf_counter() - start
    mb = args.records * args.size / 1e6
    print(f"produce: {args.records} x {args.size} B, {args.partitions} partitions, acks={args.acks}, "
          f"compression={args.compression}: {produce_s:.2f} s, {args.records / produce_s:,.0f} rec/s, "
          f"{mb / produce_s:.1f} MB/s, failures={failures}")

    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": "baseline",
        "enable.auto.commit": False,
        "fetch.max.bytes": 52_428_800,
        "max.partition.fetch.bytes": 10_485_760,
    })
    consumer.assign([TopicPartition(topic, p, 0) for p in range(args.partitions)])
    got = 0
    start = time.perf_counter()
    while got < args.records:
        batch = consumer.consume(10_000, 5.0)
        for m in batch:
            if m.error() is None:
                got += 1
        if not batch and time.perf_counter() - start > 120:
            break
    consume_s = time.perf_counter() - start
    consumer.close()
    print(f"consume: {got} records: {consume_s:.2f} s, {got / consume_s:,.0f} rec/s, "
          f"{got * args.size / 1e6 / consume_s:.1f} MB/s")


if __name__ == "__main__":
    main()
