"""Issue 16's admin parts on real processes: ElectLeaders (API 43, through `gregor cluster
elect` and confluent-kafka's AdminClient.elect_leaders), `auto.leader.rebalance.enable`,
DescribeLogDirs (API 35, `gregor cluster log-dirs`) and `gregor cluster reassign`
(AlterPartitionReassignments / ListPartitionReassignments, with --list and --cancel).

Each test starts its own cluster (`cluster_factory`); the broker settings come from a TOML
file given with `--config`. Measured times go to `target/cluster-timings.json` like the
other cluster tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from gregor_testlib import unique_topic, wait_for
from replication_check import create_topic_request
from test_cluster import record_timing, wait_topic_everywhere

ELECTION_NOT_NEEDED = 84
PREFERRED_LEADER_NOT_AVAILABLE = 80


def config_args(tmp_path, name: str, settings: dict) -> tuple:
    """`--config FILE` with ``settings`` as TOML (Kafka's names, quoted keys)."""
    path = tmp_path / f"{name}.toml"
    lines = []
    for k, v in settings.items():
        value = ("true" if v else "false") if isinstance(v, bool) else str(v)
        lines.append(f'"{k}" = {value}')
    path.write_text("\n".join(lines) + "\n")
    return ("--config", str(path))


def cli(c, *args, check=True, timeout=60):
    """`gregor ARGS --format json` against the whole cluster (or a single broker: anything
    with ``bootstrap`` and ``bin_path``); (exit code, parsed stdout, stderr)."""
    env = dict(os.environ)
    env["GREGOR_BROKERS"] = c.bootstrap
    env.pop("RUST_BACKTRACE", None)
    p = subprocess.run(
        [os.environ.get("GREGOR_CLI_BIN") or str(c.bin_path), *args, "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"gregor {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    out = json.loads(p.stdout) if p.stdout.strip() else None
    return p.returncode, out, p.stderr


def partition_view(node, topic: str, partition: int) -> dict:
    return node.metadata([topic])["topics"][topic]["partitions"][partition]


def leader_everywhere(c, topic: str, partition: int, leader: int, nodes=None) -> bool:
    """Whether every running node's Metadata names ``leader``."""
    for n in nodes or c.running():
        if partition_view(n, topic, partition)["leader"] != leader:
            return False
    return True


def full_isr(node, topic: str, partition: int) -> bool:
    p = partition_view(node, topic, partition)
    return p["leader"] >= 0 and sorted(p["isr"]) == sorted(p["replicas"])


def produce(bootstrap: str, topic: str, partition: int, n: int, size: int = 200) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5})
    errors = []
    for i in range(n):
        p.produce(topic, value=b"x" * size, key=str(i).encode(), partition=partition,
                  on_delivery=lambda err, _m: err and errors.append(err))
        p.poll(0)
    assert p.flush(30) == 0, "records left unsent"
    assert not errors, errors[:5]


def create(c, topic: str, assignments, configs=None):
    code, msg = create_topic_request(c.node(1).addr, topic, len(assignments), len(assignments[0]),
                                     configs or {"min.insync.replicas": "2"}, assignments=assignments)
    assert code == 0, msg
    wait_topic_everywhere(c.running(), topic, len(assignments))


def kill_and_restart_preferred(c, topic: str, partitions: list, preferred: int) -> None:
    """kill -9 ``preferred``; its partitions get other leaders; it comes back and catches up
    (back in every ISR)."""
    c.node(preferred).kill9()
    others = [n for n in c.nodes if n.node_id != preferred]
    wait_for(lambda: all(partition_view(others[0], topic, p)["leader"] not in (preferred, -1) for p in partitions),
             10, 0.05, f"leadership off node {preferred}")
    c.start_node(preferred)
    c.wait_formed()
    wait_for(lambda: all(full_isr(c.node(preferred), topic, p) for p in partitions), 20, 0.1,
             f"node {preferred} back in the ISR")


def test_preferred_election_via_cli_and_confluent_admin(cluster_factory, tmp_path):
    """After a kill -9 and restart of the preferred leader, leadership stays elsewhere (auto
    rebalance off); `gregor cluster elect` moves one partition back and confluent-kafka's
    AdminClient.elect_leaders the other; a second election is not needed; an election while
    the preferred leader is down fails with PREFERRED_LEADER_NOT_AVAILABLE."""
    from confluent_kafka import ElectionType, TopicPartition
    from confluent_kafka.admin import AdminClient

    c = cluster_factory(3, extra_args=config_args(tmp_path, "no-rebalance", {"auto.leader.rebalance.enable": False}))
    topic = unique_topic("elect")
    create(c, topic, [[1, 2, 3], [1, 3, 2]])
    produce(c.bootstrap, topic, 0, 200)
    assert leader_everywhere(c, topic, 0, 1) and leader_everywhere(c, topic, 1, 1)

    # While node 1 is down, the preferred election has nobody to elect.
    c.node(1).kill9()
    wait_for(lambda: partition_view(c.node(2), topic, 0)["leader"] in (2, 3), 10, 0.05, "a new leader")
    rc, out, err = cli(c, "cluster", "elect", "--topic", topic, "--partition", "0", check=False)
    assert rc == 1, (rc, out, err)
    assert out["elections"][0]["error_code"] == PREFERRED_LEADER_NOT_AVAILABLE, out
    c.start_node(1)
    c.wait_formed()
    wait_for(lambda: full_isr(c.node(1), topic, 0) and full_isr(c.node(1), topic, 1), 20, 0.1, "node 1 in the ISRs")
    time.sleep(1.0)  # leadership does not come back by itself with auto rebalance off
    assert partition_view(c.node(2), topic, 0)["leader"] != 1
    assert partition_view(c.node(2), topic, 1)["leader"] != 1
    described = cli(c, "topic", "describe", topic)[1]
    assert [sorted(p["isr"]) for p in described["partitions"]] == [[1, 2, 3], [1, 2, 3]], described
    assert [p["replicas"] for p in described["partitions"]] == [[1, 2, 3], [1, 3, 2]], described

    started = time.monotonic()
    _, out, _ = cli(c, "cluster", "elect", "--topic", topic, "--partition", "0", "--type", "preferred")
    assert out["elections"] == [{"topic": topic, "partition": 0, "error_code": 0, "error": None, "message": None}], out
    # Answered once the answering broker applied it; every node follows within moments.
    wait_for(lambda: leader_everywhere(c, topic, 0, 1), 5, 0.05, "node 1 leading partition 0 everywhere")
    record_timing("ElectLeaders (CLI): preferred leader back in every node's Metadata", time.monotonic() - started, goal=2.0)
    assert partition_view(c.node(3), topic, 1)["leader"] != 1, "only the partition asked moved"

    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    result = admin.elect_leaders(ElectionType.PREFERRED, [TopicPartition(topic, 1)]).result(timeout=30)
    assert list(result.values()) == [None], result
    wait_for(lambda: leader_everywhere(c, topic, 1, 1), 5, 0.05, "node 1 leading partition 1 everywhere")

    # Again: not needed (exit 0), and with every partition asked, nothing is left to do.
    _, out, _ = cli(c, "cluster", "elect", "--topic", topic)
    assert sorted(e["error_code"] for e in out["elections"]) == [ELECTION_NOT_NEEDED] * 2, out
    _, out, _ = cli(c, "cluster", "elect")
    assert [e for e in out["elections"] if e["topic"] == topic] == [], out
    # Unclean election of partitions with a live leader: not needed either.
    result = admin.elect_leaders(ElectionType.UNCLEAN, [TopicPartition(topic, 0)]).result(timeout=30)
    (err,) = result.values()
    err = err.args[0] if hasattr(err, "args") else err  # a KafkaException or a KafkaError
    assert err is not None and err.code() == ELECTION_NOT_NEEDED, result


def test_auto_rebalance_returns_leadership(cluster_factory, tmp_path):
    """auto.leader.rebalance.enable with leader.imbalance.check.interval.seconds = 1: after
    the preferred leader is killed and restarted, leadership returns to it by itself."""
    settings = {
        "auto.leader.rebalance.enable": True,
        "leader.imbalance.check.interval.seconds": 1,
        "leader.imbalance.per.broker.percentage": 10,
    }
    c = cluster_factory(3, extra_args=config_args(tmp_path, "rebalance", settings))
    topic = unique_topic("rebalance")
    create(c, topic, [[2, 1, 3], [2, 3, 1]])
    produce(c.bootstrap, topic, 0, 100)
    kill_and_restart_preferred(c, topic, [0, 1], 2)
    back_in_isr = time.monotonic()
    wait_for(lambda: leader_everywhere(c, topic, 0, 2) and leader_everywhere(c, topic, 1, 2), 15, 0.1,
             "leadership back on node 2 by itself")
    record_timing("auto leader rebalance (check every 1 s): preferred leader back after rejoining the ISR",
                  time.monotonic() - back_in_isr, goal=3.0)


def test_describe_log_dirs_sizes_grow(cluster_factory):
    """`gregor cluster log-dirs` (DescribeLogDirs of every broker): each replica's size
    grows after producing, on the leader and on the followers; no lag once caught up; a
    broker lists only partitions it is a replica of."""
    c = cluster_factory(3)
    topic = unique_topic("dirs")
    create(c, topic, [[1, 2, 3], [2, 3]])

    def sizes() -> dict:
        out = cli(c, "cluster", "log-dirs")[1]
        got = {}
        for b in out["brokers"]:
            assert len(b["log_dirs"]) == 1 and b["log_dirs"][0]["error_code"] == 0, b
            for p in b["log_dirs"][0]["partitions"]:
                if p["topic"] == topic:
                    got[(b["broker"], p["partition"])] = (p["size"], p["offset_lag"])
        return got

    before = sizes()
    assert set(before) == {(1, 0), (2, 0), (3, 0), (2, 1), (3, 1)}, before
    assert all(size == 0 for size, _ in before.values()), before
    produce(c.bootstrap, topic, 0, 500, size=1000)
    produce(c.bootstrap, topic, 1, 100, size=1000)
    # acks=all: the followers in the ISR have the records; sizes are equal on every replica.
    after = wait_for(lambda: (s := sizes()) and len({s[(b, 0)][0] for b in (1, 2, 3)}) == 1 and s, 10, 0.2,
                     "equal sizes of partition 0 on its replicas")
    assert after[(1, 0)][0] > 500 * 1000 > before[(1, 0)][0], after
    assert 100 * 1000 < after[(2, 1)][0] < after[(1, 0)][0], after
    assert all(lag == 0 for _, lag in after.values()), after
    # The path is the broker's data dir.
    out = cli(c, "cluster", "log-dirs", "--broker", "2")[1]
    assert os.path.samefile(out["brokers"][0]["log_dirs"][0]["path"], c.node(2).data_dir)


def test_cli_reassign_list_cancel_and_move(cluster_factory):
    """`gregor cluster reassign` on 4 nodes (3 voters): a move to a dead node 4 stays in
    progress (--list shows it) until cancelled (--cancel: replicas back to {1,2,3}); with
    node 4 up, the move to {1,2,4} completes, node 4 holds the data and node 3, no longer a
    replica, empties its copy."""
    c = cluster_factory(4, voters=3)
    topic = unique_topic("move")
    create(c, topic, [[1, 2, 3]])
    produce(c.bootstrap, topic, 0, 300, size=500)

    c.node(4).kill9()
    wait_for(lambda: 4 not in c.node(1).metadata([])["brokers"], 10, 0.1, "node 4 fenced")
    _, out, _ = cli(c, "cluster", "reassign", "--topic", topic, "--partition", "0", "--replicas", "1,2,4")
    assert out["reassignments"][0]["error_code"] == 0, out
    listed = wait_for(lambda: cli(c, "cluster", "reassign", "--list")[1]["reassignments"], 5, 0.1, "listed")
    assert listed == [{"topic": topic, "partition": 0, "replicas": [1, 2, 4, 3], "adding": [4], "removing": [3]}], listed
    _, out, _ = cli(c, "cluster", "reassign", "--topic", topic, "--partition", "0", "--cancel")
    assert out["reassignments"][0]["error_code"] == 0, out
    wait_for(lambda: partition_view(c.node(1), topic, 0)["replicas"] == [1, 2, 3], 5, 0.05, "cancelled")
    assert cli(c, "cluster", "reassign", "--list")[1]["reassignments"] == []
    # Cancelling again: nothing in progress.
    rc, out, _ = cli(c, "cluster", "reassign", "--topic", topic, "--partition", "0", "--cancel", check=False)
    assert rc == 1 and out["reassignments"][0]["error_code"] != 0, out

    c.start_node(4)
    c.wait_formed()
    started = time.monotonic()
    cli(c, "cluster", "reassign", "--topic", topic, "--partition", "0", "--replicas", "1,2,4")

    def moved():
        p = partition_view(c.node(1), topic, 0)
        return p["replicas"] == [1, 2, 4] and sorted(p["isr"]) == [1, 2, 4]

    wait_for(moved, 20, 0.1, "the move to [1, 2, 4]")
    record_timing("gregor cluster reassign {1,2,3} -> {1,2,4} (150 KB)", time.monotonic() - started, goal=5.0)
    assert cli(c, "cluster", "reassign", "--list")[1]["reassignments"] == []
    described = cli(c, "topic", "describe", topic)[1]["partitions"][0]
    assert described["replicas"] == [1, 2, 4] and sorted(described["isr"]) == [1, 2, 4], described
    dirs = cli(c, "cluster", "log-dirs", "--broker", "4")[1]["brokers"][0]["log_dirs"][0]["partitions"]
    size4 = [p["size"] for p in dirs if p["topic"] == topic]
    assert size4 and size4[0] > 300 * 500, dirs
    # Node 3 is no replica any more: DescribeLogDirs does not list the partition, and its
    # local copy is emptied.
    dirs3 = cli(c, "cluster", "log-dirs", "--broker", "3")[1]["brokers"][0]["log_dirs"][0]["partitions"]
    assert [p for p in dirs3 if p["topic"] == topic] == [], dirs3

    def log_bytes(node) -> int:
        return sum(f.stat().st_size for f in (node.data_dir / f"{topic}-0").glob("*.log"))

    wait_for(lambda: log_bytes(c.node(3)) == 0, 10, 0.1, "node 3's copy emptied")
    assert log_bytes(c.node(4)) > 300 * 500


def test_single_node_answers(broker):
    """A single node leads every partition: ElectLeaders is not needed (exit 0), unknown
    partitions are reported; DescribeLogDirs lists its topics; a reassignment is refused."""
    from gregor_testlib import create_topic_confluent

    topic = unique_topic("single")
    create_topic_confluent(broker.bootstrap, topic, 2)
    _, out, _ = cli(broker, "cluster", "elect", "--topic", topic)
    assert sorted((e["partition"], e["error_code"]) for e in out["elections"]) == [(0, 84), (1, 84)], out
    rc, out, _ = cli(broker, "cluster", "elect", "--topic", topic, "--partition", "9", check=False)
    assert rc == 1 and out["elections"][0]["error_code"] == 3, out  # UNKNOWN_TOPIC_OR_PARTITION
    produce(broker.bootstrap, topic, 1, 50)
    dirs = cli(broker, "cluster", "log-dirs")[1]["brokers"][0]["log_dirs"][0]["partitions"]
    sizes = {p["partition"]: p["size"] for p in dirs if p["topic"] == topic}
    assert sizes[0] == 0 and sizes[1] > 50 * 200, dirs
    rc, _, err = cli(broker, "cluster", "reassign", "--topic", topic, "--partition", "0", "--replicas", "1,2", check=False)
    assert rc == 1 and "single node" in err, err
