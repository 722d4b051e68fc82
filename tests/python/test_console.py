"""The web console in headless Chromium (issue 18, acceptance 2): Debian's `chromium` driven
by Playwright (from PyPI, `executable_path` pointed at the system browser; no browser
download). The overview, a topic page and a group page render with the right numbers
(checked in the DOM), a new record moves the topic's end offset without a reload, and a
screenshot of each page is written to target/console/ and checked to be non-blank."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gregor_testlib import REPO_ROOT, confluent_common, confluent_producer, create_topic_confluent, unique_topic

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO_ROOT / "target" / "console"


def assert_not_blank(path: Path):
    from PIL import Image

    img = Image.open(path).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 20, f"{path} looks blank ({colours and len(colours)} colours)"


@pytest.fixture
def page():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium not installed (scripts/test.sh installs it with apt)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            pg = browser.new_page(viewport={"width": 1100, "height": 900})
            yield pg
        finally:
            browser.close()


def text(page, testid: str) -> str:
    return page.get_by_test_id(testid).first.inner_text().strip()


def test_console_pages(broker_factory, page):
    from confluent_kafka import Consumer, TopicPartition
    from playwright.sync_api import expect

    broker = broker_factory(http=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    topic = unique_topic("console")
    create_topic_confluent(broker.bootstrap, topic, partitions=3)
    p = confluent_producer(broker.bootstrap, linger_ms=5, message_timeout_ms=30000)
    for i in range(60):
        p.produce(topic, value=f"v{i}".encode(), partition=i % 3)
    assert p.flush(30) == 0

    group = unique_topic("console-group")
    conf = confluent_common(broker.bootstrap)
    conf.update({"group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c = Consumer(conf)
    try:
        c.subscribe([topic])
        c.poll(5)
        c.commit(offsets=[TopicPartition(topic, q, 5 * (q + 1)) for q in range(3)], asynchronous=False)

        # Overview.
        page.goto(broker.http_url + "/")
        expect(page.get_by_test_id(f"topic-end-{topic}")).to_have_text("60", timeout=15000)
        assert text(page, "brokers") == "1"
        assert text(page, "controller") == "0"
        assert text(page, "under-replicated") == "0"
        expect(page.get_by_test_id(f"group-lag-{group}")).to_have_text(str(60 - 30), timeout=15000)
        page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)

        # Topic page: each partition's offsets, leader, and the end offset moving live.
        page.goto(broker.http_url + f"/#/topic/{topic}")
        expect(page.get_by_test_id("topic-name")).to_have_text(topic, timeout=15000)
        for q in range(3):
            assert text(page, f"p{q}-end") == "20"
            assert text(page, f"p{q}-hw") == "20"
            assert text(page, f"p{q}-start") == "0"
            assert text(page, f"p{q}-leader") == "0"
        assert text(page, "topic-end") == "60"
        page.screenshot(path=str(SHOTS / "topic.png"), full_page=True)
        p.produce(topic, value=b"one more", partition=1)
        assert p.flush(30) == 0
        expect(page.get_by_test_id("p1-end")).to_have_text("21", timeout=10000)  # no reload
        expect(page.get_by_test_id("topic-end")).to_have_text("61", timeout=10000)

        # Group page: member owning all 3 partitions, committed offsets and lag.
        page.goto(broker.http_url + f"/#/group/{group}")
        expect(page.get_by_test_id("group-id")).to_have_text(group, timeout=15000)
        expect(page.get_by_test_id("group-members")).to_have_text("1", timeout=15000)
        for q in range(3):
            end = 21 if q == 1 else 20
            assert text(page, f"committed-{topic}-{q}") == str(5 * (q + 1))
            assert text(page, f"lag-{topic}-{q}") == str(end - 5 * (q + 1))
        assert text(page, "group-lag") == str(61 - 30)
        # The lag chart needs two samples (one every 2 s).
        expect(page.get_by_test_id("lag-chart")).to_be_visible(timeout=15000)
        page.screenshot(path=str(SHOTS / "group.png"), full_page=True)
    finally:
        c.close()

    for name in ("overview", "topic", "group"):
        assert_not_blank(SHOTS / f"{name}.png")
