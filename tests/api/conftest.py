"""Fixtures of the dashboard's browser tests (test_dashboard*.py): the seeded site in headless Chromium, one per
module, and a page on it whose clean-up fails the test on any script error, CSP violation or dialog."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.api.dashboard_site import Site, playwright_driver, running_site
from tests.redis_server import RedisServer

if TYPE_CHECKING:
    from playwright.sync_api import Page


@pytest.fixture(scope="module")
def site(redis_server: RedisServer) -> Iterator[Site]:
    with playwright_driver() as driver, running_site(redis_server, driver) as made:
        yield made


@pytest.fixture
def page(site: Site) -> Iterator[Page]:
    made = site.page()
    yield made
    made.context.close()
    site.check_errors()  # no script error, no CSP violation, no dialog (record text run as code)
