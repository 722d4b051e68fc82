"""Scenario tests: every `gregor` client command against a real `gregor serve`.

Commands run as subprocesses with GREGOR_BROKERS pointing at the test broker; JSON output
(`--format json`) is parsed and checked. Group commands need a broker with group
coordination: they are skipped unless the broker advertises FindCoordinator.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from gregor_testlib import java_partition, unique_topic


def cli_bin(broker) -> str:
    """The CLI under test: GREGOR_CLI_BIN, else the broker's own binary (so the client can
    be tested against another broker build, e.g. one with group coordination)."""
    return os.environ.get("GREGOR_CLI_BIN") or str(broker.bin_path)


def gregor(broker, *args, stdin=None, check=True, timeout=120):
    env = dict(os.environ)
    env["GREGOR_BROKERS"] = broker.bootstrap
    env.pop("RUST_BACKTRACE", None)
    p = subprocess.run(
        [cli_bin(broker), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"gregor {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p


def gj(broker, *args, **kw):
    return json.loads(gregor(broker, *args, "--format", "json", **kw).stdout)


def has_groups(broker) -> bool:
    info = gj(broker, "cluster", "info")
    return any(v["name"] == "FindCoordinator" for v in info["api_versions"])


def test_topic_lifecycle(broker):
    t = unique_topic("cli")
    out = gj(broker, "topic", "create", t, "--partitions", "3", "--config", "retention.ms=60000")
    assert out["created"] == t
    assert t in [x["name"] for x in gj(broker, "topic", "list")]
    d = gj(broker, "topic", "describe", t)
    assert [p["partition"] for p in d["partitions"]] == [0, 1, 2]
    assert all(p["leader"] == 0 and p["log_end_offset"] == 0 for p in d["partitions"])
    assert d["overrides"]["retention.ms"] == "60000"
    gj(broker, "topic", "alter-config", t, "--set", "retention.ms=1000", "--partitions", "4")
    d = gj(broker, "topic", "describe", t)
    assert d["configs"]["retention.ms"] == "1000"
    assert len(d["partitions"]) == 4
    gj(broker, "topic", "alter-config", t, "--delete", "retention.ms")
    assert "retention.ms" not in gj(broker, "topic", "describe", t)["overrides"]
    assert gj(broker, "topic", "delete", t)["deleted"] == [t]
    assert t not in [x["name"] for x in gj(broker, "topic", "list")]


def test_produce_consume_roundtrip(broker):
    t = unique_topic("cli")
    gregor(broker, "topic", "create", t, "-p", "3")
    lines = "".join(f"k{i}|v{i}\n" for i in range(50))
    out = gj(broker, "produce", t, "--key-separator", "|", "--header", "h=1", "--header", "h=2",
             "--compression", "lz4", "--acks", "1", stdin=lines)
    assert out["produced"] == 50
    for r in out["records"]:
        assert r["partition"] == java_partition(r["key"].encode(), 3)
    recs = [json.loads(x) for x in gregor(broker, "consume", t, "--from-beginning", "--count", "50",
                                          "--format", "json").stdout.splitlines()]
    assert len(recs) == 50
    by_key = {r["key"]: r for r in recs}
    assert by_key["k7"]["value"] == "v7"
    assert by_key["k7"]["headers"] == [["h", "1"], ["h", "2"]]
    assert by_key["k7"]["partition"] == java_partition(b"k7", 3)
    # Template output, one partition, explicit offset.
    p = java_partition(b"k7", 3)
    off = by_key["k7"]["offset"]
    line = gregor(broker, "consume", t, "--partition", str(p), "--offset", str(off), "--count", "1",
                  "--format", "%t/%p@%o %k=%v [%h]").stdout
    assert line == f"{t}/{p}@{off} k7=v7 [h=1,h=2]\n"


def test_produce_explicit_partition_and_unkeyed(broker):
    t = unique_topic("cli")
    gregor(broker, "topic", "create", t, "-p", "2")
    out = gj(broker, "produce", t, "--partition", "1", stdin="a\nb\nc\n")
    assert {r["partition"] for r in out["records"]} == {1}
    assert [r["offset"] for r in out["records"]] == [0, 1, 2]
    text = gregor(broker, "consume", t, "--from-beginning", "--count", "3").stdout
    assert text == "a\nb\nc\n"
    # consume stops on idle timeout without --count
    p = gregor(broker, "consume", t, "--from-beginning", "--idle-timeout-ms", "500")
    assert p.stdout == "a\nb\nc\n"


def test_murmur2_matches_librdkafka(broker):
    """The same keys through confluent-kafka (murmur2_random) and `gregor produce`."""
    from confluent_kafka import Producer

    from gregor_testlib import confluent_common, create_topic_confluent

    t1, t2 = unique_topic("rdk"), unique_topic("grg")
    create_topic_confluent(broker.bootstrap, t1, 7)
    gregor(broker, "topic", "create", t2, "-p", "7")
    keys = [f"user-{i}" for i in range(200)] + ["", "a", "ab", "abc", "ÄÖÜ"]
    rdk = {}

    def cb(err, msg):
        assert err is None, err
        rdk[msg.key().decode()] = msg.partition()

    p = Producer({**confluent_common(broker.bootstrap), "partitioner": "murmur2_random"})
    for k in keys:
        p.produce(t1, key=k.encode(), value=b"x", on_delivery=cb)
    assert p.flush(30) == 0
    out = gj(broker, "produce", t2, "--key-separator", "\t", stdin="".join(f"{k}\tx\n" for k in keys))
    ours = {r["key"]: r["partition"] for r in out["records"]}
    assert ours == rdk


def test_cluster_info(broker):
    info = gj(broker, "cluster", "info")
    assert info["brokers"] == [{"id": 0, "host": "127.0.0.1", "port": broker.port, "rack": None}]
    assert info["controller_id"] == 0
    names = {v["name"] for v in info["api_versions"]}
    assert {"Produce", "Fetch", "Metadata", "ApiVersions"} <= names
    assert "cluster id" in gregor(broker, "cluster", "info").stdout


def test_errors_are_one_line(broker):
    for args in (["topic", "describe", "no-such-topic"], ["consume", "no-such-topic", "--count", "1"],
                 ["produce", "no-such-topic"], ["topic", "create", "x", "--config", "novalue"]):
        p = gregor(broker, *args, stdin="", check=False)
        assert p.returncode == 1, (args, p.returncode)  # README: errors exit with code 1
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("gregor: error:"), (args, p.stderr)
        assert "panicked" not in p.stderr and "backtrace" not in p.stderr.lower()
    # Broker unreachable.
    env = dict(os.environ, GREGOR_BROKERS="127.0.0.1:1")
    p = subprocess.run([cli_bin(broker), "topic", "list"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 1 and "cannot connect to 127.0.0.1:1" in p.stderr, p.returncode
    assert len(p.stderr.strip().splitlines()) == 1
    # Bad flags: one line; exit code 2 when the command line does not parse, 1 for a value
    # that parses but is refused (README).
    for args, code in ((["topic", "create"], 2), (["consume", "t", "--no-such-flag"], 2),
                       (["produce", "t", "--acks", "7"], 1), (["bench", "produce", "--count", "many"], 2)):
        p = gregor(broker, *args, stdin="", check=False)
        assert p.returncode == code and "panicked" not in p.stderr, (args, p.returncode)
        assert len(p.stderr.strip().splitlines()) == 1, (args, p.stderr)


def test_bench_produce_consume_json(broker):
    t = unique_topic("bench")
    pr = gj(broker, "bench", "produce", "--topic", t, "--count", "20000", "--record-size", "512",
            "--partitions", "3", "--compression", "zstd", "--json")
    assert pr["records"] == 20000 and pr["errors"] == 0 and pr["mb_per_sec"] > 0
    lat = pr["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
    co = gj(broker, "bench", "consume", "--topic", t, "--count", "20000", "--json")
    assert co["records"] == 20000 and co["bytes"] == 20000 * 512
    e2e = gj(broker, "bench", "e2e", "--topic", t, "--count", "3000", "--rate", "20000", "--json")
    assert e2e["records"] >= 3000 and e2e["latency_ms"]["p50"] > 0
    # Non-TTY progress: plain periodic lines on stderr, summary on stdout.
    p = gregor(broker, "bench", "produce", "--topic", t, "--duration", "1.5", "--rate", "2000")
    assert "records/s" in p.stdout and "latency ms" in p.stdout


# ------------------------------------------------------------------ groups
def skip_without_groups(broker):
    if not has_groups(broker):
        pytest.skip("broker does not advertise FindCoordinator (consumer groups not implemented)")


def test_group_describe_lag_matches_commits(broker):
    skip_without_groups(broker)
    t, g = unique_topic("lag"), unique_topic("grp")
    gregor(broker, "topic", "create", t, "-p", "2")
    gregor(broker, "produce", t, "--partition", "0", stdin="".join(f"a{i}\n" for i in range(10)))
    gregor(broker, "produce", t, "--partition", "1", stdin="".join(f"b{i}\n" for i in range(4)))
    # The consumer commits exactly the 6 records it printed.
    out = gregor(broker, "consume", t, "--group", g, "--from-beginning", "--count", "6", "--format", "json")
    printed = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(printed) == 6
    consumed = {}
    for r in printed:
        consumed[r["partition"]] = max(consumed.get(r["partition"], -1), r["offset"] + 1)
    assert g in [x["group"] for x in gj(broker, "group", "list")]
    d = gj(broker, "group", "describe", g)
    ends = {0: 10, 1: 4}
    rows = {r["partition"]: r for r in d["partitions"] if r["topic"] == t}
    for p, c in consumed.items():
        assert rows[p]["committed_offset"] == c
        assert rows[p]["log_end_offset"] == ends[p]
        assert rows[p]["lag"] == ends[p] - c
    # reset-offsets: dry run changes nothing, --execute does.
    plan = gj(broker, "group", "reset-offsets", g, "--topic", t, "--to-earliest")
    assert not plan["executed"] and all(o["new_offset"] == 0 for o in plan["offsets"])
    assert gj(broker, "group", "describe", g)["partitions"] == d["partitions"]
    gj(broker, "group", "reset-offsets", g, "--topic", t, "--shift-by", "-1", "--execute")
    gj(broker, "group", "reset-offsets", g, "--topic", t, "--to-latest", "--execute")
    d2 = gj(broker, "group", "describe", g)
    assert all(r["lag"] == 0 for r in d2["partitions"])
    # Resume: nothing left to read.
    p = gregor(broker, "consume", t, "--group", g, "--idle-timeout-ms", "1500")
    assert p.stdout == ""
    assert gj(broker, "group", "delete", g)["deleted"] == [g]


def test_group_reset_refuses_active_group(broker):
    skip_without_groups(broker)
    t, g = unique_topic("act"), unique_topic("grp")
    gregor(broker, "topic", "create", t, "-p", "1")
    env = dict(os.environ, GREGOR_BROKERS=broker.bootstrap)
    member = subprocess.Popen([cli_bin(broker), "consume", t, "--group", g, "--assignor", "cooperative-sticky"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from gregor_testlib import wait_for

        wait_for(lambda: gj(broker, "group", "describe", g)["members"], 30, 0.2, "a group member")
        p = gregor(broker, "group", "reset-offsets", g, "--topic", t, "--to-earliest", "--execute", check=False)
        assert p.returncode != 0 and "active member" in p.stderr
    finally:
        member.terminate()
        member.wait(10)


# ------------------------------------------------------- gregor-client beside librdkafka

def test_gregor_produce_read_by_confluent_and_back(broker):
    """Records written by `gregor produce` read back by confluent-kafka, and records written
    by confluent-kafka read back by `gregor consume`: keys, values, headers, partitions and
    offsets as the writer's acknowledgements said (a codec each way)."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from gregor_testlib import confluent_common, create_topic_confluent

    def read_confluent(topic: str, partitions: int, n: int) -> list:
        c = Consumer({**confluent_common(broker.bootstrap), "group.id": unique_topic("g"),
                      "enable.auto.commit": False})
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        got, deadline = [], time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            for m in c.consume(500, 0.5):
                assert m.error() is None, m.error()
                got.append(m)
        c.close()
        assert len(got) == n, f"confluent-kafka read {len(got)} of {n}"
        return got

    # gregor -> confluent-kafka
    t1 = unique_topic("g2rdk")
    gregor(broker, "topic", "create", t1, "-p", "3")
    lines = "".join(f"k{i}|v{i}\n" for i in range(100))
    out = gj(broker, "produce", t1, "--key-separator", "|", "--header", "h=1", "--compression", "zstd",
             stdin=lines)
    acked = {r["key"]: (r["partition"], r["offset"]) for r in out["records"]}
    assert len(acked) == 100
    for m in read_confluent(t1, 3, 100):
        k = m.key().decode()
        assert m.value() == f"v{k[1:]}".encode()
        assert m.headers() == [("h", b"1")]
        assert (m.partition(), m.offset()) == acked[k], k

    # confluent-kafka -> gregor
    t2 = unique_topic("rdk2g")
    create_topic_confluent(broker.bootstrap, t2, 3)
    sent = {}

    def cb(err, msg):
        assert err is None, err
        sent[msg.key().decode()] = (msg.partition(), msg.offset())

    p = Producer({**confluent_common(broker.bootstrap), "compression.type": "lz4", "acks": "all"})
    for i in range(100):
        p.produce(t2, key=f"k{i}".encode(), value=f"v{i}".encode(), headers=[("h", f"{i}".encode())],
                  on_delivery=cb)
    assert p.flush(30) == 0 and len(sent) == 100
    recs = [json.loads(x) for x in gregor(broker, "consume", t2, "--from-beginning", "--count", "100",
                                          "--format", "json").stdout.splitlines()]
    assert len(recs) == 100
    for r in recs:
        i = r["key"][1:]
        assert r["value"] == f"v{i}" and r["headers"] == [["h", i]]
        assert (r["partition"], r["offset"]) == sent[r["key"]], r


