"""The idle timeout's watch (`egress.proxy.mitm.quiet`) on a stand-in for mitmproxy's root layer and a fake clock:
what counts as progress, what does not, and mitmproxy's HTTP/2 refusals handed on."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from mitmproxy import connection
from mitmproxy.proxy import commands, events
from mitmproxy.test import tflow
from mitmproxy.utils import human

from egress.proxy.mitm.quiet import PROGRESS_BYTES, QuietWatch


@dataclass
class _Root:
    """mitmproxy's root layer: answers each event with the commands it is given next."""

    answers: list[commands.Command] = field(default_factory=list)

    def handle_event(self, event: events.Event) -> Iterator[commands.Command]:
        answers, self.answers = self.answers, []
        yield from answers


@dataclass
class _Handler:
    layer: _Root = field(default_factory=_Root)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _watched(timeout: float = 10.0) -> tuple[QuietWatch, _Clock, _Handler, connection.Client, connection.Server]:
    clock = _Clock()
    watch = QuietWatch(timeout, clock=clock)
    handler = _Handler()
    flow = tflow.tflow()
    watch.watch(flow.client_conn, handler)
    return watch, clock, handler, flow.client_conn, flow.server_conn


def _event(handler: _Handler, event: events.Event, *answers: commands.Command) -> None:
    handler.layer.answers = list(answers)
    list(handler.layer.handle_event(event))


def test_a_silent_connection_is_due_at_the_timeout_and_once() -> None:
    watch, clock, _, client, _ = _watched()
    clock.now += 9.9
    assert watch.quiet() == []
    clock.now += 0.2
    [(due, quiet_s, note)] = watch.quiet()
    assert due is client and quiet_s >= 10 and "nothing since it connected" in note
    assert watch.quiet() == [] and watch.closed == 1


def test_bytes_forwarded_to_the_server_or_from_it_are_progress() -> None:
    watch, clock, handler, client, server = _watched()
    clock.now += 8
    _event(handler, events.DataReceived(client, b"GET / HTTP/1.1\r\n\r\n"), commands.SendData(server, b"GET /"))
    clock.now += 8
    _event(handler, events.DataReceived(server, b"HTTP/1.1 200 OK\r\n"))
    clock.now += 8
    assert watch.quiet() == []


@pytest.mark.parametrize("size", [1, PROGRESS_BYTES // 4 - 1])
def test_client_bytes_nothing_forwarded_are_no_progress_under_the_minimum(size: int) -> None:
    """A slowloris (one byte per interval under the timeout), or a client whose frames mitmproxy answers itself
    (PING, SETTINGS): answered to the client, nothing forwarded, under 4 KiB in all since the last progress."""
    watch, clock, handler, client, _ = _watched()
    for _ in range(4):
        clock.now += 3
        _event(handler, events.DataReceived(client, b"x" * size), commands.SendData(client, b"\x00" * 17))
    [(due, _, note)] = watch.quiet()
    assert due is client and "none forwarded" in note


def test_client_bytes_past_the_minimum_are_progress() -> None:
    watch, clock, handler, client, _ = _watched()
    clock.now += 9
    _event(handler, events.DataReceived(client, b"x" * PROGRESS_BYTES))
    clock.now += 9
    assert watch.quiet() == []


def test_a_forgotten_connection_is_never_due() -> None:
    watch, clock, _, client, _ = _watched()
    watch.forget(client)
    clock.now += 100
    assert watch.quiet() == []


def test_mitmproxy_s_http2_refusal_of_the_client_is_handed_on() -> None:
    refused: list[str] = []
    watch, _, handler, client, server = _watched()
    watch.on_refused = lambda _client, why: refused.append(why)
    at = human.format_address(client.peername)
    said = f"{at}: HTTP/2 protocol error: InvalidBodyLengthError"
    _event(handler, events.DataReceived(client, b"x"), commands.Log(said), commands.Log(f"{at}: client connect"))
    theirs = f"{human.format_address(server.peername)}: HTTP/2 protocol error: the server's"
    _event(handler, events.DataReceived(server, b"x"), commands.Log(theirs))
    assert refused == ["HTTP/2 protocol error: InvalidBodyLengthError"]


def test_the_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        QuietWatch(0)
