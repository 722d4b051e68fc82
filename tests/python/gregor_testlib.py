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
import socket
import struct
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
# Printed before READY_RE when the HTTP listener is on (`serve --http`).
HTTP_RE = re.compile(r"^gregor http listening on (\S+):(\d+)\s*$")
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
        http: bool = False,
    ):
        self.bin_path = Path(bin_path)
        # http=True: also serve HTTP (metrics, console) on an ephemeral port: http_url.
        self.http = http
        self.http_port: Optional[int] = None
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
    def http_url(self) -> str:
        if self.http_port is None:
            raise BrokerError("broker has no HTTP listener running (start it with http=True)")
        return f"http://127.0.0.1:{self.http_port}"

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
        self.spawn()
        return self.await_ready(timeout)

    def command(self) -> list:
        """The command line of the next start."""
        return [
            str(self.bin_path),
            "serve",
            "--listen",
            f"127.0.0.1:{self.listen_port}",
            "--data-dir",
            str(self.data_dir),
            *(["--http", "127.0.0.1:0"] if self.http else []),
            *self.extra_args,
        ]

    def spawn(self) -> "Broker":
        """Start the process without waiting for it to be ready (see await_ready): the nodes
        of a cluster are all spawned before any is awaited."""
        if self.is_running():
            raise BrokerError("broker already running")
        self._starts += 1
        log_path = self.base_dir / f"broker-{self._starts}.log"
        self.log_paths.append(log_path)
        log = open(log_path, "ab", buffering=0)
        cmd = self.command()
        log.write(("# " + " ".join(cmd) + "\n").encode())
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,  # straight to the file: never blocks the broker
            env=self.env,
            start_new_session=True,  # our signals only, not the terminal's
        )
        self._ready = threading.Event()
        self._found = {}
        ready, found = self._ready, self._found

        def drain(stream, log_file):
            try:
                for raw in iter(stream.readline, b""):
                    log_file.write(raw)
                    if not ready.is_set():
                        h = HTTP_RE.match(raw.decode("utf-8", "replace"))
                        if h:
                            found["http_port"] = int(h.group(2))
                        m = READY_RE.match(raw.decode("utf-8", "replace"))
                        if m:
                            found["host"], found["port"] = m.group(1), int(m.group(2))
                            ready.set()
            finally:
                stream.close()
                log_file.close()

        self._drain = threading.Thread(target=drain, args=(self.proc.stdout, log), daemon=True)
        self._drain.start()
        return self

    def await_ready(self, timeout: float = START_TIMEOUT) -> "Broker":
        """Wait for the `gregor listening on HOST:PORT` line of the process spawn() started."""
        assert self.proc is not None
        log_path = self.log_path
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
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
        self.host, self.port = self._found["host"], self._found["port"]
        self.http_port = self._found.get("http_port")
        if self.http and not self.http_port:
            raise BrokerError("gregor started without printing 'gregor http listening on'")
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


# ----------------------------------------------------------------- raw wire
# A few requests encoded by hand (or with kafka-python's protocol classes), sent to one
# chosen node: the clients route admin requests to the controller and produce requests to
# the leader, while the cluster tests need to say exactly which node gets a request.

NOT_LEADER_OR_FOLLOWER = 6
REQUEST_TIMED_OUT = 7
NOT_CONTROLLER = 41
TOPIC_ALREADY_EXISTS = 36
# Errors a client retries (Kafka's RetriableException subclasses that a CreateTopics
# through a node cut off from the quorum can plausibly answer).
RETRIABLE_ERRORS = {
    5,  # LEADER_NOT_AVAILABLE
    6,  # NOT_LEADER_OR_FOLLOWER
    7,  # REQUEST_TIMED_OUT
    14,  # COORDINATOR_LOAD_IN_PROGRESS
    15,  # COORDINATOR_NOT_AVAILABLE
    19,  # NOT_ENOUGH_REPLICAS
    41,  # NOT_CONTROLLER
    89,  # THROTTLING_QUOTA_EXCEEDED
}


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