def test_group_with_gregor_and_confluent_members(broker):
    """One consumer group, two client implementations: a `gregor consume --group` process
    and a confluent-kafka consumer (both range). The group settles with both members owning
    disjoint partitions that cover the topic; records produced afterwards are each delivered
    to exactly one of them, by the partition it owns."""
    from confluent_kafka import Consumer, Producer

    from gregor_testlib import confluent_common, create_topic_confluent, wait_for

    t, g = unique_topic("mixed"), unique_topic("grp")
    create_topic_confluent(broker.bootstrap, t, 4)
    env = dict(os.environ, GREGOR_BROKERS=broker.bootstrap)
    env.pop("RUST_BACKTRACE", None)
    member = subprocess.Popen([cli_bin(broker), "consume", t, "--group", g, "--format", "json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gregor_lines: list = []
    reader = threading.Thread(target=lambda: gregor_lines.extend(member.stdout), daemon=True)
    reader.start()
    rdk = Consumer({**confluent_common(broker.bootstrap), "group.id": g, "client.id": "rdkafka-member",
                    "partition.assignment.strategy": "range", "auto.offset.reset": "earliest",
                    "session.timeout.ms": 10000})
    rdk.subscribe([t])
    rdk_got: list = []
    try:
        def stable():
            rdk_got.extend(m for m in rdk.consume(100, 0.2) if m.error() is None)
            d = gj(broker, "group", "describe", g)
            return (d["state"] == "Stable" and len(d["members"]) == 2
                    and all(m["assignment"] for m in d["members"]) and d)

        d = wait_for(stable, 60, 0.1, "a stable group of a gregor and a confluent-kafka member")
        owned = {}
        for m in d["members"]:
            for topic, part in m["assignment"]:
                assert topic == t and part not in owned, d
                owned[part] = "rdkafka" if m["client_id"] == "rdkafka-member" else "gregor"
        assert sorted(owned) == [0, 1, 2, 3] and set(owned.values()) == {"rdkafka", "gregor"}, d
        p = Producer({**confluent_common(broker.bootstrap), "acks": "all"})
        for i in range(200):
            p.produce(t, key=f"k{i}".encode(), value=f"{i}".encode(), partition=i % 4)
        assert p.flush(30) == 0

        def all_delivered():
            rdk_got.extend(m for m in rdk.consume(100, 0.2) if m.error() is None)
            return len(rdk_got) + len(gregor_lines) >= 200

        wait_for(all_delivered, 60, 0.05, "200 records delivered to the two members")
        time.sleep(0.5)  # a duplicate would arrive now
        rdk_got.extend(m for m in rdk.consume(100, 0.2) if m.error() is None)
    finally:
        rdk.close()
        member.terminate()
        member.wait(10)
        reader.join(5)
    from_gregor = [json.loads(x) for x in gregor_lines]
    values = sorted([int(m.value()) for m in rdk_got] + [int(r["value"]) for r in from_gregor])
    assert values == list(range(200)), "each record exactly once across the two members"
    assert all(owned[m.partition()] == "rdkafka" for m in rdk_got)
    assert all(owned[r["partition"]] == "gregor" for r in from_gregor)
    assert member.stderr is not None and "panicked" not in member.stderr.read()
