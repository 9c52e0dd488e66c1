"""`egress.record.quarantine_store` on a real redis-server: shared counts in a window, one quarantine per sandbox
whatever the gateways, a release that clears the count, every step an event."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from egress.record.quarantine_store import Entry, QuarantineStore
from tests.redis_server import RedisServer


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[tuple[QuarantineStore, Clock]]:
    redis_server.flush()
    clock = Clock()
    made = QuarantineStore.from_url(redis_server.url)
    made._clock = clock
    yield made, clock
    made.close()


def test_findings_of_every_gateway_count_within_the_window(store: tuple[QuarantineStore, Clock]) -> None:
    quarantines, clock = store
    assert quarantines.hit("agent", "gw1:1", ["0", "1"], 60) == 2
    assert quarantines.hit("agent", "gw2:1", ["0"], 60) == 3  # another gateway's, same suffix: its own member
    assert quarantines.hit("other", "gw1:1", ["2"], 60) == 1
    clock.now += 61
    assert quarantines.hit("agent", "gw1:1", ["3"], 60) == 1


def test_the_first_gateway_cuts_off_and_a_release_clears_everything(store: tuple[QuarantineStore, Clock]) -> None:
    quarantines, clock = store
    entry = Entry("agent", clock.now, "gw1", "3 findings", 3)
    assert quarantines.hit("agent", "gw1:1", ["0", "1", "2"], 600) == 3
    assert quarantines.quarantine(entry)
    assert not quarantines.quarantine(Entry("agent", clock.now + 1, "gw2", "3 findings", 3))
    assert quarantines.active() == {"agent": entry}
    clock.now += 5
    assert quarantines.release("agent", "alice@cli") == entry
    assert quarantines.release("agent", "alice@cli") is None
    assert quarantines.active() == {}
    assert quarantines.hit("agent", "gw1:1", ["3"], 600) == 1  # the count starts afresh
    events = quarantines.events()
    assert [(e.event, e.sandbox, e.who) for e in events] == [("release", "agent", "alice@cli"),
                                                           ("quarantine", "agent", "gw1")]  # fmt: skip
    assert events[0].time == clock.now and events[1].reason == "3 findings"
