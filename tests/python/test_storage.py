"""Storage engine (issue 5): crash recovery under kill -9, torn writes, retention,
topic storage configs, fsync policies. Real binary, real files, real SIGKILL."""

from __future__ import annotations

import random
import re
import signal
import struct
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    ResourceType,
)

from gregor_testlib import (
    confluent_assign_consumer,
    confluent_common,
    confluent_producer,
    create_topic_confluent,
    unique_topic,
    wait_for,
    wait_for_topic_confluent,
)


# ------------------------------------------------------------------ helpers
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain_log(broker) -> str:
    return ANSI.sub("", broker.log_text())


def producer(bootstrap: str, **extra) -> Producer:
    return confluent_producer(bootstrap, linger_ms=2, message_timeout_ms=30000, **extra)


def consumer(bootstrap: str, **extra) -> Consumer:
    return confluent_assign_consumer(bootstrap, **extra)


def read_partitions(bootstrap, topic, partitions, timeout=60, start=OFFSET_BEGINNING):
    """Everything readable in each partition: {partition: [(offset, value)]}."""
    c = consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, p, start) for p in range(partitions)])
        got = defaultdict(list)
        eof = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(eof) < partitions:
            for msg in c.consume(num_messages=5000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        eof.add(msg.partition())
                        continue
                    raise KafkaException(err)
                eof.discard(msg.partition())
                got[msg.partition()].append((msg.offset(), msg.value()))
        assert len(eof) == partitions, f"no EOF on {set(range(partitions)) - eof}"
        return got
    finally:
        c.close()


def produce_sync(bootstrap, topic, values, partition=0, **extra):
    """Produce ``values`` one flush at a time (one batch each); returns their offsets."""
    p = producer(bootstrap, **extra)
    offsets = []

    def cb(err, msg):
        assert err is None, err
        offsets.append(msg.offset())

    for v in values:
        p.produce(topic, value=v, partition=partition, on_delivery=cb)
        assert p.flush(30) == 0
    return offsets


def segment_files(broker, topic, partition=0):
    d = broker.data_dir / f"{topic}-{partition}"
    return sorted(d.glob("*.log"))


def batches_in(path: Path):
    """(position, size) of each batch in a segment file."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">i", data[pos + 8 : pos + 12])
        out.append((pos, length + 12))
        pos += length + 12
    return out


def write_config(broker_factory_tmp: Path, text: str) -> Path:
    path = broker_factory_tmp / "gregor.toml"
    path.write_text(text)
    return path


def list_offsets(bootstrap, topic, partition=0):
    c = consumer(bootstrap)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    finally:
        c.close()


# ------------------------------------------------------- acceptance 1: kill -9
class AckedLoad:
    """A confluent-kafka acks=all producer writing ``{prefix}{i:07d}`` round-robin over
    ``partitions`` from a thread, as fast as it can, until :meth:`stop`. No retries: a record
    is either acked once or failed, so each acked value is unique in the log (a retry after a
    lost response would legitimately duplicate)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, prefix: str):
        self._p = producer(
            bootstrap,
            **{"message.send.max.retries": 0, "linger.ms": 1, "batch.num.messages": 200},
        )
        self._topic, self._partitions, self._prefix = topic, partitions, prefix
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._acked = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _cb(self, err, msg):
        if err is None:
            with self._lock:
                self._acked.append((msg.value(), msg.partition(), msg.offset()))

    def _run(self):
        p, i = self._p, 0
        while not self._stop.is_set():
            try:
                value = f"{self._prefix}{i:07d}".encode()
                p.produce(self._topic, value=value, partition=i % self._partitions, on_delivery=self._cb)
                i += 1
            except BufferError:
                pass
            p.poll(0.0005 if i % 50 == 0 else 0)

    def acked(self) -> list:
        """``(value, partition, offset)`` of every record acknowledged so far."""
        with self._lock:
            return list(self._acked)

    def stop(self) -> None:
        """Stops writing and drops what was not acknowledged."""
        self._stop.set()
        self._thread.join(10)
        self._p.purge(in_queue=True, in_flight=True, blocking=False)
        self._p.poll(0.5)


