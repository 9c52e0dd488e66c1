"""The idle timeout of connections inside mitmproxy: one that makes no progress for ``timeout`` seconds is closed,
and its close recorded (reason ``idle-timeout``).

The front's idle bound (`egress.proxy.idle`) counts only connections that have not sent a byte; once a client has
spoken, nothing ended a connection that then went silent inside mitmproxy: mitmproxy's own inactivity timeout
(``tcp_timeout``, 600 s) is reset by any event of the connection, its HTTP/2 keep-alive pings (every 58 s) and
our layers' wakeups included, so an HTTP/2 connection never ended, and it closed the others unrecorded.

Progress is measured where mitmproxy's layers see the connection (`watch` wraps its root layer's
``handle_event``), and counts only what moves an exchange on:

- a byte mitmproxy sends to the server (the client's bytes judged and forwarded, or a request it relays);
- a byte the server sends (a response or a download under way, even while mitmproxy buffers it whole);
- the client's bytes, once at least `PROGRESS_BYTES` arrived since the last progress (an upload mitmproxy buffers
  whole before judging it).

So a client that trickles a request head or body (a slowloris, one byte per interval under the timeout), holds an
HTTP/2 stream open without ending it, or plays PING, SETTINGS, PRIORITY or WINDOW_UPDATE frames (answered by
mitmproxy itself, never forwarded) makes no progress, and its connection ends at the timeout. mitmproxy's own
keep-alive pings to the server are turned off (`egress.proxy.mitm.server`), else they would be progress.

The same wrapper sees the refusals mitmproxy makes of a client's connection before any flow exists (`REFUSALS`: an
HTTP/2 frame that breaks the protocol, where h2 raises for the whole read so the stream's request never becomes a
flow; an HTTP/1 request head it cannot parse): no hook is called for them. They are handed to ``on_refused`` (the addon
records each as a block), since no layer of ours ever saw them.

This relies on mitmproxy 12.3's ``ConnectionHandler`` (pinned): every event of a connection goes through its
``layer.handle_event`` and every command comes out of it. tests/proxy/mitm/test_worker_refusals.py and the lab's
tests/security/test_mitm_records.py fail if an upgrade changes that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from mitmproxy import connection
from mitmproxy.proxy import commands, events
from mitmproxy.utils import human

from egress.proxy.idle import IDLE_TIMEOUT

log = logging.getLogger("egress.proxy")

PROGRESS_BYTES: Final = 4096
"""Client bytes that count as progress when nothing was forwarded meanwhile: a minimum rate of 4 KiB per timeout
(an upload mitmproxy buffers whole goes on; one byte per interval does not)."""

REFUSALS: Final = (
    "HTTP/2 protocol error:",
    "Invalid HTTP/2 request headers:",
    "Received HTTP/2 data frame, expected",
    "Bad HTTP request line:",
    "Invalid headers",
    "Invalid header line:",
    "Unknown HTTP version:",
)
"""What mitmproxy logs (``commands.Log``, after the peer's address) when it refuses a client's connection before a
flow exists (mitmproxy 12.3): its HTTP/2 layer for a protocol error (``Http2Connection.protocol_error``), its
HTTP/1 reader for a request head it cannot parse (answered 400, ``Http1Server.read_headers``)."""
OnRefused = Callable[[connection.Client, str], None]
"""Told each refusal of a client's connection by mitmproxy's HTTP/2 layer (`REFUSALS`), with its message."""

OnQuiet = Callable[[connection.Client, float, str], None]
"""Told each connection the watch closes: the client, its seconds without progress, and what it last did."""


@dataclass(slots=True)
class _Watched:
    client: connection.Client
    last: float
    """When it last made progress (the watch's clock)."""
    pending: int = 0
    """Client bytes since then, below `PROGRESS_BYTES`."""
    note: str = "nothing since it connected"
    """What it did last, for the record."""


class QuietWatch:
    """Every connection of one worker's mitmproxy, with when it last made progress (see the module docstring)."""

    def __init__(
        self,
        timeout: float = IDLE_TIMEOUT,
        progress_bytes: int = PROGRESS_BYTES,
        clock: Callable[[], float] = time.monotonic,
        on_refused: OnRefused | None = None,
    ) -> None:
        self.on_refused = on_refused
        if timeout <= 0:
            raise ValueError(f"the idle timeout must be positive (got {timeout})")
        self.timeout = timeout
        self.progress_bytes = progress_bytes
        self.clock = clock
        self.watched: dict[str, _Watched] = {}
        self.closed = 0
        """Connections the watch closed in all."""

    def watch(self, client: connection.Client, handler: Any) -> None:
        """Follow ``client``'s connection, whose mitmproxy ``ConnectionHandler`` is ``handler``: its root layer's
        events and commands are seen from now on."""
        watched = self.watched[client.id] = _Watched(client, self.clock())
        root = handler.layer
        inner = root.handle_event
        refused_at = f"{human.format_address(client.peername)}: "

        def handle_event(event: events.Event) -> Iterator[commands.Command]:
            if isinstance(event, events.DataReceived):
                self._received(watched, event.connection is client, len(event.data))
            for command in inner(event):
                if isinstance(command, commands.SendData) and command.connection is not client and command.data:
                    self._progress(watched, f"forwarded {len(command.data)} bytes")
                elif isinstance(command, commands.Log) and self.on_refused is not None:
                    said = command.message
                    if said.startswith(refused_at) and said[len(refused_at) :].startswith(REFUSALS):
                        self.on_refused(client, said[len(refused_at) :])
                yield command

        root.handle_event = handle_event

    def forget(self, client: connection.Client) -> None:
        self.watched.pop(client.id, None)

    def _received(self, watched: _Watched, from_client: bool, size: int) -> None:
        if not from_client:
            self._progress(watched, f"received {size} bytes from the server")
            return
        watched.pending += size
        if watched.pending >= self.progress_bytes:
            self._progress(watched, f"received {watched.pending} bytes from the client")
        else:
            watched.note = f"{watched.pending} client bytes since its last progress, none forwarded"

    def _progress(self, watched: _Watched, note: str) -> None:
        watched.last = self.clock()
        watched.pending = 0
        watched.note = note

    def quiet(self) -> list[tuple[connection.Client, float, str]]:
        """The connections without progress for the timeout (forgotten here: each is closed once)."""
        now = self.clock()
        due = [w for w in self.watched.values() if now - w.last >= self.timeout]
        for watched in due:
            del self.watched[watched.client.id]
        self.closed += len(due)
        return [(w.client, now - w.last, w.note) for w in due]

    async def run(self, on_quiet: OnQuiet) -> None:
        """Close what is due, forever: checked every tenth of the timeout (at most every 5 s)."""
        interval = min(self.timeout / 10, 5.0)
        while True:
            await asyncio.sleep(interval)
            for client, quiet_s, note in self.quiet():
                try:
                    on_quiet(client, quiet_s, note)
                except Exception:  # one connection's close must not end the watch (nor the worker)
                    log.exception("egress: closing an idle connection failed")
