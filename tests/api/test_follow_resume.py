"""The live follow resumed with ``Last-Event-ID`` (egress.record.follow), over a real uvicorn and redis-server: a
follower that drops mid-stream and reconnects with the last id it got receives every record written since, none
twice, in the follow's order (the order records reached Redis); a bad id is 400 naming the header."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from egress.api.app import create_app
from egress.record.follow import Cursor, _before
from egress.record.schema import AttemptRecord
from egress.record.store import RecordStore
from tests.api import READ, ApiServer, auth, settings
from tests.record import record
from tests.redis_server import RedisFactory
from tests.waiting import eventually, scaled

SANDBOXES = ("resume-a", "resume-b", "resume-c")


def _events(response: httpx.Response) -> Iterator[tuple[str, str, str]]:
    """(event, id, data) of each event of an SSE stream (comments and the retry line skipped)."""
    name, event_id, data = "", "", ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and name:
            yield name, event_id, data
            name, event_id, data = "", "", ""


@pytest.fixture
def served(redis_factory: RedisFactory) -> Iterator[tuple[str, list[RecordStore]]]:
    server = redis_factory.server()
    api = ApiServer(create_app(settings(server.url))).start()
    with tempfile.TemporaryDirectory(prefix="egt-api-resume-") as spool:
        writers = [RecordStore(server.url, Path(spool) / f"gw{i}", f"gw{i}", retry_interval=0.0) for i in (1, 2)]
        try:
            yield api.url, writers
        finally:
            api.stop()
            for writer in writers:
                writer.close()
            redis_factory.discard(server)


def _write(writers: list[RecordStore], count: int, offset: int) -> list[str]:
    """``count`` records over three sandboxes from two gateways, in batches of a few, as fast as they go (so
    several share a millisecond); their ids in the order written."""
    written: list[str] = []
    batch: list[AttemptRecord] = []
    for index in range(offset, offset + count):
        batch.append(record(time.time(), sandbox=SANDBOXES[index % 3], sport=1024 + index, host=f"h{index}.test"))
        if len(batch) == 4 or index == offset + count - 1:
            writers[index % 2].write(batch)
            written += [item.id for item in batch]
            batch = []
    return written


def test_a_reconnect_with_last_event_id_gets_exactly_what_came_after(served: tuple[str, list[RecordStore]]) -> None:
    url, writers = served
    with httpx.Client(base_url=url, timeout=scaled(10), headers=auth(READ)) as http:
        with http.stream("GET", "/v1/follow") as response:
            assert response.status_code == 200
            events = _events(response)
            markers: set[str] = set()

            def following() -> bool:
                marker = record(time.time(), sandbox=SANDBOXES[0], host="marker.test")
                markers.add(marker.id)
                writers[0].write([marker])
                name, _, data = next(events)
                assert name == "attempt" and json.loads(data)["id"] in markers, (name, data)
                return True

            eventually(following, timeout=15, interval=0)
            first = _write(writers, 120, 0)
            got: list[tuple[str, str]] = []  # (event id, record id)

            def forty() -> bool:
                name, event_id, data = next(events)
                if name == "attempt" and json.loads(data)["id"] not in markers:
                    got.append((event_id, json.loads(data)["id"]))
                assert len(got) >= 40
                return True

            eventually(forty, timeout=30, interval=0)
        # The follower is gone; more is written before it comes back.
        second = _write(writers, 60, 120)
        last_event_id = got[-1][0]
        wanted = set(first + second) - {record_id for _, record_id in got}
        resumed: list[tuple[str, str]] = []
        with http.stream("GET", "/v1/follow", headers={"Last-Event-ID": last_event_id}) as response:
            assert response.status_code == 200
            events = _events(response)

            def the_rest() -> bool:
                name, event_id, data = next(events)
                if name == "attempt":
                    resumed.append((event_id, json.loads(data)["id"]))
                assert {record_id for _, record_id in resumed} >= wanted
                return True

            eventually(the_rest, timeout=30, interval=0)
    everything = got + resumed
    record_ids = [record_id for _, record_id in everything]
    assert len(record_ids) == len(set(record_ids)), "a record came twice"
    assert set(record_ids) == set(first + second) - markers, "a record was lost or one not written came"
    cursors = [Cursor.parse(event_id) for event_id, _ in everything]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors), "not in the follow's order"


@pytest.mark.parametrize("bad", ["x", "12-0", "12-0.1", "12-a.1.s", "1-0.1.", "١٢-0.0.s"])
def test_a_bad_last_event_id_is_400_naming_the_header(served: tuple[str, list[RecordStore]], bad: str) -> None:
    url, _ = served
    with httpx.Client(base_url=url, timeout=scaled(10), headers=auth(READ)) as http:
        response = http.get("/v1/follow", headers={b"Last-Event-ID": bad.encode()})
    assert response.status_code == 400 and response.json()["error"]["field"] == "Last-Event-ID"


@pytest.mark.parametrize("sandbox", ["agents", "with space", "a.b/c%d", "ünï"])
def test_a_cursor_is_one_ascii_line_and_round_trips(sandbox: str) -> None:
    cursor = Cursor(1_700_000_000_123, 7, sandbox, 3)
    text = str(cursor)
    assert text.isascii() and "\n" not in text and "\r" not in text
    assert Cursor.parse(text) == cursor


def test_before_is_the_greatest_id_below() -> None:
    assert _before("5-3") == "5-2"
    assert _before("5-0") == f"4-{2**64 - 1}"
    assert _before("0-0") == "0-0"
