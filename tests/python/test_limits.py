"""Every configurable limit: going over it gets the documented outcome, and the broker keeps
serving everyone else. Limits are set through `--config` with their Kafka names."""
from __future__ import annotations

import re
import socket
import struct
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from gregor_testlib import create_topic_confluent, unique_topic
from test_raw_protocol import (
    API_API_VERSIONS,
    assert_alive,
    connect,
    frame,
    header_v1,
    parse_api_versions_v0,
    read_frame,
)


def limited_broker(broker_factory, tmp_path, settings: dict):
    cfg = tmp_path / "gregor.toml"
    cfg.write_text("".join(f'"{k}" = {v}\n' for k, v in settings.items()))
    return broker_factory(extra_args=("--config", str(cfg)))


def api_versions_on(sock: socket.socket, corr: int) -> int:
    sock.sendall(frame(header_v1(API_API_VERSIONS, 0, corr)))
    err, _ = parse_api_versions_v0(read_frame(sock), corr)
    return err


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def consume_count(bootstrap: str, topic: str, want: int) -> int:
    """How many records a consumer reads from partition 0 of ``topic``, from offset 0, until it
    has ``want`` of them or 30 s have passed."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "x", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    got = 0
    deadline = time.time() + 30
    while got < want and time.time() < deadline:
        m = c.poll(1)
        if m is not None and m.error() is None:
            got += 1
    c.close()
    return got


def test_max_connections(broker_factory, tmp_path):
    broker = limited_broker(broker_factory, tmp_path, {"max.connections": 4})
    held = [connect(broker) for _ in range(4)]
    for i, s in enumerate(held):
        assert api_versions_on(s, i) == 0
    extra = connect(broker)
    assert closed_within(extra, 5), "5th connection should be closed by max.connections=4"
    held.pop().close()
    # The slot is released when the broker notices the close; retry until it has.
    deadline = time.time() + 5
    while True:
        s = connect(broker)
        try:
            assert api_versions_on(s, 99) == 0
            break
        except (EOFError, ConnectionResetError, OSError):
            assert time.time() < deadline, "slot was not released after a close"
        finally:
            s.close()
    for s in held:
        s.close()


def test_max_connections_per_ip(broker_factory, tmp_path):
    broker = limited_broker(broker_factory, tmp_path, {"max.connections.per.ip": 2})
    a, b = connect(broker), connect(broker)
    assert api_versions_on(a, 1) == 0 and api_versions_on(b, 2) == 0
    assert closed_within(connect(broker), 5)
    a.close()
    b.close()


def test_idle_connections_are_closed(broker_factory, tmp_path):
    broker = limited_broker(broker_factory, tmp_path, {"connections.max.idle.ms": 300})
    s = connect(broker)
    assert api_versions_on(s, 1) == 0
    assert closed_within(s, 10), "idle connection was not closed"
    assert_alive(broker)


def test_request_size_limit_closes_only_that_connection(broker_factory, tmp_path):
    broker = limited_broker(broker_factory, tmp_path, {"socket.request.max.bytes": 4096})
    other = connect(broker)
    big = connect(broker)
    big.sendall(struct.pack(">i", 5000) + b"\0" * 100)
    assert closed_within(big, 5)
    assert api_versions_on(other, 3) == 0
    assert_alive(broker)


def test_message_max_bytes(broker_factory, tmp_path):
    broker = limited_broker(broker_factory, tmp_path, {"message.max.bytes": 10_000})
    topic = unique_topic("limit")
    create_topic_confluent(broker.bootstrap, topic, 1)
    results = []
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all",
                  "message.max.bytes": 1_000_000, "linger.ms": 0})
    for size in (1000, 50_000):
        p.produce(topic, b"x" * size, on_delivery=lambda err, msg: results.append(err))
        p.flush(30)
    assert results[0] is None
    assert results[1] is not None and results[1].name() == "MSG_SIZE_TOO_LARGE", results[1]


def test_client_that_never_reads_does_not_block_others(broker_factory, tmp_path):
    """A client pipelines many fetch-sized requests and never reads the responses; its
    connection stalls, but a normal producer and consumer keep working."""
    broker = limited_broker(broker_factory, tmp_path, {"queued.max.request.bytes": 1_000_000})
    topic = unique_topic("stall")
    create_topic_confluent(broker.bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for i in range(200):
        p.produce(topic, b"v" * 1000)
    p.flush(30)

    rude = connect(broker)
    rude.settimeout(2)
    request = frame(header_v1(API_API_VERSIONS, 0, 1))
    sent = 0
    try:
        while sent < 50_000:  # until the broker stops reading (send buffer full)
            rude.sendall(request * 100)
            sent += 100
    except socket.timeout:
        pass

    assert consume_count(broker.bootstrap, topic, 200) == 200
    p.produce(topic, b"after")
    assert p.flush(10) == 0
    rude.close()
    assert_alive(broker)


def metadata_v1(topics: list[str], corr: int) -> bytes:
    from test_raw_protocol import kstring

    return header_v1(3, 1, corr) + struct.pack(">i", len(topics)) + b"".join(kstring(t) for t in topics)


def test_max_partitions_per_request(broker_factory, tmp_path):
    broker = limited_broker(broker_factory, tmp_path, {"max.partitions.per.request": 2})
    ok = connect(broker)
    ok.sendall(frame(metadata_v1(["a", "b"], 1)))
    assert struct.unpack(">i", read_frame(ok)[:4])[0] == 1
    over = connect(broker)
    over.sendall(frame(metadata_v1(["a", "b", "c"], 2)))
    assert closed_within(over, 5)
    ok.sendall(frame(metadata_v1(["a"], 3)))
    assert struct.unpack(">i", read_frame(ok)[:4])[0] == 3
    assert_alive(broker)


def fetch_v4(topic: str, max_bytes: int, corr: int, max_wait_ms: int = 0) -> bytes:
    """Fetch v4 of partition 0 from offset 0 (min_bytes 1)."""
    from test_raw_protocol import kstring

    return (
        header_v1(1, 4, corr)
        + struct.pack(">iiiib", -1, max_wait_ms, 1, max_bytes, 0)
        + struct.pack(">i", 1) + kstring(topic)
        + struct.pack(">i", 1) + struct.pack(">iqi", 0, 0, max_bytes)
    )


def fetched_record_bytes(resp: bytes) -> int:
    pos = 4 + 4  # correlation id, throttle
    pos += 4  # topics
    (n,) = struct.unpack_from(">h", resp, pos)
    pos += 2 + n + 4  # name, partitions count
    _partition, error, _hw, _lso = struct.unpack_from(">ihqq", resp, pos)
    assert error == 0
    pos += 4 + 2 + 8 + 8
    (aborted,) = struct.unpack_from(">i", resp, pos)
    pos += 4 + max(aborted, 0) * 16
    (size,) = struct.unpack_from(">i", resp, pos)
    return size


def test_fetch_max_bytes_caps_responses(broker_factory, tmp_path):
    broker = limited_broker(broker_factory, tmp_path, {"fetch.max.bytes": 50_000})
    topic = unique_topic("fetchcap")
    create_topic_confluent(broker.bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0,
                  "batch.num.messages": 1})
    for _ in range(300):
        p.produce(topic, b"r" * 1000)
    assert p.flush(30) == 0
    s = connect(broker)
    s.sendall(frame(fetch_v4(topic, 10_000_000, 5)))
    size = fetched_record_bytes(read_frame(s))
    assert 0 < size <= 50_000, size
    # Consumers still read everything through the capped responses.
    assert consume_count(broker.bootstrap, topic, 300) == 300


# ------------------------------------------------------------ limits shown by their effect

def busy_connection(broker, topic: str, wait_ms: int):
    """A connection whose first request, a Fetch of an empty partition, keeps its request
    processor busy for `wait_ms`; everything sent after it waits in the broker's queues."""
    s = connect(broker)
    s.sendall(frame(fetch_v4(topic, 1 << 20, 1, max_wait_ms=wait_ms)))
    return s


