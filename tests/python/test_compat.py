"""Compatibility with what real clients expect of Kafka (issue 21).

Each test here failed against Gregor before its fix, with the client that showed the difference.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from gregor_testlib import confluent_common, create_topic_confluent, unique_topic


def _consume_all(bootstrap: str, topic: str, isolation: str, expect_at_least: int, timeout=30.0):
    c = Consumer(
        {
            **confluent_common(bootstrap),
            "group.id": unique_topic("g"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": isolation,
        }
    )
    c.assign([TopicPartition(topic, 0, 0)])
    values = []
    import time

    deadline = time.monotonic() + timeout
    idle_after = None
    while time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None:
            if len(values) >= expect_at_least:
                # A short quiet period after reaching the expected count: nothing more arrives.
                idle_after = idle_after or time.monotonic()
                if time.monotonic() - idle_after > 1.5:
                    break
            continue
        if m.error():
            continue
        values.append(m.value())
    c.close()
    return values


def test_read_uncommitted_sees_aborted_records(broker):
    """Kafka hands aborted records to read_uncommitted consumers; only read_committed filters."""
    topic = unique_topic("ru")
    create_topic_confluent(broker.bootstrap, topic, 1)
    p = Producer({**confluent_common(broker.bootstrap), "transactional.id": unique_topic("tx")})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(100):
        p.produce(topic, value=b"c%d" % i, partition=0)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(100):
        p.produce(topic, value=b"a%d" % i, partition=0)
    p.flush(30)
    p.abort_transaction(30)

    committed = _consume_all(broker.bootstrap, topic, "read_committed", 100)
    assert committed == [b"c%d" % i for i in range(100)]
    uncommitted = _consume_all(broker.bootstrap, topic, "read_uncommitted", 200)
    assert uncommitted == [b"c%d" % i for i in range(100)] + [b"a%d" % i for i in range(100)]


def test_broker_log_has_no_ansi_codes_when_not_a_terminal(broker):
    """Logs written to a file or journald carry no colour escape codes."""
    assert "gregor listening on" in broker.log_text()
    assert "\x1b[" not in broker.log_text()


def test_log_format_json(broker_factory):
    import json

    b = broker_factory(extra_args=("--log-format", "json"))
    lines = [ln for ln in b.log_text().splitlines() if ln.startswith("{")]
    assert lines, b.log_tail(20)
    events = [json.loads(ln) for ln in lines]
    assert all("level" in e and "fields" in e for e in events)
    assert any(e["fields"].get("message") == "broker ready" for e in events)


def test_serve_help_lists_only_broker_flags(gregor_bin):
    import subprocess

    serve = subprocess.run([str(gregor_bin), "serve", "--help"], capture_output=True, text=True, check=True)
    for flag in ("--listen", "--data-dir", "--log-format"):
        assert flag in serve.stdout
    for client_only in ("--brokers", "--format"):
        assert client_only not in serve.stdout.replace("--log-format", "")
    topic = subprocess.run([str(gregor_bin), "topic", "list", "--help"], capture_output=True, text=True, check=True)
    assert "--brokers" in topic.stdout and "--format" in topic.stdout


# Where Gregor's advertised maximum differs from Kafka 4.0's, on purpose (ARCHITECTURE.md,
# "Advertised API versions"): the KIP-890 part 2 transaction versions, and ListTransactions v2.
KIP_890_PART_2 = {24: 3, 25: 3, 26: 4, 28: 4}
ABOVE_4_0 = {66: 2}


def test_api_versions_match_kafka_4_0(broker):
    """A client inferring the broker version from ApiVersions takes Gregor for Kafka 4.0.

    kafka-python ships the ranges Kafka 4.0 advertises; kafka-python 3 infers 4.0 from
    ListOffsets v10 (then 3.9 from Fetch v17, 3.8 from Produce v11: what Gregor showed before).
    """
    from kafka import KafkaAdminClient
    from kafka.protocol.broker_api_versions import BROKER_API_VERSIONS

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000)
    try:
        ours = admin._client.get_api_versions()
    finally:
        admin.close()
    kafka_4_0 = BROKER_API_VERSIONS[(4, 0)]
    assert ours[2][1] >= 10, "ListOffsets v10 marks Kafka 4.0"
    assert ours[1][1] >= 17, "Fetch v17 marks Kafka 3.9"
    for api, (_lo, hi) in ours.items():
        assert api in kafka_4_0, f"API {api} is not one Kafka 4.0 has"
        want = KIP_890_PART_2.get(api, ABOVE_4_0.get(api, kafka_4_0[api][1]))
        assert hi == want, f"API {api}: Gregor advertises up to v{hi}, expected v{want} (Kafka 4.0: v{kafka_4_0[api][1]})"


def test_describe_cluster_at_the_newest_version(broker):
    """librdkafka's DescribeCluster at the version Kafka 4.0 advertises lists the broker."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(confluent_common(broker.bootstrap))
    desc = admin.describe_cluster(request_timeout=10).result(15)
    assert len(desc.nodes) == 1


