"""Issue 16: transactions in a cluster, with real processes on loopback.

A transaction's partitions are led by several brokers, and its coordinator (the leader of the
transactional id's ``__transaction_state`` partition) is one of them: the others get their
COMMIT/ABORT markers with WriteTxnMarkers (API 27). The transaction coordinator's state is
replicated with ``__transaction_state`` and rebuilt by the new leader of its partition.

1. Transactions over partitions led by all three brokers, committed and aborted in turn, with
   the consumed offsets committed in the transaction (``send_offsets_to_transaction``) to a
   group whose coordinator may be a third broker: read_committed readers see exactly the
   committed transactions, read_uncommitted readers see the aborted ones too, and the group's
   offsets are those of the last committed transaction.
2. kill -9 of the transaction coordinator while a transactional producer commits in a loop:
   the producer goes on with the new coordinator; every transaction whose commit returned is
   read back once, every aborted one never, and no transaction is read in part.

Fault timing comes from a seed (GREGOR_FAULT_SEED), printed in every failure message.
"""

from __future__ import annotations

import threading
import time

from gregor_testlib import confluent_common, find_coordinator_request, unique_topic, wait_for
from replication_check import fault_seed
from test_cluster import create_through, record_timing, wait_topic_everywhere
from test_failover import full_isr

PARTITIONS = 6


def replicated_topic(c, prefix: str) -> str:
    topic = unique_topic(prefix)
    create_through(c.node(1), topic, PARTITIONS, 3, {"min.insync.replicas": "2"})
    wait_topic_everywhere(c.nodes, topic, PARTITIONS)
    wait_for(lambda: full_isr(c.node(1), topic, PARTITIONS), 30, 0.1, f"{topic} ISR full")
    return topic


def leaders(node, topic: str) -> dict:
    t = node.metadata([topic])["topics"][topic]
    return {p: v["leader"] for p, v in t["partitions"].items()}


def txn_coordinator(c, transactional_id: str, timeout: float = 30.0) -> int:
    def found():
        err, node_id, _, _ = find_coordinator_request(c.running()[0].addr, transactional_id, 1)
        return node_id if err == 0 and node_id >= 0 else None

    return wait_for(found, timeout, 0.1, f"the coordinator of {transactional_id}")


