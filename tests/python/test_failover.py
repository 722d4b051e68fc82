"""Issue 16 (replication) acceptance 3, 4 and 6, with real processes on loopback:

3. kill -9 the broker that coordinates a consumer group while the group consumes and commits:
   the group continues on the new coordinator from its committed offsets (the offsets were
   replicated with __consumer_offsets, and the new leader of its partition rebuilt the group).
4. rolling restart of all three nodes with SIGTERM under an idempotent acks=all load: nothing
   acknowledged is lost or duplicated; the longest produce stall is reported.
6. a partition moved from nodes {1,2,3} to {1,2,4} of a 4-node cluster under load
   (AlterPartitionReassignments): node 4 gets the data, nothing acknowledged is lost.

Fault order and timing come from a seed (env GREGOR_FAULT_SEED, else random), printed in every
failure message so that a run can be replayed.
"""

from __future__ import annotations

import os
import random
import threading
import time

from gregor_testlib import (
    confluent_common,
    coordinator_partition,
    find_coordinator_request,
    unique_topic,
    wait_for,
)
from replication_check import read_back, report, verify_history
from test_cluster import create_through, record_timing, wait_topic_everywhere



def seed_of() -> int:
    s = os.environ.get("GREGOR_FAULT_SEED")
    return int(s) if s else random.randrange(1 << 31)


def cluster_with_replication(cluster_factory, size=3):
    c = cluster_factory(size)
    c.wait_formed()
    return c


def full_isr(node, topic: str, partitions: int) -> bool:
    t = node.metadata([topic])["topics"].get(topic)
    if t is None or t["error_code"] != 0 or len(t["partitions"]) != partitions:
        return False
    return all(sorted(p["isr"]) == sorted(p["replicas"]) and p["leader"] >= 0 for p in t["partitions"].values())


def verify(name: str, acked: list, records: dict, seed: int) -> None:
    """Every acknowledged (partition, offset, value) is read back at its offset, once; no
    value is stored twice (`replication_check.verify_history`); reported like the others."""
    history = verify_history(acked, records)
    report(name, seed, history)
    assert history.ok, f"{history.details()} (seed {seed})"


class Load:
    """An idempotent acks=all confluent-kafka producer at a steady rate in a thread; records
    every acknowledgement (partition, offset, value) and the longest gap between two
    acknowledgements of one partition."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, rate: int = 300):
        from confluent_kafka import Producer

        conf = confluent_common(bootstrap)
        conf.update(
            {
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 120000,
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self.producer = Producer(conf)
        self.topic, self.partitions, self.rate = topic, partitions, rate
        self.acked: list = []
        self.errors: list = []
        self.last_ack_of: dict = {}
        self.longest_stall = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def on_delivery(self, err, msg):
        if err is not None:
            self.errors.append(str(err))
            return
        # The longest time a partition went without an acknowledgement (each partition gets
        # a record every 1/rate * partitions seconds).
        now = time.monotonic()
        last = self.last_ack_of.get(msg.partition())
        if last is not None:
            self.longest_stall = max(self.longest_stall, now - last)
        self.last_ack_of[msg.partition()] = now
        self.acked.append((msg.partition(), msg.offset(), msg.value()))

    def run(self):
        i = 0
        start = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - start) * self.rate)
            while i < due:
                self.producer.produce(self.topic, value=b"v%08d" % i, partition=i % self.partitions, on_delivery=self.on_delivery)
                i += 1
            self.producer.poll(0.01)
        self.producer.flush(120)
        self.sent = i

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(180)


def commit(consumer) -> list:
    """A synchronous commit of the consumer's positions; [] when there is nothing new."""
    from confluent_kafka import KafkaError, KafkaException

    try:
        return consumer.commit(asynchronous=False) or []
    except KafkaException as e:
        if e.args[0].code() == KafkaError._NO_OFFSET:
            return []
        raise


