"""The dashboard's live update in headless Chromium: a record written while the page is open appears without a
reload; paused, the page holds new records back and counts them, and shows them on resume; the pause is in the
address. Records are written through the project's writer into the real redis-server the API follows."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from egress.record.store import RecordStore
from tests.api.dashboard_site import Site, ready, shot
from tests.record import record
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser


@pytest.fixture
def write(redis_server: RedisServer) -> Iterator[RecordStore]:
    with tempfile.TemporaryDirectory(prefix="egt-api-dash-live-") as spool:
        store = RecordStore(redis_server.url, Path(spool), "gw2", retry_interval=0.0)
        try:
            yield store
        finally:
            store.close()


def _new(store: RecordStore, host: str, sandbox: str = "agents") -> None:
    store.write([record(time.time(), sandbox=sandbox, dst="198.51.100.99", dport=443, host=host, category="policy",
                        reason="not-allowlisted", protocol="tcp", detector="")])  # fmt: skip


def _flowing(page: Page) -> None:
    """Wait until the follow stream has delivered its first event or heartbeat: the API has taken its position in
    the streams, so a record written from now on reaches the page."""
    from playwright.sync_api import expect

    expect(page.locator("body")).to_have_attribute("data-follow", "open")


def _live(page: Page) -> None:
    from playwright.sync_api import expect

    _flowing(page)
    expect(page.locator("#live-state")).to_have_text("live")


def test_live_update_and_pause(site: Site, write: RecordStore) -> None:
    from playwright.sync_api import expect

    page = site.page()
    try:
        page.goto(site.url("sandbox=agents"))
        ready(page)
        _live(page)
        hosts = page.locator("#attempts tbody tr[data-id] td:nth-child(7)")
        _new(write, "live-one.example")
        expect(hosts.filter(has_text="live-one.example")).to_have_count(1)
        _new(write, "other-sandbox.example", sandbox="builders")  # outside the filter: never shown

        page.click("#pause")
        expect(page).to_have_url(re.compile(r"paused=1"))
        expect(page.locator("#pause")).to_have_attribute("aria-pressed", "true")
        _new(write, "live-two.example")
        expect(page.locator("#live-state")).to_contain_text("paused, 1 new")
        expect(hosts.filter(has_text="live-two.example")).to_have_count(0)
        shot(page, "live-paused")

        page.click("#pause")
        expect(page).not_to_have_url(re.compile(r"paused"))
        expect(hosts.filter(has_text="live-two.example")).to_have_count(1)  # resuming shows what came
        expect(hosts.filter(has_text="other-sandbox.example")).to_have_count(0)
        _live(page)

        page.click("#pause")
        expect(page).to_have_url(re.compile(r"paused=1"))
        page.reload()  # the pause is part of the view
        ready(page)
        expect(page.locator("#pause")).to_have_text("Resume live")
        _flowing(page)
        expect(page.locator("#live-state")).to_have_text("live: paused, 0 new")
        _new(write, "live-three.example")
        expect(page.locator("#live-state")).to_have_text("live: paused, 1 new")
        expect(hosts.filter(has_text="live-three.example")).to_have_count(0)
    finally:
        page.context.close()
    site.check_errors()