def test_describe_configs_broker_has_kafkas_broker_settings(broker):
    """kafka-python's describe_configs(BROKER) shows advertised.listeners and the rest."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=10000)
    try:
        resp = admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, "0")], include_synonyms=True)
    finally:
        admin.close()
    resources = resp[0].resources if hasattr(resp[0], "resources") else resp[0].to_object()["resources"]
    res = resources[0]
    entries = res[4] if isinstance(res, tuple) else res["configs"]
    by_name = {}
    for e in entries:
        if isinstance(e, tuple):
            by_name[e[0]] = {"value": e[1], "read_only": e[2], "source": e[3], "synonyms": e[5]}
        else:
            by_name[e["config_names"] if "config_names" in e else e["name"]] = e
    for name in (
        "listeners", "advertised.listeners", "log.dirs", "num.partitions",
        "default.replication.factor", "message.max.bytes", "group.min.session.timeout.ms",
        "transaction.max.timeout.ms", "offsets.topic.num.partitions", "log.retention.ms",
    ):
        assert name in by_name, f"{name} missing from {sorted(by_name)}"
    assert by_name["advertised.listeners"]["value"] == f"PLAINTEXT://{broker.bootstrap}"
    assert by_name["log.dirs"]["value"] == str(broker.data_dir)
    # The test broker runs with Kafka's num.partitions default; its data dir is set by flag.
    assert by_name["num.partitions"]["source"] == 5  # DEFAULT_CONFIG
    assert by_name["log.dirs"]["source"] == 4  # STATIC_BROKER_CONFIG
    assert by_name["log.dirs"]["synonyms"], "synonyms were asked for"


def test_incremental_alter_configs_append_and_subtract_cleanup_policy(broker):
    """APPEND / SUBTRACT on a list config: delete -> delete,compact -> compact."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    topic = unique_topic("ap")
    admin = create_topic_confluent(broker.bootstrap, topic, 1)

    def alter(op, value):
        res = ConfigResource(
            ConfigResource.Type.TOPIC, topic,
            incremental_configs=[ConfigEntry("cleanup.policy", value, incremental_operation=op)],
        )
        admin.incremental_alter_configs([res])[res].result(15)

    def policy():
        res = ConfigResource(ConfigResource.Type.TOPIC, topic)
        return admin.describe_configs([res])[res].result(15)["cleanup.policy"].value

    assert policy() == "delete"
    alter(AlterConfigOpType.APPEND, "compact")
    assert set(policy().split(",")) == {"delete", "compact"}
    alter(AlterConfigOpType.APPEND, "compact")  # already there: unchanged
    assert sorted(policy().split(",")) == ["compact", "delete"]
    alter(AlterConfigOpType.SUBTRACT, "delete")
    assert policy() == "compact"
