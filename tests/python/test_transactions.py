"""Transactions with confluent-kafka (issue 7, acceptance points 2-6): an exactly-once
consume-transform-produce pipeline whose processor is killed -9 repeatedly, aborted
transactions hidden from read_committed, the last stable offset, fencing, the transaction
timeout. (Transactional vs plain produce throughput is a benchmark: scripts/bench_txn.py.)"""
from __future__ import annotations

import collections
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from gregor_testlib import confluent_common, create_topic_confluent, unique_topic, wait_for
from test_hostile_batches import batch, produce_error, record
from test_raw_protocol import header_v1, header_v2, kstring, roundtrip, uvarint

HERE = Path(__file__).resolve().parent


def txn_producer(bootstrap: str, txn_id: str, **extra) -> Producer:
    conf = {**confluent_common(bootstrap), "transactional.id": txn_id, "linger.ms": 5}
    conf.update(extra)
    p = Producer(conf)
    p.init_transactions(30)
    return p


def read_all(bootstrap: str, topic: str, partitions: int, isolation: str,
             expect: int | None = None, idle: float = 2.0, timeout: float = 60) -> list:
    """Every message of `topic` from the beginning, with `isolation.level`; stops after
    `expect` messages, or after `idle` seconds without one."""
    c = Consumer({
        **confluent_common(bootstrap),
        "group.id": unique_topic("reader"),
        "isolation.level": isolation,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = c.consume(num_messages=10_000, timeout=0.2)
            good = [m for m in msgs if m.error() is None]
            if good:
                out.extend(good)
                last = time.monotonic()
            if expect is not None and len(out) >= expect:
                # Linger a little to catch anything extra (duplicates).
                if time.monotonic() - last > 0.5:
                    break
            elif expect is None and time.monotonic() - last > idle:
                break
    finally:
        c.close()
    return out


def values(msgs) -> list[bytes]:
    return [m.value() for m in msgs]


# ----------------------------------------------------------------- aborts, LSO

def test_aborted_transactions_hidden_from_read_committed(broker):
    topic = unique_topic("txn-abort")
    create_topic_confluent(broker.bootstrap, topic, 2)
    p = txn_producer(broker.bootstrap, unique_topic("tx"))
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, value=b"c1-%d" % i, partition=i % 2)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, value=b"ab-%d" % i, partition=i % 2)
    p.flush()
    p.abort_transaction(30)
    p.begin_transaction()
    for i in range(10):
        p.produce(topic, value=b"c2-%d" % i, partition=i % 2)
    p.commit_transaction(30)
    committed = sorted([b"c1-%d" % i for i in range(10)] + [b"c2-%d" % i for i in range(10)])
    aborted = sorted(b"ab-%d" % i for i in range(10))

    def check():
        rc = values(read_all(broker.bootstrap, topic, 2, "read_committed", expect=20))
        assert sorted(rc) == committed
        ru = values(read_all(broker.bootstrap, topic, 2, "read_uncommitted", expect=30))
        assert sorted(ru) == sorted(committed + aborted)

    check()
    # The aborted-transaction index and producer state are rebuilt from the log.
    broker.kill9()
    broker.restart()
    check()


def test_aborted_transaction_in_an_old_segment_stays_hidden_across_restarts(broker):
    """The aborted transaction lies in an early segment; later segments (and producer
    snapshots) follow. read_committed hides it after kill -9 (producer state from the newest
    snapshot + the tail; the aborted entry from that segment's .txnindex) and after a clean
    restart (nothing replayed)."""
    from test_idempotence import producer_state_loads

    topic = unique_topic("txn-old-abort")
    create_topic_confluent(broker.bootstrap, topic, 1, config={"segment.bytes": "16384"})
    p = txn_producer(broker.bootstrap, unique_topic("tx"))
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=b"c0-%d" % i, partition=0)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(5):
        p.produce(topic, value=b"ab-%d" % i, partition=0)
    p.flush()
    p.abort_transaction(30)
    committed = [b"c0-%d" % i for i in range(5)]
    for t in range(40):
        p.begin_transaction()
        for i in range(3):
            v = b"c%d-%d-" % (t + 1, i) + b"y" * 1000
            p.produce(topic, value=v, partition=0)
            committed.append(v)
        p.commit_transaction(30)
    pdir = broker.data_dir / f"{topic}-0"
    assert len(list(pdir.glob("*.log"))) > 4
    txnindex = list(pdir.glob("*.txnindex"))
    assert len(txnindex) == 1 and txnindex[0].stat().st_size == 34
    first_segment = sorted(pdir.glob("*.log"))[0].name.split(".")[0]
    assert txnindex[0].name.split(".")[0] == first_segment

    def check():
        rc = values(read_all(broker.bootstrap, topic, 1, "read_committed", expect=len(committed)))
        assert rc == committed
        ru = values(read_all(broker.bootstrap, topic, 1, "read_uncommitted",
                             expect=len(committed) + 5))
        assert len(ru) == len(committed) + 5

    check()
    wait_for(lambda: list(pdir.glob("*.snapshot")), what="a roll snapshot")
    broker.kill9()
    broker.start()
    snap_offset, replayed = producer_state_loads(broker, topic)[-1]
    assert snap_offset > 0 and replayed < 40, (snap_offset, replayed)
    check()
    broker.restart()
    assert producer_state_loads(broker, topic)[-1][1] == 0
    check()
    assert len(list(pdir.glob("*.txnindex"))) == 1


