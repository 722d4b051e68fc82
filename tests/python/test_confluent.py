"""confluent-kafka (librdkafka) against a real gregor process."""

from __future__ import annotations

import signal
import time
from collections import defaultdict

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from gregor_testlib import (
    confluent_assign_consumer,
    confluent_common,
    confluent_producer,
    create_topic_confluent,
    java_partition,
    murmur2,
    to_signed32,
    unique_topic,
    wait_for,
    wait_for_topic_confluent,
)

TS_BASE = 1_700_000_000_000  # explicit CreateTime timestamps (ms)


# ------------------------------------------------------------------ helpers
def make_producer(bootstrap: str, **extra) -> Producer:
    return confluent_producer(bootstrap, linger_ms=5, message_timeout_ms=60000, **extra)


def make_consumer(bootstrap: str, **extra) -> Consumer:
    return confluent_assign_consumer(bootstrap, **{"enable.auto.offset.store": False, **extra})


def produce_all(producer: Producer, records, flush_timeout=120):
    """Produce ``records`` (dicts of Producer.produce kwargs) and return the
    delivery reports in callback order as (index, partition, offset)."""
    reports = []
    errors = []

    def cb_for(i):
        def cb(err, msg):
            if err is not None:
                errors.append((i, err))
            else:
                reports.append((i, msg.partition(), msg.offset()))

        return cb

    for i, rec in enumerate(records):
        while True:
            try:
                producer.produce(on_delivery=cb_for(i), **rec)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(flush_timeout)
    assert remaining == 0, f"{remaining} messages still undelivered after {flush_timeout}s"
    assert not errors, f"delivery errors (first 5): {errors[:5]}"
    assert len(reports) == len(records)
    return reports


def consume_all(bootstrap: str, topic: str, partitions: int, expected: int, timeout=120, start=OFFSET_BEGINNING):
    """assign() every partition from ``start`` and read until EOF on all
    partitions with at least ``expected`` messages. Returns {partition: [msg]}."""
    c = make_consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, p, start) for p in range(partitions)])
        got = defaultdict(list)
        eof = set()
        count = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in c.consume(num_messages=1000, timeout=1.0):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        eof.add(msg.partition())
                        continue
                    raise KafkaException(err)
                got[msg.partition()].append(msg)
                eof.discard(msg.partition())
                count += 1
            if count >= expected and len(eof) == partitions:
                break
        assert count == expected, f"consumed {count} records, expected {expected}"
        assert len(eof) == partitions, f"no EOF on partitions {set(range(partitions)) - eof}"
        return got
    finally:
        c.close()


def error_code_of(exc: BaseException):
    assert isinstance(exc, KafkaException), repr(exc)
    return exc.args[0].code()


def expect_future_error(future, code, timeout=30):
    with pytest.raises(KafkaException) as ei:
        future.result(timeout)
    got = error_code_of(ei.value)
    assert got == code, f"expected {KafkaError(code).name()} got {ei.value.args[0]}"


def admin_for(bootstrap: str) -> AdminClient:
    return AdminClient(confluent_common(bootstrap))


# ------------------------------------------------------ murmur2 self-check
@pytest.mark.parametrize(
    "data,expected",
    [
        # vectors from Kafka's UtilsTest.testMurmur2
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (bytes([ord("a"), ord("b"), ord("c")]), 479470107),
    ],
)
def test_murmur2_matches_java(data, expected):
    assert to_signed32(murmur2(data)) == expected


