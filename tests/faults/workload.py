"""Client processes of the fault harness (run by harness.py inside the clients' network
namespace).  Each appends JSON lines to its own history file; checker.py reads them.

    workload.py setup     BOOTSTRAP HIST PARTITIONS [RF MIN_INSYNC]
    workload.py queue     BOOTSTRAP HIST PARTITIONS RATE SEED    (until SIGTERM)
    workload.py txn       BOOTSTRAP HIST PARTITIONS TXN_ID SEED  (until killed)
    workload.py admin     BOOTSTRAP HIST SEED [MAX_RF]           (until SIGTERM)
    workload.py catchup   BOOTSTRAP HIST PARTITIONS TIMEOUT
    workload.py final     BOOTSTRAP HIST TXN_ID|- [--drop-one-acked]   (- : no fencing)
    workload.py probe     BOOTSTRAP                              (prints up/down lines)
    workload.py describe  BOOTSTRAP                              (prints Metadata as JSON)
    workload.py healthy   BOOTSTRAP NODES TIMEOUT   (exit 0 once every broker is listed and
                                                     every partition has a leader, full ISR)

History events (key "k"; "t" is wall-clock seconds):
    send/ack/nack   tp, v, (p, o | err)       one per produced record (queue, txn-in)
    read            m, g, tp, p, rs=[[o, v]]   records a group member read
    assign/revoke   m, g, ps=[[tp, p]], lost   a member's assignment changes
    commit          m, g, tp, offs={p: o}, ts, te, ok
    committed       g, tp, offs={p: o}, ts, te (an OffsetFetch observation)
    txn             x, st=begin|vals|commit_start|commit_ok|commit_fail|abort, vs, ins
    adm             op=create|delete, tp, ok        and  adm_final tps=[...]
    final           tp, p, rs=[[o, v]]          the last read_committed read of everything
    final_end       tp, p, hw, done
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import signal
import sys
import threading
import time

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

QUEUE = "queue"
TXN_IN = "txn-in"
TXN_OUT = "txn-out"
QUEUE_GROUP = "gq"
TXN_GROUP = "gt"

STOP = threading.Event()


def _on_term(_sig, _frm):
    STOP.set()


class History:
    """Line-buffered JSON lines: a kill -9 loses at most the line being written."""

    def __init__(self, path: str):
        self.f = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def __call__(self, k: str, **kw) -> None:
        kw["k"] = k
        kw.setdefault("t", round(time.time(), 4))
        line = json.dumps(kw, separators=(",", ":"))
        with self.lock:
            self.f.write(line + "\n")


def quiet_logger():
    import logging
    log = logging.getLogger("rdkafka")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log



def conf(bootstrap: str, **kw) -> dict:
    c = {"bootstrap.servers": bootstrap, "logger": quiet_logger(),
         "socket.connection.setup.timeout.ms": 3000, "reconnect.backoff.max.ms": 1000}
    c.update(kw)
    return c


# ---- setup -------------------------------------------------------------------------------

def setup(bootstrap: str, hist: History, partitions: int, rf: int = 1,
          min_insync: int = 1) -> None:
    admin = AdminClient(conf(bootstrap))
    deadline = time.monotonic() + 60
    topics = [QUEUE, TXN_IN, TXN_OUT]
    cfg = {"min.insync.replicas": str(min_insync)} if rf > 1 else {}
    while rf > 1:
        # A cluster: first every broker listed and a controller known (a CreateTopics sent
        # while Metadata was still partial was seen to hang in librdkafka).
        try:
            md = admin.list_topics(timeout=5)
            if len(md.brokers) >= rf and md.controller_id >= 0:
                break
        except KafkaException:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the cluster never listed its brokers and controller")
        time.sleep(0.5)
    while True:
        futs = admin.create_topics([NewTopic(t, partitions, rf, config=cfg) for t in topics],
                                   operation_timeout=10)
        pending = []
        for t, f in futs.items():
            try:
                f.result(15)
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    pending.append((t, str(e)))
            except TimeoutError:
                pending.append((t, "no answer in 15 s"))
        if not pending:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"cannot create topics: {pending}")
        time.sleep(0.5)
    hist("setup", tps=topics, partitions=partitions, rf=rf, min_insync=min_insync)


# ---- queue workload: producers, a consumer group, observers -------------------------------

def producer_loop(bootstrap: str, hist: History, name: str, topic: str, partitions: int,
                  rate: float) -> None:
    inst = 0
    seq = 0
    while not STOP.is_set():
        inst += 1
        fatal = threading.Event()

        def on_error(err, fatal=fatal):
            if err.fatal():
                fatal.set()

        p = Producer(conf(bootstrap, **{"enable.idempotence": True, "acks": "all",
                                        "linger.ms": 5, "message.timeout.ms": 60000,
                                        "error_cb": on_error}))

        def cb(err, msg):
            v = msg.value().decode()
            if err is None:
                hist("ack", tp=msg.topic(), v=v, p=msg.partition(), o=msg.offset())
            else:
                hist("nack", tp=msg.topic(), v=v, err=str(err.code()))

        interval = 1.0 / rate
        next_at = time.monotonic()
        while not STOP.is_set() and not fatal.is_set():
            now = time.monotonic()
            if now < next_at:
                p.poll(min(next_at - now, 0.05))
                continue
            next_at += interval
            if next_at < now - 1:
                next_at = now  # do not burst after a stall
            seq += 1
            v = f"{name}.{inst}.{seq}"
            part = seq % partitions
            hist("send", tp=topic, v=v, p=part)
            while True:
                try:
                    p.produce(topic, value=v.encode(), partition=part, on_delivery=cb)
                    break
                except BufferError:
                    p.poll(0.1)
            p.poll(0)
        left = p.flush(90)
        if fatal.is_set():
            hist("producer_fatal", m=f"{name}.{inst}")
        if left:
            hist("producer_unflushed", m=f"{name}.{inst}", n=left)


def consumer_loop(bootstrap: str, hist: History, name: str, rng: random.Random) -> None:
    inst = 0
    while not STOP.is_set():
        inst += 1
        member = f"{name}.{inst}"
        c = Consumer(conf(bootstrap, **{"group.id": QUEUE_GROUP, "enable.auto.commit": False,
                                        "auto.offset.reset": "earliest",
                                        "isolation.level": "read_committed",
                                        "session.timeout.ms": 10000,
                                        "heartbeat.interval.ms": 1000}))

        def on_assign(cons, parts, member=member):
            hist("assign", m=member, g=QUEUE_GROUP, ps=[[tp.topic, tp.partition] for tp in parts])

        def on_revoke(cons, parts, member=member):
            hist("revoke", m=member, g=QUEUE_GROUP, ps=[[tp.topic, tp.partition] for tp in parts],
                 lost=False)

        def on_lost(cons, parts, member=member):
            hist("revoke", m=member, g=QUEUE_GROUP, ps=[[tp.topic, tp.partition] for tp in parts],
                 lost=True)

        c.subscribe([QUEUE], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
        leave_at = time.monotonic() + rng.uniform(20, 60)
        try:
            while not STOP.is_set() and time.monotonic() < leave_at:
                msgs = c.consume(num_messages=500, timeout=0.5)
                by_part: dict[int, list] = {}
                for m in msgs:
                    if m.error() is not None:
                        continue
                    by_part.setdefault(m.partition(), []).append([m.offset(), m.value().decode()])
                if not by_part:
                    continue
                for part, rs in by_part.items():
                    hist("read", m=member, g=QUEUE_GROUP, tp=QUEUE, p=part, rs=rs)
                offs = {part: rs[-1][0] + 1 for part, rs in by_part.items()}
                ts = time.time()
                try:
                    c.commit(offsets=[TopicPartition(QUEUE, part, o) for part, o in offs.items()],
                             asynchronous=False)
                    hist("commit", m=member, g=QUEUE_GROUP, tp=QUEUE, offs=offs, ts=ts,
                         te=time.time(), ok=True)
                except KafkaException as e:
                    hist("commit", m=member, g=QUEUE_GROUP, tp=QUEUE, offs=offs, ts=ts,
                         te=time.time(), ok=False, err=str(e.args[0].code()))
        finally:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - a dead broker; nothing to record
                pass
            hist("left", m=member, g=QUEUE_GROUP)


def observer_loop(bootstrap: str, hist: History, partitions: int) -> None:
    """Reads the queue group's committed offsets now and then (OffsetFetch, no join)."""
    c = Consumer(conf(bootstrap, **{"group.id": QUEUE_GROUP, "enable.auto.commit": False}))
    tps = [TopicPartition(QUEUE, p) for p in range(partitions)]
    while not STOP.wait(2.0):
        ts = time.time()
        try:
            got = c.committed(tps, timeout=5)
        except KafkaException:
            continue
        te = time.time()
        offs = {tp.partition: tp.offset for tp in got if tp.offset >= 0 and tp.error is None}
        if offs:
            hist("committed", g=QUEUE_GROUP, tp=QUEUE, offs=offs, ts=ts, te=te)
    c.close()


