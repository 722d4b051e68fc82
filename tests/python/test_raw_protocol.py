"""Raw-socket tests: hand-encoded Kafka frames, malformed input, and abuse.

Encodings are written by hand with struct so they do not depend on any
client library:

    frame          = int32 size, payload[size]
    request hdr v1 = int16 api_key, int16 api_version, int32 correlation_id,
                     int16 client_id length, client_id bytes
    request hdr v2 = hdr v1 + tagged fields (uvarint 0 when empty)
    response hdr v0= int32 correlation_id

The broker must never crash: after every case a fresh connection still gets
a valid ApiVersions answer, and the broker log has no "panicked" (checked by
the fixture at teardown).
"""

from __future__ import annotations

import random
import socket
import struct

import pytest

from gregor_testlib import Broker, create_topic_confluent, offset_for_leader_epoch_request, recv_exact, unique_topic, uvarint

API_PRODUCE = 0
API_METADATA = 3
API_API_VERSIONS = 18
UNSUPPORTED_VERSION = 35
UNKNOWN_TOPIC_OR_PARTITION = 3
FENCED_LEADER_EPOCH = 74
UNKNOWN_LEADER_EPOCH = 75
IO_TIMEOUT = 10.0


# ---------------------------------------------------------------- encoding
def kstring(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def compact_string(s: str) -> bytes:
    b = s.encode()
    return uvarint(len(b) + 1) + b


def header_v1(api_key: int, api_version: int, corr: int, client_id: str | None = "gregor-raw-test") -> bytes:
    return struct.pack(">hhi", api_key, api_version, corr) + kstring(client_id)


def header_v2(api_key: int, api_version: int, corr: int, client_id: str | None = "gregor-raw-test") -> bytes:
    return header_v1(api_key, api_version, corr, client_id) + uvarint(0)


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


# ------------------------------------------------------------------ socket
def connect(broker: Broker) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", broker.port), timeout=IO_TIMEOUT)
    s.settimeout(IO_TIMEOUT)
    return s


def read_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    assert 0 <= size < 64 * 1024 * 1024, f"implausible response size {size}"
    return recv_exact(sock, size)


def roundtrip(broker: Broker, payload: bytes) -> bytes:
    with connect(broker) as s:
        s.sendall(frame(payload))
        return read_frame(s)


def wait_closed(sock: socket.socket) -> bool:
    """True if the peer closes (EOF/reset) within IO_TIMEOUT, reading and
    discarding anything it sends first. False on timeout."""
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def closed_or_answered(sock: socket.socket, corr: int) -> str:
    """After a bad request the broker may close the connection (what Kafka
    does) or answer with an error; it must do one of them promptly."""
    try:
        payload = read_frame(sock)
    except (EOFError, ConnectionResetError, BrokenPipeError):
        return "closed"
    except socket.timeout:
        pytest.fail("broker neither answered nor closed the connection within 10s")
    (got,) = struct.unpack_from(">i", payload)
    assert got == corr, f"response correlation id {got} != {corr}"
    return "answered"


# ------------------------------------------------------------- ApiVersions
def parse_api_versions_v0(payload: bytes, corr: int):
    got_corr, err, n = struct.unpack_from(">ihi", payload)
    assert got_corr == corr
    assert 0 <= n < 1000, n
    apis = {}
    pos = 10
    for _ in range(n):
        key, lo, hi = struct.unpack_from(">hhh", payload, pos)
        pos += 6
        apis[key] = (lo, hi)
    return err, apis


def api_versions_v0(broker: Broker, corr: int = 7):
    return parse_api_versions_v0(roundtrip(broker, header_v1(API_API_VERSIONS, 0, corr)), corr)


def read_uvarint(buf: bytes, pos: int):
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def assert_alive(broker: Broker):
    assert broker.is_running(), f"broker died\n{broker.log_tail()}"
    err, apis = api_versions_v0(broker, corr=4242)
    assert err == 0
    assert API_API_VERSIONS in apis


def test_api_versions_v0(broker):
    err, apis = api_versions_v0(broker)
    assert err == 0
    lo, hi = apis[API_API_VERSIONS]
    assert lo == 0 and hi >= 3
    for key in (API_PRODUCE, 1, 2, API_METADATA):  # Produce, Fetch, ListOffsets, Metadata
        assert key in apis, f"api {key} not advertised"
        assert apis[key][0] <= apis[key][1]


def test_api_versions_v3_flexible(broker):
    corr = 99
    body = compact_string("gregor-raw-test") + compact_string("0.0.1") + uvarint(0)
    payload = roundtrip(broker, header_v2(API_API_VERSIONS, 3, corr) + body)
    # ApiVersions responses always use response header v0 (no tagged fields)
    got_corr, err = struct.unpack_from(">ih", payload)
    assert got_corr == corr
    assert err == 0
    n, pos = read_uvarint(payload, 6)
    n -= 1
    apis = {}
    for _ in range(n):
        key, lo, hi = struct.unpack_from(">hhh", payload, pos)
        pos += 6
        tags, pos = read_uvarint(payload, pos)
        assert tags == 0
        apis[key] = (lo, hi)
    (throttle,) = struct.unpack_from(">i", payload, pos)
    assert throttle >= 0
    assert apis[API_API_VERSIONS][1] >= 3


@pytest.mark.parametrize("tagged_byte", [False, True], ids=["hdr-v1", "hdr-v1+tag-byte"])
def test_api_versions_unsupported_version(broker, tagged_byte):
    """KIP-511: an ApiVersions version the broker does not know gets
    UNSUPPORTED_VERSION with a v0 body listing the supported ranges.
    (The second variant adds one 0x00 byte, what a client using header v2
    would send, so either header parse is exercised.)"""
    corr = 31337
    payload = header_v1(API_API_VERSIONS, 99, corr) + (b"\x00" if tagged_byte else b"")
    err, apis = parse_api_versions_v0(roundtrip(broker, payload), corr)
    assert err == UNSUPPORTED_VERSION
    assert API_API_VERSIONS in apis
    assert apis[API_API_VERSIONS][0] == 0
    assert_alive(broker)


def test_metadata_v0_lists_broker(broker):
    corr = 5
    payload = roundtrip(broker, header_v1(API_METADATA, 0, corr) + struct.pack(">i", 0))
    got_corr, n_brokers = struct.unpack_from(">ii", payload)
    assert got_corr == corr
    assert n_brokers == 1
    pos = 8
    _node_id, hlen = struct.unpack_from(">ih", payload, pos)
    pos += 6
    host = payload[pos : pos + hlen].decode()
    pos += hlen
    (port,) = struct.unpack_from(">i", payload, pos)
    assert (host, port) == ("127.0.0.1", broker.port)


# ------------------------------------------------------------------ abuse
def case_garbage_http(broker):
    with connect(broker) as s:
        # "GET " read as a size is ~1.1 GiB: must be refused, not allocated
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert wait_closed(s), "broker kept an HTTP-garbage connection open"


def case_garbage_random(broker):
    rng = random.Random(1234)
    with connect(broker) as s:
        try:
            s.sendall(bytes(rng.getrandbits(8) for _ in range(4096)))
        except (ConnectionResetError, BrokenPipeError):
            return
        wait_closed(s)  # may or may not close; must not crash


def case_garbage_small_frame(broker):
    with connect(broker) as s:
        s.sendall(frame(b"\xff" * 8))  # header cut short inside client_id
        closed_or_answered(s, -1)


def case_zero_length_frame(broker):
    with connect(broker) as s:
        s.sendall(struct.pack(">i", 0))
        assert wait_closed(s), "broker kept a connection open after an empty frame"


def case_negative_length(broker):
    with connect(broker) as s:
        s.sendall(struct.pack(">i", -1) + b"abcdef")
        assert wait_closed(s), "broker kept a connection open after a negative frame size"


def case_truncated_then_close(broker):
    s = connect(broker)
    s.sendall(struct.pack(">i", 100) + header_v1(API_API_VERSIONS, 0, 1)[:6])
    s.close()


def case_huge_frame(broker):
    with connect(broker) as s:
        s.sendall(struct.pack(">i", 200 * 1024 * 1024) + header_v1(API_PRODUCE, 9, 1))
        assert wait_closed(s), "broker waited for a 200 MiB frame instead of refusing it"


def case_unknown_api_key(broker):
    with connect(broker) as s:
        s.sendall(frame(header_v1(9999, 0, 77) + b"\x00\x00\x00\x00"))
        closed_or_answered(s, 77)


def case_client_id_overrun(broker):
    with connect(broker) as s:
        s.sendall(frame(struct.pack(">hhih", API_METADATA, 0, 78, 1000) + b"abc"))
        closed_or_answered(s, 78)


def case_metadata_huge_array(broker):
    with connect(broker) as s:
        body = struct.pack(">i", 2**31 - 1) + b"\x00"  # claims 2^31-1 topics in 5 bytes
        s.sendall(frame(header_v1(API_METADATA, 0, 79) + body))
        closed_or_answered(s, 79)


def case_pipelined_then_garbage(broker):
    """Two valid requests in one write, then junk: both answered in order."""
    with connect(broker) as s:
        s.sendall(frame(header_v1(API_API_VERSIONS, 0, 1)) + frame(header_v1(API_API_VERSIONS, 0, 2)))
        assert parse_api_versions_v0(read_frame(s), 1)[0] == 0
        assert parse_api_versions_v0(read_frame(s), 2)[0] == 0
        s.sendall(struct.pack(">i", -5))
        assert wait_closed(s)


def case_many_connections(broker):
    socks = [connect(broker) for _ in range(64)]
    for s in socks:
        s.close()


CASES = [
    case_garbage_http,
    case_garbage_random,
    case_garbage_small_frame,
    case_zero_length_frame,
    case_negative_length,
    case_truncated_then_close,
    case_huge_frame,
    case_unknown_api_key,
    case_client_id_overrun,
    case_metadata_huge_array,
    case_pipelined_then_garbage,
    case_many_connections,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_malformed_input_does_not_kill_broker(broker, case):
    case(broker)
    assert_alive(broker)


def test_all_abuse_then_clients_still_work(broker):
    for case in CASES:
        case(broker)
    assert_alive(broker)

    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

    topic = unique_topic("after-abuse")
    create_topic_confluent(broker.bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    delivered = []
    for i in range(10):
        p.produce(topic, value=f"m{i}".encode(), partition=0, on_delivery=lambda e, m: delivered.append(e))
    assert p.flush(30) == 0
    assert delivered == [None] * 10

    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": unique_topic("g"),
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        values = []
        for _ in range(60):
            msg = c.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF and len(values) == 10:
                    break
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    pytest.fail(str(msg.error()))
                continue
            values.append(msg.value())
        assert values == [f"m{i}".encode() for i in range(10)]
    finally:
        c.close()
    assert_alive(broker)


# ------------------------------------------------------ OffsetForLeaderEpoch
@pytest.mark.parametrize("version", [2, 3, 4])
def test_offset_for_leader_epoch_single_node(broker, version):
    """OffsetForLeaderEpoch (API 23) on a single node, which leads every partition at leader
    epoch 0 (as its Metadata says): epoch 0 ends at the log end offset (as on a Kafka leader
    for its current epoch), an epoch above it is unknown ((-1, -1), no error), a current
    leader epoch newer than 0 is UNKNOWN_LEADER_EPOCH, an older one FENCED_LEADER_EPOCH, and
    an unknown partition UNKNOWN_TOPIC_OR_PARTITION."""
    from confluent_kafka import Producer

    topic = unique_topic("ofle")
    create_topic_confluent(broker.bootstrap, topic, 2)
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for i in range(5):
        p.produce(topic, value=f"m{i}".encode(), partition=0)
    assert p.flush(30) == 0

    addr = ("127.0.0.1", broker.port)
    answers = offset_for_leader_epoch_request(
        addr,
        [
            (topic, 0, -1, 0),
            (topic, 0, 0, 0),
            (topic, 1, 0, 0),
            (topic, 0, -1, 1),
            (topic, 0, -1, -1),
            (topic, 0, 1, 0),
            (topic, 0, -3, 0),
            (topic, 9, -1, 0),
            ("no-such-topic", 0, -1, 0),
        ],
        version=version,
        replica_id=-2,
    )
    assert answers == [
        (0, 0, 5),
        (0, 0, 5),
        (0, 0, 0),
        (0, -1, -1),
        (0, -1, -1),
        (UNKNOWN_LEADER_EPOCH, -1, -1),
        (FENCED_LEADER_EPOCH, -1, -1),
        (UNKNOWN_TOPIC_OR_PARTITION, -1, -1),
        (UNKNOWN_TOPIC_OR_PARTITION, -1, -1),
    ]
    assert_alive(broker)


def test_librdkafka_validates_a_position_with_a_leader_epoch(broker):
    """KIP-320 in librdkafka: a consumer assigned a position that carries a leader epoch
    asks the leader (OffsetForLeaderEpoch) where that epoch ended before fetching. The
    answer (epoch 0 ends at the log end) validates the position: the consumer reads from
    offset 3, where a wrong answer ((-1, -1), or an end below 3) would have made it reset
    to the end (auto.offset.reset=latest) and read nothing."""
    import logging

    from confluent_kafka import Consumer, Producer, TopicPartition

    topic = unique_topic("kip320")
    create_topic_confluent(broker.bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for i in range(6):
        p.produce(topic, value=f"m{i}".encode(), partition=0)
    assert p.flush(30) == 0

    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    logger = logging.getLogger(unique_topic("rdkafka"))
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Keep())
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": unique_topic("g"),
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "debug": "fetch",
        },
        logger=logger,
    )
    try:
        c.assign([TopicPartition(topic, 0, 3, leader_epoch=0)])
        values = []
        for _ in range(30):
            msg = c.poll(1.0)
            if msg is None or msg.error():
                continue
            values.append((msg.offset(), msg.value()))
            if len(values) == 3:
                break
    finally:
        c.close()
    assert values == [(3, b"m3"), (4, b"m4"), (5, b"m5")], values
    validated = [line for line in lines if "validation succeeded" in line]
    assert validated, "librdkafka did not validate the position with OffsetForLeaderEpoch:\n" + "\n".join(
        line for line in lines if "VALID" in line or "epoch" in line
    )
