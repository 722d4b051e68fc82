"""producer.id.expiration.ms: a partition forgets a producer (epoch, last sequences) once
its last batch there is that old, unless it has a transaction open there; a producer whose
state expired is accepted at whatever sequence it continues with (Kafka since KIP-360), so
an idle idempotent producer resumes without losing or duplicating a record. Expiry runs
every producer.id.expiration.check.interval.ms and once when a partition loads, so a
replay after a restart does not bring expired producers back. DescribeProducers reports
each producer's last timestamp."""
from __future__ import annotations

import re
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from gregor_testlib import confluent_common, create_topic_confluent, unique_topic, wait_for
from test_hostile_batches import produce_error
from test_idempotence import OUT_OF_ORDER_SEQUENCE_NUMBER, init_producer_id, now_ms, one
from test_transactions import describe_producers

EXPIRATION_MS = 2000


def expiring_broker(broker_factory, tmp_path, check_interval_ms: int = 200, data_dir=None):
    cfg = tmp_path / f"gregor-{check_interval_ms}.toml"
    cfg.write_text(
        f'"producer.id.expiration.ms" = {EXPIRATION_MS}\n'
        f'"producer.id.expiration.check.interval.ms" = {check_interval_ms}\n'
    )
    return broker_factory(data_dir=data_dir, extra_args=("--config", str(cfg)))


def wait_all_expired(broker, topic: str, partitions: int):
    wait_for(lambda: not any(describe_producers(broker, topic, partitions).values()),
             timeout=30, what="producer state to expire")