class _Reader:
    """Big-endian reader for response bodies (flexible and classic encodings)."""

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise ValueError(f"response truncated at {self.pos} (+{n} of {len(self.buf)})")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def i8(self) -> int:
        return struct.unpack(">b", self.take(1))[0]

    def i16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def i32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def i64(self) -> int:
        return struct.unpack(">q", self.take(8))[0]

    def uvarint(self) -> int:
        shift = value = 0
        while True:
            b = self.take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7

    def compact_str(self) -> Optional[str]:
        n = self.uvarint()
        return None if n == 0 else self.take(n - 1).decode("utf-8")

    def compact_array(self, item: Callable[[], T]) -> list:
        n = self.uvarint()
        return [] if n == 0 else [item() for _ in range(n - 1)]

    def uuid(self) -> str:
        return str(uuid.UUID(bytes=self.take(16)))

    def tagged(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())


_corr = iter(range(1, 1 << 31))


def wire_request(
    addr: tuple,
    api_key: int,
    api_version: int,
    body: bytes,
    flexible: bool,
    timeout: float = 10.0,
) -> bytes:
    """One request on a fresh connection to ``addr``; returns the response body (after the
    correlation id and, for flexible versions, the header's tagged fields)."""
    corr = next(_corr)
    client_id = b"gregor-cluster-test"
    header = struct.pack(">hhih", api_key, api_version, corr, len(client_id)) + client_id
    if flexible:
        header += b"\x00"  # request header v2: no tagged fields
    payload = header + body
    with socket.create_connection(addr, timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(payload)) + payload)

        def exact(n: int) -> bytes:
            buf = bytearray()
            while len(buf) < n:
                chunk = sock.recv(n - len(buf))
                if not chunk:
                    raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
                buf += chunk
            return bytes(buf)

        (length,) = struct.unpack(">i", exact(4))
        resp = exact(length)
    r = _Reader(resp)
    got = r.i32()
    if got != corr:
        raise ValueError(f"correlation id {got}, expected {corr}")
    if flexible and api_key != 18:  # ApiVersions answers with header v0 always
        r.tagged()
    return resp[r.pos :]


def metadata_request(addr: tuple, topics: Optional[list] = None, timeout: float = 10.0) -> dict:
    """Metadata v12 (leader epochs, topic IDs) from the node at ``addr``, as a dict:
    ``brokers`` {id: (host, port, rack)}, ``cluster_id``, ``controller_id``, ``topics``
    {name: {error_code, topic_id, is_internal, partitions {index: {error_code, leader,
    leader_epoch, replicas, isr, offline}}}}. ``topics=None`` asks for every topic."""
    body = bytearray()
    if topics is None:
        body += _uvarint(0)  # null: all topics
    else:
        body += _uvarint(len(topics) + 1)
        for name in topics:
            raw = name.encode()
            body += b"\x00" * 16 + _uvarint(len(raw) + 1) + raw + b"\x00"
    body += b"\x00\x00\x00"  # allow_auto_topic_creation, include_topic_authorized_ops, tags
    r = _Reader(wire_request(addr, 3, 12, bytes(body), True, timeout))
    r.i32()  # throttle

    def broker():
        node_id, host, port, rack = r.i32(), r.compact_str(), r.i32(), r.compact_str()
        r.tagged()
        return node_id, (host, port, rack)

    def partition():
        p = {"error_code": r.i16()}
        index = r.i32()
        p["leader"] = r.i32()
        p["leader_epoch"] = r.i32()
        p["replicas"] = r.compact_array(r.i32)
        p["isr"] = r.compact_array(r.i32)
        p["offline"] = r.compact_array(r.i32)
        r.tagged()
        return index, p

    def topic():
        t = {"error_code": r.i16()}
        name = r.compact_str()
        t["topic_id"] = r.uuid()
        t["is_internal"] = bool(r.i8())
        t["partitions"] = dict(r.compact_array(partition))
        r.i32()  # authorized operations
        r.tagged()
        return name, t

    md = {"brokers": dict(r.compact_array(broker))}
    md["cluster_id"] = r.compact_str()
    md["controller_id"] = r.i32()
    md["topics"] = dict(r.compact_array(topic))
    r.tagged()
    return md


