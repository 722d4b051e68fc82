"""Hostile record batches sent in raw Produce requests.

Each case gets the error code the protocol defines, the broker stays up, and its peak RSS
(VmHWM) stays far below what the hostile input claims: a 100 MB gzip bomb must not be
inflated, and a batch claiming 2^31-1 records must not reserve memory for them.
"""
from __future__ import annotations

import gzip
import struct

import pytest

from gregor_testlib import create_topic_confluent, unique_topic, zigzag_varint
from test_raw_protocol import assert_alive, header_v1, kstring, roundtrip

CORRUPT_MESSAGE = 2
MESSAGE_TOO_LARGE = 10


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def record(offset_delta: int, value: bytes) -> bytes:
    body = (
        b"\x00"  # attributes
        + zigzag_varint(0)  # timestamp delta
        + zigzag_varint(offset_delta)
        + zigzag_varint(-1)  # null key
        + zigzag_varint(len(value))
        + value
        + zigzag_varint(0)  # no headers
    )
    return zigzag_varint(len(body)) + body


def batch(payload: bytes, records_count: int, codec: int = 0, last_offset_delta: int | None = None,
          corrupt_crc: bool = False, producer_id: int = -1, producer_epoch: int = -1,
          base_sequence: int = -1, timestamp: int = 1000) -> bytes:
    """One v2 batch; every record (timestamp delta 0) and so the batch's first and max
    timestamps are ``timestamp`` (ms)."""
    if last_offset_delta is None:
        last_offset_delta = records_count - 1
    after_crc = struct.pack(
        ">hiqqqhii", codec, last_offset_delta, timestamp, timestamp, producer_id, producer_epoch,
        base_sequence, records_count
    ) + payload
    crc = crc32c(after_crc) ^ (1 if corrupt_crc else 0)
    after_length = struct.pack(">ibI", -1, 2, crc) + after_crc
    return struct.pack(">qi", 0, len(after_length)) + after_length


def produce_v3(topic: str, records: bytes, corr: int = 11) -> bytes:
    body = (
        kstring(None)  # transactional id
        + struct.pack(">hi", -1, 10_000)  # acks=all, timeout
        + struct.pack(">i", 1)
        + kstring(topic)
        + struct.pack(">i", 1)
        + struct.pack(">i", 0)  # partition
        + struct.pack(">i", len(records))
        + records
    )
    return header_v1(0, 3, corr) + body


def produce_error(broker, topic: str, records: bytes) -> tuple[int, int]:
    resp = roundtrip(broker, produce_v3(topic, records))
    # correlation id, [topic: name, [partition: index, error, base offset, append time]]
    pos = 4 + 4
    (name_len,) = struct.unpack_from(">h", resp, pos)
    pos += 2 + name_len + 4
    index, error, base_offset = struct.unpack_from(">ihq", resp, pos)
    assert index == 0
    return error, base_offset


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def topic(broker):
    name = unique_topic("hostile")
    create_topic_confluent(broker.bootstrap, name, 1)
    return name


def test_valid_raw_batch_is_accepted(broker, topic):
    error, base = produce_error(broker, topic, batch(record(0, b"a") + record(1, b"b"), 2))
    assert (error, base) == (0, 0)
    error, base = produce_error(broker, topic, batch(gzip.compress(record(0, b"c")), 1, codec=1))
    assert (error, base) == (0, 2)


def test_gzip_bomb_is_rejected_without_inflating(broker, topic):
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 1024 * 1024, len(bomb)
    before = peak_rss_mb(broker.pid)
    error, _ = produce_error(broker, topic, batch(bomb, 1, codec=1))
    assert error == MESSAGE_TOO_LARGE
    after = peak_rss_mb(broker.pid)
    # The decompression limit is 64 MiB; the bomb claims 200 MiB.
    assert after - before < 100, f"peak RSS grew from {before:.0f} MB to {after:.0f} MB"
    print(f"gzip bomb: peak RSS {before:.0f} MB -> {after:.0f} MB")
    assert_alive(broker)


@pytest.mark.parametrize(
    "case",
    ["bad_crc", "count_too_high", "count_huge", "delta_mismatch", "trailing_garbage", "bad_gzip"],
)
def test_malformed_batches_get_corrupt_message(broker, topic, case):
    one = record(0, b"x")
    records = {
        "bad_crc": batch(one, 1, corrupt_crc=True),
        "count_too_high": batch(one, 2),
        "count_huge": batch(one, 2**31 - 1),
        "delta_mismatch": batch(record(5, b"x"), 1),
        "trailing_garbage": batch(one + b"\x01\x02\x03", 1),
        "bad_gzip": batch(b"not gzip at all", 1, codec=1),
    }[case]
    before = peak_rss_mb(broker.pid)
    error, _ = produce_error(broker, topic, records)
    # Kafka answers INVALID_RECORD (87) for some of these from the log validator; Gregor uses
    # CORRUPT_MESSAGE for every structural defect and INVALID_RECORD for offset-delta errors
    # caught by the log.
    assert error in (CORRUPT_MESSAGE, 87), error
    assert peak_rss_mb(broker.pid) - before < 50
    assert_alive(broker)