def garbage_frame(size: int) -> bytes:
    # Never decoded while the Fetch before it waits; when it is, the connection closes.
    return frame(b"\xff" * size)


def api_versions_latency(broker) -> float:
    s = connect(broker)
    s.settimeout(60)
    t0 = time.monotonic()
    try:
        assert api_versions_on(s, 5) == 0
        return time.monotonic() - t0
    finally:
        s.close()


def test_queued_max_request_bytes_applies_backpressure(broker_factory, tmp_path):
    """queued.max.request.bytes bounds the bytes read but not yet answered across all
    connections: once one connection's queued requests hold them all, the broker stops
    reading every socket (another client's ApiVersions waits) until they are answered;
    then everyone is served again. Same run, default limit: nobody waits."""
    wait_ms = 6000

    def longest_wait(broker) -> float:
        topic = unique_topic("queued")
        create_topic_confluent(broker.bootstrap, topic, 1)
        hog = busy_connection(broker, topic, wait_ms)
        started = time.monotonic()
        # 400 KB of requests queued behind the Fetch (more than the 300 KB limit below).
        sender = threading.Thread(
            target=lambda: _send_quietly(hog, b"".join(garbage_frame(100_000) for _ in range(4))),
            daemon=True)
        sender.start()
        sender.join(10)
        longest = 0.0
        # Probe until the Fetch is about to return: one probe is enough to see the stall.
        while time.monotonic() - started < (wait_ms / 1000) - 3 and longest < 2.0:
            longest = max(longest, api_versions_latency(broker))
        hog.close()
        return longest

    limited = longest_wait(limited_broker(broker_factory, tmp_path, {"queued.max.request.bytes": 300_000}))
    unlimited = longest_wait(broker_factory())
    assert limited >= 2.0, f"no backpressure: ApiVersions waited at most {limited:.2f}s"
    assert unlimited < 2.0, f"without the limit ApiVersions still waited {unlimited:.2f}s"


