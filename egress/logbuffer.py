"""The log handler of every long-running egress process, with a fast, buffered path for decision lines.

`egress.logsetup.configure` installs one `LineHandler` on the root logger. Ordinary records go through it as
through a `logging.StreamHandler`. A decision line (`egress.decisions.LogReporter`) can skip the logging machinery
(no `LogRecord`, no `Formatter`, no handler lock round trip): `LogReporter` hands the decision's canonical JSON to
`LineHandler.decision`, which writes exactly the line the formatter would have written, from parts encoded once
per process (component, pid, logger, level) and a time stamp formatted once per second.

Allowed decisions (INFO) are buffered and written together: by a flusher thread every `FLUSH_EVERY` seconds
(started with the first of them), when `MAX_PENDING` characters are waiting, before any other record (so lines stay in
order), on `LineHandler.flush` (`logging.shutdown` at exit, every stop path of the gateway and its workers) and
with any decision that is not an allow (a block, a would-block or a record is written at once, with whatever was
waiting before it). The bound: a process killed without a stop (SIGKILL, a power cut) loses at most the allowed
decisions of its last `FLUSH_EVERY` seconds from the log; their counts and the records are not this log's.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Final, TextIO

FLUSH_EVERY: Final = 0.2
"""Seconds an allowed decision's line may wait in the buffer before it is written."""
MAX_PENDING: Final = 64 * 1024
"""Characters of buffered lines that are written at once, without waiting for the flusher."""
TEXT_FORMAT: Final = "%(asctime)s {component}[%(process)d] %(levelname)s %(message)s"


class LineHandler(logging.StreamHandler[TextIO]):
    """A `logging.StreamHandler` to ``stream`` with the text format `TEXT_FORMAT` or, given ``formatter``, that
    formatter (JSON); plus `decision`, the decision lines' fast path."""

    def __init__(self, stream: TextIO, component: str, formatter: logging.Formatter | None = None) -> None:
        super().__init__(stream)
        self.json = formatter is not None
        self.own = formatter or logging.Formatter(TEXT_FORMAT.format(component=component))
        self.setFormatter(self.own)
        self.component = component
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._size = 0
        self._flusher: threading.Thread | None = None
        self._parts: dict[tuple[str, int], str] = {}
        self._pid = -1
        self._second = -1
        self._stamp = ""

    def simple(self) -> bool:
        """Whether a decision written by `decision` is what `emit` would write (its own formatter, no filter or
        level of its own)."""
        return self.formatter is self.own and not self.filters and self.level == logging.NOTSET

    def decision(self, logger: str, level: int, text: str, fields: dict[str, object]) -> None:
        """Write (INFO: buffer) one decision line of ``logger`` at ``level``; ``text``: the decision's canonical
        ``fields`` as ASCII JSON (an object whose first field is ``ts``), as `egress.decisions.LogReporter` makes
        it."""
        pid = _Process.pid
        if pid != self._pid:  # the first line, or a forked child: the parts name this process, which has no flusher
            self._parts.clear()
            self._pid = pid
            self._flusher = None
        part = self._parts.get((logger, level))
        if part is None:
            part = self._parts[logger, level] = self._part(logger, level, pid)
        if self.json:
            # JsonFormatter's object: ts first (the decision's own), then its fields, then the decision's others
            if "\x7f" in text:  # json.dumps, the formatter's encoder, escapes DEL too
                text = json.dumps(fields, separators=(",", ":"))
            head, _, rest = text.partition(",")
            line = f"{head}{part}{rest}\n"
        else:
            now = time.time()
            second = int(now)
            if second != self._second:
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
                self._second = second
            line = f"{self._stamp},{int((now - second) * 1000):03d}{part}{text}\n"
        with self._lock:
            self._pending.append(line)
            self._size += len(line)
            urgent = level != logging.INFO or self._size >= MAX_PENDING
        if urgent:
            self.flush_decisions()
        elif self._flusher is None:
            self._start_flusher()

    def _part(self, logger: str, level: int, pid: int) -> str:
        name = logging.getLevelName(level)
        if self.json:
            fields = {"level": name.lower(), "component": self.component, "pid": pid, "logger": logger}
            encoded = json.dumps(fields, separators=(",", ":"))
            return f',{encoded[1:-1]},"message":"decision",'
        return f" {self.component}[{pid}] {name} decision "

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is not None:
                return
            self._flusher = threading.Thread(target=self._flush_every, name="log-flush", daemon=True)
        self._flusher.start()

    def _flush_every(self) -> None:
        # A plain period, not a wake-up per first line: waking a thread costs the event loop a lock and a
        # notify per line (measured: 4 % of a worker's Python time under new connections).
        while True:
            time.sleep(FLUSH_EVERY)
            self.flush_decisions()

    def flush_decisions(self) -> None:
        """Write the buffered decision lines now."""
        with self._lock:
            if not self._pending:
                return
            lines, self._pending, self._size = self._pending, [], 0
        with self.lock or _NO_LOCK:  # the stream's writer: one at a time with `emit`
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed or broken: as logging does, the process goes on
                pass

    def emit(self, record: logging.LogRecord) -> None:
        self.flush_decisions()
        super().emit(record)

    def flush(self) -> None:
        self.flush_decisions()
        super().flush()


class _Process:
    pid = os.getpid()
    """This process's id, kept up to date across forks: a decision line asks for it without a syscall."""

    @classmethod
    def forked(cls) -> None:
        cls.pid = os.getpid()


os.register_at_fork(after_in_child=_Process.forked)


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_LOCK: Final = _NoLock()


def handler_for(logger: logging.Logger) -> LineHandler | None:
    """The `LineHandler` that alone would write ``logger``'s records, if that is so: no handler on the way to it,
    none beside it on the root logger, no filter of its own; else ``None`` (`logging` then writes them)."""
    if logger.filters:
        return None
    current: logging.Logger | None = logger
    while current is not None and current is not logging.root:
        if current.handlers or not current.propagate:
            return None
        current = current.parent
    handlers = logging.root.handlers
    if len(handlers) != 1:
        return None
    handler = handlers[0]
    return handler if isinstance(handler, LineHandler) and handler.simple() else None


def flush() -> None:
    """Write every decision line still buffered (a process stopping)."""
    for handler in logging.root.handlers:
        if isinstance(handler, LineHandler):
            handler.flush_decisions()