def test_read_committed_stops_at_the_last_stable_offset(broker):
    topic = unique_topic("txn-lso")
    create_topic_confluent(broker.bootstrap, topic, 1)
    plain = Producer(confluent_common(broker.bootstrap))
    for i in range(5):
        plain.produce(topic, value=b"before-%d" % i)
    plain.flush(30)
    open_txn = txn_producer(broker.bootstrap, unique_topic("tx"))
    open_txn.begin_transaction()
    for i in range(5):
        open_txn.produce(topic, value=b"open-%d" % i)
    open_txn.flush(30)
    # Committed data after the open transaction's first offset must wait for it.
    for i in range(5):
        plain.produce(topic, value=b"after-%d" % i)
    plain.flush(30)

    rc = values(read_all(broker.bootstrap, topic, 1, "read_committed", idle=2.0))
    assert rc == [b"before-%d" % i for i in range(5)], rc
    ru = values(read_all(broker.bootstrap, topic, 1, "read_uncommitted", expect=15))
    assert len(ru) == 15

    # ListOffsets latest: the LSO (the open transaction's first offset) for read_committed,
    # the high watermark for read_uncommitted.
    for isolation, want in (("read_committed", 5), ("read_uncommitted", 15)):
        c = Consumer({**confluent_common(broker.bootstrap), "group.id": unique_topic("g"),
                      "isolation.level": isolation})
        _lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
        c.close()
        assert hi == want, (isolation, hi)

    open_txn.commit_transaction(30)
    rc = values(read_all(broker.bootstrap, topic, 1, "read_committed", expect=15))
    assert rc == ([b"before-%d" % i for i in range(5)] + [b"open-%d" % i for i in range(5)]
                  + [b"after-%d" % i for i in range(5)])


# ---------------------------------------------------------------------- fencing

def test_second_producer_fences_the_first(broker):
    topic = unique_topic("txn-fence")
    create_topic_confluent(broker.bootstrap, topic, 1)
    txn_id = unique_topic("tx")
    first = txn_producer(broker.bootstrap, txn_id)
    first.begin_transaction()
    first.produce(topic, value=b"zombie-1")
    first.flush(30)
    second = txn_producer(broker.bootstrap, txn_id)  # fences `first`, aborts its txn
    second.begin_transaction()
    second.produce(topic, value=b"second")
    second.commit_transaction(30)

    with pytest.raises(KafkaException) as err:
        first.produce(topic, value=b"zombie-2")
        first.commit_transaction(30)
    kerr = err.value.args[0]
    assert kerr.fatal() or kerr.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                          KafkaError.INVALID_PRODUCER_EPOCH), kerr
    # Its later writes are rejected too.
    with pytest.raises(KafkaException):
        first.begin_transaction()
        first.produce(topic, value=b"zombie-3")
        first.commit_transaction(10)

    rc = values(read_all(broker.bootstrap, topic, 1, "read_committed", idle=2.0))
    assert rc == [b"second"]


# ---------------------------------------------------------------------- timeout