# ------------------------------------------------------------ round trips
@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_produce_consume_roundtrip(broker, compression):
    n = 10_000
    partitions = 3
    topic = unique_topic(f"rt-{compression}")
    create_topic_confluent(broker.bootstrap, topic, partitions)

    p = make_producer(
        broker.bootstrap,
        **{"partitioner": "murmur2_random", "compression.type": compression},
    )
    records = [
        dict(
            topic=topic,
            key=f"key-{i % 500}".encode(),
            value=f"value-{i}-{compression}".encode(),
            headers=[("h-index", str(i).encode()), ("h-codec", compression.encode())],
            timestamp=TS_BASE + i,
        )
        for i in range(n)
    ]
    reports = produce_all(p, records)

    # Delivery reports: partition = Java murmur2; offsets dense per partition.
    by_part = defaultdict(list)
    for i, part, off in reports:
        assert part == java_partition(records[i]["key"], partitions), f"record {i} in wrong partition"
        by_part[part].append((off, i))
    for part, lst in by_part.items():
        lst.sort()
        assert [o for o, _ in lst] == list(range(len(lst))), f"offsets of partition {part} not dense from 0"
        idx = [i for _, i in lst]
        assert idx == sorted(idx), f"partition {part}: offsets not in produce order"

    got = consume_all(broker.bootstrap, topic, partitions, n)
    assert set(got) <= set(range(partitions))
    for part in range(partitions):
        msgs = got.get(part, [])
        expected = by_part.get(part, [])
        assert [(m.offset(), int(m.value().split(b"-")[1])) for m in msgs] == expected, (
            f"partition {part}: consumed (offset, index) sequence differs from delivery reports"
        )
        for m in msgs:
            i = int(m.value().split(b"-")[1])
            rec = records[i]
            assert m.key() == rec["key"]
            assert m.value() == rec["value"]
            assert m.topic() == topic
            assert m.headers() == rec["headers"]
            ts_type, ts = m.timestamp()
            assert ts_type == 1, "expected CreateTime timestamps"  # TIMESTAMP_CREATE_TIME
            assert ts == rec["timestamp"]
            assert part == java_partition(m.key(), partitions)


def test_null_key_and_empty_value(broker):
    topic = unique_topic("nulls")
    create_topic_confluent(broker.bootstrap, topic, 1)
    p = make_producer(broker.bootstrap)
    records = [
        dict(topic=topic, partition=0, key=None, value=b"v0"),
        dict(topic=topic, partition=0, key=b"k1", value=None),
        dict(topic=topic, partition=0, key=b"", value=b""),
    ]
    produce_all(p, records)
    got = consume_all(broker.bootstrap, topic, 1, 3)[0]
    assert [(m.key(), m.value()) for m in got] == [(None, b"v0"), (b"k1", None), (b"", b"")]


# --------------------------------------------------------------- offsets
def test_list_offsets_earliest_latest_by_time(broker):
    topic = unique_topic("lo")
    create_topic_confluent(broker.bootstrap, topic, 1)
    p = make_producer(broker.bootstrap)
    n = 100
    # several batches so time lookups cross batch boundaries
    for start in range(0, n, 20):
        produce_all(
            p,
            [
                dict(topic=topic, partition=0, key=b"k", value=str(i).encode(), timestamp=TS_BASE + i * 10)
                for i in range(start, start + 20)
            ],
        )

    c = make_consumer(broker.bootstrap)
    try:
        tp = TopicPartition(topic, 0)
        assert c.get_watermark_offsets(tp, timeout=10, cached=False) == (0, n)

        queries = {
            TS_BASE - 1000: 0,  # before everything -> first offset
            TS_BASE: 0,
            TS_BASE + 50: 5,  # exact match
            TS_BASE + 55: 6,  # first record with ts >= query
            TS_BASE + 199: 20,  # first record of the second batch
            TS_BASE + (n - 1) * 10: n - 1,
            TS_BASE + n * 10 + 1: -1,  # after everything -> no offset (-1)
        }
        for ts, want in queries.items():
            res = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)
            assert len(res) == 1 and res[0].error is None, res
            assert res[0].offset == want, f"offsets_for_times({ts - TS_BASE:+d}) = {res[0].offset}, want {want}"
    finally:
        c.close()