def txn_producer(bootstrap: str, transactional_id: str):
    from confluent_kafka import Producer

    conf = confluent_common(bootstrap)
    conf.update(
        {
            "transactional.id": transactional_id,
            "transaction.timeout.ms": 60000,
            "linger.ms": 2,
            "message.timeout.ms": 60000,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    p = Producer(conf)
    p.init_transactions(60)
    return p


def read_all(bootstrap: str, topic: str, isolation: str, expect: int, timeout: float = 60.0) -> list:
    """Every value of ``topic`` (all partitions from the start) as (partition, value)."""
    from confluent_kafka import Consumer, TopicPartition

    conf = confluent_common(bootstrap)
    conf.update(
        {
            "group.id": f"reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": isolation,
        }
    )
    k = Consumer(conf)
    k.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: list = []
    deadline = time.monotonic() + timeout
    idle_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msg = k.poll(0.5)
            if msg is None or msg.error():
                # Done once everything expected is there and nothing more came for a while.
                if len(out) >= expect and time.monotonic() - idle_since > 2.0:
                    break
                continue
            idle_since = time.monotonic()
            out.append((msg.partition(), msg.value()))
    finally:
        k.close()
    return out


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict:
    from confluent_kafka import Consumer, TopicPartition

    conf = confluent_common(bootstrap)
    conf.update({"group.id": group, "enable.auto.commit": False})
    k = Consumer(conf)
    try:
        tps = k.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=30)
    finally:
        k.close()
    return {tp.partition: tp.offset for tp in tps}


def test_transactions_across_brokers_commit_and_abort(cluster_factory):
    from confluent_kafka import TopicPartition

    seed = fault_seed()
    ctx = f"[GREGOR_FAULT_SEED={seed}]"
    c = cluster_factory(3)
    c.wait_formed()
    topic = replicated_topic(c, "txc")
    source = replicated_topic(c, "txsrc")
    lead = leaders(c.node(1), topic)
    assert len(set(lead.values())) == 3, f"{ctx} partitions not led by all three brokers: {lead}"
    tid = f"txn-{seed}"
    p = txn_producer(c.bootstrap, tid)
    coordinator = txn_coordinator(c, tid)
    # A group whose coordinator is another broker than the transaction's: its pending
    # offsets are completed by the marker that broker gets with WriteTxnMarkers.
    for i in range(100):
        group = f"rpw-{seed}-{i}"
        err, group_coordinator, _, _ = find_coordinator_request(c.node(1).addr, group, 0)
        if err == 0 and group_coordinator not in (coordinator, -1):
            break
    assert group_coordinator != coordinator, f"{ctx} no group coordinated elsewhere"
    print(f"{ctx} leaders {lead}; transaction coordinator node {coordinator}; group coordinator node {group_coordinator}")

    rounds, committed, aborted = 20, set(), set()
    meta = None
    for r in range(rounds):
        p.begin_transaction()
        values = [b"t%03d-p%d" % (r, part) for part in range(PARTITIONS)]
        for part, v in enumerate(values):
            p.produce(topic, value=v, partition=part)
        # The "consumed" position of a source topic, committed with the transaction.
        offsets = [TopicPartition(source, part, r + 1) for part in range(PARTITIONS)]
        if meta is None:
            from confluent_kafka import Consumer

            conf = confluent_common(c.bootstrap)
            conf.update({"group.id": group, "enable.auto.commit": False})
            meta_consumer = Consumer(conf)
            meta = meta_consumer.consumer_group_metadata()
        p.send_offsets_to_transaction(offsets, meta, 30)
        if r % 2 == 0:
            p.commit_transaction(60)
            committed.update(values)
        else:
            # Sent first (abort_transaction drops what is still queued): the aborted records
            # are in the logs, and read_uncommitted must see them.
            assert p.flush(30) == 0
            p.abort_transaction(60)
            aborted.update(values)
    p.flush(10)
    meta_consumer.close()

    got = read_all(c.bootstrap, topic, "read_committed", len(committed))
    values = [v for _, v in got]
    assert sorted(values) == sorted(committed), (
        f"{ctx} read_committed: {len(values)} read, {len(committed)} committed; "
        f"missing {sorted(committed - set(values))[:5]}, unexpected {sorted(set(values) - committed)[:5]}"
    )
    everything = read_all(c.bootstrap, topic, "read_uncommitted", len(committed) + len(aborted))
    assert sorted(v for _, v in everything) == sorted(committed | aborted), f"{ctx} read_uncommitted"
    # The last committed round is rounds - 2 (an even one): its offsets are r + 1.
    offs = committed_offsets(c.bootstrap, group, source)
    assert offs == {part: rounds - 1 for part in range(PARTITIONS)}, f"{ctx} group offsets {offs}"
    print(
        f"{ctx} {len(committed)} committed and {len(aborted)} aborted records over partitions led by "
        f"3 brokers: read_committed exact, group offsets {rounds - 1}"
    )


def test_transaction_coordinator_kill9_loses_no_committed_transaction(cluster_factory):
    from confluent_kafka import KafkaException

    seed = fault_seed()
    ctx = f"[GREGOR_FAULT_SEED={seed}]"
    c = cluster_factory(3)
    c.wait_formed()
    topic = replicated_topic(c, "txk")
    tid = f"txk-{seed}"
    p = txn_producer(c.bootstrap, tid)
    victim = txn_coordinator(c, tid)
    print(f"{ctx} transaction coordinator of {tid}: node {victim}; leaders {leaders(c.node(1), topic)}")

    committed: list = []  # rounds whose commit returned
    aborted: list = []  # rounds aborted by us
    unknown: list = []  # rounds whose outcome the client could not tell
    commit_times: list = []
    stop = threading.Event()
    errors: list = []

    def values_of(r: int) -> list:
        return [b"k%05d-p%d" % (r, part) for part in range(PARTITIONS)]

    def run():
        nonlocal p
        r = 0
        while not stop.is_set():
            try:
                p.begin_transaction()
                for part, v in enumerate(values_of(r)):
                    p.produce(topic, value=v, partition=part)
                p.commit_transaction(60)
                committed.append(r)
                commit_times.append(time.monotonic())
            except KafkaException as e:
                err = e.args[0]
                if err.txn_requires_abort():
                    try:
                        p.abort_transaction(60)
                        aborted.append(r)
                    except KafkaException as e2:
                        errors.append(f"abort of round {r}: {e2}")
                        unknown.append(r)
                        p = txn_producer(c.bootstrap, tid)
                elif err.retriable():
                    # The commit's outcome is retried by the client: try committing again.
                    try:
                        p.commit_transaction(60)
                        committed.append(r)
                        commit_times.append(time.monotonic())
                    except KafkaException as e2:
                        errors.append(f"commit retry of round {r}: {e2}")
                        unknown.append(r)
                        p = txn_producer(c.bootstrap, tid)
                else:
                    errors.append(f"round {r}: {e}")
                    unknown.append(r)
                    p = txn_producer(c.bootstrap, tid)
            r += 1

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(committed) >= 10, 60, 0.1, f"{ctx} ten transactions before the fault")
        c.kill9(victim)
        t0 = time.monotonic()
        before = len(committed)
        wait_for(lambda: len(committed) >= before + 10, 90, 0.1, f"{ctx} ten transactions after the kill")
        resumed = min(x for x in commit_times if x > t0) - t0
        c.start_node(victim)
        c.wait_formed(brokers=c.ids)
        after = len(committed)
        wait_for(lambda: len(committed) >= after + 5, 60, 0.1, f"{ctx} transactions after the restart")
    finally:
        stop.set()
        t.join(120)
    new_coordinator = txn_coordinator(c, tid)

    expect = {v for r in committed for v in values_of(r)}
    got = read_all(c.bootstrap, topic, "read_committed", len(expect))
    values = [v for _, v in got]
    dup = len(values) - len(set(values))
    assert dup == 0, f"{ctx} {dup} records read twice"
    read = set(values)
    lost = expect - read
    assert not lost, f"{ctx} {len(lost)} records of committed transactions lost, e.g. {sorted(lost)[:5]}"
    never = {v for r in aborted for v in values_of(r)} & read
    assert not never, f"{ctx} records of aborted transactions were read: {sorted(never)[:5]}"
    # All or nothing: a transaction of unknown outcome is read whole or not at all.
    for r in unknown:
        part = set(values_of(r)) & read
        assert not part or part == set(values_of(r)), f"{ctx} round {r} read in part: {sorted(part)}"
    record_timing("transaction coordinator kill -9: first commit after", resumed, goal=10.0)
    print(
        f"{ctx} kill -9 of coordinator node {victim} (now node {new_coordinator}): "
        f"{len(committed)} transactions committed ({len(expect)} records), {len(aborted)} aborted, "
        f"{len(unknown)} unknown; 0 lost, 0 duplicated, 0 aborted read; first commit after the kill "
        f"{resumed:.2f} s; client errors {errors[:3]}"
    )
