"""``egress quarantine list|release|events`` (egress/cli_quarantine.py) against a real redis-server."""

from __future__ import annotations

import json

from click.testing import CliRunner

from egress.cli import main
from egress.record.quarantine_store import Entry, QuarantineStore
from tests.redis_server import RedisServer, nowhere_url


def _egress(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_list_release_events(redis_server: RedisServer) -> None:
    redis_server.flush()
    url = redis_server.url
    assert _egress("quarantine", "list", "--redis-url", url)[1] == "no sandbox is quarantined\n"
    store = QuarantineStore.from_url(url)
    try:
        entry = Entry("agent", 1_700_000_000.0, "gw1", "3 findings (mining) within 600 s", 3)
        store.quarantine(entry)
        status, out, _ = _egress("quarantine", "list", "--json", "--redis-url", url)
        assert status == 0 and [json.loads(line) for line in out.splitlines()] == [entry.to_json()]
        status, out, _ = _egress("quarantine", "list", "--redis-url", url)
        assert "agent  since 2023-11-14T22:13:20+00:00  by gw1  3 findings" in out
        status, out, _ = _egress("quarantine", "release", "agent", "--redis-url", url)
        assert status == 0 and "agent released" in out
        assert store.active() == {}
        status, _, err = _egress("quarantine", "release", "agent", "--redis-url", url)
        assert status == 1 and "not quarantined" in err
        status, out, _ = _egress("quarantine", "events", "--json", "--redis-url", url)
        events = [json.loads(line) for line in out.splitlines()]
        assert [(e["event"], e["sandbox"]) for e in events] == [("release", "agent"), ("quarantine", "agent")]
        assert events[0]["who"].endswith("cli")
    finally:
        store.close()


def test_redis_away_is_said_in_one_line() -> None:
    status, _, err = _egress("quarantine", "list", "--redis-url", nowhere_url())
    assert status == 1 and "Redis does not answer" in err
