"""A confluent-kafka group member run as its own process by test_groups.py.

It subscribes, processes records and commits each one synchronously after processing
(at-least-once), and reports everything as JSON lines on stdout:

    {"event": "started"}
    {"event": "assign"|"revoke"|"lost", "partitions": [...], "t": <time.time()>}
    {"event": "record", "p": <partition>, "o": <offset>}

SIGTERM closes the consumer cleanly (LeaveGroup for dynamic members); the tests also kill
it with SIGKILL to simulate a crash.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from confluent_kafka import Consumer


def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bootstrap")
    ap.add_argument("group")
    ap.add_argument("topic")
    ap.add_argument("--instance-id")
    ap.add_argument("--client-id", default="group-consumer")
    ap.add_argument("--strategy", default="range,roundrobin")
    ap.add_argument("--session-timeout-ms", type=int, default=6000)
    ap.add_argument("--heartbeat-interval-ms", type=int, default=200)
    args = ap.parse_args()

    conf = {
        "bootstrap.servers": args.bootstrap,
        "broker.address.family": "v4",
        "group.id": args.group,
        "client.id": args.client_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": args.session_timeout_ms,
        "heartbeat.interval.ms": args.heartbeat_interval_ms,
        "partition.assignment.strategy": args.strategy,
    }
    if args.instance_id:
        conf["group.instance.id"] = args.instance_id
    consumer = Consumer(conf)

    stopping = {"flag": False}

    def on_term(_sig, _frm):
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, on_term)

    def cb(name):
        def f(_c, partitions):
            emit(event=name, partitions=sorted(p.partition for p in partitions), t=time.time())

        return f

    consumer.subscribe([args.topic], on_assign=cb("assign"), on_revoke=cb("revoke"), on_lost=cb("lost"))
    emit(event="started", t=time.time())
    try:
        while not stopping["flag"]:
            msg = consumer.poll(0.05)
            if msg is None:
                continue
            if msg.error():
                emit(event="error", error=str(msg.error()))
                continue
            emit(event="record", p=msg.partition(), o=msg.offset())
            try:
                consumer.commit(message=msg, asynchronous=False)
            except Exception as exc:  # noqa: BLE001 - reported, the test decides
                emit(event="commit_error", error=str(exc))
    finally:
        consumer.close()
        emit(event="closed", t=time.time())


if __name__ == "__main__":
    main()
