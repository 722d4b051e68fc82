"""One ``gregor serve`` process inside its own network namespace, with its data dir on a
small tmpfs of its own (so "disk full" can be injected by a ballast file), optionally
under libfaketime (clock skew) and the failfsync shim (fsync fails with EIO while a
trigger file exists).

In a cluster (``voters`` given, see ``voters_of``) node i has node id i+1, its Kafka
listener on ``node_ip(i):9092`` and its controller (Raft) listener on ``node_ip(i):9093``;
every node is a voter of the metadata quorum, as ``Cluster`` in tests/python does it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from netns import Network, node_ip, run

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
PORT = 9092
CONTROLLER_PORT = 9093
FAKETIME_LIBS = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
]


def faketime_lib() -> str | None:
    for p in FAKETIME_LIBS:
        if os.path.exists(p):
            return p
    return None


def build_failfsync(out_dir: Path) -> str | None:
    """Compiles the fsync shim; None when no C compiler is there (the fault is skipped)."""
    out = out_dir / "failfsync.so"
    proc = subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(out),
                           str(HERE / "failfsync.c"), "-ldl"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return str(out) if proc.returncode == 0 else None


def voters_of(nodes: int) -> str | None:
    """``--controller-quorum-voters`` for an N-node cluster (None for a single node)."""
    if nodes <= 1:
        return None
    return ",".join(f"{i + 1}@{node_ip(i)}:{CONTROLLER_PORT}" for i in range(nodes))


class Node:
    def __init__(self, net: Network, i: int, binary: Path, work: Path, disk_mb: int,
                 failfsync_so: str | None, voters: str | None = None):
        self.net = net
        self.i = i
        self.voters = voters
        # A single node keeps id 0 (as before the cluster); cluster ids start at 1.
        self.node_id = i + 1 if voters else i
        self.binary = binary
        self.dir = work / f"n{i}"
        self.disk = self.dir / "disk"  # the tmpfs mount point
        self.data = self.disk / "data"
        self.ballast = self.disk / "ballast"
        self.log_path = self.dir / "broker.log"
        self.fail_flag = self.dir / "fail-fsync"
        self.disk_mb = disk_mb
        self.failfsync_so = failfsync_so
        self.proc: subprocess.Popen | None = None
        self.skew: str | None = None
        self.paused = False
        self.mounted = False
        self.unexpected_exits = 0
        self.starts = 0
        self.start_at = 0

    @property
    def addr(self) -> str:
        return f"{node_ip(self.i)}:{PORT}"

    def mount(self) -> None:
        self.disk.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"size={self.disk_mb}m", "tmpfs", str(self.disk)])
        self.mounted = True
        self.data.mkdir()

    def unmount(self) -> None:
        if self.mounted:
            run(["umount", "-l", str(self.disk)], check=False)
            self.mounted = False

    def start(self, skew: str | None = None, timeout: float = 90.0) -> None:
        self.spawn(skew)
        self.await_ready(timeout)

    def spawn(self, skew: str | None = None) -> None:
        """Starts the process without waiting (a cluster's first start spawns every node
        before awaiting any: a node may need the quorum before it listens)."""
        assert self.proc is None
        self.skew = skew
        env = dict(os.environ)
        env["RUST_LOG"] = env.get("GREGOR_FAULTS_RUST_LOG", "info")
        preload = []
        if self.failfsync_so:
            preload.append(self.failfsync_so)
            env["GREGOR_FAILFSYNC_FILE"] = str(self.fail_flag)
        if skew:
            lib = faketime_lib()
            if lib:
                preload.append(lib)
                env["FAKETIME"] = skew
                # Only the wall clock moves; tokio's timers keep the real monotonic clock.
                env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
                env["FAKETIME_NO_CACHE"] = "1"
        if preload:
            env["LD_PRELOAD"] = " ".join(preload)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== harness: start #{self.starts} at {time.time():.3f}"
                      f" skew={skew}\n".encode())
            log.flush()
            self.start_at = log.tell()
            cluster = []
            if self.voters:
                cluster = ["--controller-listen", f"{node_ip(self.i)}:{CONTROLLER_PORT}",
                           "--controller-quorum-voters", self.voters]
            self.proc = subprocess.Popen(
                self.net.exec_prefix(self.net.node_ns(self.i)) + [
                    str(self.binary), "serve", "--listen", self.addr, "--advertised", self.addr,
                    "--data-dir", str(self.data), "--fsync", "always",
                    "--node-id", str(self.node_id), *cluster],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.starts += 1
        self.paused = False

    def await_ready(self, timeout: float = 90.0) -> None:
        """Waits for the ``gregor listening on`` line of the last spawn."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                f.seek(self.start_at)
                if b"gregor listening on" in f.read():
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.i} exited during start ({self.proc.returncode});"
                                   f" see {self.log_path}")
            time.sleep(0.05)
        raise RuntimeError(f"node {self.i} not ready after {timeout}s; see {self.log_path}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_exit(self) -> bool:
        """True (and counted) if the process died without the harness killing it."""
        if self.proc is not None and self.proc.poll() is not None:
            self.unexpected_exits += 1
            with open(self.log_path, "ab") as log:
                log.write(f"\n=== harness: node exited by itself ({self.proc.returncode})\n".encode())
            self.proc = None
            return True
        return False

    def kill9(self) -> None:
        if self.proc is None:
            return
        try:
            self.proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None
        self.paused = False

    def stop_gracefully(self, timeout: float = 30.0, signalled: bool = False) -> None:
        """SIGTERM (unless ``signalled`` already) and wait; SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        if self.paused:
            self.resume()
        if not signalled:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def fill_disk(self) -> int:
        """Writes a ballast file until the tmpfs is full; returns its size in bytes."""
        ballast = self.ballast
        chunk = b"\0" * (1 << 20)
        written = 0
        try:
            with open(ballast, "wb") as f:
                while True:
                    f.write(chunk)
                    written += len(chunk)
        except OSError:
            pass
        # The last partial chunk: fill up to the byte.
        try:
            with open(ballast, "ab") as f:
                while True:
                    f.write(b"\0" * 4096)
                    written += 4096
        except OSError:
            pass
        return written

    def free_disk(self) -> None:
        try:
            self.ballast.unlink()
        except FileNotFoundError:
            pass

    def fail_fsync(self, on: bool) -> None:
        if on:
            self.fail_flag.touch()
        else:
            try:
                self.fail_flag.unlink()
            except FileNotFoundError:
                pass
