"""A Go client: Shopify's sarama 1.22 from Debian's packages, built offline.

sarama 1.22 speaks Kafka 2.1's protocol versions, so these tests also guard the oldest versions
Kafka 4 still accepts (KIP-896). Where sarama needs a version Kafka 4 dropped (OffsetCommit v1
for its consumer group's commits), Gregor refuses it as Kafka 4 does; the group test records that.
scripts/test.sh installs golang-go and golang-github-shopify-sarama-dev.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gregor_testlib import create_topic_confluent, unique_topic

SRC = Path(__file__).resolve().parents[1] / "go" / "sarama_check"
GOPATH = "/usr/share/gocode"


@pytest.fixture(scope="session")
def sarama_check(tmp_path_factory) -> Path:
    go = shutil.which("go")
    if go is None or not Path(GOPATH, "src/github.com/Shopify/sarama").is_dir():
        pytest.fail("go and Debian's sarama are needed (scripts/test.sh installs them)", pytrace=False)
    out = tmp_path_factory.mktemp("go") / "sarama_check"
    env = dict(os.environ, GOPATH=GOPATH, GO111MODULE="off", GOPROXY="off", GOFLAGS="",
               GOCACHE=str(tmp_path_factory.mktemp("gocache")))
    subprocess.run([go, "build", "-o", str(out), "."], cwd=SRC, env=env, check=True,
                   capture_output=True, timeout=600)
    return out


def run(binary: Path, broker, mode: str, count: int = 200) -> str:
    topic = unique_topic(f"go-{mode}")
    create_topic_confluent(broker.bootstrap, topic, 1)
    p = subprocess.run([str(binary), "-brokers", broker.bootstrap, "-topic", topic, "-mode", mode,
                        "-count", str(count)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"sarama_check {mode} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout.strip().splitlines()[-1]


def test_sarama_round_trip(sarama_check, broker):
    assert run(sarama_check, broker, "roundtrip") == "ok roundtrip 200 records"


def test_sarama_idempotent_producer(sarama_check, broker):
    assert run(sarama_check, broker, "idempotent") == "ok idempotent 200 records"


def test_sarama_consumer_group_reads_and_its_v1_commit_is_refused_as_kafka_4_does(sarama_check, broker):
    # Every record arrives through the group's assignment; the commit (OffsetCommit v1) is
    # refused, so the committed offset stays unset (-2) as against Kafka 4.
    assert run(sarama_check, broker, "group") == "ok group 200 records committed -2"
    assert "unsupported version 1 of OffsetCommit" in broker.log_text()