def describe_quorum_request(addr: tuple, timeout: float = 10.0) -> dict:
    """DescribeQuorum v0 of ``__cluster_metadata`` through the node at ``addr`` (which asks
    the Raft leader) as a dict: ``error_code`` (the partition's, else the top level's),
    ``leader_id``, ``leader_epoch``, ``high_watermark``, ``voters`` {id: log end offset},
    ``observers`` {id: log end offset}."""
    name = b"__cluster_metadata"
    body = _uvarint(2) + _uvarint(len(name) + 1) + name + _uvarint(2) + struct.pack(">i", 0) + b"\x00\x00\x00"
    r = _Reader(wire_request(addr, 55, 0, body, True, timeout))
    top_error = r.i16()

    def replica():
        rid, leo = r.i32(), r.i64()
        r.tagged()
        return rid, leo

    def partition():
        p = {"index": r.i32(), "error_code": r.i16(), "leader_id": r.i32(), "leader_epoch": r.i32()}
        p["high_watermark"] = r.i64()
        p["voters"] = dict(r.compact_array(replica))
        p["observers"] = dict(r.compact_array(replica))
        r.tagged()
        return p

    def topic():
        r.compact_str()
        parts = r.compact_array(partition)
        r.tagged()
        return parts

    topics = r.compact_array(topic)
    r.tagged()
    if top_error or not topics or not topics[0]:
        return {"error_code": top_error or -1}
    return topics[0][0]


def create_topics_request(
    addr: tuple,
    topics: list,
    timeout_ms: int = 5000,
    socket_timeout: Optional[float] = None,
) -> dict:
    """CreateTopics v3 to the node at ``addr``. ``topics``: (name, partitions, replication
    factor, {config: value}) tuples. Returns {name: (error_code, error_message)}."""
    import io

    from kafka.protocol.admin import CreateTopicsRequest_v3, CreateTopicsResponse_v3

    req = CreateTopicsRequest_v3(
        create_topic_requests=[
            (name, parts, rf, [], list((configs or {}).items())) for name, parts, rf, configs in topics
        ],
        timeout=timeout_ms,
        validate_only=False,
    )
    if socket_timeout is None:
        socket_timeout = timeout_ms / 1000 + 5
    body = wire_request(addr, 19, 3, req.encode(), False, socket_timeout)
    resp = CreateTopicsResponse_v3.decode(io.BytesIO(body))
    return {name: (code, msg) for name, code, msg in resp.topic_errors}


def delete_topics_request(addr: tuple, topics: list, timeout_ms: int = 10000) -> dict:
    """DeleteTopics v1 through the node at ``addr``; returns {name: error_code}."""
    import io

    from kafka.protocol.admin import DeleteTopicsRequest_v1, DeleteTopicsResponse_v1

    req = DeleteTopicsRequest_v1(topics=list(topics), timeout=timeout_ms)
    body = wire_request(addr, 20, 1, req.encode(), False, timeout_ms / 1000 + 5)
    resp = DeleteTopicsResponse_v1.decode(io.BytesIO(body))
    return dict(resp.topic_error_codes)


def create_partitions_request(addr: tuple, topic: str, count: int, timeout_ms: int = 10000) -> tuple:
    """CreatePartitions v1 (grow ``topic`` to ``count`` partitions, placement left to the
    controller) through the node at ``addr``; returns (error_code, error_message)."""
    import io

    from kafka.protocol.admin import CreatePartitionsRequest_v1, CreatePartitionsResponse_v1

    req = CreatePartitionsRequest_v1(topic_partitions=[(topic, (count, None))], timeout=timeout_ms, validate_only=False)
    body = wire_request(addr, 37, 1, req.encode(), False, timeout_ms / 1000 + 5)
    resp = CreatePartitionsResponse_v1.decode(io.BytesIO(body))
    ((_, code, msg),) = resp.topic_errors
    return code, msg


