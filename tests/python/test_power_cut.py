"""fsync observed under a simulated power cut, the way Jepsen checks it with LazyFS.

The broker's data dir is on `gregor-lazyfs` (tests/lazyfs), a FUSE file system that keeps
every write in memory and makes it durable only when the file is fsynced; its `cut` command
drops everything written since the last fsync, as a power cut would. Each test produces
with acks=all, kill -9s the broker at a seeded random moment, cuts the power, restarts the
broker on what survived and reads everything back:

- `--fsync always`: every acknowledged record is there, at its acknowledged offset (one
  producer, and four producers sharing the group-commit fsync).
- `--fsync never`: acknowledged records are lost: proof that the test can fail, i.e. that
  it observes fsync and not just the write.
- Offsets committed to `__consumer_offsets` are fsynced before they are acknowledged in
  either mode: the last acknowledged commit survives.

Seeded: GREGOR_POWER_CUT_SEED=<n> replays a run; the seed is printed and is in every
failure message. Needs /dev/fuse and root (the file system mounts without fusermount);
without them the tests skip, except under CI=true where they fail.
"""
from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from gregor_testlib import REPO_ROOT, confluent_common, create_topic_confluent, unique_topic

LAZYFS_BIN = Path(os.environ.get("GREGOR_LAZYFS_BIN", REPO_ROOT / "target" / "release" / "gregor-lazyfs"))


