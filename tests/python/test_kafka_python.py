"""kafka-python (pure-Python client) against a real gregor process.

api_version is not pinned: the clients negotiate it with ApiVersions.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from gregor_testlib import java_partition, unique_topic, wait_for


def admin_client(bootstrap):
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)


def wait_partitions(bootstrap, topic, partitions):
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, request_timeout_ms=30000)
    try:
        wait_for(
            lambda: topic in c.topics() and c.partitions_for_topic(topic) == set(range(partitions)),
            30,
            0.1,
            f"{topic} metadata",
        )
        assert c.partitions_for_topic(topic) == set(range(partitions))
    finally:
        c.close()


def consume_assigned(bootstrap, topic, partitions, expected, timeout=60):
    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=30000,
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        got = defaultdict(list)
        count = 0
        deadline = time.monotonic() + timeout
        while count < expected and time.monotonic() < deadline:
            for tp, recs in c.poll(timeout_ms=500, max_records=1000).items():
                got[tp.partition].extend(recs)
                count += len(recs)
        assert count == expected, f"consumed {count}, expected {expected}"
        # nothing beyond the expected records
        assert c.end_offsets(tps) == {tp: len(got[tp.partition]) for tp in tps}
        return got
    finally:
        c.close()


def test_kafka_python_roundtrip(broker):
    topic = unique_topic("kp")
    partitions = 3
    admin = admin_client(broker.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    wait_partitions(broker.bootstrap, topic, partitions)

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5, retries=0)
    try:
        # negotiated, not pinned; record batches with headers need >= 0.11
        assert producer.config["api_version"] >= (0, 11), producer.config["api_version"]
        n = 2000
        futures = []
        for i in range(n):
            key = f"key-{i % 97}".encode()
            futures.append(
                (
                    i,
                    key,
                    producer.send(
                        topic,
                        key=key,
                        value=f"v{i}".encode(),
                        headers=[("i", str(i).encode())],
                    ),
                )
            )
        producer.flush(60)
        by_part = defaultdict(list)
        for i, key, fut in futures:
            md = fut.get(timeout=60)
            # kafka-python's DefaultPartitioner is Java's murmur2
            assert md.partition == java_partition(key, partitions)
            by_part[md.partition].append((md.offset, i))
    finally:
        producer.close(10)

    for part, lst in by_part.items():
        lst.sort()
        assert [o for o, _ in lst] == list(range(len(lst)))
        assert [i for _, i in lst] == sorted(i for _, i in lst), f"partition {part} out of order"

    got = consume_assigned(broker.bootstrap, topic, partitions, n)
    for part in range(partitions):
        recs = got.get(part, [])
        assert [(r.offset, int(r.value[1:])) for r in recs] == by_part.get(part, [])
        for r in recs:
            i = int(r.value[1:])
            assert r.key == f"key-{i % 97}".encode()
            assert list(r.headers) == [("i", str(i).encode())]


def test_kafka_python_admin_metadata(broker):
    """KafkaAdminClient asks Metadata (v8+) with include_*_authorized_operations
    = true; like Kafka without an authorizer, the broker must then return the
    real operation bit sets (not the INT32_MIN "omitted" sentinel, which
    kafka-python cannot decode)."""
    topic = unique_topic("kp-md")
    admin = admin_client(broker.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        # first call outside wait_for so a decode error fails fast
        if topic not in admin.list_topics():
            wait_for(lambda: topic in admin.list_topics(), 30, 0.1, f"{topic} in list_topics")
        (desc,) = admin.describe_topics([topic])
        assert desc["topic"] == topic
        assert sorted(p["partition"] for p in desc["partitions"]) == [0, 1]
        cluster = admin.describe_cluster()
        assert len(cluster["brokers"]) == 1
        admin.delete_topics([topic])
        wait_for(lambda: topic not in admin.list_topics(), 30, 0.1, f"{topic} gone from list_topics")
    finally:
        admin.close()


def test_kafka_python_auto_create_on_produce(broker):
    """Producing to an unknown topic with auto.create.topics.enable on (Kafka's default and
    Gregor's): the broker creates the topic and the record lands at offset 0. A timeout or
    UNKNOWN_TOPIC_OR_PARTITION is a failure (the disabled case is the next test)."""
    topic = unique_topic("kp-auto")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", max_block_ms=15000)
    try:
        md = producer.send(topic, key=b"k", value=b"v").get(timeout=30)
        assert (md.topic, md.offset) == (topic, 0)
    finally:
        producer.close(10)
    parts = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
    try:
        n = len(parts.partitions_for_topic(topic) or ())
    finally:
        parts.close()
    assert n >= 1
    got = consume_assigned(broker.bootstrap, topic, n, 1)
    (rec,) = [r for recs in got.values() for r in recs]
    assert (rec.key, rec.value) == (b"k", b"v")


def test_kafka_python_no_auto_create_when_disabled(broker_factory, tmp_path):
    """With auto.create.topics.enable = false the send fails (the topic is never created)."""
    cfg = tmp_path / "gregor.toml"
    cfg.write_text('"auto.create.topics.enable" = false\n')
    broker = broker_factory(extra_args=("--config", str(cfg)))
    topic = unique_topic("kp-noauto")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", max_block_ms=3000)
    try:
        with pytest.raises(Exception) as err:  # noqa: B017 - kafka-python raises per case
            producer.send(topic, value=b"v").get(timeout=10)
        name = type(err.value).__name__
        assert "UnknownTopic" in name or "Timeout" in name, repr(err.value)
    finally:
        producer.close(5)
    parts = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
    try:
        assert not parts.partitions_for_topic(topic), "topic was created although disabled"
    finally:
        parts.close()