def test_transaction_left_open_is_aborted_after_its_timeout(broker):
    topic = unique_topic("txn-timeout")
    create_topic_confluent(broker.bootstrap, topic, 1)
    hung = txn_producer(broker.bootstrap, unique_topic("tx"),
                        **{"transaction.timeout.ms": 2000, "socket.timeout.ms": 2000})
    hung.begin_transaction()
    for i in range(3):
        hung.produce(topic, value=b"hung-%d" % i)
    hung.flush(30)
    plain = Producer(confluent_common(broker.bootstrap))
    plain.produce(topic, value=b"later")
    plain.flush(30)
    # Until the broker aborts it, the open transaction holds back read_committed readers.
    started = time.monotonic()
    rc = []
    while time.monotonic() - started < 15 and rc != [b"later"]:
        rc = values(read_all(broker.bootstrap, topic, 1, "read_committed", idle=0.5))
    assert rc == [b"later"], rc
    assert time.monotonic() - started < 10
    # The producer was fenced by the abort: its commit fails.
    with pytest.raises(KafkaException):
        hung.commit_transaction(10)
    assert sorted(values(read_all(broker.bootstrap, topic, 1, "read_uncommitted", expect=4))) == \
        sorted([b"hung-0", b"hung-1", b"hung-2", b"later"])


# ------------------------------------------------------------ exactly-once pipeline

def test_exactly_once_pipeline_survives_kill9_of_the_processor(broker):
    n, partitions = 100_000, 3
    src, dst = unique_topic("in"), unique_topic("out")
    create_topic_confluent(broker.bootstrap, src, partitions)
    create_topic_confluent(broker.bootstrap, dst, partitions)
    p = Producer({**confluent_common(broker.bootstrap), "linger.ms": 20,
                  "enable.idempotence": True})
    for i in range(n):
        p.produce(src, key=b"%d" % i, value=b"%d" % i, partition=i % partitions)
        if i % 10_000 == 0:
            p.poll(0)
    assert p.flush(60) == 0

    group, txn_id = unique_topic("eos"), unique_topic("eos-tx")
    args = [sys.executable, str(HERE / "txn_processor.py"), broker.bootstrap, src, dst, group,
            txn_id, str(partitions), "200"]
    logs = []

    def spawn():
        log = open(broker.base_dir / f"processor-{len(logs)}.log", "wb")
        logs.append(log.name)
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def committed_total() -> int:
        c = Consumer({**confluent_common(broker.bootstrap), "group.id": group,
                      "isolation.level": "read_committed"})
        try:
            got = c.committed([TopicPartition(src, i) for i in range(partitions)], timeout=10)
            return sum(max(tp.offset, 0) for tp in got)
        except KafkaException:
            return -1
        finally:
            c.close()

    def wait_started(proc, log_name, timeout=60):
        # Kill only a processor that is working (has committed at least one transaction),
        # at a random moment after that.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if b"committed" in Path(log_name).read_bytes():
                return
            time.sleep(0.05)

    rng = random.Random(7)
    proc = spawn()
    kills = 0
    try:
        while kills < 6:
            wait_started(proc, logs[-1])
            time.sleep(rng.uniform(0.0, 1.0))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
            proc = spawn()
        deadline = time.monotonic() + 180
        while committed_total() < n:
            assert time.monotonic() < deadline, f"pipeline did not finish; logs {logs}"
            if proc.poll() is not None:
                proc = spawn()
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert kills >= 5
    out = read_all(broker.bootstrap, dst, partitions, "read_committed", expect=n, timeout=120)
    counts = collections.Counter(values(out))
    dups = [v for v, c in counts.items() if c > 1]
    assert not dups, f"{len(dups)} duplicated, e.g. {dups[:5]}"
    missing = [i for i in range(n) if counts.get(b"out-%d" % i, 0) == 0]
    assert not missing, f"{len(missing)} missing, e.g. {missing[:5]}"
    assert len(out) == n
    # Aborted work of the killed processors is in the log but invisible.
    raw = read_all(broker.bootstrap, dst, partitions, "read_uncommitted", idle=2.0, timeout=120)
    progress = []
    for name in logs:
        lines = Path(name).read_text(errors="replace").split("\n")
        done = [ln for ln in lines if ln.startswith("committed")]
        progress.append(done[-1].split()[1] if done else "0")
    print(f"pipeline: {n} records, {kills} kills, records committed per incarnation {progress}, "
          f"{len(raw) - n} aborted records hidden from read_committed")


# -------------------------------------------------- ListTransactions, DescribeProducers