class LazyFs:
    """One mounted gregor-lazyfs; commands go to its stdin, answers come from its stdout."""

    def __init__(self, mountpoint: Path):
        self.mnt = mountpoint
        self.proc = subprocess.Popen([str(LAZYFS_BIN), str(mountpoint)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()
        if not first.startswith("lazyfs mounted at"):
            self.proc.kill()
            raise RuntimeError(f"gregor-lazyfs did not mount {mountpoint}: {first!r}")

    def command(self, cmd: str) -> str:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def cut(self) -> int:
        """The power cut: returns how many written bytes were never fsynced (and are gone)."""
        answer = self.command("cut")
        assert answer.startswith("cut: "), answer
        return int(answer.split()[1])

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except Exception:  # noqa: BLE001
            self.proc.kill()
            self.proc.wait(10)
        subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)


@pytest.fixture
def lazyfs(tmp_path):
    why = None
    if not LAZYFS_BIN.is_file():
        why = f"{LAZYFS_BIN} missing (cargo build --release builds it)"
    elif not os.path.exists("/dev/fuse"):
        why = "/dev/fuse missing"
    elif os.geteuid() != 0:
        why = "mounting gregor-lazyfs without fusermount needs root"
    if why:
        if os.environ.get("CI") in ("true", "1"):
            pytest.fail(f"power-cut tests cannot run: {why} (CI=true: not a skip)", pytrace=False)
        pytest.skip(why)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fs = LazyFs(mnt)
    yield fs
    fs.close()


def seed() -> int:
    s = int(os.environ.get("GREGOR_POWER_CUT_SEED", random.randrange(1 << 32)))
    print(f"\npower-cut seed {s} (GREGOR_POWER_CUT_SEED={s} replays it)")
    return s


def read_back(bootstrap: str, topic: str, partitions: int) -> dict:
    """value -> (partition, offset) of every record in the topic."""
    c = Consumer({**confluent_common(bootstrap), "group.id": unique_topic("g"), "enable.auto.commit": False})
    found = {}
    try:
        for p in range(partitions):
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            if hi <= lo:
                continue
            c.assign([TopicPartition(topic, p, lo)])
            deadline = time.monotonic() + 60
            pos = lo
            while pos < hi and time.monotonic() < deadline:
                for m in c.consume(1000, 0.5):
                    if m.error() is None:
                        found[m.value()] = (m.partition(), m.offset())
                        pos = m.offset() + 1
            assert pos >= hi, f"partition {p}: read to {pos} of {hi}"
    finally:
        c.close()
    return found


def produce_then_power_cut(broker_factory, fs: LazyFs, fsync: str, s: int, producers: int = 1,
                           partitions: int = 3):
    """acks=all producers write until a seeded random moment; then kill -9, power cut,
    restart. Returns (acknowledged {value: (partition, offset)}, what is readable after the
    restart, bytes the cut dropped)."""
    rng = random.Random(s)
    b = broker_factory(data_dir=fs.mnt / "data", extra_args=("--fsync", fsync))
    topic = unique_topic("powercut")
    create_topic_confluent(b.bootstrap, topic, partitions)
    acked: dict = {}

    def cb(err, msg):
        if err is None:
            acked[msg.value()] = (msg.partition(), msg.offset())

    ps = [Producer({**confluent_common(b.bootstrap), "acks": "all", "linger.ms": rng.choice([0, 2, 5]),
                    "enable.idempotence": False, "message.timeout.ms": 30000, "retries": 0,
                    "log_level": 0})
          for _ in range(producers)]
    cut_after = rng.uniform(0.5, 2.5)
    started, i = time.monotonic(), 0
    while time.monotonic() - started < cut_after:
        p = ps[i % producers]
        try:
            p.produce(topic, value=f"r{i}".encode(), partition=rng.randrange(partitions), on_delivery=cb)
            i += 1
        except BufferError:
            p.poll(0.005)
        if i % 200 == 0:
            # Paced (at most ~40k records/s) so that the cut finds writes in flight rather
            # than a producer that sent everything long ago.
            for q in ps:
                q.poll(0.005 / producers)
    b.kill9()
    for q in ps:  # acknowledgements that arrived before the kill
        q.poll(0.2)
        q.purge()
        q.flush(10)
    lost_bytes = fs.cut()
    b.start()
    found = read_back(b.bootstrap, topic, partitions)
    print(f"seed {s}: fsync={fsync} producers={producers} sent {i} acked {len(acked)} "
          f"after {cut_after:.2f}s; the cut dropped {lost_bytes} bytes; {len(found)} records after restart")
    b.assert_no_panic()
    b.stop()  # before the file system under it is unmounted
    return acked, found, lost_bytes


@pytest.mark.parametrize("producers", [1, 4])
def test_fsync_always_keeps_every_acknowledged_record(broker_factory, lazyfs, producers):
    s = seed()
    acked, found, _ = produce_then_power_cut(broker_factory, lazyfs, "always", s, producers)
    assert len(acked) > 100, f"seed {s}: too few acknowledgements ({len(acked)}) to mean anything"
    missing = {v: at for v, at in acked.items() if found.get(v) != at}
    assert not missing, (
        f"seed {s}: {len(missing)} of {len(acked)} acknowledged records lost or moved by a power cut "
        f"with --fsync always, e.g. {list(missing.items())[:5]}"
    )


def test_fsync_never_loses_acknowledged_records(broker_factory, lazyfs):
    """The same run with --fsync never loses acknowledged records: the power cut is real
    and the test above can fail."""
    s = seed()
    acked, found, lost_bytes = produce_then_power_cut(broker_factory, lazyfs, "never", s)
    assert len(acked) > 100, f"seed {s}: too few acknowledgements ({len(acked)})"
    missing = [v for v, at in acked.items() if found.get(v) != at]
    assert lost_bytes > 0 and missing, (
        f"seed {s}: --fsync never lost nothing under a power cut ({lost_bytes} bytes dropped)"
    )


def commits_then_power_cut(broker_factory, fs: LazyFs, fsync: str, s: int):
    """Synchronous offset commits (each acknowledged) until a seeded random moment; then
    kill -9, power cut, restart. Returns (last acknowledged commit, committed offset read
    after the restart)."""
    rng = random.Random(s)
    b = broker_factory(data_dir=fs.mnt / "data", extra_args=("--fsync", fsync))
    topic, group = unique_topic("cutoffsets"), unique_topic("g")
    create_topic_confluent(b.bootstrap, topic, 1)
    c = Consumer({**confluent_common(b.bootstrap), "group.id": group, "enable.auto.commit": False,
                  "log_level": 0})
    cut_after = rng.uniform(0.5, 2.0)
    started, last = time.monotonic(), None
    while time.monotonic() - started < cut_after:
        n = (last or 0) + rng.randrange(1, 100)
        c.commit(offsets=[TopicPartition(topic, 0, n)], asynchronous=False)
        last = n
    c.close()
    b.kill9()
    lost_bytes = fs.cut()
    b.start()
    c2 = Consumer({**confluent_common(b.bootstrap), "group.id": group, "enable.auto.commit": False})
    try:
        committed = c2.committed([TopicPartition(topic, 0)], timeout=30)[0].offset
    finally:
        c2.close()
    print(f"seed {s}: fsync={fsync}: last acknowledged commit {last}, after the cut ({lost_bytes} bytes "
          f"dropped) and restart: {committed}")
    b.assert_no_panic()
    b.stop()
    return last, committed


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_acknowledged_offset_commit_survives_a_power_cut(broker_factory, lazyfs, fsync):
    """An OffsetCommit is answered only after its `__consumer_offsets` partition is fsynced,
    whatever `--fsync` says for produce (crates/gregor-broker/src/groups.rs): the last
    acknowledged commit survives the power cut in both modes. (That the harness sees a
    missing fsync is shown by test_fsync_never_loses_acknowledged_records.)"""
    s = seed()
    last, committed = commits_then_power_cut(broker_factory, lazyfs, fsync, s)
    assert last is not None and committed == last, f"seed {s}: committed {committed}, acknowledged {last}"