def incremental_alter_topic_configs_request(addr: tuple, topic: str, changes: dict, timeout: float = 15.0) -> tuple:
    """IncrementalAlterConfigs v0 of one topic through the node at ``addr``: ``changes``
    maps a config name to a value to SET, or to None to DELETE it (back to the default).
    Returns (error_code, error_message)."""

    def string(v: str) -> bytes:
        raw = v.encode()
        return struct.pack(">h", len(raw)) + raw

    body = struct.pack(">i", 1) + struct.pack(">b", 2) + string(topic) + struct.pack(">i", len(changes))
    for name, value in changes.items():
        body += string(name) + struct.pack(">b", 0 if value is not None else 1)
        body += string(value) if value is not None else struct.pack(">h", -1)
    body += b"\x00"  # validate_only
    r = _Reader(wire_request(addr, 44, 0, body, False, timeout))
    r.i32()  # throttle
    assert r.i32() == 1
    code = r.i16()
    n = r.i16()
    msg = None if n < 0 else r.take(n).decode()
    return code, msg


def produce_request(
    addr: tuple,
    topic: str,
    partition: int,
    values: list,
    acks: int = -1,
    timeout: float = 10.0,
) -> tuple:
    """Produce v7 of one uncompressed batch to one partition through the node at ``addr``;
    returns (error_code, base_offset)."""
    import io

    from kafka.protocol.produce import ProduceRequest_v7, ProduceResponse_v7
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    now_ms = int(time.time() * 1000)
    for i, v in enumerate(values):
        builder.append(i, timestamp=now_ms, key=None, value=v, headers=[])
    req = ProduceRequest_v7(
        transactional_id=None,
        required_acks=acks,
        timeout=int(timeout * 1000),
        topics=[(topic, [(partition, bytes(builder.build()))])],
    )
    body = wire_request(addr, 0, 7, req.encode(), False, timeout + 5)
    resp = ProduceResponse_v7.decode(io.BytesIO(body))
    (_, parts), = resp.topics
    (_, code, offset, _, _), = parts
    return code, offset


def fetch_request(addr: tuple, topic: str, partition: int, offset: int = 0, timeout: float = 10.0) -> tuple:
    """Fetch v4 (no wait) of one partition through the node at ``addr``; returns
    (error_code, high watermark)."""
    import io

    from kafka.protocol.fetch import FetchRequest_v4, FetchResponse_v4

    req = FetchRequest_v4(
        replica_id=-1,
        max_wait_time=0,
        min_bytes=0,
        max_bytes=1 << 20,
        isolation_level=0,
        topics=[(topic, [(partition, offset, 1 << 20)])],
    )
    body = wire_request(addr, 1, 4, req.encode(), False, timeout)
    resp = FetchResponse_v4.decode(io.BytesIO(body))
    (_, parts), = resp.topics
    (_, code, high_watermark, *_), = parts
    return code, high_watermark


def list_offsets_request(addr: tuple, topic: str, partition: int, timestamp: int = -1, timeout: float = 10.0) -> tuple:
    """ListOffsets v1 (default: the latest offset) of one partition through the node at
    ``addr``; returns (error_code, offset)."""
    import io

    from kafka.protocol.list_offsets import ListOffsetsRequest_v1, ListOffsetsResponse_v1

    req = ListOffsetsRequest_v1(replica_id=-1, topics=[(topic, [(partition, timestamp)])])
    body = wire_request(addr, 2, 1, req.encode(), False, timeout)
    resp = ListOffsetsResponse_v1.decode(io.BytesIO(body))
    (_, parts), = resp.topics
    (_, code, _ts, offset), = parts
    return code, offset


