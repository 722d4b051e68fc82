"""Issue 15 acceptance: three gregor processes on loopback form one cluster over the Raft
metadata quorum (every node a controller and a broker), started with the contract flags

    gregor serve --node-id N --listen H:P --controller-listen H:P
                 --controller-quorum-voters 1@H:P,2@H:P,3@H:P --data-dir DIR

Requests that must reach one chosen node (CreateTopics through node 2, Produce through a
non-leader) are sent raw (gregor_testlib.wire_request & co.): the clients would route them
to the controller or the leader themselves. Metadata is read at v12 (leader epochs, topic
IDs). Measured times are printed and kept in target/cluster-timings.json so they can be
quoted; the assertions on them are generous (a loaded CI), the goals are in the messages.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import threading
import time
from collections import Counter

import pytest

from gregor_testlib import (
    NOT_LEADER_OR_FOLLOWER,
    REPO_ROOT,
    RETRIABLE_ERRORS,
    TOPIC_ALREADY_EXISTS,
    confluent_assign_consumer,
    confluent_common,
    confluent_producer,
    coordinator_partition,
    create_partitions_request,
    create_topics_request,
    delete_topics_request,
    produce_v10_leader_hint,
    describe_quorum_request,
    describe_topic_configs_request,
    fetch_request,
    find_coordinator_request,
    incremental_alter_topic_configs_request,
    list_offsets_request,
    produce_request,
    unique_topic,
    wait_for,
)

INVALID_REPLICATION_FACTOR = 38
# Generous bounds for timings whose goal is 2 s (issue 15), so a loaded CI machine does not
# fail them; the measured figure is printed either way.
FAILOVER_BOUND_S = 10.0
TIMINGS = REPO_ROOT / "target" / "cluster-timings.json"


def record_timing(name: str, seconds: float, goal: float = 2.0):
    """Print a measured time and keep it in target/cluster-timings.json."""
    print(f"\nMEASURED {name}: {seconds:.3f} s (goal < {goal} s)")
    try:
        data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
    except ValueError:
        data = {}
    data.setdefault(name, []).append(round(seconds, 3))
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def create_through(node, name: str, partitions: int, rf: int, configs=None, timeout_ms: int = 10000):
    """CreateTopics through ``node`` (forwarded by it to the active controller); asserts
    success."""
    res = create_topics_request(node.addr, [(name, partitions, rf, configs or {})], timeout_ms)
    assert res[name][0] == 0, f"CreateTopics {name} through node {node.node_id}: {res[name]}"


def create_retrying(node, name: str, partitions: int, rf: int, timeout: float, attempt_ms: int = 2000):
    """CreateTopics through ``node`` until it succeeds: retriable errors, timeouts and
    refused connections are retried; TOPIC_ALREADY_EXISTS counts as success (an earlier
    attempt that timed out was committed after all). Returns the attempts' outcomes."""
    outcomes = []

    def attempt():
        try:
            code, msg = create_topics_request(
                node.addr, [(name, partitions, rf, {})], attempt_ms, socket_timeout=attempt_ms / 1000 + 1
            )[name]
        except (OSError, ConnectionError) as exc:
            outcomes.append(type(exc).__name__)
            return False
        outcomes.append(code)
        if code in (0, TOPIC_ALREADY_EXISTS):
            return True
        if code not in RETRIABLE_ERRORS:
            raise AssertionError(f"CreateTopics {name} through node {node.node_id}: non-retriable {code} {msg}")
        return False

    wait_for(attempt, timeout, 0.02, f"CreateTopics {name} through node {node.node_id}")
    return outcomes


def topic_ready(md: dict, name: str, partitions: int) -> bool:
    t = md["topics"].get(name)
    return (
        t is not None
        and t["error_code"] == 0
        and len(t["partitions"]) == partitions
        and all(p["leader"] >= 0 for p in t["partitions"].values())
    )


def wait_topic_everywhere(nodes, name: str, partitions: int, timeout: float = 30) -> dict:
    """Wait until every node's Metadata shows ``name`` with its partitions led; returns
    {node_id: that node's view of the topic}."""
    views = {}

    def ready():
        for n in nodes:
            md = n.metadata([name])
            if not topic_ready(md, name, partitions):
                return False
            views[n.node_id] = md["topics"][name]
        return True

    wait_for(ready, timeout, 0.05, f"topic {name} ({partitions} partitions, all led) on nodes {[n.node_id for n in nodes]}")
    return views


def layout(view: dict) -> dict:
    """partition -> (leader, leader epoch, replicas, isr) of one node's view of a topic."""
    return {
        i: (p["leader"], p["leader_epoch"], tuple(p["replicas"]), tuple(sorted(p["isr"])))
        for i, p in view["partitions"].items()
    }


