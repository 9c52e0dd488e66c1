"""A small client for sandbox harnesses: report agent actions to the egress API (``POST /v1/actions``) so that
blocked attempts can be tied to what the agent was doing. Standard library only (urllib), so a harness can vendor
this one file.

    client = EgressClient("http://egress-api:8080", token)
    with client.action("agents-7", "call-42", "shell_command", "pip install foo"):
        run_the_command()
    client.close()          # sends what is still queued

`report_actions` sends at once (in batches) and raises on failure. `action` and `queue` batch: queued actions go
out when ``batch_size`` are waiting, ``flush_interval`` seconds after the first of them (a background thread), or
on `flush`/`close`. A queued batch that fails is kept and tried again later (at most ``max_pending`` are kept).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, Final

log = logging.getLogger(__name__)

MAX_BATCH: Final = 1000
"""The API takes at most this many actions per request."""
_FIELDS: Final = ("sandbox", "id", "kind", "command", "start", "end")


class EgressError(Exception):
    """The API refused a request (``status`` 4xx, not worth repeating) or could not be reached after retries
    (``status`` 0 or 5xx). ``field`` names the input at fault when the API said so."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(f"{status or 'no answer'}: {message}" + (f" (field {field})" if field else ""))
        self.status = status
        self.message = message
        self.field = field


def _as_dict(action: Any) -> dict[str, Any]:
    """An `egress.record.actions.ActionRecord` or a mapping, as the API wants it (no ``received``: it stamps it)."""
    data = action.to_json() if hasattr(action, "to_json") else dict(action)
    body = {name: data[name] for name in _FIELDS if name in data}
    unknown = set(data) - set(_FIELDS) - {"received", "schema"}
    if unknown:
        raise ValueError(f"unknown action field(s): {', '.join(sorted(unknown))}")
    return body


class EgressClient:
    """Reports actions to one egress API with one bearer token (role ``report``). Thread-safe."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.5,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        max_pending: int = 10_000,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH}, got {batch_size}")
        self.url = base_url.rstrip("/") + "/v1/actions"
        self._token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self._pending: list[dict[str, Any]] = []
        self._first_queued = 0.0
        self._wake = threading.Condition()
        self._send_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.sent = 0
        """Actions the API accepted."""
        self.dropped = 0
        """Queued actions given up on because more than ``max_pending`` were waiting (logged)."""

    def report_actions(self, actions: Iterable[Any]) -> int:
        """Send ``actions`` (`ActionRecord` or mappings with the API's fields) now, in batches; return how many the
        API accepted. Raises `EgressError` (and keeps nothing) when a batch is refused or the API stays away."""
        bodies = [_as_dict(action) for action in actions]
        accepted = 0
        for start in range(0, len(bodies), self.batch_size):
            accepted += self._post(bodies[start : start + self.batch_size])
        return accepted

    def queue(self, action: Any) -> None:
        """Add one action to the next batch (sent by the background flusher, `flush` or `close`)."""
        body = _as_dict(action)
        with self._wake:
            if self._closed:
                raise RuntimeError("the client is closed")
            if not self._pending:
                self._first_queued = time.monotonic()
            self._pending.append(body)
            if len(self._pending) > self.max_pending:
                over = len(self._pending) - self.max_pending
                del self._pending[:over]
                self.dropped += over
                log.warning("egress client: %d queued actions dropped (more than %d waiting)", over, self.max_pending)
            if self._thread is None:
                self._thread = threading.Thread(target=self._flusher, name="egress-client-flush", daemon=True)
                self._thread.start()
            self._wake.notify()

    @contextlib.contextmanager
    def action(
        self,
        sandbox: str,
        id: str | None = None,
        kind: str = "tool_call",
        command: str = "",
        *,
        report_start: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Time the body of the ``with`` as one action (``id`` made up when None) and queue it when the body ends,
        also by an exception. ``report_start``: queue it as running at once too (the stored one is replaced when it
        ends). Yields the action's fields; the body may change ``command``."""
        action: dict[str, Any] = {
            "sandbox": sandbox,
            "id": id or uuid.uuid4().hex,
            "kind": kind,
            "command": command,
            "start": time.time(),
            "end": None,
        }
        if report_start:
            self.queue(dict(action))
        try:
            yield action
        finally:
            action["end"] = max(time.time(), action["start"])
            self.queue(action)

    def flush(self) -> int:
        """Send every queued action now; return how many the API accepted. On failure they stay queued and the
        `EgressError` is raised."""
        with self._send_lock:
            with self._wake:
                batch, self._pending = self._pending, []
            batch = _latest(batch)
            accepted = 0
            try:
                while batch:
                    accepted += self._post(batch[: self.batch_size])
                    batch = batch[self.batch_size :]
            except EgressError:
                with self._wake:
                    self._pending[:0] = batch
                    self._first_queued = time.monotonic()
                raise
            return accepted

    def close(self) -> None:
        """Send what is queued (errors are raised) and stop the flusher."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=self.timeout * (self.retries + 2))
        self.flush()

    def __enter__(self) -> EgressClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _flusher(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._due():
                    wait = self.flush_interval - (time.monotonic() - self._first_queued) if self._pending else None
                    self._wake.wait(timeout=wait)
                if self._closed:
                    return
            try:
                self.flush()
            except EgressError as error:
                log.warning("egress client: actions kept for a later try: %s", error)
                with self._wake:
                    self._wake.wait(timeout=max(self.flush_interval, self.backoff))

    def _due(self) -> bool:
        if not self._pending:
            return False
        return len(self._pending) >= self.batch_size or time.monotonic() - self._first_queued >= self.flush_interval

    def _post(self, bodies: list[dict[str, Any]]) -> int:
        data = json.dumps({"actions": bodies}, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self._token}"}
        last = EgressError(0, "not sent")
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    accepted = int(json.loads(response.read()).get("accepted", len(bodies)))
                    self.sent += accepted
                    return accepted
            except urllib.error.HTTPError as error:
                last = _refusal(error)
                if error.code < 500 and error.code != 429:
                    raise last from None
            except (OSError, ValueError) as error:  # connection refused or reset, timeout, a reply that is not JSON
                last = EgressError(0, f"{type(error).__name__}: {error}")
        raise last


def _refusal(error: urllib.error.HTTPError) -> EgressError:
    try:
        detail = json.loads(error.read())["error"]
        return EgressError(error.code, str(detail["message"]), detail.get("field"))
    except (ValueError, KeyError, TypeError, OSError):
        return EgressError(error.code, error.reason if isinstance(error.reason, str) else "refused")


def _latest(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One body per (sandbox, id): the last queued (a finished action replaces its running report)."""
    latest: dict[tuple[Any, Any], dict[str, Any]] = {}
    for body in bodies:
        latest.pop((body.get("sandbox"), body.get("id")), None)
        latest[(body.get("sandbox"), body.get("id"))] = body
    return list(latest.values())