def test_group_continues_from_committed_offsets_after_coordinator_kill9(cluster_factory):
    from confluent_kafka import Consumer, TopicPartition

    seed = seed_of()
    rng = random.Random(seed)
    c = cluster_with_replication(cluster_factory)
    topic = unique_topic("gfail")
    parts = 3
    create_through(c.node(1), topic, parts, 3, {"min.insync.replicas": "2"})
    wait_topic_everywhere(c.nodes, topic, parts)
    find_coordinator_request(c.node(1).addr, "any")
    n_off = wait_for(
        lambda: (t := c.node(1).metadata(["__consumer_offsets"])["topics"].get("__consumer_offsets"))
        and t["error_code"] == 0
        and len(t["partitions"]),
        30,
        0.05,
        "__consumer_offsets",
    )
    wait_for(lambda: full_isr(c.node(1), "__consumer_offsets", n_off), 30, 0.1, "__consumer_offsets ISR full")
    group = f"grp-{seed}"
    coord_part = coordinator_partition(group, n_off)

    from confluent_kafka import Producer

    conf = confluent_common(c.bootstrap)
    conf.update({"acks": "all", "enable.idempotence": True, "linger.ms": 5})
    p = Producer(conf)
    total = 600
    for i in range(total):
        p.produce(topic, value=b"r%06d" % i, partition=i % parts)
    assert p.flush(60) == 0

    def consumer():
        conf = confluent_common(c.bootstrap)
        conf.update(
            {"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False, "session.timeout.ms": 6000}
        )
        k = Consumer(conf)
        k.subscribe([topic])
        return k

    k = consumer()
    seen: set = set()
    committed: dict = {}

    def record_commit(tps):
        # -1001: nothing consumed there since the last commit; the earlier offset stands.
        for tp in tps:
            if tp.offset >= 0:
                committed[tp.partition] = tp.offset

    stop_at = rng.randrange(200, 400)
    deadline = time.monotonic() + 60
    while len(seen) < stop_at and time.monotonic() < deadline:
        m = k.poll(0.5)
        if m is None or m.error():
            continue
        seen.add(m.value())
        if len(seen) % 25 == 0:
            record_commit(commit(k))
    record_commit(commit(k))
    assert committed, f"nothing committed (seed {seed})"

    leader = c.node(1).metadata(["__consumer_offsets"])["topics"]["__consumer_offsets"]["partitions"][coord_part]["leader"]
    code, coordinator, _, _ = find_coordinator_request(c.node(1).addr, group)
    assert code == 0 and coordinator == leader, (code, coordinator, leader)
    killed_at = time.monotonic()
    c.kill9(coordinator)
    survivors = [n for n in c.nodes if n.node_id != coordinator]

    def moved():
        r = find_coordinator_request(survivors[0].addr, group)
        return r[0] == 0 and r[1] not in (coordinator, -1) and r[1]

    new_coordinator = wait_for(moved, 30, 0.05, f"coordinator of {group} to move (seed {seed})")
    record_timing("coordinator kill -9 -> new coordinator", time.monotonic() - killed_at)

    # The committed offsets are there on the new coordinator.
    def committed_now():
        try:
            return {tp.partition: tp.offset for tp in k.committed([TopicPartition(topic, q) for q in range(parts)], timeout=5)}
        except Exception:
            return None

    after = wait_for(committed_now, 30, 0.2, f"OffsetFetch through the new coordinator {new_coordinator} (seed {seed})")
    for q, off in committed.items():
        assert after.get(q) == off, f"partition {q}: committed {off} before the kill, {after.get(q)} after (seed {seed})"

    # The group goes on: the same consumer finishes the topic and commits on the new coordinator.
    deadline = time.monotonic() + 90
    while len(seen) < total and time.monotonic() < deadline:
        m = k.poll(0.5)
        if m is None or m.error():
            continue
        seen.add(m.value())
    assert len(seen) == total, f"consumed {len(seen)} of {total} (seed {seed})"
    def committed_on_new_coordinator():
        try:
            commit(k)
            return True
        except Exception:
            return False

    wait_for(committed_on_new_coordinator, 30, 0.5, f"a commit on the new coordinator (seed {seed})")
    ends = wait_for(committed_now, 30, 0.2, "OffsetFetch at the end")
    k.close()
    assert sum(ends.values()) == total, f"committed at the end: {ends} (seed {seed})"

    # A new member of the group starts from the committed end: nothing is read again.
    k2 = consumer()
    try:
        redelivered = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            m = k2.poll(0.5)
            if m is not None and not m.error():
                redelivered.append(m.value())
        assert not redelivered, f"{len(redelivered)} records read again after the failover (seed {seed})"
    finally:
        k2.close()


def test_rolling_restart_with_sigterm_loses_nothing(cluster_factory):
    seed = seed_of()
    rng = random.Random(seed)
    c = cluster_with_replication(cluster_factory)
    topic = unique_topic("roll")
    parts = 3
    create_through(c.node(1), topic, parts, 3, {"min.insync.replicas": "2"})
    wait_topic_everywhere(c.nodes, topic, parts)
    wait_for(lambda: full_isr(c.node(1), topic, parts), 30, 0.1, "full ISR")
    order = list(c.ids)
    rng.shuffle(order)
    with Load(c.bootstrap, topic, parts) as load:
        wait_for(lambda: len(load.acked) > 200, 30, 0.1, "first acknowledgements")
        for node_id in order:
            time.sleep(rng.uniform(0.5, 2.0))
            c.restart(node_id)
            others = [n for n in c.nodes if n.node_id != node_id]
            wait_for(
                lambda: full_isr(others[0], topic, parts),
                60,
                0.1,
                f"node {node_id} back in the ISR of every partition (seed {seed})",
            )
        time.sleep(1)
    assert not load.errors, f"delivery errors: {load.errors[:5]} (seed {seed})"
    records = read_back(c.bootstrap, topic, parts)
    verify("rolling_restart_sigterm", load.acked, records, seed)
    record_timing("rolling restart: longest produce stall", load.longest_stall, goal=5.0)
    assert load.longest_stall < 30, f"a partition took no write for {load.longest_stall:.1f} s (seed {seed})"


def reassign_request(addr: tuple, topic: str, partition: int, replicas) -> tuple:
    """AlterPartitionReassignments v0 through ``addr``: (top error, [partition errors])."""
    import io

    from kafka.protocol.admin import AlterPartitionReassignmentsRequest_v0, AlterPartitionReassignmentsResponse_v0

    from gregor_testlib import wire_request

    req = AlterPartitionReassignmentsRequest_v0(timeout_ms=10000, topics=[(topic, [(partition, replicas, {})], {})], tags={})
    body = wire_request(addr, 45, 0, req.encode(), True, 15)
    resp = AlterPartitionReassignmentsResponse_v0.decode(io.BytesIO(body))
    return resp.error_code, [p[1] for t in resp.responses for p in t[1]]


def list_reassignments_request(addr: tuple) -> list:
    """ListPartitionReassignments v0 (all topics): [(topic, partition, replicas, adding, removing)]."""
    import io

    from kafka.protocol.admin import ListPartitionReassignmentsRequest_v0, ListPartitionReassignmentsResponse_v0

    from gregor_testlib import wire_request

    req = ListPartitionReassignmentsRequest_v0(timeout_ms=10000, topics=None, tags={})
    body = wire_request(addr, 46, 0, req.encode(), True, 15)
    resp = ListPartitionReassignmentsResponse_v0.decode(io.BytesIO(body))
    return [(t[0], p[0], p[1], p[2], p[3]) for t in resp.topics for p in t[1]]


def test_reassign_partition_to_a_fourth_node_under_load(cluster_factory):
    """Acceptance 6: a partition on {1,2,3} moved to {1,2,4} under an idempotent acks=all
    load: node 4 receives the data, node 3 leaves, nothing acknowledged is lost."""
    from replication_check import create_topic_request

    seed = seed_of()
    rng = random.Random(seed)
    c = cluster_factory(4)
    c.wait_formed()
    topic = unique_topic("move")
    code, msg = create_topic_request(c.node(1).addr, topic, 1, 3, {"min.insync.replicas": "2"}, assignments=[[1, 2, 3]])
    assert code == 0, msg
    wait_topic_everywhere(c.nodes, topic, 1)
    wait_for(lambda: full_isr(c.node(1), topic, 1), 30, 0.1, "full ISR")
    with Load(c.bootstrap, topic, 1) as load:
        wait_for(lambda: len(load.acked) > rng.randrange(100, 400), 30, 0.1, "first acknowledgements")
        top, errors = reassign_request(c.node(rng.choice([1, 2, 3, 4])).addr, topic, 0, [1, 2, 4])
        assert top == 0 and errors == [0], f"AlterPartitionReassignments: {top} {errors} (seed {seed})"

        def moved():
            p = c.node(1).metadata([topic])["topics"][topic]["partitions"][0]
            return sorted(p["replicas"]) == [1, 2, 4] and sorted(p["isr"]) == [1, 2, 4] and p

        started = time.monotonic()
        done = wait_for(moved, 60, 0.1, f"the move to [1, 2, 4] (seed {seed})")
        record_timing("reassignment {1,2,3} -> {1,2,4} under load", time.monotonic() - started, goal=10.0)
        assert list_reassignments_request(c.node(2).addr) == [], "a finished reassignment is still listed"
        time.sleep(1)
    assert not load.errors, f"delivery errors: {load.errors[:5]} (seed {seed})"
    assert done["leader"] in (1, 2, 4)
    records = read_back(c.bootstrap, topic, 1)
    verify("reassign_under_load", load.acked, records, seed)
    # Node 4 has the data: its copy of the log is (about) the size of the leader's.
    log4 = sum(f.stat().st_size for f in (c.node(4).data_dir / f"{topic}-0").glob("*.log"))
    log1 = sum(f.stat().st_size for f in (c.node(1).data_dir / f"{topic}-0").glob("*.log"))
    assert log4 > 0 and abs(log4 - log1) < 64 * 1024, f"node 4 log {log4} B vs node 1 {log1} B (seed {seed})"