def _send_quietly(sock: socket.socket, data: bytes):
    try:
        sock.sendall(data)
    except OSError:
        pass


def test_max_inflight_requests_per_connection_bounds_read_ahead(broker_factory, tmp_path):
    """max.inflight.requests.per.connection bounds how many requests the broker reads ahead
    of its answers on one connection: behind a waiting Fetch, 1 MB requests are taken in
    until the pipeline is full, then the socket stops being read. Depth 2 takes in a few
    (plus what the kernel buffers), the default 64 many more (same run)."""

    def absorbed(broker) -> int:
        topic = unique_topic("inflight")
        create_topic_confluent(broker.bootstrap, topic, 1)
        s = busy_connection(broker, topic, 20_000)
        s.settimeout(3)
        pad = garbage_frame(1_000_000)
        sent = 0
        try:
            while sent < 150:
                s.sendall(pad)
                sent += 1
        except socket.timeout:
            pass
        s.close()
        assert_alive(broker)
        return sent

    shallow = absorbed(limited_broker(broker_factory, tmp_path, {"max.inflight.requests.per.connection": 2}))
    deep = absorbed(broker_factory())
    print(f"1 MB requests taken in behind a waiting Fetch: depth 2: {shallow}, depth 64: {deep}")
    assert shallow < 35, shallow
    assert deep >= 60, deep
    assert deep - shallow >= 40, (shallow, deep)


def test_fetch_max_wait_ms_caps_a_long_poll(broker_factory, tmp_path):
    """A Fetch asking to wait 20 s on an empty partition is answered after about
    fetch.max.wait.ms (300 ms): it did wait (a long poll), and no longer than the cap."""
    broker = limited_broker(broker_factory, tmp_path, {"fetch.max.wait.ms": 300})
    topic = unique_topic("maxwait")
    create_topic_confluent(broker.bootstrap, topic, 1)
    s = connect(broker)
    s.settimeout(30)
    t0 = time.monotonic()
    s.sendall(frame(fetch_v4(topic, 1 << 20, 7, max_wait_ms=20_000)))
    resp = read_frame(s)
    elapsed = time.monotonic() - t0
    assert struct.unpack(">i", resp[:4])[0] == 7
    assert fetched_record_bytes(resp) == 0
    assert 0.25 <= elapsed < 10, f"answered after {elapsed:.2f}s"
    s.close()