def test_delete_records_advances_low_watermark(broker):
    topic = unique_topic("dr")
    create_topic_confluent(broker.bootstrap, topic, 1)
    p = make_producer(broker.bootstrap)
    produce_all(p, [dict(topic=topic, partition=0, value=str(i).encode()) for i in range(100)])

    admin = admin_for(broker.bootstrap)
    fs = admin.delete_records([TopicPartition(topic, 0, 40)], request_timeout=30, operation_timeout=30)
    assert len(fs) == 1
    (deleted,) = [f.result(30) for f in fs.values()]
    assert deleted.low_watermark == 40

    c = make_consumer(broker.bootstrap)
    try:
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False) == (40, 100)
    finally:
        c.close()

    # Reading from the new start works.
    got = consume_all(broker.bootstrap, topic, 1, 60, start=40)[0]
    assert [m.offset() for m in got] == list(range(40, 100))
    assert got[0].value() == b"40"

    # Reading below it is OFFSET_OUT_OF_RANGE; with auto.offset.reset=error
    # librdkafka surfaces that as an error event instead of resetting.
    c = make_consumer(broker.bootstrap, **{"auto.offset.reset": "error"})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 30
        err = None
        while time.monotonic() < deadline and err is None:
            msg = c.poll(1.0)
            if msg is None:
                continue
            if msg.error() is not None and msg.error().code() != KafkaError._PARTITION_EOF:
                err = msg.error()
            elif msg.error() is None:
                pytest.fail(f"consumed offset {msg.offset()} below the low watermark")
        assert err is not None, "no error consuming below the low watermark"
        assert err.code() in (KafkaError._AUTO_OFFSET_RESET, KafkaError.OFFSET_OUT_OF_RANGE), err
    finally:
        c.close()

    # Delete everything: low watermark == high watermark.
    fs = admin.delete_records([TopicPartition(topic, 0, -1)], request_timeout=30, operation_timeout=30)
    (deleted,) = [f.result(30) for f in fs.values()]
    assert deleted.low_watermark == 100


# ------------------------------------------------------------------ admin
def test_admin_create_describe_alter_delete(broker):
    admin = admin_for(broker.bootstrap)
    topic = unique_topic("adm")
    fs = admin.create_topics(
        [NewTopic(topic, num_partitions=2, replication_factor=1, config={"retention.ms": "123456"})],
        request_timeout=30,
    )
    fs[topic].result(30)
    wait_for_topic_confluent(admin, topic, 2)

    md = admin.list_topics(timeout=10)
    assert topic in md.topics
    tmd = md.topics[topic]
    assert sorted(tmd.partitions) == [0, 1]
    for pmd in tmd.partitions.values():
        assert pmd.leader in md.brokers, "partition leader is not a listed broker"
        assert pmd.error is None
    assert len(md.brokers) == 1
    (b,) = md.brokers.values()
    assert f"{b.host}:{b.port}" == broker.bootstrap, "advertised address should be the listen address"

    # create_partitions 2 -> 4
    fs = admin.create_partitions([NewPartitions(topic, 4)], request_timeout=30)
    fs[topic].result(30)
    wait_for_topic_confluent(admin, topic, 4)
    # the new partitions are usable
    p = make_producer(broker.bootstrap)
    produce_all(p, [dict(topic=topic, partition=part, value=b"x") for part in range(4)])

    # describe_configs shows the creation-time override
    res = ConfigResource(ResourceType.TOPIC, topic)

    def describe():
        return admin.describe_configs([res], request_timeout=30)[res].result(30)

    cfg = describe()
    assert "retention.ms" in cfg
    assert cfg["retention.ms"].value == "123456"

    # incremental_alter_configs then describe again
    alter = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin.incremental_alter_configs([alter], request_timeout=30)[alter].result(30)
    cfg = describe()
    assert cfg["retention.ms"].value == "3600000"

    # delete -> gone from metadata
    fs = admin.delete_topics([topic], request_timeout=30)
    fs[topic].result(30)
    wait_for(
        lambda: topic not in admin.list_topics(timeout=5).topics,
        30,
        0.1,
        f"{topic} to disappear from metadata",
    )


@pytest.mark.parametrize(
    "name", ["bad topic!", "..", ".", "x" * 250, ""], ids=["space-bang", "dotdot", "dot", "250-chars", "empty"]
)
def test_admin_invalid_topic_name(broker, name):
    admin = admin_for(broker.bootstrap)
    fs = admin.create_topics([NewTopic(name, 1, 1)], request_timeout=30)
    expect_future_error(fs[name], KafkaError.TOPIC_EXCEPTION)  # INVALID_TOPIC_EXCEPTION (17)