def all_topics(node) -> dict:
    """name -> (topic id, partition count, replica sets) for the non-internal topics."""
    md = node.metadata()
    return {
        name: (t["topic_id"], len(t["partitions"]), {i: tuple(sorted(p["replicas"])) for i, p in t["partitions"].items()})
        for name, t in md["topics"].items()
        if not t["is_internal"] and not name.startswith("__")
    }


# --------------------------------------------------------------------------- 1
def test_three_nodes_form_one_cluster(cluster_factory):
    """Acceptance 1: every node lists 3 brokers and the same controller; a 6-partition RF=3
    topic created through node 2 is seen by all, each node leading 2 partitions."""
    c = cluster_factory(3)
    controller = c.wait_formed()
    for n in c.nodes:
        md = n.metadata()
        assert set(md["brokers"]) == {1, 2, 3}, f"node {n.node_id}: {md['brokers']}"
        for b, (host, port, _rack) in md["brokers"].items():
            assert (host, port) == c.node(b).addr, f"node {n.node_id} advertises broker {b} at {host}:{port}"
        assert md["controller_id"] == controller
    assert len({n.metadata()["cluster_id"] for n in c.nodes}) == 1, "nodes disagree on the cluster id"
    quorum = {n.node_id: describe_quorum_request(n.addr) for n in c.nodes}
    for node_id, q in quorum.items():
        assert q["error_code"] == 0 and q["leader_id"] == controller, f"DescribeQuorum through node {node_id}: {q}"
        assert set(q["voters"]) == {1, 2, 3} and not q["observers"], f"DescribeQuorum through node {node_id}: {q}"
    assert len({q["leader_epoch"] for q in quorum.values()}) == 1, quorum

    topic = unique_topic("spread")
    create_through(c.node(2), topic, 6, 3)
    views = wait_topic_everywhere(c.nodes, topic, 6)

    first = layout(views[1])
    for node_id, view in views.items():
        assert layout(view) == first, f"node {node_id} sees {layout(view)}, node 1 sees {first}"
        assert view["topic_id"] == views[1]["topic_id"]
    for i, (leader, epoch, replicas, isr) in first.items():
        assert sorted(replicas) == [1, 2, 3], f"partition {i} replicas {replicas}"
        assert leader in isr and set(isr) <= set(replicas), f"partition {i}: leader {leader}, isr {isr}"
        assert epoch >= 0
    leads = Counter(leader for leader, _, _, _ in first.values())
    assert leads == {1: 2, 2: 2, 3: 2}, f"leaders per node: {dict(leads)} (layout {first})"

    # Through every node that is not the controller (forwarded), and the controller itself.
    for n in c.nodes:
        name = unique_topic(f"via{n.node_id}")
        create_through(n, name, 3, 3)
        wait_topic_everywhere(c.nodes, name, 3)

    # The same name through all three nodes at once: exactly one creates it.
    same = unique_topic("race")
    answers = {}

    def create(n):
        answers[n.node_id] = create_topics_request(n.addr, [(same, 3, 3, {})])[same][0]

    threads = [threading.Thread(target=create, args=(n,)) for n in c.nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(answers.values()) == [0, TOPIC_ALREADY_EXISTS, TOPIC_ALREADY_EXISTS], answers
    wait_topic_everywhere(c.nodes, same, 3)

    # More replicas than live brokers.
    name = unique_topic("rf4")
    res = create_topics_request(c.node(3).addr, [(name, 1, 4, {})])
    assert res[name][0] == INVALID_REPLICATION_FACTOR, res


# --------------------------------------------------------------------------- 2
def test_kill9_active_controller_then_create_topic(cluster_factory):
    """Acceptance 2: kill -9 the active controller; a topic can be created through a
    surviving node. Measures kill -> first successful CreateTopics."""
    c = cluster_factory(3)
    controller = c.wait_formed()
    warm = unique_topic("warm")
    create_through(c.node(controller), warm, 3, 3)
    wait_topic_everywhere(c.nodes, warm, 3)

    survivors = [n for n in c.nodes if n.node_id != controller]
    via = survivors[0]
    topic = unique_topic("after-kill")
    c.kill9(controller)
    t0 = time.monotonic()
    outcomes = create_retrying(via, topic, 2, 2, timeout=60)
    elapsed = time.monotonic() - t0
    record_timing("kill9_controller_to_create_topics_s", elapsed)
    print(f"killed controller {controller}; CreateTopics through node {via.node_id}: attempts {outcomes}")

    new_controller = c.wait_formed(brokers=[n.node_id for n in survivors])
    assert new_controller != controller
    wait_topic_everywhere(survivors, topic, 2)
    assert elapsed < FAILOVER_BOUND_S, f"first CreateTopics {elapsed:.2f}s after the kill (goal < 2 s)"


# --------------------------------------------------------------------------- 3
@pytest.mark.parametrize("victim_role", ["broker", "controller"])
def test_kill9_leader_moves_leadership_then_rejoins(cluster_factory, victim_role):
    """Acceptance 3: kill -9 a node that leads partitions (one that is not the controller,
    and the controller); every surviving node's Metadata shows new leaders from the ISR with
    a higher leader epoch (measured); the node restarts, re-registers and is unfenced."""
    c = cluster_factory(3)
    controller = c.wait_formed()
    topic = unique_topic("failover")
    create_through(c.node(1), topic, 6, 3)
    before = layout(wait_topic_everywhere(c.nodes, topic, 6)[1])

    if victim_role == "controller":
        victim = controller
    else:
        victim = next(i for i in c.ids if i != controller and any(v[0] == i for v in before.values()))
    moved = {i: v for i, v in before.items() if v[0] == victim}
    assert moved, f"node {victim} leads nothing: {before}"
    survivors = [n for n in c.nodes if n.node_id != victim]

    c.kill9(victim)
    t0 = time.monotonic()
    seen = {}

    def new_leaders_everywhere():
        for n in survivors:
            view = n.metadata([topic])["topics"][topic]
            for i, (old_leader, old_epoch, _replicas, old_isr) in moved.items():
                p = view["partitions"][i]
                if p["leader"] in (victim, -1) or p["leader_epoch"] <= old_epoch:
                    return False
                assert p["leader"] in old_isr, f"node {n.node_id}: partition {i} leader {p['leader']} not from ISR {old_isr}"
            seen[n.node_id] = layout(view)
        return True

    wait_for(new_leaders_everywhere, 60, 0.02, f"new leaders for the partitions node {victim} led")
    elapsed = time.monotonic() - t0
    record_timing(f"kill9_{victim_role}_to_new_leaders_everywhere_s", elapsed)
    print(f"killed node {victim} (controller was {controller}); before {before}; after {seen}")
    for node_id, view in seen.items():
        for i, (leader, epoch, _r, isr) in view.items():
            assert leader in isr, f"node {node_id}: partition {i} leader {leader} not in its ISR {isr}"
            assert epoch >= before[i][1], f"node {node_id}: partition {i} leader epoch went down"
    assert elapsed < FAILOVER_BOUND_S, f"new leaders {elapsed:.2f}s after the kill (goal < 2 s)"

    # The dead node is fenced: gone from the brokers every survivor lists.
    c.wait_formed(brokers=[n.node_id for n in survivors])

    # Back on the same ports and data dir: registers again, unfenced (listed by everyone).
    t1 = time.monotonic()
    c.start_node(victim)
    c.wait_formed(brokers=c.ids)
    record_timing("restart_to_unfenced_everywhere_s", time.monotonic() - t1, goal=5.0)

    def same_view():
        views = [layout(n.metadata([topic])["topics"][topic]) for n in c.nodes]
        return all(v == views[0] for v in views) and views[0]

    after = wait_for(same_view, 30, 0.05, "every node, the restarted one too, to show the same partition state")
    for i, (leader, epoch, _r, _isr) in after.items():
        assert epoch >= before[i][1], f"partition {i} leader epoch went down after the restart"


# --------------------------------------------------------------------------- 4
@pytest.mark.parametrize("survivor_role", ["controller", "follower"])
def test_two_of_three_down_then_recover(cluster_factory, survivor_role):
    """Acceptance 4: with 2 of 3 nodes down no metadata change is accepted (CreateTopics
    through the survivor fails with a retriable error or times out); when they return the
    cluster recovers with the earlier topics intact and accepts a new CreateTopics."""
    c = cluster_factory(3)
    controller = c.wait_formed()
    kept = unique_topic("kept")
    create_through(c.node(1), kept, 4, 3, {"retention.ms": "7200000"})
    wait_topic_everywhere(c.nodes, kept, 4)
    before = all_topics(c.node(1))

    if survivor_role == "controller":
        survivor = c.node(controller)
    else:
        survivor = next(n for n in c.nodes if n.node_id != controller)
    for n in c.nodes:
        if n is not survivor:
            c.kill9(n.node_id)

    refused = unique_topic("no-quorum")
    t0 = time.monotonic()
    try:
        code, msg = create_topics_request(survivor.addr, [(refused, 1, 1, {})], 3000, socket_timeout=15)[refused]
        outcome = f"error {code} {msg!r}"
    except (socket.timeout, TimeoutError):
        code, outcome = None, "timed out"
    print(f"CreateTopics through lone node {survivor.node_id} ({survivor_role}): {outcome} after {time.monotonic() - t0:.2f}s")
    assert code is None or code in RETRIABLE_ERRORS, f"without a quorum CreateTopics answered {outcome}"

    t1 = time.monotonic()
    c.start_all()
    record_timing(f"quorum_regained_all_listed_s[{survivor_role}]", time.monotonic() - t1, goal=5.0)
    for n in c.nodes:
        now = all_topics(n)
        assert now.get(kept) == before[kept], f"node {n.node_id}: {kept} was {before[kept]}, is {now.get(kept)}"
        if refused in now:
            print(f"note: {refused} (timed out without a quorum) was committed once the quorum returned")
    fresh = unique_topic("recovered")
    create_retrying(survivor, fresh, 3, 3, timeout=30)
    record_timing(f"two_down_restart_to_create_topics_s[{survivor_role}]", time.monotonic() - t1, goal=5.0)
    wait_topic_everywhere(c.nodes, fresh, 3)
    wait_topic_everywhere(c.nodes, kept, 4)


# --------------------------------------------------------------------------- 5
@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_full_restart_keeps_topics_ids_and_configs(cluster_factory, how):
    """Acceptance 5: every node restarted (clean SIGTERM, or kill -9 of all): the same
    topics, partition counts, topic IDs and configs come back."""
    c = cluster_factory(3)
    c.wait_formed()
    specs = {
        unique_topic("six"): (6, 3, {"retention.ms": "3600000"}),
        unique_topic("compact"): (2, 2, {"cleanup.policy": "compact", "max.message.bytes": "200000"}),
        unique_topic("one"): (1, 1, {}),
    }
    for i, (name, (parts, rf, configs)) in enumerate(specs.items()):
        create_through(c.nodes[i % 3], name, parts, rf, configs)
    for name, (parts, _, _) in specs.items():
        wait_topic_everywhere(c.nodes, name, parts)

    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    six = next(iter(specs))
    admin = AdminClient(confluent_common(c.bootstrap))
    entry = ConfigEntry("segment.ms", "600000", incremental_operation=AlterConfigOpType.SET)
    for fut in admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, six, incremental_configs=[entry])]).values():
        fut.result(30)

    def configs_everywhere():
        per_node = {n.node_id: describe_topic_configs_request(n.addr, list(specs)) for n in c.nodes}
        first = per_node[1]
        ok = all(v == first for v in per_node.values()) and first[six]["segment.ms"][0] == "600000"
        return ok and first

    configs_before = wait_for(configs_everywhere, 30, 0.2, "the altered config on every node")
    for name, (_, _, configs) in specs.items():
        for k, v in configs.items():
            assert configs_before[name][k][0] == v, f"{name} {k}: {configs_before[name][k]}"
    topics_before = all_topics(c.node(1))
    assert set(specs) <= set(topics_before)

    if how == "sigterm":
        codes = c.stop_all(signal.SIGTERM)
        assert set(codes.values()) == {0}, f"exit codes on SIGTERM: {codes}\n{c.log_tails()}"
    else:
        c.kill9_all()
    t0 = time.monotonic()
    c.start_all()
    for name, (parts, _, _) in specs.items():
        wait_topic_everywhere(c.nodes, name, parts)
    record_timing(f"full_restart_{how}_to_topics_led_everywhere_s", time.monotonic() - t0, goal=5.0)

    for n in c.nodes:
        assert all_topics(n) == topics_before, f"node {n.node_id} after {how}: {all_topics(n)} != {topics_before}"
    configs_after = wait_for(configs_everywhere, 30, 0.2, "configs on every node after the restart")
    assert configs_after == configs_before

    # The quorum is back for writes, too (not only serving what the nodes read from disk).
    fresh = unique_topic("after-restart")
    create_retrying(c.node(2), fresh, 3, 3, timeout=30)
    record_timing(f"full_restart_{how}_to_create_topics_s", time.monotonic() - t0, goal=5.0)
    wait_topic_everywhere(c.nodes, fresh, 3)
    for n in c.nodes:
        now = all_topics(n)
        del now[fresh]
        assert now == topics_before


