"""What the replication fault tests (test_replication.py, issue 16) share: the steady
producer whose every delivery report is kept, the read-back of every partition, the check
of the history against it (``verify_history``), the fault seed, and the cluster views
(leader, epoch, ISR) the tests wait on.

The check is the issue's: every acknowledged record is read back at the offset its
delivery report gave, exactly once, and no value is read twice anywhere. Values carry a
unique sequence number, so a value names one produce call. Records whose delivery failed
or whose outcome is unknown may be present (once) or absent. Each check is summarised as
"N acked, L lost, D duplicated", printed and kept in ``target/replication-report.json``.
"""

from __future__ import annotations

import io
import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from gregor_testlib import REPO_ROOT, confluent_assign_consumer, confluent_common, wait_for, wire_request

REPORT = REPO_ROOT / "target" / "replication-report.json"
NOT_ENOUGH_REPLICAS = 19
NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20


# ------------------------------------------------------------------ seeds
def fault_seed() -> int:
    """The seed of a test's fault schedule: ``GREGOR_FAULT_SEED`` to replay one, else fresh."""
    env = os.environ.get("GREGOR_FAULT_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 32)


# --------------------------------------------------------------- producer
@dataclass
class Delivery:
    """One delivery report: ``error`` is None for an acknowledged record."""

    partition: int
    offset: int
    value: bytes
    error: Optional[str]
    code: Optional[int]
    at: float  # time.monotonic() of the report


class LoadProducer:
    """A confluent-kafka producer at a steady rate in its own thread: value ``%010d`` of a
    sequence number, partition ``seq % partitions``; every delivery report is kept.

    ``conf`` overrides the defaults (idempotent, acks=all, message.timeout.ms 120 s so
    records ride out a failover instead of failing)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, rate: float = 300.0, **conf):
        from confluent_kafka import Producer

        settings = confluent_common(bootstrap)
        settings.update(
            {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 120000,
                "request.timeout.ms": 10000,
            }
        )
        settings.update(conf)
        settings["error_cb"] = self._on_error
        self.topic = topic
        self.partitions = partitions
        self.rate = rate
        self.deliveries: list[Delivery] = []
        self.errors: list[str] = []
        self.fatal: Optional[str] = None
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._producer = Producer(settings)
        self._thread = threading.Thread(target=self._run, name=f"load-{topic}", daemon=True)

    def _on_error(self, err):
        with self._lock:
            self.errors.append(f"{err.name()}: {err.str()}")
            if err.fatal():
                self.fatal = f"{err.name()}: {err.str()}"

    def _on_delivery(self, err, msg):
        d = Delivery(
            msg.partition(),
            msg.offset() if err is None else -1,
            msg.value(),
            None if err is None else f"{err.name()}: {err.str()}",
            None if err is None else err.code(),
            time.monotonic(),
        )
        with self._lock:
            self.deliveries.append(d)

    def _run(self):
        from confluent_kafka import KafkaException

        next_at = time.monotonic()
        while not self._stop.is_set() and self.fatal is None:
            now = time.monotonic()
            if now < next_at:
                self._producer.poll(min(next_at - now, 0.05))
                continue
            next_at = max(next_at + 1.0 / self.rate, now - 1.0)  # catch up at most 1 s
            seq = self.sent
            try:
                self._producer.produce(
                    self.topic, value=b"%010d" % seq, partition=seq % self.partitions, on_delivery=self._on_delivery
                )
            except BufferError:
                self._producer.poll(0.1)
                continue
            except KafkaException as exc:
                with self._lock:
                    self.fatal = self.fatal or repr(exc)
                break
            self.sent += 1
            self._producer.poll(0)

    def start(self) -> "LoadProducer":
        self._thread.start()
        return self

    def stop(self, flush_timeout: float = 150.0) -> int:
        """Stops producing and waits for every outstanding delivery report; returns how many
        are still outstanding (0 unless the flush timed out)."""
        self._stop.set()
        self._thread.join(30)
        return self._producer.flush(flush_timeout)

    def acked(self) -> list:
        with self._lock:
            return [(d.partition, d.offset, d.value) for d in self.deliveries if d.error is None]

    def failed(self) -> list:
        with self._lock:
            return [d for d in self.deliveries if d.error is not None]

    def acks_since(self, t: float, partition: Optional[int] = None) -> int:
        with self._lock:
            return sum(
                1
                for d in self.deliveries
                if d.error is None and d.at >= t and (partition is None or d.partition == partition)
            )

    def wait_acks(self, n: int, since: float, partition: Optional[int] = None, timeout: float = 60.0, what: str = ""):
        """Waits until ``n`` records (of ``partition``) were acknowledged after ``since``."""
        what = what or f"{n} acks{'' if partition is None else f' on partition {partition}'}"
        deadline = time.monotonic() + timeout
        while self.acks_since(since, partition) < n:
            if self.fatal is not None:
                raise AssertionError(f"producer failed while waiting for {what}: {self.fatal}")
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"timed out after {timeout}s waiting for {what}: {self.acks_since(since, partition)} acks, "
                    f"last failures {[d.error for d in self.failed()[-3:]]}, errors {self.errors[-3:]}"
                )
            time.sleep(0.05)

    def longest_stall(self, partition: Optional[int] = None) -> float:
        """The longest time between two consecutive acknowledgements (of ``partition``)."""
        with self._lock:
            times = sorted(d.at for d in self.deliveries if d.error is None and (partition is None or d.partition == partition))
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


# ---------------------------------------------------------------- reading
def read_back(bootstrap: str, topic: str, partitions: int, timeout: float = 60.0) -> dict:
    """Every record of every partition, from the beginning to the high watermark each
    partition's leader reports now: {partition: [(offset, value)]}."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    consumer = confluent_assign_consumer(bootstrap, **{"fetch.wait.max.ms": 100})
    try:
        ends = {}
        for p in range(partitions):
            ends[p] = wait_for(
                lambda p=p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] + 1,
                timeout,
                0.2,
                f"the high watermark of {topic}-{p}",
            ) - 1
        out = {p: [] for p in range(partitions)}
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    print(f"read_back {topic}: {msg.error()}")
                continue
            p = msg.partition()
            out[p].append((msg.offset(), msg.value()))
            if msg.offset() + 1 >= ends[p]:
                todo.discard(p)
        if todo:
            raise AssertionError(
                f"read back {topic}: partitions {sorted(todo)} not read to their high watermark "
                f"{ {p: ends[p] for p in todo} } within {timeout}s (read {[len(out[p]) for p in sorted(todo)]})"
            )
        return out
    finally:
        consumer.close()


