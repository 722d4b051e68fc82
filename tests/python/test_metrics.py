"""/metrics of `gregor serve --http` (issue 18, acceptance 1): scraped while confluent-kafka
produces and consumes, parsed with the Prometheus text parser of `prometheus_client`.

- the bytes-in counter of the topic grows by the bytes produced (within 5 %), records-in by
  the records produced (exactly);
- the produce request latency and fsync histograms have counts;
- a group's lag per partition equals log end offset minus committed offset, and goes to 0
  once the consumer has caught up and committed.
"""

from __future__ import annotations

import threading
from collections import Counter
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from gregor_testlib import (
    confluent_common,
    confluent_producer,
    create_topic_confluent,
    unique_topic,
    wait_for,
)

PARTITIONS = 3
RECORDS = 3000
VALUE = 1000  # bytes per value: record/batch framing adds ~2 %


def scrape(broker) -> dict:
    """Every sample of /metrics: {(sample name, frozenset(labels)): value}."""
    with urllib.request.urlopen(broker.http_url + "/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset((k, str(v)) for k, v in labels.items())), 0.0)


def test_metrics_bytes_latency_and_lag(broker_factory):
    broker = broker_factory(http=True)
    topic = unique_topic("metrics")
    create_topic_confluent(broker.bootstrap, topic, partitions=PARTITIONS)
    before = scrape(broker)
    assert value(before, "gregor_topic_bytes_in_total", topic=topic) == 0

    # Produce while scraping from another thread: every scrape parses, counters only grow.
    payload = 0
    scrapes = []  # the background scraper's
    chunks = []  # after each acknowledged chunk
    done = threading.Event()

    def scraper():
        while not done.is_set():
            scrapes.append(value(scrape(broker), "gregor_topic_bytes_in_total", topic=topic))
            done.wait(0.05)

    t = threading.Thread(target=scraper)
    t.start()
    try:
        p = confluent_producer(broker.bootstrap, linger_ms=5, message_timeout_ms=30000)
        for i in range(RECORDS):
            key = f"k{i:07d}".encode()
            val = bytes([65 + i % 26]) * VALUE
            payload += len(key) + len(val)
            p.produce(topic, key=key, value=val, partition=i % PARTITIONS)
            if i % 500 == 0:
                p.poll(0)
            if i % 1000 == 999:
                # Between chunks: everything so far is acknowledged; a scrape sees it.
                assert p.flush(30) == 0
                chunks.append(value(scrape(broker), "gregor_topic_bytes_in_total", topic=topic))
                assert chunks[-1] >= payload
        assert p.flush(30) == 0
    finally:
        done.set()
        t.join(30)
    assert len(scrapes) >= 1 and len(chunks) == RECORDS // 1000
    assert scrapes == sorted(scrapes), "bytes-in went down between scrapes"
    assert chunks == sorted(chunks)

    after = scrape(broker)
    bytes_in = value(after, "gregor_topic_bytes_in_total", topic=topic)
    assert payload <= bytes_in <= payload * 1.05, (bytes_in, payload)
    assert value(after, "gregor_topic_records_in_total", topic=topic) == RECORDS
    # What was appended is what the logs hold (batches are stored as received).
    assert value(after, "gregor_topic_log_size_bytes", topic=topic) == bytes_in
    assert value(after, "gregor_topic_partitions", topic=topic) == PARTITIONS
    ends = {q: value(after, "gregor_partition_log_end_offset", topic=topic, partition=q) for q in range(PARTITIONS)}
    assert sum(ends.values()) == RECORDS

    produce_count = value(after, "gregor_request_duration_seconds_count", api="Produce")
    assert produce_count > 0
    assert value(after, "gregor_requests_total", api="Produce") == produce_count
    assert value(after, "gregor_request_duration_seconds_bucket", api="Produce", le="+Inf") == produce_count
    assert value(after, "gregor_produce_fsync_duration_seconds_count") > 0
    assert value(after, "gregor_connections_active") >= 1

    # Consume part of the topic in a group, commit, and compare the lag per partition.
    from confluent_kafka import Consumer, TopicPartition

    group = unique_topic("lag-group")
    conf = confluent_common(broker.bootstrap)
    conf.update(
        {
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
        }
    )
    c = Consumer(conf)
    try:
        c.subscribe([topic])
        got = 0
        deadline = time.monotonic() + 60
        while got < RECORDS // 3 and time.monotonic() < deadline:
            m = c.poll(0.1)
            if m is not None and m.error() is None:
                got += 1
        assert got >= RECORDS // 3, f"consumed only {got}"
        # A commit partway into each partition (records arrive partition by partition, so
        # the consumer's own position may be at the end of one and nowhere in another).
        c.commit(offsets=[TopicPartition(topic, q, 100 * (q + 1)) for q in range(PARTITIONS)], asynchronous=False)
        committed = {tp.partition: tp.offset for tp in c.committed([TopicPartition(topic, q) for q in range(PARTITIONS)], timeout=10)}
        assert committed == {q: 100 * (q + 1) for q in range(PARTITIONS)}

        def lag_matches():
            s = scrape(broker)
            for q in range(PARTITIONS):
                end = value(s, "gregor_partition_log_end_offset", topic=topic, partition=q)
                lag = value(s, "gregor_consumer_group_lag", group=group, topic=topic, partition=q)
                com = committed[q]
                if value(s, "gregor_consumer_group_committed_offset", group=group, topic=topic, partition=q) != com:
                    return False
                if lag != end - com:
                    return False
            return s

        s = wait_for(lag_matches, timeout=15, what="lag = log end - committed for every partition")
        assert value(s, "gregor_consumer_group_lag_sum", group=group) == RECORDS - sum(committed.values())
        assert value(s, "gregor_consumer_group_members", group=group) == 1
        assert value(s, "gregor_consumer_group_state", group=group, state="Stable") == 1

        # Catch up, commit: lag goes to 0 on every partition.
        while got < RECORDS:
            m = c.poll(0.2)
            assert time.monotonic() < deadline, f"consumed only {got} of {RECORDS}"
            if m is not None and m.error() is None:
                got += 1
        c.commit(asynchronous=False)

        def caught_up():
            s = scrape(broker)
            lags = [value(s, "gregor_consumer_group_lag", group=group, topic=topic, partition=q) for q in range(PARTITIONS)]
            offs = [value(s, "gregor_consumer_group_committed_offset", group=group, topic=topic, partition=q) for q in range(PARTITIONS)]
            return s if lags == [0] * PARTITIONS and sum(offs) == RECORDS else None

        s = wait_for(caught_up, timeout=15, what="lag 0 after catching up")
        assert value(s, "gregor_consumer_group_lag_sum", group=group) == 0
        assert value(s, "gregor_topic_records_out_total", topic=topic) >= RECORDS
        assert value(s, "gregor_topic_bytes_out_total", topic=topic) >= bytes_in
    finally:
        c.close()


def test_health_ready_and_api(broker_factory):
    broker = broker_factory(http=True)
    import json

    def get(path):
        with urllib.request.urlopen(broker.http_url + path, timeout=10) as r:
            return r.status, r.read()

    assert get("/healthz") == (200, b"ok\n")
    wait_for(lambda: get("/readyz")[0] == 200, timeout=15, what="/readyz 200")
    topic = unique_topic("api")
    create_topic_confluent(broker.bootstrap, topic, partitions=2)
    status, body = get("/api/topics/" + topic)
    t = json.loads(body)
    assert status == 200 and t["name"] == topic and len(t["partitions"]) == 2
    assert [p["log_end_offset"] for p in t["partitions"]] == [0, 0]
    o = json.loads(get("/api/overview")[1])
    assert o["brokers"][0]["port"] == broker.port and o["controller_id"] == o["broker_id"]
    try:
        get("/api/topics/no-such-topic")
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as e:
        assert e.code == 404


def test_http_listener_off_by_default(broker):
    """Without --http no HTTP port is opened and the broker prints no http line."""
    assert broker.http_port is None
    assert "gregor http listening" not in broker.log_text()


def test_cluster_metrics_match_metadata(cluster_factory):
    """Cluster mode: every node reports the same quorum leader; partitions led, summed over
    the nodes, cover every partition, each node's count matching the Metadata response; the
    under-replicated and offline counts match Metadata's ISR and leaders."""
    from gregor_testlib import create_topics_request, metadata_request

    c = cluster_factory(3, extra_args=("--http", "127.0.0.1:0"))
    controller = c.wait_formed()
    topic = unique_topic("cluster-metrics")
    res = create_topics_request(c.node(1).addr, [(topic, 6, 3, {})])
    assert res[topic][0] == 0, res

    def consistent():
        md = metadata_request(c.node(1).addr)
        if topic not in md["topics"]:
            return False
        parts = [p for t in md["topics"].values() for p in t["partitions"].values()]
        led = Counter(p["leader"] for p in parts)
        under = sum(1 for p in parts if len(p["isr"]) < len(p["replicas"]))
        offline = sum(1 for p in parts if p["leader"] < 0)
        for n in c.nodes:
            s = scrape(n)
            if value(s, "gregor_metadata_quorum_leader") != controller:
                return False
            if value(s, "gregor_partitions_led") != led[n.node_id]:
                return False
            if value(s, "gregor_partitions_under_replicated") != under:
                return False
            if value(s, "gregor_partitions_offline") != offline:
                return False
        return sum(led.values()) == len(parts)

    wait_for(consistent, timeout=30, what="cluster gauges match Metadata on every node")

    # The metadata quorum's progress: every node's log end is at or past what it applied,
    # and the active controller reports each other node's lag, small once the quorum is idle
    # (broker heartbeats may keep an entry or two in flight).
    for n in c.nodes:
        s = scrape(n)
        applied = value(s, "gregor_metadata_applied_index")
        assert applied > 0, n.node_id
        assert value(s, "gregor_metadata_log_end_index") >= applied, n.node_id
        assert value(s, "gregor_metadata_apply_lag") >= 0, n.node_id
    others = [n.node_id for n in c.nodes if n.node_id != controller]

    def followers_caught_up():
        s = scrape(c.node(controller))
        lags = {
            dict(labels)["node"]: v
            for (name, labels), v in s.items()
            if name == "gregor_metadata_follower_lag"
        }
        return sorted(lags) == sorted(str(i) for i in others) and all(v <= 5 for v in lags.values())

    wait_for(followers_caught_up, timeout=30, what="the controller reports every follower's metadata lag, small")

    # A follower goes away: the leaders of its partitions shrink their ISR (counted by
    # gregor_isr_shrinks_total on the nodes that lead), and expand it when it is back.
    def total(name: str, nodes) -> float:
        return sum(value(scrape(n), name) for n in nodes)

    shrinks0 = total("gregor_isr_shrinks_total", c.nodes)
    expands0 = total("gregor_isr_expands_total", c.nodes)
    victim = next(n for n in c.nodes if n.node_id != controller)
    c.kill9(victim.node_id)
    survivors = [n for n in c.nodes if n.node_id != victim.node_id]
    wait_for(
        lambda: total("gregor_isr_shrinks_total", survivors) > shrinks0,
        timeout=30,
        what="an ISR shrink counted after a follower is killed",
    )
    print("ISR shrinks before/after kill:", shrinks0, total("gregor_isr_shrinks_total", survivors))
    c.restart(victim.node_id)
    wait_for(
        lambda: total("gregor_isr_expands_total", c.nodes) > expands0
        and consistent()
        and value(scrape(c.node(1)), "gregor_partitions_under_replicated") == 0,
        timeout=60,
        what="an ISR expand counted and no partition under-replicated after the restart",
    )
    print("ISR expands before/after restart:", expands0, total("gregor_isr_expands_total", c.nodes))