# --------------------------------------------------------------------------- produce
def test_produce_through_non_leader_is_refused(cluster_factory):
    """Produce to a partition through a node that does not lead it gets
    NOT_LEADER_OR_FOLLOWER; through its leader it is appended; a confluent-kafka producer
    bootstrapped with the whole cluster writes every partition and a consumer reads it all."""
    c = cluster_factory(3)
    c.wait_formed()
    topic = unique_topic("leaders")
    create_through(c.node(1), topic, 3, 3)
    view = layout(wait_topic_everywhere(c.nodes, topic, 3)[1])
    assert {v[0] for v in view.values()} == {1, 2, 3}, f"each node should lead one partition: {view}"

    for i, (leader, _, _, _) in view.items():
        for n in c.nodes:
            if n.node_id != leader:
                code, _ = produce_request(n.addr, topic, i, [b"misrouted"])
                assert code == NOT_LEADER_OR_FOLLOWER, f"partition {i} through node {n.node_id} (leader {leader}): error {code}"
                # KIP-951: from Produce v10 the refusal names the leader and how to reach it.
                hint = produce_v10_leader_hint(n.addr, topic, i, b"misrouted")
                assert hint["error_code"] == NOT_LEADER_OR_FOLLOWER, hint
                assert hint["current_leader"] == (leader, view[i][1]), f"partition {i} via node {n.node_id}: {hint}"
                assert hint["node_endpoints"] == {leader: c.node(leader).addr}, hint
        code, offset = produce_request(c.node(leader).addr, topic, i, [b"direct"])
        assert (code, offset) == (0, 0), f"partition {i} through its leader {leader}: error {code}, offset {offset}"
        # Fetch and ListOffsets likewise: only the leader serves the partition.
        for n in c.nodes:
            want = (0, 1) if n.node_id == leader else (NOT_LEADER_OR_FOLLOWER, None)
            code, hw = fetch_request(n.addr, topic, i)
            assert (code, hw if code == 0 else None) == want, f"Fetch partition {i} through node {n.node_id}: {code}, {hw}"
            code, end = list_offsets_request(n.addr, topic, i)
            assert (code, end if code == 0 else None) == want, f"ListOffsets partition {i} through node {n.node_id}: {code}, {end}"

    per_partition = 20
    p = confluent_producer(c.bootstrap, linger_ms=5, message_timeout_ms=30000)
    failures = []
    for i in range(3):
        for k in range(per_partition):
            p.produce(topic, value=f"v{i}-{k}".encode(), partition=i, on_delivery=lambda err, msg: err and failures.append(err))
    assert p.flush(60) == 0, "confluent-kafka producer did not deliver everything"
    assert not failures, failures

    consumer = confluent_assign_consumer(c.bootstrap)
    from confluent_kafka import TopicPartition

    consumer.assign([TopicPartition(topic, i, 0) for i in range(3)])
    got = {i: [] for i in range(3)}
    eof = set()
    deadline = time.monotonic() + 60
    while len(eof) < 3 and time.monotonic() < deadline:
        m = consumer.poll(1.0)
        if m is None:
            continue
        if m.error():
            if m.error().code() == -191:  # _PARTITION_EOF
                if len(got[m.partition()]) == per_partition + 1:
                    eof.add(m.partition())
                continue
            raise AssertionError(f"consume: {m.error()}")
        got[m.partition()].append(m.value())
    consumer.close()
    for i in range(3):
        assert got[i] == [b"direct"] + [f"v{i}-{k}".encode() for k in range(per_partition)], f"partition {i}: {got[i]}"


