"""Exactly-once consume-transform-produce processor, run as its own process so tests can
kill it with -9: reads `in` (manually assigned, read_committed, offsets from the group's
committed offsets), writes `out-<value>` to `out` and commits its input offsets in the same
transaction (send_offsets_to_transaction). Runs until killed; exits non-zero on an error
(the test restarts it).

usage: txn_processor.py BOOTSTRAP IN_TOPIC OUT_TOPIC GROUP TRANSACTIONAL_ID PARTITIONS [BATCH]
"""
from __future__ import annotations

import sys

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition


def main() -> int:
    bootstrap, in_topic, out_topic, group, txn_id, partitions = sys.argv[1:7]
    batch = int(sys.argv[7]) if len(sys.argv) > 7 else 500
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "transactional.id": txn_id,
        "transaction.timeout.ms": 30_000,
        "linger.ms": 5,
    })
    # Fences the previous incarnation and aborts its open transaction before we read
    # committed offsets.
    producer.init_transactions(30)
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
    })
    tps = [TopicPartition(in_topic, p) for p in range(int(partitions))]
    committed = consumer.committed(tps, timeout=30)
    consumer.assign([
        TopicPartition(in_topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
        for tp in committed
    ])
    print("started", [(tp.partition, tp.offset) for tp in committed], flush=True)
    done = 0
    while True:
        msgs = consumer.consume(num_messages=batch, timeout=0.5)
        msgs = [m for m in msgs if m.error() is None]
        if not msgs:
            continue
        producer.begin_transaction()
        next_offsets: dict[int, int] = {}
        for m in msgs:
            producer.produce(out_topic, key=m.key(), value=b"out-" + m.value())
            next_offsets[m.partition()] = m.offset() + 1
        producer.send_offsets_to_transaction(
            [TopicPartition(in_topic, p, o) for p, o in next_offsets.items()],
            consumer.consumer_group_metadata(),
            30,
        )
        producer.commit_transaction(30)
        done += len(msgs)
        print("committed", done, flush=True)


if __name__ == "__main__":
    sys.exit(main())
