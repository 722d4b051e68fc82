"""Shared helpers for Gregor's external (third-party client) tests.

The Broker class runs the real release binary:

    target/release/gregor serve --listen 127.0.0.1:0 --data-dir DIR

and treats the single stdout line ``gregor listening on HOST:PORT`` as the
readiness signal.  Everything the process writes (stdout and stderr) goes to
a log file inside the broker's temp directory, so pipes never fill up.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Optional, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / "target" / "release" / "gregor"
READY_RE = re.compile(r"^gregor listening on (\S+):(\d+)\s*$")
START_TIMEOUT = float(os.environ.get("GREGOR_START_TIMEOUT", "30"))
STOP_TIMEOUT = float(os.environ.get("GREGOR_STOP_TIMEOUT", "30"))

T = TypeVar("T")


def unique_topic(prefix: str = "t") -> str:
    """A topic name that no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value or the deadline passes.

    Exceptions raised by the predicate count as "not yet"; the last one is
    reported if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polling, report at the end
            last_exc = exc
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout}s waiting for {what}"
            if last_exc is not None:
                msg += f" (last error: {last_exc!r})"
            raise TimeoutError(msg)
        time.sleep(interval)


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (Java), returned as an unsigned 32-bit int."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    mask = 0xFFFFFFFF
    h = (seed ^ length) & mask
    for i in range(length // 4):
        i4 = i * 4
        k = data[i4] | (data[i4 + 1] << 8) | (data[i4 + 2] << 16) | (data[i4 + 3] << 24)
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    tail = length & ~3
    rem = length % 4
    if rem == 3:
        h ^= data[tail + 2] << 16
    if rem >= 2:
        h ^= data[tail + 1] << 8
    if rem >= 1:
        h ^= data[tail]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def to_signed32(x: int) -> int:
    return x - (1 << 32) if x & 0x80000000 else x


def java_partition(key: bytes, num_partitions: int) -> int:
    """The Java client's default partition for a non-null key."""
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


class BrokerError(RuntimeError):
    pass


class Broker:
    """One gregor process bound to an ephemeral loopback port."""

    def __init__(
        self,
        bin_path: Path,
        base_dir: Optional[Path] = None,
        data_dir: Optional[Path] = None,
        extra_args: tuple = (),
        env: Optional[dict] = None,
    ):
        self.bin_path = Path(bin_path)
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="gregor-test-"))
        self.data_dir = Path(data_dir) if data_dir else self.base_dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.extra_args = tuple(extra_args)
        self.env = dict(os.environ)
        self.env.setdefault("RUST_BACKTRACE", "1")
        if env:
            self.env.update(env)
        self.proc: Optional[subprocess.Popen] = None
        self.host: Optional[str] = None
        self.port: Optional[int] = None
        self.log_paths: list[Path] = []
        self._drain: Optional[threading.Thread] = None
        self._starts = 0
        # 0 = a fresh ephemeral port at every start; see keep_port().
        self.listen_port = 0

    # ------------------------------------------------------------------ start
    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("broker is not running")
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_paths[-1]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> "Broker":
        if self.is_running():
            raise BrokerError("broker already running")
        self._starts += 1
        log_path = self.base_dir / f"broker-{self._starts}.log"
        self.log_paths.append(log_path)
        log = open(log_path, "ab", buffering=0)
        cmd = [
            str(self.bin_path),
            "serve",
            "--listen",
            f"127.0.0.1:{self.listen_port}",
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]
        log.write(("# " + " ".join(cmd) + "\n").encode())
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,  # straight to the file: never blocks the broker
            env=self.env,
            start_new_session=True,  # our signals only, not the terminal's
        )
        ready = threading.Event()
        found: dict = {}

        def drain(stream, log_file):
            try:
                for raw in iter(stream.readline, b""):
                    log_file.write(raw)
                    if not ready.is_set():
                        m = READY_RE.match(raw.decode("utf-8", "replace"))
                        if m:
                            found["host"], found["port"] = m.group(1), int(m.group(2))
                            ready.set()
            finally:
                stream.close()
                log_file.close()

        self._drain = threading.Thread(target=drain, args=(self.proc.stdout, log), daemon=True)
        self._drain.start()

        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None:
                self._drain.join(5)
                raise BrokerError(
                    f"gregor exited with {self.proc.returncode} before it was ready\n"
                    f"--- log {log_path} ---\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.kill9()
                raise BrokerError(
                    f"gregor did not print 'gregor listening on' within {timeout}s\n"
                    f"--- log {log_path} ---\n{self.log_tail()}"
                )
        self.host, self.port = found["host"], found["port"]
        if self.port == 0:
            raise BrokerError("gregor reported port 0; it must print the real port")
        return self

    # ------------------------------------------------------------------- stop
    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and wait for exit; returns the exit code."""
        if self.proc is None:
            raise BrokerError("broker was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                self._join_drain()
                raise BrokerError(
                    f"gregor did not exit within {timeout}s of signal {sig}; killed\n{self.log_tail()}"
                )
        self._join_drain()
        self.port = None
        return self.proc.returncode

    def kill9(self) -> int:
        if self.proc is None:
            raise BrokerError("broker was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self._join_drain()
        self.port = None
        return self.proc.returncode

    def keep_port(self) -> "Broker":
        """Make later (re)starts bind the port this start got, so clients that keep running
        across a restart (e.g. a producer retrying through a kill -9) find the broker again."""
        self.listen_port = self.port
        return self

    def restart(self, timeout: float = START_TIMEOUT) -> "Broker":
        """Start again on the same data dir (stopping with SIGTERM if still up)."""
        if self.is_running():
            rc = self.stop()
            if rc != 0:
                raise BrokerError(f"gregor exited with {rc} on SIGTERM\n{self.log_tail()}")
        return self.start(timeout)

    def _join_drain(self):
        if self._drain is not None:
            self._drain.join(10)
            self._drain = None

    # -------------------------------------------------------------------- log
    def log_text(self) -> str:
        parts = []
        for p in self.log_paths:
            try:
                parts.append(p.read_text("utf-8", "replace"))
            except FileNotFoundError:
                pass
        return "".join(parts)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def assert_no_panic(self):
        text = self.log_text()
        assert "panicked" not in text, f"broker log contains a panic:\n{self.log_tail(120)}"

    # ---------------------------------------------------------------- cleanup
    def cleanup(self, keep_dir: bool = False, graceful: float = 10.0):
        """Stop the process (SIGTERM, then SIGKILL after ``graceful`` s) and
        remove the temp dir.  SIGTERM first so shutdown panics show up in
        the log that the fixture checks."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(graceful)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(30)
            except Exception:  # noqa: BLE001
                pass
        self._join_drain()
        if self._own_base and not keep_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)


