"""The harness itself on this machine (root: network namespaces, tmpfs):

- a node in its own namespace, partitioned away from the clients' namespace and healed:
  a client there sees the broker vanish and come back;
- the deliberately broken mode (the final read drops one acknowledged record) makes the
  checker report a lost write and the run fail.
"""

from __future__ import annotations

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

from netns import Network, node_ip, sweep_leftovers  # noqa: E402
from node import REPO_ROOT, Node  # noqa: E402

BINARY = REPO_ROOT / "target" / "release" / "gregor"

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
