"""egress.logsetup: text or JSON lines; a decision line in JSON is the decision's own fields; child processes log
the way their parent was told (the environment)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from egress.decide import Enforcement, Reason, Verdict
from egress.decisions import DecidedFlow, LogReporter, canonical
from egress.logsetup import FORMAT_ENV, LEVEL_ENV, JsonFormatter, configure

BLOCK = Verdict(Enforcement.BLOCK, Reason.MINING, "sandboxes.agent.detectors.mining", "stratum-v1: mining.subscribe")
ALLOW = Verdict(Enforcement.ALLOW, None, "sandboxes.agent.allow.hosts[0]", "")
FLOW = DecidedFlow(1700000000.25, "agent", "10.0.0.2", 40000, "192.0.2.9", 3333, "tcp", "pool.example", BLOCK)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Captured]:
    """The root logger as `configure` leaves it (writing to pytest's captured stderr); restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    for name in (FORMAT_ENV, LEVEL_ENV):
        # `configure` writes these for its children: setenv first, so that monkeypatch restores them even where
        # they were unset (a bare delenv of an unset variable records nothing, and the setting leaked into every
        # later test's gateway, which then logged JSON at WARNING)
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    try:
        yield Captured(capsys)
    finally:
        root.handlers[:], root.level = saved


class Captured:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().err


def test_a_decision_in_json_is_one_object_with_the_decisions_fields(captured: Captured) -> None:
    configure("gateway", "json", "info")
    LogReporter().report(FLOW)
    [line] = captured.getvalue().splitlines()
    got = json.loads(line)
    assert got["message"] == "decision" and got["component"] == "gateway" and got["level"] == "warning"
    assert {key: got[key] for key in canonical(FLOW)} == canonical(FLOW)
    assert got["ts"] == FLOW.ts  # the decision's time, not the log call's


def test_text_keeps_the_canonical_decision_line(captured: Captured) -> None:
    configure("proxy", "text", "info")
    LogReporter().report(FLOW)
    [line] = captured.getvalue().splitlines()
    assert " proxy[" in line and " WARNING decision {" in line
    assert json.loads(line.split(" decision ", 1)[1]) == canonical(FLOW)


def test_the_level_drops_allowed_decisions_and_exceptions_stay_in_the_object(captured: Captured) -> None:
    configure("gateway", "json", "warning")
    LogReporter().report(DecidedFlow(0.0, "agent", "10.0.0.2", 1, "192.0.2.1", 443, "tcp", "ok.example", ALLOW))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("egress.test").exception("it failed")
    [line] = captured.getvalue().splitlines()
    got = json.loads(line)
    assert got["message"] == "it failed" and "RuntimeError: boom" in got["exception"] and got["level"] == "error"


def test_a_child_process_logs_as_its_parent_was_told(captured: Captured) -> None:
    configure("gateway", "json", "debug")
    assert (os.environ[FORMAT_ENV], os.environ[LEVEL_ENV]) == ("json", "debug")
    child = (
        "from egress.logsetup import configure; import logging; configure('proxy'); logging.getLogger('x').debug('hi')"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60, check=True)
    got = json.loads(done.stderr)
    assert (got["component"], got["level"], got["message"]) == ("proxy", "debug", "hi")


@pytest.mark.parametrize(("log_format", "level"), [("xml", "info"), ("json", "loud")])
def test_an_unknown_format_or_level_is_refused_by_name(captured: Captured, log_format: str, level: str) -> None:
    with pytest.raises(ValueError, match="--log-format" if log_format == "xml" else "--log-level"):
        configure("gateway", log_format, level)


def test_the_formatter_never_lets_a_decision_overwrite_its_own_fields() -> None:
    record = logging.LogRecord("egress.decision", logging.WARNING, __file__, 1, "decision %s", ("{}",), None)
    record.decision = {"component": "forged", "level": "debug", "sandbox": "agent"}
    got = json.loads(JsonFormatter("gateway").format(record))
    assert (got["component"], got["level"], got["sandbox"]) == ("gateway", "warning", "agent")


@pytest.mark.parametrize("evidence", ["stratum-v1: mining.subscribe", "x\u202ey\u2028z\nw", 'caf\u00e9 "q" \\'])
def test_the_text_line_is_the_decisions_json_with_every_non_ascii_character_escaped(
    captured: Captured, evidence: str
) -> None:
    configure("proxy", "text", "info")
    verdict = Verdict(Enforcement.BLOCK, Reason.MINING, "sandboxes.agent.detectors.mining", evidence)
    flow = DecidedFlow(1700000000.25, "agent", "10.0.0.2", 40000, "192.0.2.9", 3333, "tcp", "pool.example", verdict)
    LogReporter().report(flow)
    (line,) = captured.getvalue().splitlines()
    assert line.endswith(" decision " + json.dumps(canonical(flow), separators=(",", ":")))
    assert line.isascii()
