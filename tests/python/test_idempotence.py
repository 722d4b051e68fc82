"""Idempotent produce: duplicates of recent batches are answered with their original offsets
and written once, sequence gaps and old epochs are refused, and a confluent-kafka producer
with enable.idempotence=true writes every record exactly once while the broker is killed
with -9 and restarted under it."""
from __future__ import annotations

import re
import struct
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from gregor_testlib import create_topic_confluent, unique_topic, wait_for
from test_hostile_batches import batch, produce_error, record
from test_raw_protocol import header_v1, roundtrip

OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47


def init_producer_id(broker) -> tuple[int, int, int]:
    # InitProducerId v1: transactional_id (null), transaction_timeout_ms
    resp = roundtrip(broker, header_v1(22, 1, 5) + struct.pack(">hi", -1, 60_000))
    _corr, _throttle, error, pid, epoch = struct.unpack_from(">iihqh", resp)
    return error, pid, epoch


def now_ms() -> int:
    return int(time.time() * 1000)


def one(pid: int, epoch: int, seq: int, n: int = 1) -> bytes:
    # Stamped now: a producer's state expires producer.id.expiration.ms after its last
    # batch's timestamp (also on load), so a 1970 timestamp would expire at a restart.
    return batch(b"".join(record(i, b"v%d" % (seq + i)) for i in range(n)), n,
                 producer_id=pid, producer_epoch=epoch, base_sequence=seq, timestamp=now_ms())


def test_init_producer_id_hands_out_distinct_ids(broker):
    ids = set()
    for _ in range(5):
        error, pid, epoch = init_producer_id(broker)
        assert error == 0 and epoch == 0 and pid >= 0
        ids.add(pid)
    assert len(ids) == 5
    broker.restart()
    error, pid, _ = init_producer_id(broker)
    assert error == 0 and pid not in ids, "a producer id was handed out twice across a restart"


def test_duplicates_gaps_and_epochs(broker):
    topic = unique_topic("idem")
    create_topic_confluent(broker.bootstrap, topic, 1)
    _, pid, _ = init_producer_id(broker)
    assert produce_error(broker, topic, one(pid, 0, 0, 3)) == (0, 0)
    assert produce_error(broker, topic, one(pid, 0, 3, 2)) == (0, 3)
    # A retry of either recent batch gets its original offset and is not written again.
    assert produce_error(broker, topic, one(pid, 0, 0, 3)) == (0, 0)
    assert produce_error(broker, topic, one(pid, 0, 3, 2)) == (0, 3)
    assert produce_error(broker, topic, one(pid, 0, 5, 1)) == (0, 5)
    # A gap is refused.
    assert produce_error(broker, topic, one(pid, 0, 9, 1))[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
    # A new epoch starts at 0; after it, the old epoch is fenced.
    assert produce_error(broker, topic, one(pid, 1, 0, 1)) == (0, 6)
    assert produce_error(broker, topic, one(pid, 0, 6, 1))[0] == INVALID_PRODUCER_EPOCH
    # State survives a restart (rebuilt from the log): the retry is still a duplicate.
    broker.kill9()
    broker.start()
    assert produce_error(broker, topic, one(pid, 1, 0, 1)) == (0, 6)
    assert produce_error(broker, topic, one(pid, 1, 1, 1)) == (0, 7)

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "x", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    offsets = []
    deadline = time.time() + 20
    while len(offsets) < 8 and time.time() < deadline:
        m = c.poll(1)
        if m is not None and m.error() is None:
            offsets.append(m.offset())
    c.close()
    assert offsets == list(range(8))


def test_idempotent_producer_exactly_once_through_kill9(broker):
    """Issue 7, acceptance 1: 100,000 sequenced records, the broker killed -9 and restarted
    three times while they are in flight; every record is in the topic exactly once, in
    order per partition, at the offset its delivery report gave."""
    broker.keep_port()
    topic = unique_topic("idem-kill")
    partitions = 3
    create_topic_confluent(broker.bootstrap, topic, partitions)
    total = 100_000
    acked: dict[int, tuple[int, int]] = {}
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked[int(msg.value())] = (msg.partition(), msg.offset())

    p = Producer({
        "bootstrap.servers": broker.bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 120_000,
        "reconnect.backoff.ms": 20,
        "reconnect.backoff.max.ms": 200,
    })
    kills_at = [20_000, 50_000, 80_000]
    kills = 0
    for i in range(total):
        while True:
            try:
                p.produce(topic, str(i).encode(), key=str(i % 997).encode(), on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        if kills < len(kills_at) and i == kills_at[kills]:
            p.poll(0)
            broker.kill9()
            broker.start()
            kills += 1
    assert p.flush(120) == 0
    assert not errors, errors[:5]
    assert len(acked) == total

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "v", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, i, 0) for i in range(partitions)])
    seen: dict[int, tuple[int, int]] = {}
    per_partition: dict[int, list[int]] = {i: [] for i in range(partitions)}
    deadline = time.time() + 60
    count = 0
    while count < total and time.time() < deadline:
        for m in c.consume(10_000, 1.0):
            if m.error() is not None:
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                continue
            v = int(m.value())
            assert v not in seen, f"record {v} read twice (at {seen[v]} and {m.partition(), m.offset()})"
            seen[v] = (m.partition(), m.offset())
            per_partition[m.partition()].append(v)
            count += 1
    c.close()
    assert count == total
    assert seen == acked, "a record is not at the offset its delivery report gave"
    for part, values in per_partition.items():
        assert values == sorted(values), f"partition {part} out of produce order"
    assert kills == 3


