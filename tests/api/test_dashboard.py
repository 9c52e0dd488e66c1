"""The dashboard in headless Chromium (playwright) against the API and a real redis-server: click through a filter,
open an attempt, follow it to its action, change the time range, reload the address and see the same view.
Screenshots: tests/api/artifacts/*.png (gitignored)."""

from __future__ import annotations

import datetime
import re
import zoneinfo
from typing import TYPE_CHECKING

import pytest

from tests.api.dashboard_site import (
    OLD_S,
    QUARANTINE_REASON,
    ZONE,
    Site,
    ready,
    shot,
)

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

pytestmark = pytest.mark.browser


def rows(page: Page) -> Locator:
    return page.locator("#attempts tbody tr[data-id]")


def column(page: Page, index: int) -> list[str]:
    return [text.strip() for text in rows(page).locator(f"td:nth-child({index})").all_inner_texts()]


def test_filter_open_follow_to_action_and_reload(site: Site, page: Page) -> None:
    from playwright.sync_api import expect

    page.goto(site.url())
    ready(page)
    assert "token" not in page.url  # the token left the address bar
    hosts = column(page, 7)
    for host in ("pool.minexmr.com", "xmr.pool.example", "pastebin.com", "evil.example.org", "report.example"):
        assert hosts.count(host) == 1, hosts
    assert "old.example" not in hosts  # three days ago: outside the default hour
    expect(rows(page).filter(has_text="pastebin.com").first).to_contain_text("fetch(")  # the action it was during
    shot(page, "overview")

    page.fill("#filters [name=sandbox]", "agents")
    page.click("#filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"sandbox=agents"))
    ready(page)
    assert set(column(page, 2)) == {"agents"}
    page.select_option("#filters [name=category]", "tunnel")
    expect(page).to_have_url(re.compile(r"sandbox=agents&category=tunnel"))
    ready(page)
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("198.51.100.7:22/tcp")
    shot(page, "filtered")

    tunnel = site.by_host("")
    rows(page).first.locator("a.open").click()
    expect(page).to_have_url(re.compile(f"attempt={tunnel.id}"))
    panel = page.locator("#panel")
    expect(panel).to_be_visible()
    expect(panel).to_contain_text("SSH-2.0-OpenSSH_9.6")  # the evidence
    expect(panel).to_contain_text("ssh -D 1080 user@198.51.100.7")  # the correlated action's command
    expect(panel.locator("dl.facts")).to_contain_text(["tunnel"])
    expect(panel).to_contain_text("Neighbouring attempts")
    expect(panel.locator("ol.neighbours li")).to_have_count(3)  # the two before it in its sandbox, and itself
    shot(page, "attempt")

    panel.locator("a.follow", has_text="a-2").click()
    expect(page).to_have_url(re.compile(r"box=agents&act=a-2"))
    current = page.locator("#panel ol.timeline > li.current")
    expect(current).to_have_attribute("data-action", "a-2")
    expect(current.locator("ul.under li")).to_contain_text(["198.51.100.7:22/tcp"])  # the attempt under its action
    expect(panel).to_contain_text("version 1 (sha256:")  # the policy applied
    quarantine = panel.locator("dd[data-field=quarantine]")
    if site.quarantine_stubbed:
        expect(quarantine).to_have_text(re.compile(f"^QUARANTINED since .* by gw1: {re.escape(QUARANTINE_REASON)}$"))
    else:  # the API's own route, with nothing quarantined
        expect(quarantine).to_have_text("not quarantined")
    shot(page, "action")

    address = page.url
    page.reload()
    ready(page)
    assert page.url == address
    expect(page.locator("#panel ol.timeline > li.current")).to_have_attribute("data-action", "a-2")
    expect(page.locator("#filters [name=sandbox]")).to_have_value("agents")
    expect(page.locator("#filters [name=category]")).to_have_value("tunnel")
    expect(rows(page)).to_have_count(1)
    shot(page, "reloaded")

    page.go_back()
    expect(page.locator("#panel")).to_contain_text("SSH-2.0-OpenSSH_9.6")


def _input_value(ts: float, zone: str) -> str:
    """``ts`` as a ``datetime-local`` input holds it in ``zone``: HTML's normalized form leaves out seconds that are
    zero (a range starting on a whole minute read back as ``T19:02``, not ``T19:02:00``: once in 60 runs, CI)."""
    moment = datetime.datetime.fromtimestamp(ts, zoneinfo.ZoneInfo(zone))
    return moment.strftime("%Y-%m-%dT%H:%M" if moment.second == 0 else "%Y-%m-%dT%H:%M:%S")


def test_absolute_time_range_in_the_shown_zone(site: Site, page: Page) -> None:
    from playwright.sync_api import expect

    page.goto(site.url())
    ready(page)
    expect(page.locator("#zone")).to_contain_text(ZONE)
    expect(rows(page).filter(has_text="old.example")).to_have_count(0)

    old = site.now - OLD_S
    start = (old - 600) // 60 * 60  # a whole minute: the input shows it without seconds (and `old + 600` mostly with)
    page.select_option("#range", "custom")
    page.fill("#from", _input_value(start, ZONE))  # typed in the browser's zone, as shown
    page.fill("#to", _input_value(old + 600, ZONE))
    page.click("#set-range")
    expect(page).to_have_url(re.compile(r"from=.*&to="))
    ready(page)
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("old.example")
    shown = datetime.datetime.fromtimestamp(old, zoneinfo.ZoneInfo(ZONE)).strftime("%Y-%m-%d %H:%M:%S")
    expect(rows(page).first.locator("td").first).to_contain_text(shown)
    shot(page, "absolute-range")

    page.reload()
    ready(page)
    expect(rows(page)).to_have_count(1)
    expect(page.locator("#range")).to_have_value("custom")
    expect(page.locator("#from")).to_have_value(_input_value(start, ZONE))

    page.select_option("#tz", "utc")
    expect(page).to_have_url(re.compile(r"tz=utc"))
    expect(page.locator("#zone")).to_contain_text("UTC")
    expect(page.locator("#from")).to_have_value(_input_value(start, "UTC"))
    utc = datetime.datetime.fromtimestamp(old, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    expect(rows(page).first.locator("td").first).to_contain_text(utc)

    page.select_option("#range", "7d")
    expect(page).to_have_url(re.compile(r"range=7d"))
    ready(page)
    assert "from=" not in page.url
    expect(rows(page).filter(has_text="old.example")).to_have_count(1)
    expect(rows(page).filter(has_text="pool.minexmr.com")).to_have_count(1)


def test_action_and_free_text_filters(site: Site, page: Page) -> None:
    from playwright.sync_api import expect

    page.goto(site.url("action=would-block"))
    ready(page)
    expect(page.locator("#filters [name=action]")).to_have_value("would-block")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("report.example")
    page.select_option("#filters [name=action]", "record")
    ready(page)
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("192.0.2.81:8333/tcp")

    page.select_option("#filters [name=action]", "")
    page.fill("#filters [name=q]", "PASTEBIN not-allowlisted")  # every word, any field, any case
    page.press("#filters [name=q]", "Enter")
    expect(page).to_have_url(re.compile(r"q=PASTEBIN"))
    ready(page)
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("pastebin.com")
    expect(rows(page).first).to_contain_text("×3")  # an aggregate of three repeats

    page.fill("#filters [name=q]", "")
    page.fill("#filters [name=destination]", "example.org")  # a name under it
    page.press("#filters [name=destination]", "Enter")
    ready(page)
    expect(rows(page)).to_have_count(1)
    expect(rows(page).first).to_contain_text("evil.example.org")
    page.fill("#filters [name=reason]", "no-such-reason")
    page.press("#filters [name=reason]", "Enter")
    ready(page)
    expect(rows(page)).to_have_count(0)
    expect(page.locator("#attempts tbody")).to_contain_text("no attempts match this view")
    site.expected.append("the server responded with a status of 400")
    page.fill("#filters [name=reason]", "Not A Reason")  # the API refuses it: the page says why
    page.press("#filters [name=reason]", "Enter")
    ready(page)
    expect(page.locator("#status.error")).to_contain_text("400")
    expect(page.locator("#status.error")).to_contain_text("(reason)")
