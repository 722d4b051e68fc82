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
