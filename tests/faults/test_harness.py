"""The harness itself on this machine (root: network namespaces, tmpfs):

- a node in its own namespace, partitioned away from the clients' namespace and healed:
  a client there sees the broker vanish and come back;
- the deliberately broken mode (the final read drops one acknowledged record) makes the
  checker report a lost write and the run fail;
- a 3-node cluster (each node in its namespace): the node leading a partition isolated from
  the other nodes and the clients loses the leadership to another replica, and once healed
  is back in the ISR; the same for a leader that lost its leadership before writing
  anything in its epoch (it used to stay out of the ISR for good).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from netns import CLIENT_IP, Network, node_ip, sweep_leftovers  # noqa: E402
from node import REPO_ROOT, Node, voters_of  # noqa: E402

BINARY = Path(os.environ.get("GREGOR_BIN", REPO_ROOT / "target" / "release" / "gregor"))

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables"),
    pytest.mark.skipif(not BINARY.exists(), reason="needs target/release/gregor"),
]


def _expect(lines: queue.Queue, want: str, timeout: float) -> float:
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line.strip() == want:
            return time.monotonic() - start
    raise AssertionError(f"the client never saw the broker {want!r} within {timeout}s")


def test_partition_from_clients_and_heal(tmp_path):
    sweep_leftovers()
    work = tmp_path / f"gregor-faults-{os.getpid()}"
    work.mkdir()
    net = Network(1)
    node = None
    probe = None
    try:
        net.create()
        node = Node(net, 0, BINARY, work, 32, None)
        node.mount()
        node.start()
        probe = subprocess.Popen(
            net.exec_prefix(net.client_ns) + [sys.executable, str(HERE / "workload.py"), "probe",
                                              node.addr],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in probe.stdout], daemon=True).start()
        _expect(lines, "up", 30)
        net.isolate_from_clients(0)
        _expect(lines, "down", 30)
        # Drain what was said before the heal, then the broker must come back.
        net.heal(0)
        _expect(lines, "up", 30)
        assert node.alive(), "the node itself was never touched"
    finally:
        if probe is not None:
            probe.kill()
            probe.wait()
        if node is not None:
            node.kill9()
        net.destroy()
        if node is not None:
            node.unmount()
    assert not [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                          text=True).stdout.split("\n")
                if n.startswith(net.prefix + "-")], "namespaces left behind"


def test_broken_mode_is_caught_by_the_checker():
    proc = subprocess.run(
        [sys.executable, str(HERE / "harness.py"), "--seed", "4242", "--minutes", "0.4",
         "--drop-one-acked"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    lines = proc.stdout.strip().split("\n")
    print(proc.stdout[-3000:])
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert lines[-1].startswith("seed 4242: 1 nodes, ")
    assert ", 1 lost, " in lines[-1]
    assert (REPO_ROOT / "target" / "faults" / "4242" / "history" / "final.jsonl").exists()
    shutil.rmtree(REPO_ROOT / "target" / "faults" / "4242", ignore_errors=True)


def _can_connect(net: Network, ns: str, ip: str) -> bool:
    code = ("import socket,sys\n"
            "s=socket.socket(); s.settimeout(1.0)\n"
            f"sys.exit(0 if s.connect_ex(({ip!r}, 8000)) == 0 else 1)\n")
    return subprocess.run(net.exec_prefix(ns) + [sys.executable, "-c", code]).returncode == 0


def test_link_faults_between_three_namespaces():
    """The primitives the cluster schedule uses (isolate, minority/majority split): only
    the links named are cut, clients keep every node they should, heal restores all."""
    sweep_leftovers()
    net = Network(3)
    servers = []
    try:
        net.create()
        for i in range(3):
            servers.append(subprocess.Popen(
                net.exec_prefix(net.node_ns(i)) + [sys.executable, "-m", "http.server", "--bind",
                                                   node_ip(i), "8000"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for i in range(3):
            assert _wait_true(lambda i=i: _can_connect(net, net.client_ns, node_ip(i)))
        # Split: node 0 alone vs nodes 1 and 2; clients still reach everyone.
        net.block(0, [node_ip(1), node_ip(2)])
        assert not _can_connect(net, net.node_ns(1), node_ip(0))
        assert not _can_connect(net, net.node_ns(0), node_ip(2))
        assert _can_connect(net, net.node_ns(1), node_ip(2))
        assert _can_connect(net, net.client_ns, node_ip(0))
        net.heal(0)
        assert _can_connect(net, net.node_ns(1), node_ip(0))
        # Isolation from the clients only.
        net.isolate_from_clients(2)
        assert not _can_connect(net, net.client_ns, node_ip(2))
        assert _can_connect(net, net.node_ns(0), node_ip(2))
        net.heal_all()
        assert _can_connect(net, net.client_ns, node_ip(2))
    finally:
        for s in servers:
            s.kill()
            s.wait()
        net.destroy()


def _wait_true(pred, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def _client(net: Network, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(net.exec_prefix(net.client_ns)
                          + [sys.executable, str(HERE / "workload.py"), *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def _describe(net: Network, bootstrap: str) -> dict | None:
    proc = _client(net, "describe", bootstrap, timeout=30)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().split("\n")[-1])


def test_isolated_leader_loses_leadership_and_rejoins_the_isr(tmp_path):
    sweep_leftovers()
    work = tmp_path / f"gregor-faults-{os.getpid()}"
    work.mkdir()
    net = Network(3)
    nodes: list[Node] = []
    try:
        net.create()
        for i in range(3):
            n = Node(net, i, BINARY, work, 64, None, voters_of(3))
            n.mount()
            nodes.append(n)
            n.spawn()
        for n in nodes:
            n.await_ready()
        boot = ",".join(n.addr for n in nodes)
        setup = _client(net, "setup", boot, str(work / "setup.jsonl"), "3", "3", "2")
        assert setup.returncode == 0, setup.stdout
        healthy = _client(net, "healthy", boot, "3", "60")
        assert healthy.returncode == 0, healthy.stdout
        md = json.loads(healthy.stdout.strip().split("\n")[-1])
        leader = md["topics"]["queue"]["0"]["leader"]
        i = leader - 1  # node ids are 1..3
        others = [node_ip(j) for j in range(3) if j != i]
        net.block(i, others + [CLIENT_IP])
        t0 = time.monotonic()

        def moved():
            d = _describe(net, boot)
            if d is None:
                return False
            p0 = d["topics"]["queue"]["0"]
            return p0["leader"] not in (-1, leader) and leader not in p0["isr"]

        assert _wait_true(moved, 30), f"queue/0 still led by the isolated node {leader}"
        moved_after = time.monotonic() - t0
        assert nodes[i].alive(), "isolation must not kill the node"
        net.heal(i)
        t1 = time.monotonic()
        healthy = _client(net, "healthy", boot, "3", "60")
        assert healthy.returncode == 0, f"node {leader} not back in every ISR: {healthy.stdout}"
        md = json.loads(healthy.stdout.strip().split("\n")[-1])
        assert leader in md["topics"]["queue"]["0"]["isr"]
        print(f"leader {leader} isolated: leadership moved after {moved_after:.1f}s; healed: "
              f"back in every ISR after {time.monotonic() - t1:.1f}s")
        for n in nodes:
            assert n.alive()
            assert b"panicked" not in n.log_path.read_bytes()
    finally:
        for n in nodes:
            n.kill9()
        net.destroy()
        for n in nodes:
            n.unmount()
    assert not [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                          text=True).stdout.split("\n")
                if n.startswith(net.prefix + "-")], "namespaces left behind"


def test_leader_that_wrote_nothing_in_its_epoch_rejoins_the_isr(tmp_path):
    """Seen in the 3-node schedule (seed 2): a broker elected leader that loses the
    leadership before its first append keeps its epoch at its log end; the next leader
    never heard of that epoch and answers the follower's fetch with the epoch before it,
    ending where the follower's log ends. Nothing to truncate, so the follower used to ask
    the same question forever and never rejoined the ISR. Here: records written at epoch 0,
    the leader killed (a second replica leads epoch 1, nothing written), that one isolated
    (a third leads epoch 2), healed: every replica must be back in the ISR."""
    sweep_leftovers()
    work = tmp_path / f"gregor-faults-{os.getpid()}"
    work.mkdir()
    net = Network(3)
    nodes: list[Node] = []
    try:
        net.create()
        for i in range(3):
            n = Node(net, i, BINARY, work, 64, None, voters_of(3))
            n.mount()
            nodes.append(n)
            n.spawn()
        for n in nodes:
            n.await_ready()
        boot = ",".join(n.addr for n in nodes)
        assert _client(net, "setup", boot, str(work / "setup.jsonl"), "1", "3", "2").returncode == 0
        assert _client(net, "healthy", boot, "3", "60").returncode == 0
        produce = subprocess.run(
            net.exec_prefix(net.client_ns) + [str(BINARY), "produce", "queue", "--brokers", boot,
                                              "--acks", "all"],
            input="a\nb\nc\n", text=True, capture_output=True, timeout=60)
        assert produce.returncode == 0, produce.stderr

        def leader_other_than(old):
            d = _describe(net, boot)
            if d is None:
                return None
            lead = d["topics"]["queue"]["0"]["leader"]
            return lead if lead not in (-1, old) else None

        first = leader_other_than(-1)
        assert first is not None
        nodes[first - 1].kill9()
        assert _wait_true(lambda: leader_other_than(first) is not None, 30)
        second = leader_other_than(first)
        nodes[first - 1].start()
        healthy = _client(net, "healthy", boot, "3", "60")
        assert healthy.returncode == 0, healthy.stdout
        # The second leader wrote nothing in its epoch; cut it off until it loses it.
        j = second - 1
        net.block(j, [node_ip(k) for k in range(3) if k != j] + [CLIENT_IP])
        assert _wait_true(lambda: leader_other_than(second) is not None, 30)
        net.heal(j)
        healthy = _client(net, "healthy", boot, "3", "60")
        assert healthy.returncode == 0, (f"node {second} (leader of an epoch it wrote nothing "
                                         f"in) not back in the ISR: {healthy.stdout}")
    finally:
        for n in nodes:
            n.kill9()
        net.destroy()
        for n in nodes:
            n.unmount()