def offset_for_leader_epoch_request(
    addr: tuple,
    queries: list,
    version: int = 4,
    replica_id: int = -1,
    timeout: float = 10.0,
) -> list:
    """OffsetForLeaderEpoch (API 23) v2-v4 through the node at ``addr``, encoded by hand.
    ``queries``: (topic, partition, current_leader_epoch, leader_epoch) tuples, one
    partition each; ``replica_id`` (v3+): -1 a consumer, -2 a debugging tool, >= 0 a
    follower. Returns one (error_code, leader_epoch, end_offset) per query, in order."""
    flexible = version >= 4

    def string(v: str) -> bytes:
        raw = v.encode()
        return _uvarint(len(raw) + 1) + raw if flexible else struct.pack(">h", len(raw)) + raw

    def count(n: int) -> bytes:
        return _uvarint(n + 1) if flexible else struct.pack(">i", n)

    tags = b"\x00" if flexible else b""
    body = bytearray(struct.pack(">i", replica_id) if version >= 3 else b"")
    body += count(len(queries))
    for topic, partition, current, epoch in queries:
        body += string(topic) + count(1) + struct.pack(">iii", partition, current, epoch) + tags + tags
    body += tags
    r = _Reader(wire_request(addr, 23, version, bytes(body), flexible, timeout))
    r.i32()  # throttle

    def partition():
        code, index, epoch, end = r.i16(), r.i32(), r.i32(), r.i64()
        if flexible:
            r.tagged()
        return index, (code, epoch, end)

    def topic():
        name = r.compact_str() if flexible else r.take(r.i16()).decode()
        parts = r.compact_array(partition) if flexible else [partition() for _ in range(r.i32())]
        if flexible:
            r.tagged()
        return name, parts

    topics = r.compact_array(topic) if flexible else [topic() for _ in range(r.i32())]
    assert len(topics) == len(queries), f"OffsetForLeaderEpoch v{version}: {len(topics)} topics for {len(queries)} asked"
    out = []
    for (name, parts), (want_topic, want_partition, _, _) in zip(topics, queries):
        assert name == want_topic and [i for i, _ in parts] == [want_partition], (name, parts)
        out.append(parts[0][1])
    return out


def describe_topic_configs_request(addr: tuple, topics: list, timeout: float = 10.0) -> dict:
    """DescribeConfigs v1 of topics, answered by the node at ``addr`` itself (librdkafka
    would send it to the controller). Returns {topic: {name: (value, source)}}; a topic
    whose resource has an error maps to ("error", code)."""
    import io

    from kafka.protocol.admin import DescribeConfigsRequest_v1, DescribeConfigsResponse_v1

    req = DescribeConfigsRequest_v1(resources=[(2, t, None) for t in topics], include_synonyms=False)
    body = wire_request(addr, 32, 1, req.encode(), False, timeout)
    resp = DescribeConfigsResponse_v1.decode(io.BytesIO(body))
    out = {}
    for code, _msg, _type, name, entries in resp.resources:
        if code:
            out[name] = ("error", code)
        else:
            out[name] = {e[0]: (e[1], e[3]) for e in entries}
    return out


def coordinator_partition(key: str, partitions: int) -> int:
    """Kafka's coordinator partition of a group id / transactional id:
    ``Utils.abs(key.hashCode()) % partitions`` (String.hashCode over UTF-16 units)."""
    h = 0
    raw = key.encode("utf-16-be")
    for i in range(0, len(raw), 2):
        h = (h * 31 + int.from_bytes(raw[i : i + 2], "big")) & 0xFFFFFFFF
    return (h & 0x7FFFFFFF) % max(partitions, 1)


def find_coordinator_request(addr: tuple, key: str, key_type: int = 0, timeout: float = 10.0) -> tuple:
    """FindCoordinator v1 (key type 0 = group, 1 = transaction) answered by the node at
    ``addr``; returns (error_code, node_id, host, port)."""
    import io

    from kafka.protocol.find_coordinator import FindCoordinatorRequest_v1, FindCoordinatorResponse_v1

    req = FindCoordinatorRequest_v1(coordinator_key=key, coordinator_type=key_type)
    body = wire_request(addr, 10, 1, req.encode(), False, timeout)
    resp = FindCoordinatorResponse_v1.decode(io.BytesIO(body))
    return resp.error_code, resp.coordinator_id, resp.host, resp.port


