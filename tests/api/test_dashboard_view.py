"""The dashboard in headless Chromium: record text stays text, the keyboard reaches everything, the chart's axes,
and the page at a phone's width. Screenshots: tests/api/artifacts/*.png (gitignored)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from tests.api.dashboard_site import HOSTILE, Site, ready, shot

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser


def test_record_text_is_shown_as_text(site: Site, page: Page) -> None:
    from playwright.sync_api import expect

    hostile = site.by_host("html.example")
    page.goto(site.url(f"attempt={hostile.id}"))
    ready(page)
    evidence = page.locator("#panel pre.evidence-full")
    expect(evidence).to_have_text(hostile.evidence)  # the characters themselves, not markup
    expect(page.locator("#panel pre.command")).to_have_text(HOSTILE)
    expect(page.locator("#attempts td.evidence").filter(has_text="<img")).to_have_count(1)
    page.locator("#panel a.follow").click()
    expect(page.locator("#panel ol.timeline pre.command")).to_have_text(HOSTILE)
    assert page.locator("img, script:not([src])").count() == 0  # nothing the records hold became an element
    shot(page, "record-text")


def test_keyboard_reaches_an_attempt_and_escape_closes_it(site: Site, page: Page) -> None:
    from playwright.sync_api import expect

    page.goto(site.url())
    ready(page)
    page.keyboard.press("/")  # jumps to the text filter
    assert page.evaluate("() => document.activeElement.name") == "q"
    page.keyboard.type("xmr.pool")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"q=xmr.pool"))
    ready(page)
    for _ in range(300):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.matches('#attempts a.open')"):
            break
    else:
        pytest.fail("Tab never reached the attempt's link")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"attempt="))
    expect(page.locator("#panel")).to_contain_text("xmr.pool.example")
    assert page.evaluate("() => document.activeElement.id") == "panel-body"  # the panel took the focus
    page.keyboard.press("Escape")
    expect(page.locator("#panel")).to_be_hidden()
    assert "attempt=" not in page.url
    assert page.evaluate("() => document.activeElement.matches('#attempts a.open')")  # back where it was


def test_chart_axes_and_colours(site: Site, page: Page) -> None:
    from playwright.sync_api import expect

    page.goto(site.url())
    ready(page)
    ticks = page.locator("#chart text.tick-y").all_text_contents()
    assert ticks and all(re.fullmatch(r"\d+", tick) for tick in ticks), ticks
    assert [int(t) for t in ticks] == sorted({int(t) for t in ticks})
    assert page.locator("#chart text.tick-x").count() >= 4
    expect(page.locator("#chart text").filter(has_text="time (Europe/Berlin")).to_have_count(1)
    ticks_of = "(n) => import('/dashboard/charts.js').then((m) => m.integerTicks(n))"
    assert page.evaluate(ticks_of, 0) == [0, 1]
    assert page.evaluate(ticks_of, 1) == [0, 1]
    assert page.evaluate(ticks_of, 7) == [0, 2, 4, 6, 8]
    assert page.evaluate(ticks_of, 13) == [0, 5, 10, 15]
    assert page.evaluate(ticks_of, 2.5) == [0, 1, 2, 3]
    assert page.evaluate(ticks_of, 1234) == [0, 500, 1000, 1500]
    colours = page.evaluate("() => import('/dashboard/charts.js').then((m) => m.COLOURS)")
    for category, colour in colours.items():
        bars = page.locator(f"#chart rect[data-category={category}]")
        if bars.count():
            assert bars.first.get_attribute("fill") == colour
    # A bar is a link to its own span: the range becomes that minute.
    page.locator("#chart a.bucket:has(rect[data-category=tunnel])").click()
    expect(page).to_have_url(re.compile(r"from=.*&to="))
    ready(page)
    expect(page.locator("#attempts tbody tr[data-id]").filter(has_text="198.51.100.7")).to_have_count(1)


def test_phone_width(site: Site) -> None:
    from playwright.sync_api import expect

    page = site.page(width=390, height=844)
    try:
        page.goto(site.url())
        ready(page)
        overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than the phone"
        shot(page, "phone-overview")
        page.locator("#attempts a.open").first.click()
        expect(page.locator("#panel")).to_be_visible()
        box = page.locator("#panel").bounding_box()
        assert box is not None and box["x"] >= 0 and box["width"] <= 390
        shot(page, "phone-attempt", full_page=False)
    finally:
        page.context.close()
    site.check_errors()


def test_wide_screen_has_no_sideways_scroll(site: Site, page: Page) -> None:
    page.goto(site.url())
    ready(page)
    assert page.evaluate("() => document.documentElement.scrollWidth <= document.documentElement.clientWidth")