class _Reader:
    """Just enough of Kafka's flexible (compact) encoding to read two admin responses."""

    def __init__(self, b: bytes):
        self.b, self.pos = b, 0

    def fixed(self, fmt: str):
        (v,) = struct.unpack_from(fmt, self.b, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def uvarint(self) -> int:
        shift = n = 0
        while True:
            byte = self.b[self.pos]
            self.pos += 1
            n |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return n
            shift += 7

    def cstring(self):
        n = self.uvarint() - 1
        if n < 0:
            return None
        s = self.b[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def tags(self):
        for _ in range(self.uvarint()):
            self.uvarint()
            self.pos += self.uvarint()

    def array(self, item):
        return [item() for _ in range(self.uvarint() - 1)]


def _cstr(s: str) -> bytes:
    return uvarint(len(s.encode()) + 1) + s.encode()


def test_list_transactions_and_describe_producers(broker):
    topic = unique_topic("txn-admin")
    create_topic_confluent(broker.bootstrap, topic, 1)
    txn_id = unique_topic("tx-admin")
    p = txn_producer(broker.bootstrap, txn_id)
    p.begin_transaction()
    for i in range(3):
        p.produce(topic, value=b"v%d" % i)
    p.flush(30)

    # ListTransactions v0 filtered on Ongoing.
    body = uvarint(2) + _cstr("Ongoing") + uvarint(1) + uvarint(0)
    r = _Reader(roundtrip(broker, header_v2(66, 0, 7) + body))
    assert r.fixed(">i") == 7
    r.tags()
    r.fixed(">i")
    assert r.fixed(">h") == 0
    r.array(r.cstring)

    def listed():
        t = (r.cstring(), r.fixed(">q"), r.cstring())
        r.tags()
        return t
    states = r.array(listed)
    ours = [s for s in states if s[0] == txn_id]
    assert len(ours) == 1 and ours[0][2] == "Ongoing", states
    pid = ours[0][1]

    # DescribeProducers v0: the producer, with its open transaction's first offset.
    (prod,) = [x for x in describe_producers(broker, topic, 1, corr=8)[0] if x["pid"] == pid]
    assert prod["txn_start"] == 0 and prod["last_seq"] >= 0, prod
    p.commit_transaction(30)


def describe_producers(broker, topic: str, partitions: int, corr: int = 21) -> dict[int, list[dict]]:
    """DescribeProducers v0: {partition: [producer state]} for `topic`."""
    body = (uvarint(2) + _cstr(topic) + uvarint(partitions + 1)
            + b"".join(struct.pack(">i", i) for i in range(partitions)) + uvarint(0) + uvarint(0))
    r = _Reader(roundtrip(broker, header_v2(61, 0, corr) + body))
    assert r.fixed(">i") == corr
    r.tags()
    r.fixed(">i")  # throttle

    def producer():
        v = dict(pid=r.fixed(">q"), epoch=r.fixed(">i"), last_seq=r.fixed(">i"),
                 ts=r.fixed(">q"), coord_epoch=r.fixed(">i"), txn_start=r.fixed(">q"))
        r.tags()
        return v

    def partition():
        v = dict(index=r.fixed(">i"), error=r.fixed(">h"), msg=r.cstring(),
                 producers=r.array(producer))
        r.tags()
        return v

    def topic_resp():
        v = (r.cstring(), r.array(partition))
        r.tags()
        return v

    (name, parts), = r.array(topic_resp)
    assert name == topic
    out = {}
    for p in parts:
        assert p["error"] == 0, p
        out[p["index"]] = p["producers"]
    return out



# ------------------------------------------------- transactional.id.expiration.ms

COORDINATOR_LOAD_IN_PROGRESS = 14
TRANSACTIONAL_ID_NOT_FOUND = 105


def list_transactions(broker, corr: int = 11) -> tuple[int, dict]:
    """ListTransactions v0, no filters: (error code, {transactional id: (producer id,
    state)})."""
    body = uvarint(1) + uvarint(1) + uvarint(0)
    r = _Reader(roundtrip(broker, header_v2(66, 0, corr) + body))
    assert r.fixed(">i") == corr
    r.tags()
    r.fixed(">i")  # throttle
    error = r.fixed(">h")
    r.array(r.cstring)

    def listed():
        t = (r.cstring(), r.fixed(">q"), r.cstring())
        r.tags()
        return t
    return error, {tid: (pid, state) for tid, pid, state in r.array(listed)}


def describe_transaction(broker, txn_id: str, corr: int = 12) -> dict:
    """DescribeTransactions v0 of one id: error code, state, producer id and epoch."""
    body = uvarint(2) + _cstr(txn_id) + uvarint(0)
    r = _Reader(roundtrip(broker, header_v2(65, 0, corr) + body))
    assert r.fixed(">i") == corr
    r.tags()
    r.fixed(">i")  # throttle

    def state():
        v = dict(error=r.fixed(">h"), id=r.cstring(), state=r.cstring(),
                 timeout=r.fixed(">i"), start=r.fixed(">q"), pid=r.fixed(">q"),
                 epoch=r.fixed(">h"))

        def topic():
            t = (r.cstring(), r.array(lambda: r.fixed(">i")))
            r.tags()
            return t
        v["topics"] = r.array(topic)
        r.tags()
        return v
    (v,) = r.array(state)
    assert v["id"] == txn_id
    return v


def describe_when_loaded(broker, txn_id: str) -> dict:
    """DescribeTransactions once the coordinator has replayed __transaction_state."""
    return wait_for(
        lambda: (lambda v: v if v["error"] != COORDINATOR_LOAD_IN_PROGRESS else None)(
            describe_transaction(broker, txn_id)),
        timeout=30, what="the transaction coordinator to load")


def test_idle_transactional_id_expires_and_stays_gone_across_restarts(broker_factory, tmp_path):
    cfg = tmp_path / "gregor.toml"
    cfg.write_text('"transactional.id.expiration.ms" = 2000\n'
                   '"transaction.remove.expired.transaction.cleanup.interval.ms" = 200\n'
                   '"transaction.abort.timed.out.transaction.cleanup.interval.ms" = 100\n')
    b = broker_factory(extra_args=("--config", str(cfg)))
    topic = unique_topic("txn-expire")
    create_topic_confluent(b.bootstrap, topic, 1)
    txn_id, open_id = unique_topic("tx-expire"), unique_topic("tx-open")

    p = txn_producer(b.bootstrap, txn_id)
    p.begin_transaction()
    p.produce(topic, value=b"first")
    p.commit_transaction(30)
    committed_at = time.monotonic()
    del p
    # A transaction left open (long timeout) is never expired, however idle its id.
    hung = txn_producer(b.bootstrap, open_id, **{"transaction.timeout.ms": 120_000})
    hung.begin_transaction()
    hung.produce(topic, value=b"open")
    hung.flush(30)

    error, listed = list_transactions(b)
    assert error == 0 and listed[txn_id][1] == "CompleteCommit", listed
    old_pid = listed[txn_id][0]
    wait_for(lambda: txn_id not in list_transactions(b)[1], timeout=30,
             what=f"{txn_id} to expire")
    # Not before its expiration (2 s after the commit).
    assert time.monotonic() - committed_at >= 1.5
    assert describe_transaction(b, txn_id)["error"] == TRANSACTIONAL_ID_NOT_FOUND
    # Well past the expiration, the open transaction's id is still there.
    time.sleep(0.5)
    error, listed = list_transactions(b)
    assert listed[open_id][1] == "Ongoing", listed
    assert "removed transactional ids idle for transactional.id.expiration.ms" in b.log_text()

    hung.abort_transaction(30)
    del hung

    # From now on ids do not expire: what the restarts show comes from the tombstone.
    cfg.write_text('"transactional.id.expiration.ms" = 3600000\n')
    b.restart()
    assert describe_when_loaded(b, txn_id)["error"] == TRANSACTIONAL_ID_NOT_FOUND
    b.kill9()
    b.restart()
    assert describe_when_loaded(b, txn_id)["error"] == TRANSACTIONAL_ID_NOT_FOUND
    assert txn_id not in list_transactions(b)[1]

    # The id works again, as a new one: a new producer id at epoch 0.
    p = txn_producer(b.bootstrap, txn_id)
    p.begin_transaction()
    p.produce(topic, value=b"second")
    p.commit_transaction(30)
    v = describe_transaction(b, txn_id)
    assert (v["error"], v["state"], v["epoch"]) == (0, "CompleteCommit", 0), v
    assert v["pid"] != old_pid
    rc = values(read_all(b.bootstrap, topic, 1, "read_committed", idle=1.0, timeout=30))
    assert rc == [b"first", b"second"], rc


# ------------------------------------------------------------- broker kill -9

def test_transaction_state_and_offsets_survive_broker_kill9(broker):
    src, dst = unique_topic("in"), unique_topic("out")
    create_topic_confluent(broker.bootstrap, src, 1)
    create_topic_confluent(broker.bootstrap, dst, 1)
    group = unique_topic("g")
    cons = Consumer({**confluent_common(broker.bootstrap), "group.id": group,
                     "enable.auto.commit": False})
    meta = cons.consumer_group_metadata()
    cons.close()
    p = txn_producer(broker.bootstrap, unique_topic("tx"))
    p.begin_transaction()
    p.produce(dst, value=b"committed")
    p.send_offsets_to_transaction([TopicPartition(src, 0, 42)], meta, 30)
    p.commit_transaction(30)
    # A second transaction is left open (5 s timeout) when the broker dies.
    hung = txn_producer(broker.bootstrap, unique_topic("tx"),
                        **{"transaction.timeout.ms": 5000, "socket.timeout.ms": 5000})
    hung.begin_transaction()
    hung.produce(dst, value=b"open")
    hung.send_offsets_to_transaction([TopicPartition(src, 0, 99)], meta, 30)
    hung.flush(30)
    broker.kill9()
    broker.restart()
    started = time.monotonic()

    # The committed transaction's offset is visible; the open one's is not.
    c = Consumer({**confluent_common(broker.bootstrap), "group.id": group,
                  "isolation.level": "read_committed"})
    got = None
    while time.monotonic() - started < 30:
        try:
            got = c.committed([TopicPartition(src, 0)], timeout=5)[0].offset
        except KafkaException:
            # UNSTABLE_OFFSET_COMMIT until the open transaction is aborted.
            time.sleep(0.2)
            continue
        break
    c.close()
    assert got == 42, got
    # The reloaded coordinator aborts the open transaction after its timeout: read_committed
    # then reads past it (until then the LSO holds "after" back).
    p2 = Producer(confluent_common(broker.bootstrap))
    p2.produce(dst, value=b"after")
    p2.flush(30)
    rc = values(read_all(broker.bootstrap, dst, 1, "read_committed", expect=2, timeout=30))
    assert rc == [b"committed", b"after"], rc
    assert "aborting a transaction that exceeded its timeout" in broker.log_text()


# ------------------------------------------- server-side verification (raw frames)

INVALID_PRODUCER_EPOCH = 47
INVALID_TXN_STATE = 48
INVALID_RECORD = 87


def test_transactional_produce_needs_the_partition_in_the_transaction(broker):
    topic = unique_topic("txn-verify")
    create_topic_confluent(broker.bootstrap, topic, 1)
    txn_id = unique_topic("raw-tx")

    def init():
        resp = roundtrip(broker, header_v1(22, 1, 1) + kstring(txn_id) + struct.pack(">i", 60_000))
        _corr, _throttle, error, pid, epoch = struct.unpack_from(">iihqh", resp)
        assert error == 0
        return pid, epoch

    def add_partition(pid, epoch):
        resp = roundtrip(broker, header_v1(24, 1, 2) + kstring(txn_id)
                         + struct.pack(">qhi", pid, epoch, 1) + kstring(topic)
                         + struct.pack(">ii", 1, 0))
        pos = 4 + 4 + 4
        (name_len,) = struct.unpack_from(">h", resp, pos)
        pos += 2 + name_len + 4
        _index, error = struct.unpack_from(">ih", resp, pos)
        return error

    def txn_batch(pid, epoch, seq, attributes=0x10):
        return batch(record(0, b"v%d" % seq), 1, codec=attributes, producer_id=pid,
                     producer_epoch=epoch, base_sequence=seq)

    pid, epoch = init()
    # Not added to a transaction yet: refused (KIP-890 part 1).
    assert produce_error(broker, topic, txn_batch(pid, epoch, 0))[0] == INVALID_TXN_STATE
    # Clients may not write control batches.
    assert produce_error(broker, topic, txn_batch(pid, epoch, 0, 0x30))[0] == INVALID_RECORD
    assert add_partition(pid, epoch) == 0
    assert produce_error(broker, topic, txn_batch(pid, epoch, 0)) == (0, 0)
    # A new incarnation aborts the open transaction and fences the old epoch.
    pid2, epoch2 = init()
    assert (pid2, epoch2) == (pid, epoch + 2)
    assert produce_error(broker, topic, txn_batch(pid, epoch, 1))[0] == INVALID_PRODUCER_EPOCH
    assert add_partition(pid, epoch) != 0
    assert add_partition(pid2, epoch2) == 0
    assert produce_error(broker, topic, txn_batch(pid2, epoch2, 0))[0] == 0