def produce_round(p: Producer, topic: str, values: range, acked: dict, errors: list):
    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked[int(msg.value())] = (msg.partition(), msg.offset())

    for i in values:
        while True:
            try:
                p.produce(topic, str(i).encode(), key=str(i % 101).encode(), on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(60) == 0


def read_all(bootstrap: str, topic: str, partitions: int, expected: int) -> list:
    c = Consumer({**confluent_common(bootstrap), "group.id": unique_topic("g"),
                  "enable.auto.commit": False, "enable.partition.eof": False})
    c.assign([TopicPartition(topic, i, 0) for i in range(partitions)])
    out = []
    deadline = time.time() + 60
    while len(out) < expected and time.time() < deadline:
        for m in c.consume(1000, 0.5):
            assert m.error() is None or m.error().code() == KafkaError._PARTITION_EOF, m.error()
            if m.error() is None:
                out.append(m)
    # Anything beyond the expected count (a duplicate) would arrive with the rest.
    for m in c.consume(1000, 1.0):
        if m.error() is None:
            out.append(m)
    c.close()
    return out


def test_idle_idempotent_producer_resumes_after_its_state_expired(broker_factory, tmp_path):
    """A confluent-kafka idempotent producer writes, idles until every partition has
    forgotten it, writes again (sequences continuing, not 0) and again after a second
    expiry: every acknowledged record is in the topic once, at its acked offset, in
    produce order per partition. DescribeProducers shows the producer with the last
    batch's timestamp while it is known."""
    b = expiring_broker(broker_factory, tmp_path)
    topic = unique_topic("pexp")
    partitions = 3
    create_topic_confluent(b.bootstrap, topic, partitions)
    p = Producer({**confluent_common(b.bootstrap), "enable.idempotence": True, "acks": "all",
                  "linger.ms": 5, "message.timeout.ms": 60_000})
    acked: dict[int, tuple[int, int]] = {}
    errors: list = []
    per_round = 3000
    identities = set()
    for rnd in range(3):
        before = now_ms()
        produce_round(p, topic, range(rnd * per_round, (rnd + 1) * per_round), acked, errors)
        assert not errors, errors[:5]
        state = describe_producers(b, topic, partitions)
        # Right after the flush the producer is known where it wrote last (a partition
        # whose last batch came early in the round may already have forgotten it).
        listed = [prod for producers in state.values() for prod in producers]
        assert listed and all(len(x) <= 1 for x in state.values()), state
        assert len({prod["pid"] for prod in listed}) == 1, state
        # The broker accepted the resumed sequences: no new producer id, no epoch bump.
        identities.add((listed[0]["pid"], listed[0]["epoch"]))
        assert len(identities) == 1, identities
        for prod in listed:
            # The last batch's timestamp (librdkafka stamps records with the wall clock).
            assert before - 1000 <= prod["ts"] <= now_ms() + 1000, (prod, before)
            assert prod["last_seq"] > 0 and prod["txn_start"] == -1, prod
        if rnd < 2:
            wait_all_expired(b, topic, partitions)
    assert len(acked) == 3 * per_round

    msgs = read_all(b.bootstrap, topic, partitions, len(acked))
    seen: dict[int, tuple[int, int]] = {}
    per_partition: dict[int, list[int]] = {i: [] for i in range(partitions)}
    for m in msgs:
        v = int(m.value())
        assert v not in seen, f"record {v} read twice (at {seen[v]} and {m.partition(), m.offset()})"
        seen[v] = (m.partition(), m.offset())
        per_partition[m.partition()].append(v)
    assert seen == acked, "a record is missing or not at the offset its delivery report gave"
    for part, values in per_partition.items():
        assert values == sorted(values), f"partition {part} out of produce order"
    b.assert_no_panic()


def test_expired_producer_is_accepted_at_its_next_sequence_raw(broker_factory, tmp_path):
    """The error code question, on the wire: before expiry a sequence gap is
    OUT_OF_ORDER_SEQUENCE_NUMBER; once the producer's state expired, the same kind of
    non-zero, non-continuing sequence is accepted (error 0), as Kafka does since KIP-360
    (Kafka before 2.5 answered UNKNOWN_PRODUCER_ID), and from there the producer is
    tracked again (duplicates and gaps)."""
    b = expiring_broker(broker_factory, tmp_path)
    topic = unique_topic("pexp-raw")
    create_topic_confluent(b.bootstrap, topic, 1)
    error, pid, epoch = init_producer_id(b)
    assert error == 0
    assert produce_error(b, topic, one(pid, epoch, 0, 3)) == (0, 0)
    assert produce_error(b, topic, one(pid, epoch, 7, 1))[0] == OUT_OF_ORDER_SEQUENCE_NUMBER
    wait_all_expired(b, topic, 1)
    assert produce_error(b, topic, one(pid, epoch, 7, 1)) == (0, 3)
    (prod,) = describe_producers(b, topic, 1)[0]
    assert (prod["pid"], prod["last_seq"]) == (pid, 7)
    assert produce_error(b, topic, one(pid, epoch, 7, 1)) == (0, 3), "a retry is a duplicate again"
    assert produce_error(b, topic, one(pid, epoch, 8, 2)) == (0, 4)
    assert produce_error(b, topic, one(pid, epoch, 20, 1))[0] == OUT_OF_ORDER_SEQUENCE_NUMBER


def test_restart_does_not_resurrect_expired_producers(broker_factory, tmp_path):
    """Expired producers stay gone across kill -9 (the replay from an older snapshot
    re-derives them; the load expires them again) and across a clean restart, even with a
    check interval so long that only the load-time expiry can have removed them. A
    producer with an open transaction is never expired."""
    b = expiring_broker(broker_factory, tmp_path)
    topic = unique_topic("pexp-restart")
    create_topic_confluent(b.bootstrap, topic, 1, config={"segment.bytes": "1024"})
    error, pid, epoch = init_producer_id(b)
    assert error == 0
    for seq in range(0, 60, 2):
        assert produce_error(b, topic, one(pid, epoch, seq, 2)) == (0, seq)
    pdir = b.data_dir / f"{topic}-0"
    wait_for(lambda: list(pdir.glob("*.snapshot")), what="a roll snapshot")
    # A transactional producer with an open transaction in the same partition.
    txp = Producer({**confluent_common(b.bootstrap), "transactional.id": unique_topic("tx")})
    txp.init_transactions(30)
    txp.begin_transaction()
    txp.produce(topic, b"open")
    assert txp.flush(30) == 0

    def pids():
        return sorted(x["pid"] for x in describe_producers(b, topic, 1)[0])

    wait_for(lambda: pid not in pids(), timeout=30, what="the idempotent producer to expire")
    (txn,) = describe_producers(b, topic, 1)[0]
    assert txn["txn_start"] >= 0, txn
    # The open transaction keeps its producer however long it idles.
    time.sleep(EXPIRATION_MS * 1.5 / 1000)
    assert pids() == [txn["pid"]]

    b.kill9()
    # A check interval that cannot run during the test: only the load expires.
    b2 = expiring_broker(broker_factory, tmp_path, check_interval_ms=600_000, data_dir=b.data_dir)
    assert pids_on(b2, topic) == [txn["pid"]]
    loads = producer_state_loads(b2, topic)
    assert loads and loads[-1][1] > 0 and loads[-1][2] == 1, loads
    # Clean restart: the shutdown snapshot leaves the expired producer out.
    assert b2.stop() == 0
    b3 = expiring_broker(broker_factory, tmp_path, check_interval_ms=600_000, data_dir=b.data_dir)
    assert pids_on(b3, topic) == [txn["pid"]]
    assert producer_state_loads(b3, topic)[-1][1:] == (0, 0)
    b3.assert_no_panic()
    del txp


def pids_on(broker, topic: str) -> list[int]:
    return sorted(x["pid"] for x in describe_producers(broker, topic, 1)[0])


def producer_state_loads(broker, topic: str) -> list[tuple[int, int, int]]:
    """(snapshot offset, replayed batches, expired producers) of each load of partition 0
    logged by `broker`."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", broker.log_text())
    pat = re.compile(
        rf'producer state loaded.*topic="?{re.escape(topic)}"? partition=0 '
        r"snapshot_offset=(-?\d+) replayed_batches=(\d+) .*expired_producers=(\d+)"
    )
    return [tuple(int(g) for g in m.groups()) for m in pat.finditer(text)]