def test_admin_create_errors(broker):
    admin = admin_for(broker.bootstrap)

    t = unique_topic("rf")
    fs = admin.create_topics([NewTopic(t, 1, 3)], request_timeout=30)
    expect_future_error(fs[t], KafkaError.INVALID_REPLICATION_FACTOR)

    t = unique_topic("np")
    fs = admin.create_topics([NewTopic(t, 0, 1)], request_timeout=30)
    expect_future_error(fs[t], KafkaError.INVALID_PARTITIONS)

    t = unique_topic("dup")
    admin.create_topics([NewTopic(t, 1, 1)], request_timeout=30)[t].result(30)
    fs = admin.create_topics([NewTopic(t, 1, 1)], request_timeout=30)
    expect_future_error(fs[t], KafkaError.TOPIC_ALREADY_EXISTS)

    t = unique_topic("nope")
    fs = admin.delete_topics([t], request_timeout=30)
    expect_future_error(fs[t], KafkaError.UNKNOWN_TOPIC_OR_PART)

    # create_partitions cannot shrink
    t2 = unique_topic("shrink")
    admin.create_topics([NewTopic(t2, 2, 1)], request_timeout=30)[t2].result(30)
    fs = admin.create_partitions([NewPartitions(t2, 1)], request_timeout=30)
    expect_future_error(fs[t2], KafkaError.INVALID_PARTITIONS)

    # the broker still works for valid requests
    wait_for_topic_confluent(admin, t, 1)


def test_oversized_record_rejected(broker):
    topic = unique_topic("big")
    create_topic_confluent(broker.bootstrap, topic, 1)
    p = make_producer(broker.bootstrap, **{"message.max.bytes": 10_000_000, "linger.ms": 0})
    errors = []

    def cb(err, msg):
        errors.append(err)

    p.produce(topic, value=b"x" * (2 * 1024 * 1024), partition=0, on_delivery=cb)
    assert p.flush(60) == 0
    assert len(errors) == 1
    assert errors[0] is not None, "2 MiB record was accepted; default max.message.bytes is ~1 MB"
    assert errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, errors[0]

    # a normal record still goes through afterwards
    produce_all(p, [dict(topic=topic, partition=0, value=b"small")])
    got = consume_all(broker.bootstrap, topic, 1, 1)[0]
    assert got[0].value() == b"small" and got[0].offset() == 0


# ---------------------------------------------------------------- restart
def _produce_for_restart(bootstrap, topic, partitions, n, tag):
    p = make_producer(bootstrap, **{"partitioner": "murmur2_random"})
    records = [
        dict(topic=topic, key=f"k{i % 37}".encode(), value=f"{tag}-{i}".encode(), timestamp=TS_BASE + i)
        for i in range(n)
    ]
    reports = produce_all(p, records)
    return {(part, off): records[i]["value"] for i, part, off in reports}


def _check_after_restart(broker, topic, partitions, before):
    admin = admin_for(broker.bootstrap)
    wait_for_topic_confluent(admin, topic, partitions)
    got = consume_all(broker.bootstrap, topic, partitions, len(before))
    after = {(part, m.offset()): m.value() for part, msgs in got.items() for m in msgs}
    assert after == before, "records or offsets changed across restart"

    # producing continues at the next offset of each partition
    high = defaultdict(int)
    for part, off in before:
        high[part] = max(high[part], off + 1)
    more = _produce_for_restart(broker.bootstrap, topic, partitions, 300, "after")
    for part in range(partitions):
        offs = sorted(off for (pp, off) in more if pp == part)
        if offs:
            assert offs == list(range(high[part], high[part] + len(offs))), (
                f"partition {part}: new offsets {offs[:3]}... do not continue at {high[part]}"
            )
    total = len(before) + len(more)
    got = consume_all(broker.bootstrap, topic, partitions, total)
    assert sum(len(v) for v in got.values()) == total


@pytest.mark.parametrize("how", ["sigterm", "sigint", "kill9"])
def test_restart_keeps_acked_records(broker, how):
    topic = unique_topic(f"restart-{how}")
    partitions = 2
    create_topic_confluent(broker.bootstrap, topic, partitions)
    before = _produce_for_restart(broker.bootstrap, topic, partitions, 2000, "before")

    if how == "kill9":
        broker.kill9()
    else:
        sig = signal.SIGTERM if how == "sigterm" else signal.SIGINT
        rc = broker.stop(sig)
        assert rc == 0, f"gregor exited with {rc} after {how}"
    broker.restart()
    _check_after_restart(broker, topic, partitions, before)

    # and once more, to catch state only written at first recovery
    assert broker.stop() == 0
    broker.restart()
    wait_for_topic_confluent(admin_for(broker.bootstrap), topic, partitions)