# --------------------------------------------------------------------------- hung node
def test_sigstop_controller_then_resume(cluster_factory):
    """A hung controller (SIGSTOP: sockets open, nothing answered) is replaced like a dead
    one; after SIGCONT it rejoins as one voter among three: every node names the same
    controller, lists all three brokers, shows what was created meanwhile, and a
    CreateTopics through it is forwarded and committed."""
    c = cluster_factory(3)
    controller = c.wait_formed()
    survivors = [n for n in c.nodes if n.node_id != controller]
    while_hung = unique_topic("while-hung")

    c.node(controller).pause()
    t0 = time.monotonic()

    def new_controller_named():
        ids = {n.metadata()["controller_id"] for n in survivors}
        return len(ids) == 1 and not ids & {controller, -1}

    wait_for(new_controller_named, 60, 0.02, "the survivors to name a new controller")
    record_timing("sigstop_controller_to_new_controller_in_metadata_s", time.monotonic() - t0)
    # The first attempt, sent before the survivors knew, waits on the hung controller (see
    # test_create_topics_in_flight_when_controller_hangs); attempts give up after 3 s.
    create_retrying(survivors[0], while_hung, 3, 2, timeout=60)
    record_timing("sigstop_controller_to_create_topics_s", time.monotonic() - t0)
    new_controller = c.wait_formed(nodes=[n.node_id for n in survivors], brokers=[n.node_id for n in survivors])
    assert new_controller != controller
    wait_topic_everywhere(survivors, while_hung, 3)

    c.node(controller).resume()
    t1 = time.monotonic()
    c.wait_formed(brokers=c.ids)
    record_timing("sigcont_to_unfenced_everywhere_s", time.monotonic() - t1, goal=5.0)
    wait_topic_everywhere(c.nodes, while_hung, 3)
    after = unique_topic("after-resume")
    create_retrying(c.node(controller), after, 3, 3, timeout=30)
    views = wait_topic_everywhere(c.nodes, after, 3)
    assert len({json.dumps(layout(v), sort_keys=True) for v in views.values()}) == 1, views


