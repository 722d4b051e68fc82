"""Network namespaces for the fault harness: one per node, one for the clients, and a
"switch" namespace holding the bridge that links them.

Layout for prefix P (``gf<pid>``), N nodes::

    P-sw:  bridge br0, veth ends n0..n{N-1}, cl       (no addresses: a pure L2 switch)
    P-n<i>: eth0 = 10.213.0.<10+i>/24                  (one gregor serve each)
    P-cl:  eth0 = 10.213.0.2/24                        (every client process)

Every address lives only inside namespaces this module created; the root namespace gets
no interface, route or rule.  Faults aimed at one link are nftables rules (drop) and tc
qdiscs (delay) inside one node's namespace, so they touch exactly that node's link.

All commands run through ``ip`` / ``nft`` / ``tc`` (iproute2, nftables); the harness runs
as root.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field

SUBNET = "10.213.0"
CLIENT_IP = f"{SUBNET}.2"
PREFIX_RE = re.compile(r"^gf(\d+)-(sw|cl|n\d+)$")
MOUNT_RE = re.compile(r"/gregor-faults-(\d+)/")


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def node_ip(i: int) -> str:
    return f"{SUBNET}.{10 + i}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_ns_pids(ns: str) -> None:
    out = run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for p in out:
        try:
            os.kill(int(p), signal.SIGCONT)
            os.kill(int(p), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def sweep_leftovers(verbose: bool = True) -> int:
    """Removes namespaces and tmpfs mounts left by harness runs whose process is gone
    (names ``gf<pid>-*``, mounts under ``*/gregor-faults-<pid>/``).  Returns how many."""
    removed = 0
    names = run(["ip", "netns", "list"], check=False).stdout.split("\n")
    for line in names:
        name = line.split(" ")[0].strip()
        m = PREFIX_RE.match(name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        _kill_ns_pids(name)
        run(["ip", "netns", "del", name], check=False)
        removed += 1
        if verbose:
            print(f"sweep: removed leftover namespace {name}", flush=True)
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f]
    for mnt in reversed(mounts):
        m = MOUNT_RE.search(mnt + "/")
        if m and not _pid_alive(int(m.group(1))):
            run(["umount", "-l", mnt], check=False)
            removed += 1
            if verbose:
                print(f"sweep: unmounted leftover {mnt}", flush=True)
    return removed


@dataclass
class Network:
    """The namespaces of one harness run.  ``create()`` then ``destroy()`` (idempotent)."""

    nodes: int
    prefix: str = field(default_factory=lambda: f"gf{os.getpid()}")
    created: list[str] = field(default_factory=list)
    has_netem: bool = False

    @property
    def sw(self) -> str:
        return f"{self.prefix}-sw"

    @property
    def client_ns(self) -> str:
        return f"{self.prefix}-cl"

    def node_ns(self, i: int) -> str:
        return f"{self.prefix}-n{i}"

    def _add_ns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self.created.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _attach(self, ns: str, port: str, ip: str) -> None:
        # Both ends are created inside namespaces: nothing appears in the root namespace.
        run(["ip", "-n", self.sw, "link", "add", port, "type", "veth", "peer", "name", "eth0",
             "netns", ns])
        run(["ip", "-n", self.sw, "link", "set", port, "master", "br0"])
        run(["ip", "-n", self.sw, "link", "set", port, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def create(self) -> None:
        self._add_ns(self.sw)
        run(["ip", "-n", self.sw, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.sw, "link", "set", "br0", "up"])
        self._add_ns(self.client_ns)
        self._attach(self.client_ns, "cl", CLIENT_IP)
        for i in range(self.nodes):
            self._add_ns(self.node_ns(i))
            self._attach(self.node_ns(i), f"n{i}", node_ip(i))
            run(["ip", "netns", "exec", self.node_ns(i), "nft", "add", "table", "inet", "gf"])
        # netem is a kernel option some kernels lack; tbf (rate + queue latency) stands in.
        probe = run(["ip", "netns", "exec", self.client_ns, "tc", "qdisc", "add", "dev", "lo",
                     "root", "netem", "delay", "1ms"], check=False)
        self.has_netem = probe.returncode == 0
        if self.has_netem:
            run(["ip", "netns", "exec", self.client_ns, "tc", "qdisc", "del", "dev", "lo", "root"],
                check=False)

    def destroy(self) -> None:
        for ns in reversed(self.created):
            _kill_ns_pids(ns)
            run(["ip", "netns", "del", ns], check=False)
        self.created.clear()

    def exec_prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    # ---- faults aimed at one node's link -------------------------------------------------

    def _nft(self, i: int, *args: str) -> None:
        run(["ip", "netns", "exec", self.node_ns(i), "nft", *args])

    def block(self, i: int, peers: list[str], direction: str = "both") -> None:
        """Drops traffic between node ``i`` and ``peers`` (IPs): ``in`` (from them),
        ``out`` (to them) or ``both``.  Silent drops, like a real partition."""
        self._nft(i, "add", "chain", "inet", "gf", "in",
                  "{ type filter hook input priority 0; }")
        self._nft(i, "add", "chain", "inet", "gf", "out",
                  "{ type filter hook output priority 0; }")
        addrs = "{ " + ", ".join(peers) + " }"
        if direction in ("in", "both"):
            self._nft(i, "add", "rule", "inet", "gf", "in", "ip", "saddr", addrs, "drop")
        if direction in ("out", "both"):
            self._nft(i, "add", "rule", "inet", "gf", "out", "ip", "daddr", addrs, "drop")

    def isolate_from_clients(self, i: int) -> None:
        self.block(i, [CLIENT_IP])

    def heal(self, i: int) -> None:
        self._nft(i, "flush", "table", "inet", "gf")

    def delay(self, i: int, ms: int) -> str:
        """Slows node ``i``'s link: netem delay where the kernel has it, otherwise a tbf
        rate limit whose queue adds up to ``ms`` of latency.  Returns what was used."""
        ns = self.node_ns(i)
        if self.has_netem:
            run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", "eth0", "root",
                 "netem", "delay", f"{ms}ms", f"{max(1, ms // 5)}ms"])
            return "netem"
        run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
             "rate", "2mbit", "burst", "16kb", "latency", f"{ms}ms"])
        return "tbf"

    def undelay(self, i: int) -> None:
        run(["ip", "netns", "exec", self.node_ns(i), "tc", "qdisc", "del", "dev", "eth0", "root"],
            check=False)

    def heal_all(self) -> None:
        for i in range(self.nodes):
            self.heal(i)
            self.undelay(i)


def wait_gone(ns: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ns not in run(["ip", "netns", "list"], check=False).stdout:
            return
        time.sleep(0.05)
