"""The dashboard's browser tests' site: a real redis-server holding records written through the project's own writer
(`RecordStore.write`, `query.write_actions`), the API on a loopback port, and Debian's chromium driven by playwright;
screenshots go to tests/api/artifacts/ (gitignored; docs/testing.md)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from fastapi import FastAPI

from egress.api.app import create_app
from egress.policy_release import release
from egress.record import query
from egress.record.actions import ActionRecord
from egress.record.policy_store import PolicyHistory
from egress.record.schema import AttemptRecord
from egress.record.store import RecordStore
from tests.api import READ, ApiServer, seed_actions, seed_attempts, settings
from tests.needs import unavailable
from tests.record import record
from tests.redis_server import RedisServer
from tests.waiting import scaled

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

CHROMIUM: Final = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS: Final = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
HOSTILE: Final = "<img src=x onerror=alert(1)>"
ZONE: Final = "Europe/Berlin"
"""The browser's time zone: not UTC, so that a time shown in the wrong zone shows."""
POLICY: Final = """version: 1
sandboxes:
  agents:
    sources: [10.0.0.0/8]
    mode: enforce
    allow:
      hosts: [allowed.test:443]
"""
OLD_S: Final = 3 * 86400
"""How long before the test the old attempt was (outside every preset but 7 and 30 days)."""


def extra_attempts(now: float) -> list[AttemptRecord]:
    """Besides the API tests' seed: each action (would-block, record), an old attempt, and one whose text is HTML."""
    return [
        record(now - 200, sandbox="builders", dst="192.0.2.80", dport=443, host="report.example", category="policy",
               reason="not-allowlisted", protocol="tcp", detector="", action="would-block"),
        record(now - 400, sandbox="builders", dst="192.0.2.81", dport=8333, host="", category="crypto-node",
               reason="crypto-node", protocol="bitcoin-p2p", detector="bitcoin", action="record"),
        record(now - OLD_S, sandbox="agents", dst="203.0.113.50", dport=3333, host="old.example"),
        record(now - 90, sandbox="hostile", dst="192.0.2.66", dport=443, host="html.example", category="policy",
               reason="not-allowlisted", protocol="tcp", detector="", evidence=HOSTILE + "<script>alert(2)</script>"),
    ]  # fmt: skip


def extra_actions(now: float) -> list[ActionRecord]:
    return [ActionRecord("hostile", "h-1", "shell_command", HOSTILE, now - 95, now - 80, now)]


def seed(redis_url: str, now: float) -> list[AttemptRecord]:
    """Write the records, the actions and one policy version; the attempts written, by the project's writer."""
    attempts = seed_attempts(now) + extra_attempts(now)
    with tempfile.TemporaryDirectory(prefix="egt-api-dash-") as spool:
        store = RecordStore(redis_url, Path(spool), "gw1", retry_interval=0.0)
        try:
            store.write(attempts)
            query.write_actions(store, seed_actions(now) + extra_actions(now))
        finally:
            store.close()
    history = PolicyHistory.from_url(redis_url)
    try:
        release(history, POLICY, "tester", "test")
    finally:
        history.close()
    return attempts


@dataclass
class Site:
    """The API serving the dashboard, and a browser; `page` opens a fresh context (its own storage)."""

    api: ApiServer
    browser: Browser
    attempts: list[AttemptRecord]
    now: float
    quarantine_stubbed: bool
    """The API had no GET /v1/quarantine, so the site answers one saying that ``agents`` is quarantined."""
    contexts: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Script errors and console errors (a Content-Security-Policy violation is one) of every page opened."""

    def url(self, query: str = "") -> str:
        """The dashboard's address with the token (the page moves it out of the address bar)."""
        joiner = "&" if query else ""
        return f"{self.api.url}/dashboard?{query}{joiner}token={READ}"

    def page(self, width: int = 1280, height: int = 900) -> Page:
        from playwright.sync_api import expect

        expect.set_options(timeout=scaled(30) * 1000)
        context = self.browser.new_context(viewport={"width": width, "height": height}, timezone_id=ZONE)
        context.set_default_timeout(scaled(30) * 1000)
        self.contexts.append(context)
        page = context.new_page()
        page.on("dialog", lambda dialog: self.errors.append(f"dialog opened: {dialog.message!r}"))
        page.on("pageerror", lambda error: self.errors.append(f"script error: {error}"))
        page.on("console", lambda msg: self.errors.append(f"console: {msg.text}") if msg.type == "error" else None)
        return page

    expected: list[str] = field(default_factory=list)
    """Parts of console errors the running test causes on purpose (a refused request)."""

    def check_errors(self) -> None:
        """Fail on any error a page reported but those expected (and forget them for the next test)."""
        errors = [e for e in self.errors if not any(part in e for part in self.expected)]
        self.errors[:], self.expected[:] = [], []
        assert not errors, errors

    def by_host(self, host: str) -> AttemptRecord:
        return next(a for a in self.attempts if a.host == host)


def shot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """A screenshot kept as a test artifact (the whole page, or what the screen shows)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def ready(page: Page) -> None:
    """Wait until the page has rendered the address it shows (no load under way)."""
    page.wait_for_function(
        "() => document.body.dataset.busy === 'false' && document.body.dataset.view === location.search",
        timeout=scaled(30) * 1000,
    )


QUARANTINE_REASON: Final = "3 findings (mining, tunnel) within 600 s"


def _stub_quarantine(app: FastAPI, now: float) -> bool:
    """Where the API has no quarantine route yet, one that answers as GET /v1/quarantine does (its shape: sandbox,
    since, gateway, reason, findings), so that the sandbox view's rendering of it is tested either way."""
    if "/v1/quarantine" in app.openapi()["paths"]:  # as the page itself finds out
        return False
    app.openapi_schema = None  # described again with the stub, at the page's first look

    @app.get("/v1/quarantine")
    def quarantine() -> dict[str, Any]:
        entry = {"sandbox": "agents", "since": now - 100, "gateway": "gw1", "reason": QUARANTINE_REASON, "findings": 3}
        return {"quarantined": [entry], "events": []}

    return True


@contextlib.contextmanager
def running_site(redis_server: RedisServer, playwright: Playwright) -> Iterator[Site]:
    if CHROMIUM is None:
        unavailable("needs Debian's chromium (apt-get install chromium)")
    redis_server.flush()
    now = time.time()
    attempts = seed(redis_server.url, now)
    app = create_app(settings(redis_server.url))
    stubbed = _stub_quarantine(app, now)
    api = ApiServer(app).start()
    try:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        site = Site(api, browser, attempts, now, stubbed)
        try:
            yield site
        finally:
            browser.close()
    finally:
        api.stop()


@contextlib.contextmanager
def playwright_driver() -> Iterator[Playwright]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("needs the playwright package (pip install -e '.[dev]')")
    with sync_playwright() as driver:
        yield driver