# ------------------------------------------------------------------- check
@dataclass
class History:
    """The outcome of ``verify_history``."""

    acked: int
    lost: list = field(default_factory=list)  # (partition, offset, value, found there)
    duplicated: list = field(default_factory=list)  # (value, [(partition, offset)...])
    read: int = 0
    unacked_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicated

    def summary(self) -> str:
        return f"{self.acked} acked, {len(self.lost)} lost, {len(self.duplicated)} duplicated"

    def details(self, n: int = 10) -> str:
        return f"{self.summary()}; read {self.read} records ({self.unacked_read} not acknowledged); " + (
            f"first lost (partition, offset, value, found there): {self.lost[:n]}; " if self.lost else ""
        ) + (f"first duplicated (value, places): {self.duplicated[:n]}" if self.duplicated else "")


def verify_history(acked: list, read: dict) -> History:
    """Checks ``acked`` [(partition, offset, value)] against ``read`` {partition: [(offset,
    value)]}: each acknowledged value is at its acknowledged offset, and no value appears
    twice anywhere (neither at two offsets nor acknowledged twice)."""
    at = {}
    places: dict = {}
    for p, records in read.items():
        for offset, value in records:
            at[(p, offset)] = value
            places.setdefault(value, []).append((p, offset))
    h = History(acked=len(acked), read=sum(len(r) for r in read.values()))
    acked_values = Counter(v for _, _, v in acked)
    for p, offset, value in acked:
        found = at.get((p, offset))
        if found != value:
            h.lost.append((p, offset, value, found))
    for value, where in places.items():
        if len(where) > 1 or acked_values.get(value, 0) > 1:
            h.duplicated.append((value, where))
    h.unacked_read = sum(1 for v in places if v not in acked_values)
    return h