def produce_v10_leader_hint(addr: tuple, topic: str, partition: int, value: bytes, timeout: float = 10.0) -> dict:
    """Produce v10 (flexible, KIP-951) of one record to one partition through the node at
    ``addr``; returns {"error_code", "current_leader": (id, epoch) or None,
    "node_endpoints": {id: (host, port)}} from the response's tagged fields."""
    from kafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=0, producer_id=-1, producer_epoch=-1, base_sequence=-1,
        batch_size=1 << 20,
    )
    builder.append(0, timestamp=int(time.time() * 1000), key=None, value=value, headers=[])
    records = bytes(builder.build())
    name = topic.encode()
    body = (
        b"\x00"  # transactional_id: null
        + struct.pack(">hi", -1, int(timeout * 1000))
        + _uvarint(2)
        + _uvarint(len(name) + 1) + name
        + _uvarint(2)
        + struct.pack(">i", partition)
        + _uvarint(len(records) + 1) + records
        + b"\x00"  # partition tagged fields
        + b"\x00"  # topic tagged fields
        + b"\x00"  # request tagged fields
    )
    r = _Reader(wire_request(addr, 0, 10, body, True, timeout))
    out = {"error_code": None, "current_leader": None, "node_endpoints": {}}

    def partition_response():
        r.i32()
        out["error_code"] = r.i16()
        r.i64(), r.i64(), r.i64()
        r.compact_array(lambda: (r.i32(), r.compact_str(), r.tagged()))
        r.compact_str()
        for _ in range(r.uvarint()):
            tag, size = r.uvarint(), r.uvarint()
            if tag == 0:
                out["current_leader"] = (r.i32(), r.i32())
                r.tagged()
            else:
                r.take(size)

    def topic_response():
        r.compact_str()
        r.compact_array(partition_response)
        r.tagged()

    r.compact_array(topic_response)
    r.i32()
    for _ in range(r.uvarint()):
        tag, size = r.uvarint(), r.uvarint()
        if tag == 0:
            def endpoint():
                node, host, port = r.i32(), r.compact_str(), r.i32()
                r.compact_str()
                r.tagged()
                out["node_endpoints"][node] = (host, port)

            r.compact_array(endpoint)
        else:
            r.take(size)
    return out


# ------------------------------------------------------------------ cluster
BIND_CONFLICT_RE = re.compile(r"address already in use|os error 98|AddrInUse", re.IGNORECASE)


