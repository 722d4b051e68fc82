"""Security (issue 19): listeners with security protocols, TLS, SASL PLAIN / SCRAM, SCRAM users.

One broker per test on ephemeral ports with four listeners (PLAINTEXT first, then SASL_SSL,
SASL_PLAINTEXT, SSL), given as repeatable `--listen PROTOCOL://127.0.0.1:0`. Certificates
(a CA, the broker's for 127.0.0.1, a client's) are made with the openssl CLI in a temp dir.
SCRAM users are made with `gregor user create` on the PLAINTEXT listener; PLAIN users come
from `sasl.plain.users.file`.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from gregor_testlib import unique_topic, wait_for

OPENSSL = shutil.which("openssl")
KCAT = shutil.which("kcat") or shutil.which("kafkacat")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")

LISTENER_RE = re.compile(r"^gregor listener (\w+)://(\S+):(\d+)\s*$", re.M)
PLAIN_USER, PLAIN_PASSWORD = "plain-user", "plain-secret:with-colon"


def _openssl(*args, cwd):
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """CA, broker certificate (SAN 127.0.0.1 / localhost), client certificate."""
    d = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=Gregor Test CA", cwd=d)
    (d / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    (d / "client.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
    )
    for name, subj in (("server", "/CN=localhost"), ("client", "/O=Gregor/CN=kcat-client")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", subj, cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def listeners_of(broker) -> dict:
    """protocol -> port, from the `gregor listener PROTOCOL://HOST:PORT` lines of the last start."""
    text = broker.log_path.read_text("utf-8", "replace")
    return {m.group(1): int(m.group(3)) for m in LISTENER_RE.finditer(text)}


def write_config(base: Path, certs: Path, client_auth: str = "requested") -> Path:
    users = base / "plain-users.txt"
    users.write_text(f"# PLAIN users\n{PLAIN_USER}:{PLAIN_PASSWORD}\n")
    conf = base / "security.toml"
    conf.write_text(
        f'"ssl.certificate.location" = "{certs / "server.pem"}"\n'
        f'"ssl.key.location" = "{certs / "server.key"}"\n'
        f'"ssl.ca.location" = "{certs / "ca.pem"}"\n'
        f'"ssl.client.auth" = "{client_auth}"\n'
        f'"sasl.enabled.mechanisms" = "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"\n'
        f'"sasl.plain.users.file" = "{users}"\n'
        f'"connection.failed.authentication.delay.ms" = 300\n'
    )
    return conf


@pytest.fixture
def secure_broker(broker_factory, certs, tmp_path):
    conf = write_config(tmp_path, certs)
    b = broker_factory(extra_args=(
        "--listen", "SASL_SSL://127.0.0.1:0",
        "--listen", "SASL_PLAINTEXT://127.0.0.1:0",
        "--listen", "SSL://127.0.0.1:0",
        "--config", str(conf),
    ))
    ports = listeners_of(b)
    assert set(ports) == {"PLAINTEXT", "SASL_SSL", "SASL_PLAINTEXT", "SSL"}, ports
    assert ports["PLAINTEXT"] == b.port
    return b


def gregor_user(broker, *args):
    r = subprocess.run(
        [str(broker.bin_path), "user", *args, "--brokers", broker.bootstrap],
        capture_output=True, timeout=60, text=True,
    )
    assert r.returncode == 0, f"gregor user {args}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def confluent_conf(port, protocol, certs, mechanism=None, user=None, password=None, **extra):
    conf = {
        "bootstrap.servers": f"127.0.0.1:{port}",
        "broker.address.family": "v4",
        "security.protocol": protocol,
        "socket.timeout.ms": 10000,
    }
    if "SSL" in protocol:
        conf["ssl.ca.location"] = str(certs / "ca.pem")
    if mechanism:
        conf.update({"sasl.mechanism": mechanism, "sasl.username": user, "sasl.password": password})
    conf.update(extra)
    return conf


def confluent_round_trip(conf, port, n=20):
    """Create a topic, produce n records, consume them back in a group; the Metadata brokers
    name the listener the client connected on."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(conf)
    md = admin.list_topics(timeout=20)
    assert [(b.host, b.port) for b in md.brokers.values()] == [("127.0.0.1", port)]
    topic = unique_topic("sec")
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(20)

    p = Producer({**conf, "acks": "all"})
    for i in range(n):
        p.produce(topic, key=str(i % 3).encode(), value=f"v{i}".encode())
    assert p.flush(30) == 0

    c = Consumer({**conf, "group.id": f"g-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + 60
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.value().decode())
    c.commit(asynchronous=False)
    c.close()
    assert sorted(got) == sorted(f"v{i}" for i in range(n))


def test_confluent_sasl_ssl_scram_sha512(secure_broker, certs):
    gregor_user(secure_broker, "create", "alice", "--password", "alice-pw")
    port = listeners_of(secure_broker)["SASL_SSL"]
    confluent_round_trip(confluent_conf(port, "SASL_SSL", certs, "SCRAM-SHA-512", "alice", "alice-pw"), port)


def test_confluent_sasl_ssl_plain_from_users_file(secure_broker, certs):
    port = listeners_of(secure_broker)["SASL_SSL"]
    confluent_round_trip(confluent_conf(port, "SASL_SSL", certs, "PLAIN", PLAIN_USER, PLAIN_PASSWORD), port)


def test_kafka_python_sasl_plaintext_scram_sha256(secure_broker):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import NewTopic

    gregor_user(secure_broker, "create", "bob", "--password", "bob-pw", "--mechanism", "SCRAM-SHA-256")
    port = listeners_of(secure_broker)["SASL_PLAINTEXT"]
    conf = dict(
        bootstrap_servers=f"127.0.0.1:{port}", security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256", sasl_plain_username="bob", sasl_plain_password="bob-pw",
    )
    topic = unique_topic("kp-sec")
    admin = KafkaAdminClient(**conf)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(acks="all", **conf)
    for i in range(10):
        producer.send(topic, f"m{i}".encode())
    producer.flush(30)
    producer.close()
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=10000, **conf)
    got = [m.value.decode() for _, m in zip(range(10), consumer)]
    consumer.close()
    assert got == [f"m{i}" for i in range(10)]


