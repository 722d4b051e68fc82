"""The HTTP listener under hostile clients (issue 18, acceptance 3), with raw sockets:
idle and slow connections are closed after `[http] header_timeout_ms`, a 10 MB request
header is refused, garbage never panics the broker (the fixture fails the test on a panic
in the log), and connections over `[http] max_connections` are closed at accept."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

HEADER_TIMEOUT_MS = 1000


@pytest.fixture
def http_broker(broker_factory, tmp_path):
    cfg = tmp_path / "gregor.toml"
    cfg.write_text(
        "[http]\n"
        f"header_timeout_ms = {HEADER_TIMEOUT_MS}\n"
        "max_header_bytes = 16384\n"
        "max_connections = 8\n"
        "max_connection_age_ms = 60000\n"
    )
    return broker_factory(http=True, extra_args=("--config", str(cfg)))


def connect(broker) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", broker.http_port), timeout=10)
    return s


def closed_within(s: socket.socket, seconds: float) -> bool:
    """Reads (discarding any response) until EOF or reset; True if that came in time."""
    s.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if s.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def healthy(broker) -> bool:
    with urllib.request.urlopen(broker.http_url + "/healthz", timeout=10) as r:
        return r.status == 200


def test_idle_connection_is_closed(http_broker):
    s = connect(http_broker)
    started = time.monotonic()
    assert closed_within(s, HEADER_TIMEOUT_MS / 1000 + 5), "idle connection still open"
    assert time.monotonic() - started >= HEADER_TIMEOUT_MS / 1000 * 0.8
    s.close()
    assert healthy(http_broker)


def test_slow_header_is_closed(http_broker):
    s = connect(http_broker)
    s.sendall(b"GET /metrics HTTP/1.1\r\n")
    started = time.monotonic()
    closed = False
    # One header byte every 200 ms never completes the header in time.
    while time.monotonic() - started < HEADER_TIMEOUT_MS / 1000 + 5:
        try:
            s.sendall(b"X")
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        if closed_within(s, 0.2):
            closed = True
            break
    assert closed, "a slow-header client was not closed"
    s.close()
    assert healthy(http_broker)


def test_huge_header_is_refused(http_broker):
    s = connect(http_broker)
    s.settimeout(10)
    refused = False
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
        chunk = b"a" * 65536
        for _ in range(10 * 1024 * 1024 // len(chunk)):
            s.sendall(chunk)
        s.sendall(b"\r\n\r\n")
        reply = s.recv(4096)
        refused = reply == b"" or reply.startswith(b"HTTP/1.1 431") or reply.startswith(b"HTTP/1.1 400")
    except (BrokenPipeError, ConnectionResetError):
        refused = True  # closed while we were still sending
    assert refused
    s.close()
    assert healthy(http_broker)


def test_garbage_and_bad_requests_do_not_hurt(http_broker):
    payloads = [
        bytes(range(256)) * 4,
        b"\x00" * 1000 + b"\r\n\r\n",
        b"GET /" + b"%" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/topics HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\nabc",
        b"GET /api/topics/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/groups/" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x01" * 200,  # a TLS ClientHello
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    for p in payloads:
        s = connect(http_broker)
        try:
            s.sendall(p)
        except (BrokenPipeError, ConnectionResetError):
            pass
        closed_within(s, 3)
        s.close()
    assert healthy(http_broker)


def test_connections_over_the_limit_are_closed(http_broker):
    held = [connect(http_broker) for _ in range(8)]
    try:
        time.sleep(0.2)  # let the listener accept them all
        extra = connect(http_broker)
        assert closed_within(extra, 0.9), "a connection over max_connections was kept"
        extra.close()
    finally:
        for s in held:
            s.close()
    # The slots are free again.
    from gregor_testlib import wait_for

    wait_for(lambda: healthy(http_broker), timeout=10, what="HTTP serves again")