def test_kill9_while_producing_acks_all_loses_nothing_acked(broker):
    """A confluent-kafka acks=all producer writes continuously; the broker is killed with
    SIGKILL at random moments 6 times. After each restart every acknowledged record is
    present exactly once, at its acknowledged offset, in order, and producing resumes."""
    topic = unique_topic("crash")
    partitions = 3
    create_topic_confluent(broker.bootstrap, topic, partitions)
    rng = random.Random(5)
    acked = {}  # value -> (partition, offset)
    for rnd in range(6):
        load = AckedLoad(broker.bootstrap, topic, partitions, f"r{rnd}-")
        # Resumption: the producer gets acks from the restarted broker.
        wait_for(lambda: len(load.acked()) > 200, 30, 0.02, f"acks in round {rnd}")
        time.sleep(rng.uniform(0.05, 1.0))
        broker.kill9()
        load.stop()
        for v, part, off in load.acked():
            acked[v] = (part, off)
        broker.restart()

        got = read_partitions(broker.bootstrap, topic, partitions)
        where = {}
        for part, msgs in got.items():
            offs = [o for o, _ in msgs]
            assert offs == list(range(offs[0], offs[0] + len(offs))), f"partition {part}: offsets not dense"
            for off, v in msgs:
                assert v not in where, f"value {v!r} present twice"
                where[v] = (part, off)
        missing = [v for v in acked if v not in where]
        assert not missing, f"round {rnd}: {len(missing)} acked records lost, e.g. {missing[:3]}"
        moved = [(v, acked[v], where[v]) for v in acked if where[v] != acked[v]]
        assert not moved, f"round {rnd}: acked records at other offsets: {moved[:3]}"
    assert len(acked) > 1000
    broker.assert_no_panic()


# ------------------------------------------------- acceptance 2: torn writes
def _damage_test(broker, damage, expect_kept):
    topic = unique_topic("torn")
    create_topic_confluent(broker.bootstrap, topic, 1)
    values = [f"v{i}".encode() * 20 for i in range(6)]
    offsets = produce_sync(broker.bootstrap, topic, values)
    assert offsets == list(range(6))
    broker.kill9()
    seg = segment_files(broker, topic)[-1]
    batches = batches_in(seg)
    assert len(batches) == 6
    dropped = damage(seg, batches)
    broker.restart()
    log = plain_log(broker)
    m = re.search(r"bytes_dropped=(\d+).*truncated invalid tail", log) or re.search(
        r"truncated invalid tail.*bytes_dropped=(\d+)", log
    )
    assert m, f"truncation not reported:\n{broker.log_tail(30)}"
    assert int(m.group(1)) == dropped
    got = read_partitions(broker.bootstrap, topic, 1)
    assert [v for _, v in got[0]] == values[:expect_kept]
    # the log continues right after the last valid batch
    more = produce_sync(broker.bootstrap, topic, [b"after"])
    assert more == [expect_kept]
    broker.assert_no_panic()