# ---------------------------------------------------------------- confluent
def confluent_common(bootstrap: str) -> dict:
    return {
        "bootstrap.servers": bootstrap,
        "broker.address.family": "v4",
        "socket.timeout.ms": 30000,
    }


def confluent_producer(bootstrap: str, *, linger_ms: int, message_timeout_ms: int, **extra):
    """A confluent-kafka Producer with acks=all; ``extra`` overrides any setting."""
    from confluent_kafka import Producer

    conf = confluent_common(bootstrap)
    conf.update({"acks": "all", "linger.ms": linger_ms, "message.timeout.ms": message_timeout_ms})
    conf.update(extra)
    return Producer(conf)


def confluent_assign_consumer(bootstrap: str, **extra):
    """A confluent-kafka Consumer for assign(): a throwaway group id (required by the
    config; no subscribe, no commits), from the earliest offset, reporting partition EOF.
    ``extra`` overrides any setting."""
    from confluent_kafka import Consumer

    conf = confluent_common(bootstrap)
    conf.update(
        {
            "group.id": unique_topic("g"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    conf.update(extra)
    return Consumer(conf)


def create_topic_confluent(bootstrap: str, topic: str, partitions: int = 1, config=None, timeout=30):
    """Create a topic with AdminClient and wait until metadata shows it."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(confluent_common(bootstrap))
    fs = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})],
        request_timeout=timeout,
    )
    fs[topic].result(timeout)
    wait_for_topic_confluent(admin, topic, partitions, timeout)
    return admin


def wait_for_topic_confluent(admin, topic: str, partitions: int, timeout: float = 30):
    def ready():
        md = admin.list_topics(topic=topic, timeout=5)
        t = md.topics.get(topic)
        return t is not None and t.error is None and len(t.partitions) == partitions

    wait_for(ready, timeout, 0.1, f"topic {topic} with {partitions} partitions in metadata")
