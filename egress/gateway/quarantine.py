"""The quarantine keeper: counts the findings every component taps to it (`egress.gateway.qtap`), cuts a sandbox off
when its ``quarantine:`` rule trips, and follows the fleet's quarantines and releases in Redis.

One thread of the supervisor's, reading the tap's datagrams and, every `POLL` seconds, the fleet's state:

- a finding is counted in this gateway's own window (`egress.gateway.qcount.Window`) and in Redis (every gateway's
  findings, `egress.record.quarantine_store`); either count reaching ``after`` trips the rule, so a Redis that
  does not answer still quarantines (fail closed);
- a trip puts the sandbox's sources into the table's quarantine sets in one transaction (`apply`: packets of
  established connections are dropped too), persists the state (`state_path`, re-applied when the gateway
  starts), writes the entry and an event to Redis (or later, when Redis answers again) and, when this gateway was
  the first, hands the webhook its POST (`egress.gateway.webhook`: another thread, retried, bounded);
- what Redis says wins for the rest: a sandbox another gateway cut off is cut off here; one released there (by
  ``egress quarantine release`` or the API: who and when are in the event) is let go here. A quarantine this
  gateway made while Redis was away is kept until Redis has it.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from egress.gateway.config import write_private
from egress.gateway.qcount import Window, reason, rule_for, trips
from egress.gateway.qtap import MAX_DATAGRAM, Tapped
from egress.gateway.webhook import Webhooks
from egress.policy.model import Policy
from egress.record.quarantine_store import STORE_ERRORS, Entry, QuarantineStore

log = logging.getLogger("egress.quarantine")

POLL: Final = 1.0
"""Seconds between two reads of the fleet's quarantines (how soon a release elsewhere takes effect here)."""
RECEIVE_BUFFER: Final = 1 << 20

Apply = Callable[[frozenset[str]], None]
"""Make the table's quarantine sets hold exactly these sandboxes' sources (raises on failure)."""