def free_ports(n: int, host: str = "127.0.0.1") -> list:
    """``n`` distinct ports the kernel just handed out for ``host`` (bound together, so no
    two are equal, then released). Another process can take one before gregor binds it:
    Cluster.start retries with fresh ports when a node reports a bind conflict."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ClusterNode(Broker):
    """One voter of a Cluster (controller + broker): fixed Kafka and controller ports and
    data dir for its whole life, so restarts come back where they were."""

    def __init__(self, cluster: "Cluster", node_id: int, base_dir: Path, extra_args=(), env=None):
        super().__init__(cluster.bin_path, base_dir=base_dir, data_dir=base_dir / "data", extra_args=extra_args, env=env)
        self._own_base = False  # the cluster removes its whole tree
        self.cluster = cluster
        self.node_id = node_id
        self.kafka_port = 0
        self.controller_port = 0
        self.paused = False

    @property
    def is_voter(self) -> bool:
        return self.node_id in self.cluster.voter_ids

    def command(self) -> list:
        host = self.cluster.host
        # A broker-only node is given a controller listener too: gregor requires one ("node 4
        # is not among the voters: give it --controller-listen"), Kafka would not.
        controller = ["--controller-listen", f"{host}:{self.controller_port}"]
        return [
            str(self.bin_path),
            "serve",
            "--node-id",
            str(self.node_id),
            "--listen",
            f"{host}:{self.kafka_port}",
            *controller,
            "--controller-quorum-voters",
            self.cluster.voters,
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]

    @property
    def addr(self) -> tuple:
        return (self.cluster.host, self.kafka_port)

    @property
    def bootstrap(self) -> str:
        return f"{self.cluster.host}:{self.kafka_port}"

    def bind_conflict(self) -> bool:
        """Whether the last start failed because a port was taken."""
        try:
            return bool(BIND_CONFLICT_RE.search(self.log_path.read_text("utf-8", "replace")))
        except (FileNotFoundError, IndexError):
            return False

    def metadata(self, topics: Optional[list] = None, timeout: float = 5.0) -> dict:
        return metadata_request(self.addr, topics, timeout)

    def pause(self):
        """SIGSTOP: the process keeps its sockets but answers nothing (a hung node)."""
        assert self.is_running()
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        if self.paused:
            self.resume()
        return super().stop(sig, timeout)

    def kill9(self) -> int:
        rc = super().kill9()
        self.paused = False
        return rc

    def cleanup(self, keep_dir: bool = True, graceful: float = 10.0):
        if self.paused:
            self.resume()
        super().cleanup(keep_dir=True, graceful=graceful)


class Cluster:
    """N gregor processes on loopback, each a voter of the metadata quorum and a broker:

        gregor serve --node-id N --listen H:P --controller-listen H:P
                     --controller-quorum-voters 1@H:P,2@H:P,3@H:P --data-dir DIR

    With ``voters=V`` < N only nodes 1..V are voters (listed in the voters flag); the others
    are brokers only, registering with the quorum.

    Ports are allocated once (free_ports) and kept, with the data dirs, across kill -9,
    SIGTERM and restarts. Each node logs to ``BASE/node-N/broker-K.log`` (K = its K-th
    start). ``cleanup()`` kills every process and removes the tree; use the
    ``cluster_factory`` fixture (conftest.py) or ``with Cluster(...) as c:``.
    """

    def __init__(
        self,
        bin_path: Path,
        size: int = 3,
        base_dir: Optional[Path] = None,
        extra_args: tuple = (),
        env: Optional[dict] = None,
        host: str = "127.0.0.1",
        voters: Optional[int] = None,
    ):
        self.bin_path = Path(bin_path)
        self.size = size
        self.voter_ids = list(range(1, (voters or size) + 1))
        self.host = host
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="gregor-cluster-"))
        self.nodes = [
            ClusterNode(self, i, self.base_dir / f"node-{i}", extra_args=extra_args, env=env)
            for i in range(1, size + 1)
        ]

    # ---------------------------------------------------------------- naming
    def node(self, node_id: int) -> ClusterNode:
        return self.nodes[node_id - 1]

    @property
    def ids(self) -> list:
        return [n.node_id for n in self.nodes]

    @property
    def voters(self) -> str:
        return ",".join(f"{n.node_id}@{self.host}:{n.controller_port}" for n in self.nodes if n.is_voter)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def running(self) -> list:
        return [n for n in self.nodes if n.is_running()]

    def _assign_ports(self):
        ports = free_ports(2 * self.size, self.host)
        for i, n in enumerate(self.nodes):
            n.kafka_port, n.controller_port = ports[2 * i], ports[2 * i + 1]

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = START_TIMEOUT, attempts: int = 5) -> "Cluster":
        """First start: fresh ports and empty data dirs; every node is spawned before any is
        awaited (a node may wait for a quorum before it listens). A bind conflict on any
        node starts the whole cluster again on new ports (the voters list names them all)."""
        for attempt in range(1, attempts + 1):
            self._assign_ports()
            for n in self.nodes:
                n.spawn()
            try:
                for n in self.nodes:
                    n.await_ready(timeout)
            except BrokerError:
                conflict = any(n.bind_conflict() for n in self.nodes)
                self.kill9_all()
                if not conflict or attempt == attempts:
                    raise
                for n in self.nodes:
                    shutil.rmtree(n.data_dir, ignore_errors=True)
                    n.data_dir.mkdir(parents=True)
                continue
            break
        self.wait_formed(timeout=timeout)
        return self

    def start_node(self, node_id: int, timeout: float = START_TIMEOUT, attempts: int = 5) -> ClusterNode:
        """Start a stopped node again on its ports and data dir. A port taken meanwhile (an
        outgoing connection's ephemeral port, say) is retried: it is freed soon."""
        n = self.node(node_id)
        for attempt in range(1, attempts + 1):
            n.spawn()
            try:
                return n.await_ready(timeout)
            except BrokerError:
                if not n.bind_conflict() or attempt == attempts:
                    raise
                time.sleep(0.5 * attempt)  # backoff before retrying a taken port
        return n

    def restart(self, node_id: int, sig: int = signal.SIGTERM, wait: bool = True) -> ClusterNode:
        """Stop (``sig``; SIGKILL for kill -9) if running, start again, and (``wait``) wait
        until every running node's Metadata lists every running node."""
        n = self.node(node_id)
        if n.is_running():
            n.stop(sig)
        self.start_node(node_id)
        if wait:
            self.wait_formed()
        return n

    def start_all(self, timeout: float = START_TIMEOUT) -> "Cluster":
        """Start every stopped node (same ports and dirs), spawning all before awaiting any."""
        stopped = [n for n in self.nodes if not n.is_running()]
        for n in stopped:
            n.spawn()
        for n in stopped:
            try:
                n.await_ready(timeout)
            except BrokerError:
                if not n.bind_conflict():
                    raise
                self.start_node(n.node_id, timeout)
        self.wait_formed(timeout=timeout)
        return self

    def stop_all(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> dict:
        """Signal every running node at once (one by one, the last ones would lose their
        quorum while stopping), then wait for each; returns {node_id: exit code}."""
        live = self.running()
        for n in live:
            if n.paused:
                n.resume()
            n.proc.send_signal(sig)
        codes = {}
        deadline = time.monotonic() + timeout
        for n in live:
            try:
                n.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait(10)
                raise BrokerError(f"node {n.node_id} did not exit within {timeout}s of signal {sig}; killed\n{n.log_tail()}")
            n._join_drain()
            n.port = None
            codes[n.node_id] = n.proc.returncode
        return codes

    def kill9_all(self):
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGKILL)
        for n in self.nodes:
            if n.proc is not None:
                n.kill9()

    def kill9(self, node_id: int) -> ClusterNode:
        self.node(node_id).kill9()
        return self.node(node_id)

    # -------------------------------------------------------------- queries
    def metadata(self, node_id: int, topics: Optional[list] = None, timeout: float = 5.0) -> dict:
        return self.node(node_id).metadata(topics, timeout)

    def wait_formed(
        self,
        nodes: Optional[list] = None,
        brokers: Optional[list] = None,
        timeout: float = START_TIMEOUT,
    ) -> int:
        """Wait until the Metadata of each node in ``nodes`` (default: the running ones)
        lists exactly the ``brokers`` (default: the running nodes' ids) with their Kafka
        ports, all of them name the same controller among those brokers, and that controller
        answers each node's DescribeQuorum (asked of the live Raft leader, so a controller
        remembered from before a restart does not count) as leader of all the voters.
        Returns the controller id."""
        nodes = [self.node(i) for i in nodes] if nodes is not None else self.running()
        want = set(brokers) if brokers is not None else {n.node_id for n in self.running()}

        def formed():
            controllers = set()
            for n in nodes:
                md = n.metadata()
                if set(md["brokers"]) != want:
                    return False
                for b, (_, port, _) in md["brokers"].items():
                    if port != self.node(b).kafka_port:
                        raise AssertionError(f"node {n.node_id} lists broker {b} on port {port}")
                controllers.add(md["controller_id"])
            if len(controllers) != 1:
                return False
            (controller,) = controllers
            if controller not in want:
                return False
            for n in nodes:
                q = describe_quorum_request(n.addr)
                if q["error_code"] != 0 or q["leader_id"] != controller or set(q["voters"]) != set(self.voter_ids):
                    return False
            return controller

        return wait_for(
            formed,
            timeout,
            0.05,
            f"nodes {[n.node_id for n in nodes]} to list brokers {sorted(want)} and agree on a live controller",
        )

    def controller_id(self, via: Optional[int] = None) -> int:
        n = self.node(via) if via is not None else self.running()[0]
        return n.metadata()["controller_id"]

    # ------------------------------------------------------------------ logs
    def log_text(self) -> str:
        return "".join(n.log_text() for n in self.nodes)

    def log_tails(self, lines: int = 80) -> str:
        return "\n".join(
            f"--- node {n.node_id} ({', '.join(str(p) for p in n.log_paths)}) ---\n{n.log_tail(lines)}" for n in self.nodes
        )

    def panics(self) -> list:
        return [n.node_id for n in self.nodes if "panicked" in n.log_text()]

    # --------------------------------------------------------------- cleanup
    def cleanup(self, keep_dir: bool = False, graceful: float = 10.0):
        """Every process gone (SIGTERM to all at once, SIGKILL after ``graceful`` s), then the
        tree removed unless ``keep_dir``. Safe to call twice and after a failed start."""
        for n in self.nodes:
            if n.paused:
                n.resume()
            if n.proc is not None and n.proc.poll() is None:
                try:
                    n.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + graceful
        for n in self.nodes:
            if n.proc is None:
                continue
            try:
                n.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.proc.send_signal(signal.SIGKILL)
                n.proc.wait(30)
            n._join_drain()
        if not keep_dir and self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc):
        self.cleanup()
