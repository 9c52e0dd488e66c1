"""egress.logbuffer: a decision line written by the fast path is the line `logging` writes; allowed ones are
buffered (written by the flusher, before any other record, on flush), every other decision is written at once."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from egress.decide import Enforcement, Reason, Verdict
from egress.decisions import DecidedFlow, LogReporter, canonical
from egress.logbuffer import LineHandler, flush, handler_for
from egress.logsetup import JsonFormatter
from tests.waiting import eventually

BLOCK = Verdict(Enforcement.BLOCK, Reason.MINING, "sandboxes.agent.detectors.mining", 'stratum "q" \\ \x01\x7f')
ALLOW = Verdict(Enforcement.ALLOW, None, "sandboxes.agent.allow.hosts[0]", "")
FLOWS = [
    DecidedFlow(1700000000.25, "agent", "10.0.0.2", 40000, "192.0.2.9", 3333, "tcp", "pool.example", BLOCK),
    DecidedFlow(1700000001.123456, "agent", "10.0.0.2", 1, "192.0.2.1", 443, "tcp", "ok.example", ALLOW, count=3),
    DecidedFlow(1.5, "agent", "fd00::2", 1, "2001:db8::1", 80, "tcp", "caf\u00e9.example\u2028", ALLOW),
]
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@pytest.fixture(params=["text", "json"])
def root(request: pytest.FixtureRequest) -> Iterator[tuple[LineHandler, io.StringIO]]:
    """The root logger with one `LineHandler` (as `egress.logsetup.configure` leaves it) on a string stream."""
    logger = logging.getLogger()
    saved = (logger.handlers[:], logger.level)
    stream = io.StringIO()
    handler = LineHandler(stream, "proxy", JsonFormatter("proxy") if request.param == "json" else None)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    try:
        yield handler, stream
    finally:
        logger.handlers[:], logger.level = saved


def _alone(handler: LineHandler) -> None:
    """Only ``handler`` on the root logger: pytest adds its capturing handlers for each test's call."""
    logging.getLogger().handlers[:] = [handler]


def _lines(stream: io.StringIO) -> list[str]:
    return [STAMP.sub("", line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize("flow", FLOWS)
def test_the_fast_line_is_the_line_logging_writes(root: tuple[LineHandler, io.StringIO], flow: DecidedFlow) -> None:
    handler, stream = root
    _alone(handler)
    reporter = LogReporter()
    assert handler_for(reporter.log) is handler
    reporter.report(flow)
    flush()
    handler.addFilter(lambda record: True)  # a filter of its own: the logging machinery writes the same decision
    assert handler_for(reporter.log) is None
    reporter.report(flow)
    fast, slow = _lines(stream)
    assert fast == slow
    text = fast.split(" decision ", 1)[1] if handler.formatter.__class__ is logging.Formatter else fast
    assert {key: json.loads(text)[key] for key in canonical(flow)} == json.loads(json.dumps(canonical(flow)))
    assert fast.isascii()


def test_allowed_lines_wait_for_the_flusher_and_a_block_takes_them_along(
    root: tuple[LineHandler, io.StringIO],
) -> None:
    handler, stream = root
    _alone(handler)
    reporter = LogReporter()
    reporter.report(FLOWS[1])
    reporter.report(FLOWS[1])
    eventually(lambda: len(_lines(stream)) == 2)  # the flusher writes them within FLUSH_EVERY
    reporter.report(FLOWS[1])
    reporter.report(FLOWS[0])  # a block: written at once, after the allow before it
    lines = _lines(stream)
    assert len(lines) == 4 and "ok.example" in lines[2] and "pool.example" in lines[3]


def test_another_record_comes_after_the_decisions_before_it(root: tuple[LineHandler, io.StringIO]) -> None:
    handler, stream = root
    _alone(handler)
    LogReporter().report(FLOWS[1])
    logging.getLogger("egress.proxy").warning("after the decision")
    lines = _lines(stream)
    assert len(lines) == 2 and "ok.example" in lines[0] and "after the decision" in lines[1]


def test_a_handler_on_the_way_or_beside_takes_the_logging_path(root: tuple[LineHandler, io.StringIO]) -> None:
    handler, _ = root
    _alone(handler)
    reporter = LogReporter()
    extra = logging.NullHandler()
    logging.getLogger("egress").addHandler(extra)
    try:
        assert handler_for(reporter.log) is None
    finally:
        logging.getLogger("egress").removeHandler(extra)
    logging.getLogger().addHandler(extra)
    assert handler_for(reporter.log) is None
    logging.getLogger().removeHandler(extra)
    assert handler_for(reporter.log) is handler
