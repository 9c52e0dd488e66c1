"""How every long-running egress process logs: one line per event on stderr, as text or as one JSON object.

``--log-format json|text`` and ``--log-level`` on the long-running commands set it; the choice is also put in the
environment (``EGRESS_LOG_FORMAT``, ``EGRESS_LOG_LEVEL``), so the processes a command starts (the proxy workers)
log the same way without being told. In JSON each line is one object: ``ts`` (Unix seconds), ``level``,
``component`` (``gateway``, ``proxy``, ``api``), ``pid``, ``logger``, ``message``, and the exception's text under
``exception``. A decision line (`egress.decisions.LogReporter`) is the decision itself: the message is
``"decision"`` and the decision's canonical fields (those of its record) are the object's own fields, so a log
shipper needs no parsing of the message. Decision lines take a faster, buffered way to the same stream
(`egress.logbuffer`: allowed ones are written within a fifth of a second, every other at once).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Final

from egress.logbuffer import LineHandler

FORMATS: Final = ("text", "json")
LEVELS: Final = ("debug", "info", "warning", "error")
FORMAT_ENV: Final = "EGRESS_LOG_FORMAT"
LEVEL_ENV: Final = "EGRESS_LOG_LEVEL"
DECISION: Final = "decision"
"""The `logging.LogRecord` attribute (``extra=``) that carries a decision's canonical fields."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "component": self.component,
            "pid": record.process,
            "logger": record.name,
        }
        decision = getattr(record, DECISION, None)
        if isinstance(decision, dict):
            line["message"] = DECISION
            # The decision's own time wins (when it was decided); the formatter's other fields cannot be forged.
            line.update((key, value) for key, value in decision.items() if key == "ts" or key not in line)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


def configure(component: str, log_format: str | None = None, level: str | None = None) -> None:
    """Log the way the command line (or, in a child process, the environment) says; text at INFO by default.

    Replaces whatever handlers the root logger had. Raises ValueError for a format or level not in `FORMATS` and
    `LEVELS` (the command line's choices already refuse them)."""
    log_format = (log_format or os.environ.get(FORMAT_ENV) or "text").lower()
    level = (level or os.environ.get(LEVEL_ENV) or "info").lower()
    if log_format not in FORMATS:
        raise ValueError(f"{FORMAT_ENV}/--log-format: {log_format!r} is not one of {', '.join(FORMATS)}")
    if level not in LEVELS:
        raise ValueError(f"{LEVEL_ENV}/--log-level: {level!r} is not one of {', '.join(LEVELS)}")
    os.environ[FORMAT_ENV], os.environ[LEVEL_ENV] = log_format, level
    handler = LineHandler(sys.stderr, component, JsonFormatter(component) if log_format == "json" else None)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
