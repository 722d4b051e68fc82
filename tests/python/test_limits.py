"""Every configurable limit: going over it gets the documented outcome, and the broker keeps
serving everyone else. Limits are set through `--config` with their Kafka names."""
from __future__ import annotations

import socket
import struct
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

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "x",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    got = 0
    deadline = time.time() + 30
    while got < 200 and time.time() < deadline:
        m = c.poll(1)
        if m is not None and m.error() is None:
            got += 1
    c.close()
    assert got == 200
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


def fetch_v4(topic: str, max_bytes: int, corr: int) -> bytes:
    from test_raw_protocol import kstring

    return (
        header_v1(1, 4, corr)
        + struct.pack(">iiiib", -1, 0, 1, max_bytes, 0)
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
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "x", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    got = 0
    deadline = time.time() + 30
    while got < 300 and time.time() < deadline:
        m = c.poll(1)
        if m is not None and m.error() is None:
            got += 1
    c.close()
    assert got == 300
