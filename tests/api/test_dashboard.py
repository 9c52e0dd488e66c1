"""The dashboard in a real headless browser (Debian's chromium) against a real uvicorn + redis-server holding
records and actions: the rendered DOM shows the attempts, their correlated actions, the chart and the timeline;
a screenshot is saved to tests/api/artifacts/dashboard.png (gitignored) for people to look at."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from egress.api.app import create_app
from egress.record import query
from egress.record.store import RecordStore
from tests.api import READ, ApiServer, seed_actions, seed_attempts, settings
from tests.needs import unavailable
from tests.redis_server import RedisServer
from tests.waiting import scaled

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parent / "artifacts"
BROWSER_TIMEOUT = scaled(90)


@pytest.fixture(scope="module")
def dashboard_url(redis_server: RedisServer) -> Iterator[str]:
    if CHROMIUM is None:
        unavailable("needs Debian's chromium (apt-get install chromium)")
    server = redis_server
    api: ApiServer | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="egt-api-dash-") as spool:
            store = RecordStore(server.url, Path(spool), "gw1", retry_interval=0.0)
            now = time.time()
            store.write(seed_attempts(now))
            query.write_actions(store, seed_actions(now))
            store.close()
            api = ApiServer(create_app(settings(server.url))).start()
            yield f"{api.url}/dashboard?token={READ}"
    finally:
        if api is not None:
            api.stop()


def _chromium(url: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="egt-chromium-") as profile:
        command = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--window-size=1280,900",
            "--virtual-time-budget=5000",
            *extra,
            url,
        ]
        return subprocess.run(command, capture_output=True, timeout=BROWSER_TIMEOUT, check=False, cwd=profile)


def test_dom_shows_attempts_actions_chart_and_timeline(dashboard_url: str) -> None:
    result = _chromium(dashboard_url, "--dump-dom")
    dom = result.stdout.decode(errors="replace")
    assert 'data-loaded="true"' in dom, result.stderr.decode(errors="replace")[-3000:]
    for host in ("pool.minexmr.com", "xmr.pool.example", "pastebin.com", "evil.example.org"):
        assert host in dom  # the latest attempts table
    assert "198.51.100.7:22/tcp" in dom
    assert "ssh -D 1080 user@198.51.100.7" in dom  # the ssh attempt's correlated action
    assert 'fetch({"url": "https://pastebin.com/raw/x"})' in dom.replace("&quot;", '"')
    assert 'data-category="mining"' in dom and 'data-category="policy"' in dom  # chart bars
    assert "builders" in dom and "agents" in dom  # top sandboxes
    assert "action tool_call (running)" in dom  # the timeline of the top sandbox (builders)
    assert READ not in dom  # the token left the address bar and the page


def test_screenshot(dashboard_url: str, tmp_path: Path) -> None:
    shot = tmp_path / "dashboard.png"
    result = _chromium(dashboard_url, f"--screenshot={shot}", "--hide-scrollbars")
    assert shot.exists(), result.stderr.decode(errors="replace")[-3000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 900)
    assert len(data) > 30_000  # a blank or error page compresses to a few kilobytes
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "dashboard.png")