# ---- raw protocol: the SASL gate, a wrong password, a plaintext client on a TLS port

def _request(api_key, version, corr, body: bytes) -> bytes:
    client = b"sec-test"
    header = struct.pack(">hhih", api_key, version, corr, len(client)) + client
    msg = header + body
    return struct.pack(">i", len(msg)) + msg


def _read_frame(sock) -> bytes | None:
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return None
        head += chunk
    (n,) = struct.unpack(">i", head)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _closed(sock, timeout=5.0) -> bool:
    """True if the peer closes (EOF or reset) within timeout, reading whatever comes."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def _handshake(sock, mechanism: bytes):
    sock.sendall(_request(17, 1, 1, struct.pack(">h", len(mechanism)) + mechanism))
    resp = _read_frame(sock)
    (corr, err) = struct.unpack(">ih", resp[:6])
    return err


def test_wrong_password_gets_sasl_authentication_failed_and_close(secure_broker):
    port = listeners_of(secure_broker)["SASL_PLAINTEXT"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert _handshake(s, b"PLAIN") == 0
        token = b"\0" + PLAIN_USER.encode() + b"\0wrong-password"
        started = time.monotonic()
        s.sendall(_request(36, 1, 2, struct.pack(">i", len(token)) + token))
        resp = _read_frame(s)
        waited = time.monotonic() - started
        corr, err = struct.unpack(">ih", resp[:6])
        assert (corr, err) == (2, 58)  # SASL_AUTHENTICATION_FAILED
        assert waited >= 0.25, f"answered after {waited:.3f}s, before the failed-authentication delay"
        assert _closed(s)
    assert "wrong-password" not in secure_broker.log_text()

    # A request other than ApiVersions / SASL before authenticating closes the connection.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(_request(3, 1, 7, struct.pack(">i", 0)))  # Metadata v1, no topics
        assert _closed(s)

    # confluent-kafka reports the failure (and does not hang) with a wrong SCRAM password.
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    gregor_user(secure_broker, "create", "carol", "--password", "right")
    errors = []
    admin = AdminClient({
        **confluent_conf(port, "SASL_PLAINTEXT", None, "SCRAM-SHA-256", "carol", "wrong"),
        "error_cb": lambda e: errors.append(e),
    })
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)
    wait_for(lambda: admin.poll(0.2) is not None and errors, timeout=10, what="error_cb")
    assert any("uthenticat" in str(e) for e in errors), errors


def test_plaintext_client_on_tls_port_fails_cleanly(secure_broker):
    port = listeners_of(secure_broker)["SSL"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(_request(18, 0, 1, b""))  # ApiVersions v0, in plaintext
        started = time.monotonic()
        assert _closed(s), "the TLS listener kept a plaintext connection open"
        assert time.monotonic() - started < 5

    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}", "broker.address.family": "v4"})
    started = time.monotonic()
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)
    assert time.monotonic() - started < 10
    # ... and the broker keeps serving TLS clients.
    assert "TLS handshake failed" in secure_broker.log_text()


def test_user_create_login_restart_delete(secure_broker, certs):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    gregor_user(secure_broker, "create", "dave", "--password", "dave-pw")
    listed = gregor_user(secure_broker, "list")
    assert re.search(r"^dave\tSCRAM-SHA-256\(iterations=8192\),SCRAM-SHA-512\(iterations=8192\)$", listed, re.M), listed

    def login(mechanism, password, protocol="SASL_SSL"):
        port = listeners_of(secure_broker)[protocol]
        admin = AdminClient(confluent_conf(port, protocol, certs, mechanism, "dave", password))
        return admin.list_topics(timeout=5)

    # On every SASL listener, with every mechanism (PLAIN checks the SCRAM credential).
    for protocol in ("SASL_SSL", "SASL_PLAINTEXT"):
        for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"):
            login(mechanism, "dave-pw", protocol)

    secure_broker.restart()
    login("SCRAM-SHA-512", "dave-pw")
    assert "dave" in gregor_user(secure_broker, "list")
    store = secure_broker.data_dir / "__scram_credentials.json"
    assert "dave-pw" not in store.read_text()

    gregor_user(secure_broker, "delete", "dave")
    assert "dave" not in gregor_user(secure_broker, "list")
    for mechanism in ("SCRAM-SHA-512", "PLAIN"):
        with pytest.raises(KafkaException):
            login(mechanism, "dave-pw")


@pytest.mark.skipif(KCAT is None, reason="kcat not installed")
def test_kcat_over_ssl_with_client_certificate(broker_factory, certs, tmp_path):
    conf = write_config(tmp_path, certs, client_auth="required")
    b = broker_factory(extra_args=("--listen", "SSL://127.0.0.1:0", "--config", str(conf)))
    port = listeners_of(b)["SSL"]
    topic = unique_topic("kcat-ssl")
    ssl = ["-X", "security.protocol=SSL", "-X", f"ssl.ca.location={certs / 'ca.pem'}"]
    client = ["-X", f"ssl.certificate.location={certs / 'client.pem'}",
              "-X", f"ssl.key.location={certs / 'client.key'}"]
    base = [KCAT, "-X", "broker.address.family=v4", "-b", f"127.0.0.1:{port}", *ssl]
    lines = [f"line {i}" for i in range(20)]
    r = subprocess.run([*base, *client, "-P", "-t", topic], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*base, *client, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%s\n"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert [x for x in r.stdout.splitlines() if x] == lines
    # Without a client certificate the handshake fails (ssl.client.auth=required).
    r = subprocess.run([*base, "-L", "-m", "5"], capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert "TLS handshake failed" in b.log_text()