def producer_state_loads(broker, topic: str, partition: int = 0) -> list[tuple[int, int]]:
    """(snapshot offset, replayed batches) of every start in the broker's log that loaded
    producer state for the partition (-1: no snapshot, replayed from the log start)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", broker.log_text())
    pat = re.compile(
        rf'producer state loaded.*topic="?{re.escape(topic)}"? partition={partition} '
        r"snapshot_offset=(-?\d+) replayed_batches=(\d+)"
    )
    return [(int(m.group(1)), int(m.group(2))) for m in pat.finditer(text)]


def test_producer_state_snapshot_on_clean_restart(broker):
    """A clean stop writes each partition's producer state at the log end
    (`<offset>.snapshot`); the next start loads it and replays nothing, and duplicates are
    still recognised. The old single `producer-state.snapshot` is removed."""
    topic = unique_topic("snap")
    create_topic_confluent(broker.bootstrap, topic, 1)
    _, pid, _ = init_producer_id(broker)
    assert produce_error(broker, topic, one(pid, 0, 0, 2)) == (0, 0)
    assert produce_error(broker, topic, one(pid, 0, 2, 1)) == (0, 2)
    assert broker.stop() == 0
    pdir = broker.data_dir / f"{topic}-0"
    snapshot = pdir / f"{3:020}.snapshot"
    assert snapshot.exists()
    legacy = pdir / "producer-state.snapshot"
    legacy.write_text("{}")
    broker.start()
    assert not legacy.exists()
    assert producer_state_loads(broker, topic)[-1] == (3, 0)
    assert produce_error(broker, topic, one(pid, 0, 0, 2)) == (0, 0)
    assert produce_error(broker, topic, one(pid, 0, 3, 1)) == (0, 3)
    assert produce_error(broker, topic, one(pid, 0, 9, 1))[0] == OUT_OF_ORDER_SEQUENCE_NUMBER


def test_kill9_replays_only_the_tail_after_the_last_snapshot(broker):
    """Segment rolls write producer snapshots; after kill -9 the start loads the newest and
    replays only the batches after it, and idempotent dedup still holds."""
    topic = unique_topic("snap9")
    create_topic_confluent(broker.bootstrap, topic, 1, config={"segment.bytes": "8192"})
    _, pid, _ = init_producer_id(broker)
    value = b"x" * 500
    total = 300
    for seq in range(total):
        b = batch(record(0, value), 1, producer_id=pid, producer_epoch=0, base_sequence=seq,
                  timestamp=now_ms())
        assert produce_error(broker, topic, b) == (0, seq)
    pdir = broker.data_dir / f"{topic}-0"
    segments = sorted(pdir.glob("*.log"))
    assert len(segments) > 10
    wait_for(lambda: len(list(pdir.glob("*.snapshot"))) >= 2, what="roll snapshots")
    time.sleep(0.5)  # the flusher writes a roll's snapshot just after answering the produce
    snapshots = sorted(int(p.name.split(".")[0]) for p in pdir.glob("*.snapshot"))
    assert len(snapshots) <= 3, "old snapshots are deleted"
    broker.kill9()
    broker.start()
    snap_offset, replayed = producer_state_loads(broker, topic)[-1]
    assert snap_offset == snapshots[-1] > 0
    assert replayed == total - snap_offset < total // 5, (snap_offset, replayed)
    # The last batch retried after the restart gets its original offset; the next is new.
    last = batch(record(0, value), 1, producer_id=pid, producer_epoch=0, base_sequence=total - 1,
                 timestamp=now_ms())
    assert produce_error(broker, topic, last) == (0, total - 1)
    nxt = batch(record(0, value), 1, producer_id=pid, producer_epoch=0, base_sequence=total,
                timestamp=now_ms())
    assert produce_error(broker, topic, nxt) == (0, total)
    gap = batch(record(0, value), 1, producer_id=pid, producer_epoch=0, base_sequence=total + 5,
                timestamp=now_ms())
    assert produce_error(broker, topic, gap)[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
    # A clean restart loads the shutdown snapshot and replays nothing.
    broker.restart()
    assert producer_state_loads(broker, topic)[-1] == (total + 1, 0)
    assert produce_error(broker, topic, nxt) == (0, total)
