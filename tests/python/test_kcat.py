"""kcat (librdkafka's command-line client) against a real gregor process."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from gregor_testlib import create_topic_confluent, unique_topic

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
pytestmark = pytest.mark.skipif(
    KCAT is None, reason="kcat not installed (scripts/test.sh installs it with apt-get)"
)


def kcat(*args, input_text=None, timeout=60):
    cmd = [KCAT, "-X", "broker.address.family=v4", *args]
    r = subprocess.run(
        cmd,
        input=input_text.encode() if input_text is not None else None,
        stdin=None if input_text is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
    )
    assert r.returncode == 0, f"{cmd} exited {r.returncode}\nstdout:\n{r.stdout.decode()}\nstderr:\n{r.stderr.decode()}"
    return r.stdout.decode()


def test_kcat_metadata_lists_topic(broker):
    topic = unique_topic("kcat-md")
    create_topic_confluent(broker.bootstrap, topic, 2)
    out = kcat("-b", broker.bootstrap, "-L")
    assert f'topic "{topic}" with 2 partitions' in out, out

    md = json.loads(kcat("-b", broker.bootstrap, "-L", "-J", "-t", topic))
    (t,) = [t for t in md["topics"] if t["topic"] == topic]
    assert sorted(p["partition"] for p in t["partitions"]) == [0, 1]
    assert len(md["brokers"]) == 1


def test_kcat_produce_consume_keyed(broker):
    topic = unique_topic("kcat")
    create_topic_confluent(broker.bootstrap, topic, 3)
    lines = [f"key{i % 10}:value {i}" for i in range(200)]
    kcat("-P", "-b", broker.bootstrap, "-t", topic, "-K:", input_text="\n".join(lines) + "\n")

    out = kcat(
        "-C", "-b", broker.bootstrap, "-t", topic, "-o", "beginning", "-e", "-f", "%k:%s\n"
    )
    got = [line for line in out.splitlines() if line]
    assert sorted(got) == sorted(lines)

    # per partition, order is production order
    out = kcat(
        "-C", "-b", broker.bootstrap, "-t", topic, "-o", "beginning", "-e", "-f", "%p %o %s\n"
    )
    per_part = {}
    for line in out.splitlines():
        if not line:
            continue
        part, off, value = line.split(" ", 2)
        per_part.setdefault(int(part), []).append((int(off), int(value.split()[-1])))
    for part, lst in per_part.items():
        assert [o for o, _ in lst] == list(range(len(lst))), f"partition {part} offsets"
        assert [i for _, i in lst] == sorted(i for _, i in lst), f"partition {part} order"
    # same key -> same partition
    by_key = {}
    out = kcat("-C", "-b", broker.bootstrap, "-t", topic, "-o", "beginning", "-e", "-f", "%k %p\n")
    for line in out.splitlines():
        if line:
            k, p = line.split()
            assert by_key.setdefault(k, p) == p, f"key {k} in two partitions"