def committed_reader_loop(bootstrap: str, hist: History, partitions: int) -> None:
    """A read_committed reader of the transactional output while the faults run."""
    c = Consumer(conf(bootstrap, **{"group.id": f"obs-{os.getpid()}", "enable.auto.commit": False,
                                    "isolation.level": "read_committed"}))
    c.assign([TopicPartition(TXN_OUT, p, OFFSET_BEGINNING) for p in range(partitions)])
    while not STOP.is_set():
        by_part: dict[int, list] = {}
        for m in c.consume(num_messages=500, timeout=0.5):
            if m.error() is None:
                by_part.setdefault(m.partition(), []).append([m.offset(), m.value().decode()])
        for part, rs in by_part.items():
            hist("read", m="rc", g="", tp=TXN_OUT, p=part, rs=rs)
    c.close()


def queue(bootstrap: str, hist: History, partitions: int, rate: float, seed: int) -> None:
    rng = random.Random(seed)
    threads = [
        threading.Thread(target=producer_loop, args=(bootstrap, hist, f"p{k}", QUEUE, partitions,
                                                     rate)) for k in range(2)]
    threads.append(threading.Thread(target=producer_loop,
                                    args=(bootstrap, hist, "i0", TXN_IN, partitions, rate / 4)))
    threads += [threading.Thread(target=consumer_loop,
                                 args=(bootstrap, hist, f"c{j}", random.Random(rng.random())))
                for j in range(3)]
    threads.append(threading.Thread(target=observer_loop, args=(bootstrap, hist, partitions)))
    threads.append(threading.Thread(target=committed_reader_loop,
                                    args=(bootstrap, hist, partitions)))
    for t in threads:
        t.daemon = True
        t.start()
    while not STOP.wait(0.2):
        pass
    for t in threads:
        t.join(120)
    hist("queue_done")


