"""pytest fixtures: run the real gregor binary for each test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gregor_testlib import DEFAULT_BIN, Broker, Cluster


@pytest.fixture(scope="session")
def gregor_bin() -> Path:
    path = Path(os.environ.get("GREGOR_BIN", DEFAULT_BIN))
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"gregor binary not found at {path}; build it first with "
            "`cargo build --release` (scripts/test.sh does this)",
            pytrace=False,
        )
    return path


@pytest.fixture
def broker_factory(gregor_bin, tmp_path_factory):
    """Make brokers (each with its own temp dir); all are cleaned up at teardown.

    Teardown kills any still-running process, then fails the test if any
    broker log mentions a panic.
    """
    made: list[Broker] = []

    def make(data_dir=None, extra_args=(), start=True, env=None, http=False) -> Broker:
        base = tmp_path_factory.mktemp("gregor")
        b = Broker(gregor_bin, base_dir=base, data_dir=data_dir, extra_args=extra_args, env=env, http=http)
        made.append(b)
        if start:
            b.start()
        return b

    yield make

    panics = []
    for b in made:
        b.cleanup(keep_dir=True)
        if "panicked" in b.log_text():
            panics.append(f"--- {b.log_path} ---\n{b.log_tail(120)}")
        shutil.rmtree(b.base_dir, ignore_errors=True)
    if panics:
        pytest.fail("broker log contains 'panicked':\n" + "\n\n".join(panics), pytrace=False)


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A started broker on 127.0.0.1:<ephemeral> with a fresh data dir."""
    return broker_factory()


@pytest.fixture
def cluster_factory(gregor_bin, tmp_path_factory, request):
    """Make started Clusters (gregor_testlib.Cluster: N voters on loopback, each its own
    ports, data dir and logs); teardown stops every process and removes every dir, then
    fails the test if any node's log mentions a panic. A failed test's report carries the
    tail of every node's log."""
    made: list[Cluster] = []
    request.node._gregor_clusters = made

    def make(size=3, start=True, extra_args=(), env=None, voters=None) -> Cluster:
        c = Cluster(
            gregor_bin, size, base_dir=tmp_path_factory.mktemp("cluster"), extra_args=extra_args, env=env, voters=voters
        )
        made.append(c)
        if start:
            c.start()
        return c

    yield make

    panics = []
    for c in made:
        c.cleanup(keep_dir=True)
        if c.panics():
            panics.append(c.log_tails(120))
        shutil.rmtree(c.base_dir, ignore_errors=True)
    if panics:
        pytest.fail("cluster node log contains 'panicked':\n" + "\n\n".join(panics), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the clusters' log tails to a failed test's report (the dirs are removed)."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        for c in getattr(item, "_gregor_clusters", []):
            try:
                report.sections.append((f"gregor cluster logs ({c.base_dir})", c.log_tails()))
            except Exception as exc:  # noqa: BLE001 - a report must never fail
                report.sections.append(("gregor cluster logs", f"unreadable: {exc!r}"))