# --------------------------------------------------------------------------- coordinators
def test_group_coordinator_is_offsets_partition_leader_and_moves(cluster_factory):
    """Every node answers FindCoordinator with the leader of the group's __consumer_offsets
    partition; a confluent-kafka group commits through it; when that node is killed -9 the
    coordinator moves with the partition's new leader and the group works again."""
    c = cluster_factory(3)
    controller = c.wait_formed()
    def offsets_partitions():
        find_coordinator_request(c.node(1).addr, "any-group")  # Kafka creates the topic lazily
        t = c.node(1).metadata(["__consumer_offsets"])["topics"].get("__consumer_offsets")
        return t is not None and t["error_code"] == 0 and len(t["partitions"])

    n_parts = wait_for(offsets_partitions, 30, 0.05, "__consumer_offsets in metadata")
    views = wait_topic_everywhere(c.nodes, "__consumer_offsets", n_parts)
    rf = {len(p["replicas"]) for p in views[1]["partitions"].values()}
    print(f"__consumer_offsets: {n_parts} partitions, replication factors {rf} (issue 15: min(3, brokers))")

    # A group whose coordinator is not the controller, so that the kill below moves only it.
    group = next(
        g
        for g in (f"grp-{i}" for i in range(1000))
        if views[1]["partitions"][coordinator_partition(g, n_parts)]["leader"] != controller
    )
    part = coordinator_partition(group, n_parts)
    leader = views[1]["partitions"][part]["leader"]
    for n in c.nodes:
        # COORDINATOR_NOT_AVAILABLE (retriable) while a node's group service starts.
        code, node_id, host, port = wait_for(
            lambda: (r := find_coordinator_request(n.addr, group))[0] != 15 and r,
            30,
            0.05,
            f"FindCoordinator {group} through node {n.node_id} to answer",
        )
        assert (code, node_id, (host, port)) == (0, leader, c.node(leader).addr), f"FindCoordinator {group} through node {n.node_id}"

    topic = unique_topic("grp")
    create_through(c.node(controller), topic, 3, 3)
    wait_topic_everywhere(c.nodes, topic, 3)

    def consume_and_commit(expect: set):
        """Join the group, read until every value in ``expect`` was seen, commit."""
        from confluent_kafka import Consumer

        conf = confluent_common(c.bootstrap)
        conf.update({"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer = Consumer(conf)
        try:
            consumer.subscribe([topic])
            missing = set(expect)
            deadline = time.monotonic() + 60
            while missing and time.monotonic() < deadline:
                m = consumer.poll(0.5)
                if m is not None and not m.error():
                    missing.discard(m.value())
            assert not missing, f"not consumed: {sorted(missing)}"
            consumer.commit(asynchronous=False)
        finally:
            consumer.close()

    p = confluent_producer(c.bootstrap, linger_ms=5, message_timeout_ms=30000)
    for i in range(30):
        p.produce(topic, value=b"m%d" % i, partition=i % 3)
    assert p.flush(60) == 0
    consume_and_commit({b"m%d" % i for i in range(30)})

    c.kill9(leader)
    survivors = [n for n in c.nodes if n.node_id != leader]

    def moved():
        answers = {n.node_id: find_coordinator_request(n.addr, group) for n in survivors}
        ids = {(code, node_id) for code, node_id, _, _ in answers.values()}
        if len(ids) != 1:
            return False
        ((code, node_id),) = ids
        return code == 0 and node_id not in (leader, -1) and node_id

    new_coordinator = wait_for(moved, 30, 0.05, f"the coordinator of {group} to move off node {leader}")
    md_leader = survivors[0].metadata(["__consumer_offsets"])["topics"]["__consumer_offsets"]["partitions"][part]["leader"]
    assert new_coordinator == md_leader, f"coordinator {new_coordinator}, partition {part} leader {md_leader}"

    # Without replication the new coordinator has neither the committed offsets nor the
    # records of the partition the dead node led: the group only has to work again.
    for i in range(30):
        p.produce(topic, value=b"n%d" % i, partition=i % 3)
    assert p.flush(60) == 0
    consume_and_commit({b"n%d" % i for i in range(30)})


def test_create_topics_in_flight_when_controller_hangs(cluster_factory):
    """A CreateTopics sent through a surviving node the moment the controller hangs is
    committed by the next controller within its timeout_ms (as a client expects: one request,
    no retry needed), not answered REQUEST_TIMED_OUT after waiting on the hung one."""
    c = cluster_factory(3)
    controller = c.wait_formed()
    via = next(n for n in c.nodes if n.node_id != controller)
    topic = unique_topic("in-flight")
    c.node(controller).pause()
    t0 = time.monotonic()
    res = create_topics_request(via.addr, [(topic, 1, 1, {})], timeout_ms=10000, socket_timeout=30)
    elapsed = time.monotonic() - t0
    print(f"CreateTopics through node {via.node_id} with controller {controller} hung: {res[topic]} after {elapsed:.2f}s")
    assert res[topic][0] == 0, f"answered {res[topic]} after {elapsed:.2f}s"
    assert elapsed < FAILOVER_BOUND_S


def test_leader_cut_off_from_quorum_stops_serving(cluster_factory):
    """A node that cannot reach the quorum (the two others SIGSTOPped) for a broker session
    timeout stops serving its partitions as leader (the controller may have fenced it and
    elected other leaders): Produce through it gets NOT_LEADER_OR_FOLLOWER. Once the others
    are back, the partition is served again by the leader Metadata names."""
    c = cluster_factory(3)
    controller = c.wait_formed()
    topic = unique_topic("cut-off")
    create_through(c.node(1), topic, 3, 3)
    view = layout(wait_topic_everywhere(c.nodes, topic, 3)[1])
    lone = next(n for n in c.nodes if n.node_id != controller)
    part = next(i for i, v in view.items() if v[0] == lone.node_id)
    assert produce_request(lone.addr, topic, part, [b"before"])[0] == 0

    others = [n for n in c.nodes if n is not lone]
    for n in others:
        n.pause()
    t0 = time.monotonic()
    wait_for(
        lambda: produce_request(lone.addr, topic, part, [b"cut-off"], timeout=5)[0] == NOT_LEADER_OR_FOLLOWER,
        30,
        0.02,
        f"node {lone.node_id}, cut off, to stop serving partition {part} as leader",
    )
    record_timing("cut_off_leader_stops_serving_s", time.monotonic() - t0, goal=2.0)

    for n in others:
        n.resume()
    c.wait_formed(brokers=c.ids)

    def served():
        leader = lone.metadata([topic])["topics"][topic]["partitions"][part]["leader"]
        return leader >= 0 and produce_request(c.node(leader).addr, topic, part, [b"after"])[0] == 0

    wait_for(served, 30, 0.05, f"partition {part} served again by its leader")


# --------------------------------------------------------------------------- 5 nodes
def test_five_nodes_three_voters(cluster_factory):
    """The seeds' picture: five brokers, three of them voters. All five register (every
    node lists them), the quorum has three voters and two observers, partitions are spread
    over all five, and a kill -9 of a broker-only leader moves its partitions; it comes
    back unfenced."""
    c = cluster_factory(5, voters=3)
    controller = c.wait_formed()
    assert controller in (1, 2, 3)
    q = describe_quorum_request(c.node(5).addr)
    assert set(q["voters"]) == {1, 2, 3} and set(q["observers"]) == {4, 5}, q

    topic = unique_topic("five")
    create_through(c.node(4), topic, 10, 3)
    views = wait_topic_everywhere(c.nodes, topic, 10)
    view = layout(views[1])
    assert all(layout(v) == view for v in views.values()), views
    assert Counter(v[0] for v in view.values()) == {i: 2 for i in range(1, 6)}, view
    assert Counter(r for v in view.values() for r in v[2]) == {i: 6 for i in range(1, 6)}, view

    moved = {i: v for i, v in view.items() if v[0] == 5}
    c.kill9(5)
    t0 = time.monotonic()

    def new_leaders():
        for n in c.running():
            partitions = n.metadata([topic])["topics"][topic]["partitions"]
            for i, (_, epoch, _, isr) in moved.items():
                p = partitions[i]
                if p["leader"] in (5, -1) or p["leader_epoch"] <= epoch:
                    return False
                assert p["leader"] in isr
        return True

    wait_for(new_leaders, 60, 0.02, "new leaders for node 5's partitions on the four others")
    record_timing("five_nodes_kill9_broker_only_to_new_leaders_s", time.monotonic() - t0)
    c.wait_formed(brokers=[1, 2, 3, 4])
    c.start_node(5)
    c.wait_formed(brokers=c.ids)


# --------------------------------------------------------------------------- admin
def test_admin_requests_forwarded_from_any_node(cluster_factory):
    """CreatePartitions, IncrementalAlterConfigs and DeleteTopics sent to nodes that are not
    the controller are forwarded, committed, and seen by every node."""
    c = cluster_factory(3)
    controller = c.wait_formed()
    x, y = [n for n in c.nodes if n.node_id != controller]
    topic = unique_topic("admin")
    create_through(x, topic, 3, 3)
    topic_id = wait_topic_everywhere(c.nodes, topic, 3)[1]["topic_id"]

    assert create_partitions_request(y.addr, topic, 6)[0] == 0
    views = wait_topic_everywhere(c.nodes, topic, 6)
    assert {v["topic_id"] for v in views.values()} == {topic_id}, "CreatePartitions changed the topic id"
    assert all(layout(v) == layout(views[1]) for v in views.values())

    assert incremental_alter_topic_configs_request(y.addr, topic, {"retention.ms": "123456"})[0] == 0
    wait_for(
        lambda: all(
            describe_topic_configs_request(n.addr, [topic])[topic]["retention.ms"][0] == "123456" for n in c.nodes
        ),
        30,
        0.05,
        "the altered retention.ms on every node",
    )
    assert incremental_alter_topic_configs_request(x.addr, topic, {"retention.ms": None})[0] == 0
    wait_for(
        lambda: all(
            describe_topic_configs_request(n.addr, [topic])[topic]["retention.ms"][0] == "604800000" for n in c.nodes
        ),
        30,
        0.05,
        "retention.ms back to its default on every node",
    )

    assert delete_topics_request(x.addr, [topic]) == {topic: 0}
    wait_for(lambda: all(topic not in n.metadata()["topics"] for n in c.nodes), 30, 0.05, f"{topic} gone everywhere")
    create_retrying(y, topic, 2, 3, timeout=30)
    again = wait_topic_everywhere(c.nodes, topic, 2)
    assert again[1]["topic_id"] != topic_id, "a re-created topic must get a new topic id"


def test_voter_with_wiped_data_dir_rejoins(cluster_factory):
    """A voter whose data dir is lost (kill -9, emptied, restarted on the same ports) gets
    the metadata log back from the quorum: it lists the topics, the quorum names it a
    voter caught up, and metadata changes still commit."""
    c = cluster_factory(3)
    controller = c.wait_formed()
    topic = unique_topic("kept")
    create_through(c.node(1), topic, 3, 3)
    wait_topic_everywhere(c.nodes, topic, 3)
    victim = c.node(next(i for i in c.ids if i != controller))
    c.kill9(victim.node_id)
    shutil.rmtree(victim.data_dir)
    victim.data_dir.mkdir()
    c.start_node(victim.node_id)
    c.wait_formed(brokers=c.ids)
    wait_topic_everywhere(c.nodes, topic, 3)

    def caught_up():
        q = describe_quorum_request(victim.addr)
        return q["error_code"] == 0 and len(set(q["voters"].values())) == 1 and q

    wait_for(caught_up, 30, 0.05, f"node {victim.node_id} caught up with the metadata log")
    fresh = unique_topic("fresh")
    create_retrying(victim, fresh, 3, 3, timeout=30)
    wait_topic_everywhere(c.nodes, fresh, 3)


@pytest.mark.parametrize("how", ["kill9_restart", "sigstop_resume"])
def test_former_leader_never_serves_stale_leadership(cluster_factory, how):
    """Take a partition's leader away (kill -9, or SIGSTOP past the session timeout), let
    another take over, bring the old one back: from its first answer on it must refuse
    Produce for that partition (NOT_LEADER_OR_FOLLOWER or a retriable error), never append:
    the partition has another leader, and a write acknowledged by both is a split brain."""
    c = cluster_factory(3)
    controller = c.wait_formed()
    topic = unique_topic("stale")
    create_through(c.node(1), topic, 3, 3)
    view = layout(wait_topic_everywhere(c.nodes, topic, 3)[1])
    victim = next(i for i in c.ids if i != controller)
    part = next(i for i, v in view.items() if v[0] == victim)
    node = c.node(victim)
    if how == "kill9_restart":
        c.kill9(victim)
    else:
        node.pause()

    def led_elsewhere():
        p = c.node(controller).metadata([topic])["topics"][topic]["partitions"][part]
        return p["leader"] not in (victim, -1) and p["leader"]

    new_leader = wait_for(led_elsewhere, 30, 0.02, f"a new leader for partition {part}")
    if how == "kill9_restart":
        c.start_node(victim)
    else:
        node.resume()
    accepted = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3:
        code, offset = produce_request(node.addr, topic, part, [b"stale"], timeout=2)
        if code == 0:
            accepted.append((round(time.monotonic() - t0, 3), offset))
        else:
            assert code in RETRIABLE_ERRORS, f"Produce through node {victim} back from {how}: error {code}"
    assert not accepted, (
        f"node {victim} (back from {how}; partition {part} is led by {new_leader}) acknowledged "
        f"{len(accepted)} produces, the first at (s after it was back, offset) {accepted[:3]}, the last {accepted[-1]}"
    )