# ---- transactional read-process-write ----------------------------------------------------

def txn(bootstrap: str, hist: History, partitions: int, txn_id: str, seed: int) -> None:
    rng = random.Random(seed)
    inc = f"{os.getpid()}"
    pconf = conf(bootstrap, **{"transactional.id": txn_id, "transaction.timeout.ms": 20000,
                               "linger.ms": 5})
    if os.environ.get("GREGOR_FAULTS_TXN_DEBUG"):
        # librdkafka's own log (written to stderr as it happens, i.e. into txn.out).
        pconf["debug"] = os.environ["GREGOR_FAULTS_TXN_DEBUG"]
        del pconf["logger"]
    producer = Producer(pconf)
    producer.init_transactions(30)
    consumer = Consumer(conf(bootstrap, **{"group.id": TXN_GROUP, "enable.auto.commit": False,
                                           "isolation.level": "read_committed",
                                           "auto.offset.reset": "earliest"}))
    tps = [TopicPartition(TXN_IN, p) for p in range(partitions)]
    committed = consumer.committed(tps, timeout=30)
    consumer.assign([TopicPartition(TXN_IN, tp.partition,
                                    tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                     for tp in committed])
    hist("txn", x=f"{inc}", st="start", offs={tp.partition: tp.offset for tp in committed})
    n = 0
    while True:
        msgs = [m for m in consumer.consume(num_messages=200, timeout=0.5) if m.error() is None]
        n += 1
        x = f"{inc}-{n}"
        if rng.random() < 0.1:
            # A deliberate abort: junk that read_committed readers must never see.
            producer.begin_transaction()
            vs = [f"a.{x}.{j}" for j in range(3)]
            hist("txn", x=x, st="vals", vs=vs)
            for v in vs:
                producer.produce(TXN_OUT, value=v.encode(), partition=rng.randrange(partitions))
            producer.flush(30)
            producer.abort_transaction(30)
            hist("txn", x=x, st="abort")
            n += 1
            x = f"{inc}-{n}"
        if not msgs:
            continue
        producer.begin_transaction()
        vs = [f"o.{m.value().decode()}.{x}" for m in msgs]
        hist("txn", x=x, st="vals", vs=vs, ins=[[m.partition(), m.offset()] for m in msgs])
        next_offsets: dict[int, int] = {}
        for m, v in zip(msgs, vs):
            producer.produce(TXN_OUT, value=v.encode(), partition=m.partition())
            next_offsets[m.partition()] = m.offset() + 1
        producer.send_offsets_to_transaction(
            [TopicPartition(TXN_IN, p, o) for p, o in next_offsets.items()],
            consumer.consumer_group_metadata(), 30)
        hist("txn", x=x, st="commit_start")
        try:
            producer.commit_transaction(30)
        except KafkaException as e:
            hist("txn", x=x, st="commit_fail", err=str(e.args[0].code()))
            raise
        hist("txn", x=x, st="commit_ok")


def catchup(bootstrap: str, hist: History, partitions: int, timeout: float) -> int:
    """Waits until the transactional group's committed offsets reach txn-in's end."""
    c = Consumer(conf(bootstrap, **{"group.id": TXN_GROUP, "enable.auto.commit": False,
                                    "isolation.level": "read_committed"}))
    tps = [TopicPartition(TXN_IN, p) for p in range(partitions)]
    deadline = time.monotonic() + timeout
    ends: dict[int, int] = {}
    offs: dict[int, int] = {}
    while time.monotonic() < deadline:
        try:
            for p in range(partitions):
                ends[p] = c.get_watermark_offsets(TopicPartition(TXN_IN, p), timeout=5)[1]
            offs = {tp.partition: tp.offset for tp in c.committed(tps, timeout=5)}
        except KafkaException:
            time.sleep(0.5)
            continue
        if all(offs.get(p, -1) >= ends[p] for p in range(partitions)):
            hist("txn_caught_up", ok=True, ends=ends, offs=offs)
            c.close()
            return 0
        time.sleep(0.5)
    hist("txn_caught_up", ok=False, ends=ends, offs=offs)
    c.close()
    return 1


# ---- admin workload ----------------------------------------------------------------------

def admin(bootstrap: str, hist: History, seed: int, max_rf: int = 1) -> None:
    rng = random.Random(seed)
    a = AdminClient(conf(bootstrap))
    live: list[str] = []
    n = 0
    while not STOP.wait(rng.uniform(0.5, 2.0)):
        if live and rng.random() < 0.4:
            t = live.pop(rng.randrange(len(live)))
            hist("adm", op="delete", tp=t, st="start")
            try:
                a.delete_topics([t], operation_timeout=10)[t].result(15)
                hist("adm", op="delete", tp=t, ok=True)
            except KafkaException as e:
                hist("adm", op="delete", tp=t, ok=False, err=str(e.args[0].code()))
        else:
            n += 1
            t = f"adm-{os.getpid()}-{n}"
            hist("adm", op="create", tp=t, st="start")
            try:
                # In a cluster a replication factor above the live brokers is refused
                # (INVALID_REPLICATION_FACTOR while a node is down): recorded, no anomaly.
                a.create_topics([NewTopic(t, rng.randint(1, 3), rng.randint(1, max_rf))],
                                operation_timeout=10)[t].result(15)
                hist("adm", op="create", tp=t, ok=True)
                live.append(t)
            except KafkaException as e:
                hist("adm", op="create", tp=t, ok=False, err=str(e.args[0].code()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            md = a.list_topics(timeout=10)
            hist("adm_final", tps=sorted(md.topics))
            return
        except KafkaException:
            time.sleep(1)
    hist("adm_final_failed")


# ---- final read --------------------------------------------------------------------------

def final(bootstrap: str, hist: History, txn_id: str, drop_one_acked: bool) -> int:
    # Fence the last processor incarnation so its open transaction (if any) is aborted and
    # the last stable offset can reach the end ("-": no transactional workload ran).
    if txn_id != "-":
        p = Producer(conf(bootstrap, **{"transactional.id": txn_id}))
        p.init_transactions(60)
        p.flush(5)
    a = AdminClient(conf(bootstrap))
    md = a.list_topics(timeout=30)
    rc = 0
    for topic in (QUEUE, TXN_IN, TXN_OUT):
        parts = sorted(md.topics[topic].partitions)
        c = Consumer(conf(bootstrap, **{"group.id": f"final-{os.getpid()}",
                                        "enable.auto.commit": False,
                                        "isolation.level": "read_committed",
                                        "enable.partition.eof": True}))
        hws = {q: c.get_watermark_offsets(TopicPartition(topic, q), timeout=30)[1] for q in parts}
        c.assign([TopicPartition(topic, q, OFFSET_BEGINNING) for q in parts])
        done = {q: hws[q] == 0 for q in parts}
        dropped = False
        deadline = time.monotonic() + 300
        while not all(done.values()) and time.monotonic() < deadline:
            by_part: dict[int, list] = {}
            for m in c.consume(num_messages=1000, timeout=1.0):
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF and m.offset() >= hws[m.partition()]:
                        done[m.partition()] = True
                    continue
                rec = [m.offset(), m.value().decode()]
                if drop_one_acked and topic == QUEUE and not dropped and m.offset() >= 10:
                    dropped = True  # the deliberately broken mode: lose one acked record
                    continue
                by_part.setdefault(m.partition(), []).append(rec)
            for q, rs in by_part.items():
                hist("final", tp=topic, p=q, rs=rs)
        for q in parts:
            hist("final_end", tp=topic, p=q, hw=hws[q], done=done[q])
            if not done[q]:
                rc = 1
        c.close()
    return rc


# ---- probe (the netns partition test) ----------------------------------------------------

def probe(bootstrap: str) -> None:
    a = AdminClient(conf(bootstrap))
    while not STOP.is_set():
        try:
            a.list_topics(timeout=1.0)
            print("up", flush=True)
        except KafkaException:
            print("down", flush=True)
        time.sleep(0.2)


def describe_cluster(bootstrap: str) -> dict:
    """Brokers, controller and per partition leader / replicas / ISR, from Metadata."""
    md = AdminClient(conf(bootstrap)).list_topics(timeout=5)
    return {
        "brokers": sorted(md.brokers),
        "controller": md.controller_id,
        "topics": {t: {str(p): {"leader": pm.leader, "replicas": list(pm.replicas),
                                "isr": list(pm.isrs), "err": str(pm.error) if pm.error else None}
                       for p, pm in tm.partitions.items()}
                   for t, tm in md.topics.items()},
    }


def healthy(bootstrap: str, nodes: int, timeout: float) -> int:
    """Waits until Metadata lists every broker and every partition of the workloads' topics
    and the internal ones has a leader and all its replicas in the ISR (a healed cluster)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            d = describe_cluster(bootstrap)
        except KafkaException as e:
            last = str(e)
            time.sleep(0.5)
            continue
        bad = [] if len(d["brokers"]) == nodes else [f"brokers {d['brokers']}"]
        for t, parts in d["topics"].items():
            if t not in (QUEUE, TXN_IN, TXN_OUT, "__consumer_offsets", "__transaction_state"):
                continue
            for p, pm in parts.items():
                if pm["leader"] < 0 or sorted(pm["isr"]) != sorted(pm["replicas"]):
                    bad.append(f"{t}/{p} {pm}")
        if not bad:
            print(json.dumps(d), flush=True)
            return 0
        last = bad
        time.sleep(0.5)
    print(f"not healthy after {timeout}s: {last}", flush=True)
    return 1


def main() -> int:
    faulthandler.register(signal.SIGUSR1)  # the harness asks a hung process where it is
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    cmd, bootstrap = sys.argv[1], sys.argv[2]
    if cmd == "probe":
        probe(bootstrap)
        return 0
    if cmd == "describe":
        print(json.dumps(describe_cluster(bootstrap)), flush=True)
        return 0
    if cmd == "healthy":
        return healthy(bootstrap, int(sys.argv[3]), float(sys.argv[4]))
    hist = History(sys.argv[3])
    args = sys.argv[4:]
    if cmd == "setup":
        setup(bootstrap, hist, *[int(a) for a in args[:3]])
    elif cmd == "queue":
        queue(bootstrap, hist, int(args[0]), float(args[1]), int(args[2]))
    elif cmd == "txn":
        txn(bootstrap, hist, int(args[0]), args[1], int(args[2]))
    elif cmd == "admin":
        admin(bootstrap, hist, *[int(a) for a in args[:2]])
    elif cmd == "catchup":
        return catchup(bootstrap, hist, int(args[0]), float(args[1]))
    elif cmd == "final":
        return final(bootstrap, hist, args[0], "--drop-one-acked" in args)
    else:
        raise SystemExit(f"unknown command {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
