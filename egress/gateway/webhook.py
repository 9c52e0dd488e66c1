"""The quarantine webhook: a JSON POST to the policy's ``webhook`` URL, from a thread of its own, so the data path
and the keeper never wait for it. Each call is tried `ATTEMPTS` times with a `TIMEOUT` each and a growing pause
between; a call still failing is logged and dropped (the quarantine itself is in force and recorded either way).
The queue is bounded: beyond `MAX_QUEUE` calls waiting, new ones are logged and dropped."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Final

log = logging.getLogger("egress.quarantine")

TIMEOUT: Final = 5.0
ATTEMPTS: Final = 4
PAUSE: Final = 1.0
"""Seconds before the second try; doubled before each next one."""
MAX_QUEUE: Final = 1000

Post = Callable[[str, bytes, float], int]
"""(url, body, timeout) → the HTTP status; raises OSError when there is no answer."""


def http_post(url: str, body: bytes, timeout: float) -> int:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "egress-quarantine"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # the URL was validated by the policy loader
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


class Webhooks:
    def __init__(
        self, post: Post = http_post, sleep: Callable[[float], None] = time.sleep, pause: float = PAUSE
    ) -> None:
        self._post = post
        self._sleep = sleep
        self._pause = pause
        self._queue: queue.Queue[tuple[str, dict[str, object]] | None] = queue.Queue(MAX_QUEUE)
        self._thread = threading.Thread(target=self._run, name="quarantine-webhook", daemon=True)
        self._thread.start()

    def call(self, url: str, body: dict[str, object]) -> None:
        try:
            self._queue.put_nowait((url, body))
        except queue.Full:
            log.error("quarantine webhook queue full: call to %s dropped", url)

    def close(self, timeout: float = 2.0) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self.deliver(*item)

    def deliver(self, url: str, body: dict[str, object]) -> bool:
        """Try the POST until a 2xx answer or `ATTEMPTS` tries; whether it was delivered."""
        data = json.dumps(body).encode()
        pause = self._pause
        for attempt in range(1, ATTEMPTS + 1):
            try:
                status = self._post(url, data, TIMEOUT)
            except (OSError, ValueError) as exc:  # ValueError: http.client on a malformed answer
                why = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= status < 300:
                    log.info("quarantine webhook %s answered %d", url, status)
                    return True
                why = f"HTTP {status}"
            log.warning("quarantine webhook %s, try %d/%d: %s", url, attempt, ATTEMPTS, why)
            if attempt < ATTEMPTS:
                self._sleep(pause)
                pause *= 2
        log.error("quarantine webhook %s not delivered after %d tries", url, ATTEMPTS)
        return False