def test_torn_write_truncated_mid_batch(broker):
    def damage(seg, batches):
        pos, size = batches[-1]
        with open(seg, "r+b") as f:
            f.truncate(pos + size // 2)
        return size // 2

    _damage_test(broker, damage, 5)


def test_torn_write_garbage_appended(broker):
    def damage(seg, batches):
        with open(seg, "ab") as f:
            f.write(bytes(random.Random(1).randrange(256) for _ in range(333)))
        return 333

    _damage_test(broker, damage, 6)


def test_torn_write_flipped_byte(broker):
    def damage(seg, batches):
        pos, size = batches[3]
        data = bytearray(seg.read_bytes())
        data[pos + size - 3] ^= 0x40
        seg.write_bytes(bytes(data))
        return len(data) - pos

    _damage_test(broker, damage, 3)


# -------------------------------------------------------- clean restart path
def test_clean_shutdown_marker_skips_scan_and_is_removed(broker):
    topic = unique_topic("clean")
    create_topic_confluent(broker.bootstrap, topic, 2)
    produce_sync(broker.bootstrap, topic, [b"a", b"b"])
    assert broker.stop() == 0
    marker = broker.data_dir / "clean-shutdown"
    assert marker.exists()
    assert list((broker.data_dir / f"{topic}-0").glob("*.index"))
    broker.start()
    assert not marker.exists(), "marker must be removed before the broker accepts writes"
    assert re.search(r"clean_shutdown=true", plain_log(broker))
    assert (broker.data_dir / "recovery-point-offset-checkpoint").exists()
    got = read_partitions(broker.bootstrap, topic, 2)
    assert [v for _, v in got[0]] == [b"a", b"b"]
    assert produce_sync(broker.bootstrap, topic, [b"c"]) == [2]


def test_sigterm_under_load_loses_nothing_acked_and_shuts_down_clean(broker):
    """SIGTERM while a confluent-kafka acks=all producer writes continuously: the broker
    stops accepting, answers what its connections accepted, and exits 0 after flushing,
    checkpointing and writing the clean-shutdown marker. The restart replays nothing
    (clean, nothing scanned), and every acknowledged record is there at its offset."""
    topic = unique_topic("term")
    partitions = 3
    create_topic_confluent(broker.bootstrap, topic, partitions)
    load = AckedLoad(broker.bootstrap, topic, partitions, "t-")
    wait_for(lambda: len(load.acked()) > 2000, 30, 0.02, "acks before SIGTERM")
    assert broker.stop(signal.SIGTERM) == 0, broker.log_tail()
    load.stop()
    assert (broker.data_dir / "clean-shutdown").exists(), broker.log_tail()
    log = plain_log(broker)
    order = [
        log.find("stopped accepting"),
        log.find("stopping background work"),
        log.find("clean shutdown complete"),
    ]
    assert -1 not in order and order == sorted(order), broker.log_tail()
    broker.start()
    opened = [l for l in plain_log(broker).splitlines() if "opened partition logs" in l][-1]
    assert "clean_shutdown=true" in opened and "scanned_bytes=0" in opened, opened
    assert "replayed_batches=0" in opened, opened
    got = read_partitions(broker.bootstrap, topic, partitions)
    where = {v: (part, off) for part, msgs in got.items() for off, v in msgs}
    acked = load.acked()
    missing = [v for v, _, _ in acked if v not in where]
    moved = [(v, (part, off), where[v]) for v, part, off in acked if v in where and where[v] != (part, off)]
    assert not missing, f"{len(missing)} acked records lost, e.g. {missing[:3]}"
    assert not moved, f"acked records at other offsets: {moved[:3]}"
    broker.assert_no_panic()


@pytest.mark.parametrize("policy", ["interval", "never"])
def test_other_fsync_policies_serve_and_survive_kill9(broker_factory, policy):
    b = broker_factory(extra_args=("--fsync", policy))
    topic = unique_topic(policy)
    create_topic_confluent(b.bootstrap, topic, 1, config={"flush.messages": "5"})
    offsets = produce_sync(b.bootstrap, topic, [f"m{i}".encode() for i in range(20)])
    assert offsets == list(range(20))
    # kill -9 keeps the page cache: everything written is still there.
    b.kill9()
    b.restart()
    got = read_partitions(b.bootstrap, topic, 1)
    assert len(got[0]) == 20


# ---------------------------------------------------------------- retention
def test_retention_ms_deletes_old_segments_and_consumers_reset(broker_factory, tmp_path):
    cfg = write_config(tmp_path, '"log.retention.check.interval.ms" = 200\n')
    b = broker_factory(extra_args=("--config", str(cfg)))
    topic = unique_topic("ret")
    create_topic_confluent(b.bootstrap, topic, 1, config={"segment.ms": "100", "retention.ms": "1500"})
    # Batches 150 ms apart, so each lands in its own segment (segment.ms rolls).
    for i in range(6):
        produce_sync(b.bootstrap, topic, [f"old{i}".encode()])
        time.sleep(0.15)
    assert len(segment_files(b, topic)) >= 5
    wait_for(lambda: list_offsets(b.bootstrap, topic)[0] == 6, 20, 0.2, "log start offset 6")
    assert re.search(r"retention deleted old segments", plain_log(b))
    assert len(segment_files(b, topic)) == 1
    produce_sync(b.bootstrap, topic, [b"new"])
    # Below the log start offset: OFFSET_OUT_OF_RANGE, surfaced with auto.offset.reset=error.
    c = consumer(b.bootstrap, **{"auto.offset.reset": "error"})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        err = None
        deadline = time.monotonic() + 20
        while err is None and time.monotonic() < deadline:
            for m in c.consume(10, 0.5):
                if m.error() and m.error().code() != KafkaError._PARTITION_EOF:
                    err = m.error()
        assert err is not None and err.code() in (
            KafkaError.OFFSET_OUT_OF_RANGE,
            KafkaError._AUTO_OFFSET_RESET,
        ), err
    finally:
        c.close()
    # ... and auto.offset.reset=earliest moves to the log start offset.
    c = consumer(b.bootstrap)
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got = []
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            got = [m for m in c.consume(10, 0.5) if not m.error()]
        assert [(m.offset(), m.value()) for m in got] == [(6, b"new")]
    finally:
        c.close()


def test_retention_bytes_and_live_alter(broker_factory, tmp_path):
    cfg = write_config(tmp_path, '"log.retention.check.interval.ms" = 200\n')
    b = broker_factory(extra_args=("--config", str(cfg)))
    topic = unique_topic("retb")
    create_topic_confluent(b.bootstrap, topic, 1, config={"segment.bytes": "1000"})
    for i in range(10):
        produce_sync(b.bootstrap, topic, [bytes([65 + i]) * 600])
    assert len(segment_files(b, topic)) == 10
    assert list_offsets(b.bootstrap, topic)[0] == 0
    # Applied live by IncrementalAlterConfigs: keep (at least) 3 segments' worth.
    seg_size = segment_files(b, topic)[0].stat().st_size
    admin = AdminClient(confluent_common(b.bootstrap))
    res = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[ConfigEntry("retention.bytes", str(3 * seg_size), incremental_operation=AlterConfigOpType.SET)],
    )
    admin.incremental_alter_configs([res])[res].result(30)
    wait_for(lambda: list_offsets(b.bootstrap, topic)[0] == 7, 20, 0.2, "log start offset 7")
    assert len(segment_files(b, topic)) == 3