class Keeper:
    def __init__(
        self,
        socket_path: str,
        state_path: str,
        gateway: str,
        policy: Callable[[], Policy],
        apply: Apply,
        store: QuarantineStore | None,
        webhooks: Webhooks,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket_path = socket_path
        self.state_path = Path(state_path)
        self.gateway = gateway
        self.policy = policy
        self.apply = apply
        self.store = store
        self.webhooks = webhooks
        self.clock = clock
        self.monotonic = monotonic
        self.window = Window()
        self.entries: dict[str, Entry] = {}
        self.confirmed: set[str] = set()
        """Sandboxes Redis was seen holding: one that leaves Redis afterwards was released."""
        self._lock = threading.Lock()
        self._in_force: frozenset[str] | None = None
        """What the table was last made to hold (None: unknown, apply at the next tick)."""
        self._caller = f"{gateway}:{os.getpid()}:{clock():.6f}"
        self._seq = 0
        self._redis_down = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._wake: tuple[int, int] | None = None
        """A pipe whose byte wakes the thread from its wait at once when it must stop (not up to `POLL` later)."""
        self.load()

    # State on disk: what a restarted gateway cuts off before anything passes.
    def load(self) -> None:
        try:
            data = json.loads(self.state_path.read_text())
            self.entries = {raw["sandbox"]: Entry.from_json(json.dumps(raw)) for raw in data.get("entries", [])}
            self.confirmed = set(data.get("confirmed", [])) & set(self.entries)
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("quarantine state %s unreadable (%s): only Redis says what is cut off", self.state_path, exc)
            return
        if self.entries:
            log.warning("quarantine state: %s cut off (from %s)", ", ".join(sorted(self.entries)), self.state_path)

    def _persist(self) -> None:
        data = {"entries": [entry.to_json() for entry in self.entries.values()], "confirmed": sorted(self.confirmed)}
        temporary = self.state_path.with_suffix(".tmp")
        write_private(temporary, json.dumps(data, indent=2))
        os.replace(temporary, self.state_path)

    def quarantined(self) -> frozenset[str]:
        """The sandboxes cut off now (what the table must hold; `egress.nft.render.render` takes it)."""
        with self._lock:
            return frozenset(self.entries)

    def refresh(self) -> None:
        """The table was replaced (a reload, a recovery): apply the sets again at the next tick."""
        self._in_force = None

    # The thread.
    def start(self) -> None:
        path = Path(self.socket_path)
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        sock.setblocking(False)
        self._sock = sock
        self._wake = os.pipe()
        self._thread = threading.Thread(target=self._run, name="quarantine", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # A supervised component (`egress.gateway.watch.Supervised`): a keeper that stopped cannot cut anyone off.
    name = "quarantine keeper"

    async def check(self) -> str | None:
        return None if self.alive() else "its thread is not running"

    async def restart(self) -> None:
        self._halt()
        self._stop.clear()
        self._in_force = None
        self.start()

    def _halt(self) -> None:
        self._stop.set()
        if self._wake is not None:
            os.write(self._wake[1], b"x")
        if self._thread is not None:
            self._thread.join(5.0)
        if self._sock is not None:
            self._sock.close()
        if self._wake is not None:
            for end in self._wake:
                os.close(end)
            self._wake = None

    def stop(self) -> None:
        self._halt()
        self.webhooks.close()

    def _run(self) -> None:
        assert self._sock is not None and self._wake is not None
        next_sync = 0.0
        poller = select.poll()  # not select(): the supervisor's descriptors may be numbered past FD_SETSIZE
        for fd in (self._sock.fileno(), self._wake[0]):
            poller.register(fd, select.POLLIN)
        while not self._stop.is_set():
            try:
                wait = max(next_sync - self.monotonic(), 0.0)
                readable = {fd for fd, _ in poller.poll(wait * 1000)}
                if self._stop.is_set():
                    return
                if self._sock.fileno() in readable:
                    self._drain(self._sock)
                if self.monotonic() >= next_sync:
                    next_sync = self.monotonic() + POLL
                    self.sync()
                    self._enforce()
            except Exception:  # the keeper's own bug must not end quarantining: logged, the loop goes on
                log.exception("quarantine keeper step failed")
                self._stop.wait(POLL)

    def _drain(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            try:
                tapped = Tapped.decode(data)
            except ValueError as exc:
                log.error("quarantine tap: unreadable datagram skipped: %s", exc)
                continue
            self.note(tapped)

    # Counting and cutting off.
    def note(self, tapped: Tapped) -> None:
        """``tapped.count`` findings of one category in one sandbox."""
        sandbox = next((s for s in self.policy().sandboxes if s.name == tapped.sandbox), None)
        rule = rule_for(sandbox, tapped.category)
        if rule is None or tapped.sandbox in self.entries:
            return
        local = self.window.add(tapped.sandbox, self.monotonic(), rule.within, tapped.count)
        shared = None
        if self.store is not None:
            suffixes = [str(self._seq + index) for index in range(tapped.count)]
            self._seq += tapped.count
            try:
                shared = self.store.hit(tapped.sandbox, self._caller, suffixes, rule.within)
                self._redis_down = False
            except STORE_ERRORS as exc:
                if not self._redis_down:
                    log.error("quarantine counts: Redis does not answer (%s): this gateway's own count decides", exc)
                self._redis_down = True
        if trips(rule, local, shared):
            findings = max(local, shared or 0)
            self.cut_off(Entry(tapped.sandbox, self.clock(), self.gateway, reason(rule, findings), findings))
            if rule.webhook and self._first(tapped.sandbox):
                self.webhooks.call(rule.webhook, self._body(self.entries[tapped.sandbox]))

    def cut_off(self, entry: Entry) -> None:
        with self._lock:
            self.entries[entry.sandbox] = entry
        self.window.clear(entry.sandbox)
        self._persist()
        self._enforce()
        log.error("QUARANTINE: sandbox %s cut off: %s", entry.sandbox, entry.reason)

    def _first(self, sandbox: str) -> bool:
        """Write the new entry to Redis; whether this gateway was the first (Redis away: yes, it is on its own)."""
        if self.store is None:
            return True
        try:
            created = self.store.quarantine(self.entries[sandbox])
        except STORE_ERRORS:
            return True
        self.confirmed.add(sandbox)
        self._persist()
        return created

    def _body(self, entry: Entry) -> dict[str, object]:
        return {"event": "quarantine", **entry.to_json()}

    def _enforce(self) -> None:
        wanted = self.quarantined()
        if wanted == self._in_force:
            return
        try:
            self.apply(wanted)
        except Exception as exc:  # nft refused or the gateway is locked down (nothing passes then): try again
            log.error("quarantine sets not applied (tried again in %.0f s): %s", POLL, exc)
            self._in_force = None
            return
        self._in_force = wanted

    # The fleet.
    def sync(self) -> None:
        """Follow Redis: the fleet's quarantines cut off here, releases let go here, ours pushed if not yet there."""
        if self.store is None:
            return
        try:
            active = self.store.active()
        except STORE_ERRORS:
            return
        changed = False
        with self._lock:
            for name, entry in active.items():
                if name not in self.entries:
                    self.entries[name] = entry
                    changed = True
                    log.error("QUARANTINE: sandbox %s cut off by %s: %s", name, entry.gateway, entry.reason)
            for name in list(self.entries):
                if name in active:
                    changed |= name not in self.confirmed
                    self.confirmed.add(name)
                elif name in self.confirmed:
                    del self.entries[name]
                    self.confirmed.discard(name)
                    self.window.clear(name)
                    changed = True
                    log.warning("quarantine of sandbox %s released", name)
        for name in [name for name in self.entries if name not in self.confirmed]:
            try:
                self.store.quarantine(self.entries[name])  # made while Redis was away
            except STORE_ERRORS:
                break
            self.confirmed.add(name)
            changed = True
        if changed:
            self._persist()