def report(name: str, seed: int, history: History, **measured) -> dict:
    """Prints the summary line and appends the run to target/replication-report.json."""
    entry = {
        "seed": seed,
        "acked": history.acked,
        "lost": len(history.lost),
        "duplicated": len(history.duplicated),
        "read": history.read,
        "summary": history.summary(),
        **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in measured.items()},
    }
    print(f"\nREPLICATION {name} (seed {seed}): {history.summary()} {measured}")
    try:
        data = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    except ValueError:
        data = {}
    data.setdefault(name, []).append(entry)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return entry


# ----------------------------------------------------------- cluster views
def partitions_view(node, topic: str) -> dict:
    """{partition: {leader, leader_epoch, replicas, isr, ...}} as ``node``'s Metadata has it."""
    t = node.metadata([topic])["topics"][topic]
    if t["error_code"]:
        raise AssertionError(f"node {node.node_id}: topic {topic} error {t['error_code']}")
    return t["partitions"]


def wait_topic_led(nodes, topic: str, partitions: int, timeout: float = 30.0) -> dict:
    """Waits until every node in ``nodes`` shows ``topic`` with each partition led and the
    same leaders; returns the first node's view."""

    def ready():
        views = [partitions_view(n, topic) for n in nodes]
        if any(len(v) != partitions or any(p["leader"] < 0 for p in v.values()) for v in views):
            return False
        leaders = [{i: p["leader"] for i, p in v.items()} for v in views]
        return all(lead == leaders[0] for lead in leaders) and views[0]

    return wait_for(ready, timeout, 0.05, f"{topic}: {partitions} partitions led, the same on nodes {[n.node_id for n in nodes]}")


def wait_isr(nodes, topic: str, isr: set, partitions: Optional[list] = None, timeout: float = 60.0) -> dict:
    """Waits until every node in ``nodes`` shows ISR == ``isr`` for ``partitions`` (default:
    all) of ``topic``; returns the first node's view."""

    def ready():
        views = [partitions_view(n, topic) for n in nodes]
        for v in views:
            for i, p in v.items():
                if (partitions is None or i in partitions) and set(p["isr"]) != set(isr):
                    return False
        return views[0]

    return wait_for(ready, timeout, 0.1, f"{topic}: ISR {sorted(isr)} on nodes {[n.node_id for n in nodes]}")


def create_topic_request(addr: tuple, name: str, partitions: int, rf: int, configs: dict, assignments=None, timeout_ms: int = 10000):
    """CreateTopics v3 through the node at ``addr`` with ``configs`` and optionally explicit
    ``assignments`` ([[replica ids] per partition], first = preferred leader). Returns
    (error_code, error_message)."""
    from kafka.protocol.admin import CreateTopicsRequest_v3, CreateTopicsResponse_v3

    if assignments:
        spec = (name, -1, -1, [(i, list(r)) for i, r in enumerate(assignments)], list(configs.items()))
    else:
        spec = (name, partitions, rf, [], list(configs.items()))
    req = CreateTopicsRequest_v3(create_topic_requests=[spec], timeout=timeout_ms, validate_only=False)
    body = wire_request(addr, 19, 3, req.encode(), False, timeout_ms / 1000 + 5)
    resp = CreateTopicsResponse_v3.decode(io.BytesIO(body))
    ((got, code, msg),) = resp.topic_errors
    assert got == name
    return code, msg