def test_offset_metadata_max_bytes(broker_factory, tmp_path):
    """A commit whose metadata is longer than offset.metadata.max.bytes is refused with
    OFFSET_METADATA_TOO_LARGE and leaves the committed offset as it was; at the limit it is
    stored and read back."""
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTopicPartition
    from kafka.structs import OffsetAndMetadata

    broker = limited_broker(broker_factory, tmp_path, {"offset.metadata.max.bytes": 64})
    topic = unique_topic("meta")
    create_topic_confluent(broker.bootstrap, topic, 1)
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=unique_topic("g"),
                      enable_auto_commit=False, api_version_auto_timeout_ms=10_000)
    try:
        tp = KTopicPartition(topic, 0)
        c.assign([tp])
        c.commit({tp: OffsetAndMetadata(5, "m" * 64, -1)})
        got = c.committed(tp, metadata=True)
        assert (got.offset, got.metadata) == (5, "m" * 64)
        try:
            c.commit({tp: OffsetAndMetadata(9, "m" * 65, -1)})
            refused = None
        except Exception as e:  # noqa: BLE001 - kafka-python's error class is the check
            refused = e
        assert refused is not None and "OffsetMetadataTooLarge" in type(refused).__name__, repr(refused)
        got = c.committed(tp, metadata=True)
        assert (got.offset, got.metadata) == (5, "m" * 64)
    finally:
        c.close()


def test_log_cleaner_io_max_bytes_per_second(broker_factory, tmp_path):
    """The cleaner reads at most log.cleaner.io.max.bytes.per.second: compacting ~2 MB at
    500 kB/s cannot finish before ~4 s after the first record was written, however fast the
    machine (an unthrottled pass over 2 MB takes tens of ms); it does finish (a cap, not a
    stall)."""

    from test_storage import KeyedWrites, producer

    rate = 500_000
    broker = limited_broker(broker_factory, tmp_path, {
        "log.cleaner.io.max.bytes.per.second": rate, "log.cleaner.backoff.ms": 100})
    topic = unique_topic("cleanrate")
    create_topic_confluent(broker.bootstrap, topic, 1, config={
        "cleanup.policy": "compact", "segment.bytes": "200000", "min.cleanable.dirty.ratio": "0.01"})
    p = producer(broker.bootstrap, **{"linger.ms": 5})
    keys = [f"k{k:03d}".encode() for k in range(100)]
    w = KeyedWrites(p, topic)
    t0 = time.monotonic()
    w.write(2_000, keys, lambda i: f"{i:06d}".encode() + b"v" * 1000)
    for _ in range(30):  # seals the segments holding the records above
        p.produce(topic, key=b"pad", value=b"x" * 8000, partition=0, on_delivery=w.cb)
    assert p.flush(30) == 0 and not w.errors
    written = 2_000 * 1_000
    deadline = time.monotonic() + 90
    while not w.converged(broker.bootstrap, keys, expect_tombstones=True):
        assert time.monotonic() < deadline, "compaction did not converge within 90 s"
        time.sleep(0.2)
    elapsed = time.monotonic() - t0
    passes = re.findall(r"compacted log.*", re.sub(r"\x1b\[[0-9;]*m", "", broker.log_text()))
    assert passes, "no compaction pass logged"
    floor = 0.8 * written / rate
    print(f"compacted {written} bytes at {rate} B/s in {elapsed:.2f}s (floor {floor:.1f}s), "
          f"{len(passes)} passes")
    assert elapsed >= floor, f"compacted {written} bytes in {elapsed:.2f}s, under the {floor:.1f}s the cap allows"