# ------------------------------------------------------------ topic configs
def test_storage_configs_sources_and_persistence(broker_factory, tmp_path):
    cfg = write_config(tmp_path, '"log.retention.ms" = 3600000\n"log.roll.ms" = 60000\n')
    b = broker_factory(extra_args=("--config", str(cfg)))
    topic = unique_topic("cfg")
    create_topic_confluent(b.bootstrap, topic, 1, config={"cleanup.policy": "compact,delete"})
    admin = AdminClient(confluent_common(b.bootstrap))
    res = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("segment.ms", "120000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("min.cleanable.dirty.ratio", "0.2", incremental_operation=AlterConfigOpType.SET),
        ],
    )
    admin.incremental_alter_configs([res])[res].result(30)

    def describe(a):
        r = ConfigResource(ResourceType.TOPIC, topic)
        return a.describe_configs([r])[r].result(30)

    for _ in range(2):
        d = describe(admin)
        assert d["retention.ms"].value == "3600000"
        assert d["retention.ms"].source == ConfigSource.STATIC_BROKER_CONFIG.value
        assert d["segment.ms"].value == "120000"
        assert d["segment.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
        assert d["cleanup.policy"].value == "compact,delete"
        assert d["min.cleanable.dirty.ratio"].value == "0.2"
        assert d["delete.retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
        # persisted across restart
        b.restart()
        admin = AdminClient(confluent_common(b.bootstrap))
        wait_for_topic_confluent(admin, topic, 1)


# --------------------------------------------------------------- compaction
class KeyedWrites:
    """Records written to partition 0 of a compacted topic and what the broker acknowledged:
    `latest` maps each key to the (offset, value) of its last acknowledged record."""

    def __init__(self, p: Producer, topic: str):
        self.p, self.topic = p, topic
        self.latest: dict = {}
        self.errors: list = []
        self.tombstoned: list = []

    def cb(self, err, msg):
        if err is not None:
            self.errors.append(err)
        else:
            self.latest[msg.key()] = (msg.offset(), msg.value())

    def write(self, n: int, keys: list, value_of) -> None:
        """`n` records cycling over `keys`, then a tombstone for every tenth key."""
        for i in range(n):
            while True:
                try:
                    self.p.produce(self.topic, key=keys[i % len(keys)], value=value_of(i),
                                   partition=0, on_delivery=self.cb)
                    break
                except BufferError:
                    self.p.poll(0.05)
            if i % 1000 == 0:
                self.p.poll(0)
        assert self.p.flush(60) == 0 and not self.errors
        self.tombstoned = keys[::10]
        for k in self.tombstoned:
            self.p.produce(self.topic, key=k, value=None, partition=0, on_delivery=self.cb)
        assert self.p.flush(30) == 0 and not self.errors

    def converged(self, bootstrap: str, keys: list, expect_tombstones: bool) -> bool:
        """Every key holds exactly its latest record at its offset (tombstoned keys: the
        tombstone, or nothing once tombstones are gone)."""
        seen = compacted_view(bootstrap, self.topic, "read_uncommitted")
        for k in keys:
            keep = expect_tombstones or k not in self.tombstoned
            if seen.get(k, []) != ([self.latest[k]] if keep else []):
                return False
        return True


def test_compaction_converges_keeps_offsets_and_drops_tombstones(broker_factory, tmp_path):
    """100,000 records over 1,000 keys: the compacted topic converges to the latest value
    per key at its original offset; tombstoned keys vanish after delete.retention.ms."""
    cfg = write_config(tmp_path, '"log.cleaner.backoff.ms" = 200\n')
    b = broker_factory(extra_args=("--config", str(cfg)))
    topic = unique_topic("compact")
    create_topic_confluent(
        b.bootstrap,
        topic,
        1,
        config={
            "cleanup.policy": "compact",
            "segment.bytes": "200000",
            "min.cleanable.dirty.ratio": "0.01",
            "delete.retention.ms": "3000",
        },
    )
    p = producer(b.bootstrap, **{"linger.ms": 5, "batch.num.messages": 1000})
    keys = [f"k{k:04d}".encode() for k in range(1_000)]
    w = KeyedWrites(p, topic)
    w.write(100_000, keys, lambda i: f"v{i}".encode())

    def pad(count=30):
        for _ in range(count):
            p.produce(topic, key=b"pad", value=b"x" * 8000, partition=0, on_delivery=w.cb)
        assert p.flush(30) == 0 and not w.errors

    pad()  # seals the segments holding the records above

    def check(expect_tombstones: bool):
        return w.converged(b.bootstrap, keys, expect_tombstones)

    wait_for(lambda: check(expect_tombstones=True), 60, 1.0, "compaction to converge")
    assert re.search(r"compacted log", plain_log(b))
    # After delete.retention.ms, a later pass (the log must be dirty again) drops the
    # tombstones themselves.
    time.sleep(3.2)
    pad()
    wait_for(lambda: check(expect_tombstones=False), 60, 1.0, "tombstones to vanish")
    b.assert_no_panic()


def segment_batches(data_dir: Path, topic: str, partition: int = 0):
    """(file, base offset, codec, records count) of every batch in the partition's segments."""
    out = []
    for seg in sorted((data_dir / f"{topic}-{partition}").glob("*.log")):
        data = seg.read_bytes()
        pos = 0
        while pos + 61 <= len(data):
            base, length = struct.unpack_from(">qi", data, pos)
            (attributes,) = struct.unpack_from(">h", data, pos + 21)
            (count,) = struct.unpack_from(">i", data, pos + 57)
            out.append((seg.name, base, attributes & 0x7, count))
            pos += 12 + length
    return out


@pytest.mark.parametrize("codec", ["lz4", "zstd", "gzip", "snappy"])
def test_compaction_of_compressed_batches(broker_factory, tmp_path, codec):
    """20,000 records over 200 keys produced with compression: the compacted topic converges
    to the latest value per key at its original offset, the cleaned batches keep the
    producer's codec, and tombstones vanish after delete.retention.ms."""
    codec_ids = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
    cfg = write_config(tmp_path, '"log.cleaner.backoff.ms" = 200\n')
    b = broker_factory(extra_args=("--config", str(cfg)))
    topic = unique_topic(f"compact-{codec}")
    create_topic_confluent(
        b.bootstrap,
        topic,
        1,
        config={
            "cleanup.policy": "compact",
            "segment.bytes": "30000",
            "segment.ms": "500",
            "min.cleanable.dirty.ratio": "0.01",
            "delete.retention.ms": "2000",
        },
    )
    p = producer(b.bootstrap, **{"linger.ms": 5, "batch.num.messages": 500, "compression.type": codec})
    keys = [f"k{k:03d}".encode() for k in range(200)]
    w = KeyedWrites(p, topic)
    w.write(20_000, keys, lambda i: f"value-{i}-{'y' * (i % 50)}".encode())
    rng = random.Random(7)

    def pad(count=8):
        # Incompressible values so the pads fill (and roll) segments whatever the codec.
        for _ in range(count):
            p.produce(topic, key=b"pad", value=rng.randbytes(8000), partition=0, on_delivery=w.cb)
            assert p.flush(30) == 0 and not w.errors

    pad()  # seals the segments holding the records above

    def check(expect_tombstones: bool):
        return w.converged(b.bootstrap, keys, expect_tombstones)

    wait_for(lambda: check(expect_tombstones=True), 60, 1.0, "compaction to converge")
    assert re.search(r"compacted log", plain_log(b))
    # The cleaned batches that still hold records are still compressed with the codec.
    batches = segment_batches(b.data_dir, topic)
    assert {c for (_, _, c, n) in batches if n > 0} <= {0, codec_ids[codec]}
    assert any(c == codec_ids[codec] and n > 0 for (_, _, c, n) in batches)
    assert all(c == 0 for (_, _, c, n) in batches if n == 0)
    offsets = [base for (_, base, _, _) in batches]
    assert offsets == sorted(offsets) and offsets[0] == 0
    # After delete.retention.ms, a later pass (the log must be dirty again) drops the
    # tombstones themselves.
    time.sleep(2.2)
    pad()
    wait_for(lambda: check(expect_tombstones=False), 60, 1.0, "tombstones to vanish")
    assert "kept verbatim" not in plain_log(b)
    b.assert_no_panic()


def compacted_view(bootstrap: str, topic: str, isolation: str) -> dict:
    """key -> [(offset, value)] of every record but the pads, read from the beginning to
    the end (the LSO for read_committed)."""
    c = consumer(bootstrap, **{"isolation.level": isolation})
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        seen = defaultdict(list)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            eof = False
            for m in c.consume(5000, 0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof = True
                        continue
                    raise KafkaException(m.error())
                if m.key() != b"pad":
                    seen[m.key()].append((m.offset(), m.value()))
            if eof:
                return dict(seen)
        raise TimeoutError("no end of partition")
    finally:
        c.close()


def test_compaction_of_transactional_batches(broker_factory, tmp_path):
    """Transactions on a compacted topic (lz4): aborted records vanish, committed ones
    are compacted like others, and an open transaction stops the cleaner at its first
    offset until it commits."""
    cfg = write_config(tmp_path, '"log.cleaner.backoff.ms" = 200\n')
    b = broker_factory(extra_args=("--config", str(cfg)))
    topic = unique_topic("compact-txn")
    create_topic_confluent(
        b.bootstrap,
        topic,
        1,
        config={"cleanup.policy": "compact", "segment.bytes": "20000", "min.cleanable.dirty.ratio": "0.01"},
    )
    tp = Producer(
        {
            **confluent_common(b.bootstrap),
            "transactional.id": unique_topic("txn"),
            "linger.ms": 5,
            "compression.type": "lz4",
        }
    )
    tp.init_transactions(30)
    plain = producer(b.bootstrap)
    latest = {}  # key -> (offset, value) of the latest committed record
    errors = []

    def send(p, values: dict) -> dict:
        done = {}

        def cb(err, msg):
            if err is not None:
                errors.append(err)
            else:
                done[msg.key()] = (msg.offset(), msg.value())

        for k, v in values.items():
            p.produce(topic, key=k, value=v, partition=0, on_delivery=cb)
        assert p.flush(30) == 0 and not errors
        return done

    def txn(prefix: str, keys, commit: bool):
        tp.begin_transaction()
        done = send(tp, {f"k{k:03d}".encode(): f"{prefix}-{k}".encode() for k in keys})
        if commit:
            tp.commit_transaction(30)
            latest.update(done)
        else:
            tp.abort_transaction(30)

    rng = random.Random(3)

    def pad(count=6):
        for _ in range(count):
            send(plain, {b"pad": rng.randbytes(8000)})

    txn("c1", range(200), True)
    txn("ab", range(200), False)
    txn("c3", range(100), True)
    txn("ab2", range(150, 200), False)
    pad()
    expected = {k: [v] for k, v in latest.items()}
    wait_for(lambda: compacted_view(b.bootstrap, topic, "read_uncommitted") == expected, 60, 1.0,
             "aborted records to vanish and committed ones to be compacted")
    assert compacted_view(b.bootstrap, topic, "read_committed") == expected

    # An open transaction: nothing from its first offset on is cleaned.
    tp.begin_transaction()
    opened = send(tp, {f"k{k:03d}".encode(): f"open-{k}".encode() for k in range(50)})
    after = send(plain, {f"k{k:03d}".encode(): f"plain-{k}".encode() for k in range(100, 150)})
    pad()
    time.sleep(2)  # several cleaner passes
    view = compacted_view(b.bootstrap, topic, "read_uncommitted")
    for k in range(200):
        key = f"k{k:03d}".encode()
        want = [latest[key]]
        if k < 50:
            want.append(opened[key])
        elif 100 <= k < 150:
            want.append(after[key])
        assert view[key] == want, key
    assert compacted_view(b.bootstrap, topic, "read_committed") == {
        k: [v] for k, v in latest.items()
    }
    tp.commit_transaction(30)
    latest.update(opened)
    latest.update(after)
    pad()
    expected = {k: [v] for k, v in latest.items()}
    wait_for(lambda: compacted_view(b.bootstrap, topic, "read_uncommitted") == expected, 60, 1.0,
             "the committed transaction to be compacted")
    assert compacted_view(b.bootstrap, topic, "read_committed") == expected
    assert "kept verbatim" not in plain_log(b)
    b.assert_no_panic()
