"""The security suite's harness: a lab with the gateway running, an attacker on each side, a capture on the
internet side as ground truth, the records in Redis, and one row per technique in the suite's table.

How to add a technique (tests/security/test_<area>_<what>.py; one test per technique, variants parametrized)::

    import pytest
    from tests.security.harness import SecurityLab, report

    pytestmark = pytest.mark.security            # implies e2e and root

    def test_stratum_behind_a_bom(security_lab: SecurityLab) -> None:    # or lab_factory(policy=...) for your own
        lab = security_lab
        pool = lab.attacker("pool", [sys.executable, "-c", SERVER, "3333"])   # in the internet namespace
        pool.wait_for("listening")                                          # its log is ground truth too
        since = time.time()
        with lab.capture("bom") as capture:      # started and proven live by a positive control
            done = lab.sandbox([sys.executable, "-c", CLIENT], timeout=30)  # as the agent, in the sandbox
        crossed = capture.result                 # what crossed the gateway towards the internet
        leaked = crossed.bytes_to("198.18.10.3", 3333, "tcp")
        goal = "share accepted" in pool.log()
        records = lab.records_until(since, lambda rs: [r for r in rs if r.reason == "mining"])
        report("stratum/bom", "mining-framing", leaked, goal, records[0].reason if records else None)
        assert leaked == 0 and not goal and not crossed.contains(b"mining.submit")

Report before asserting (a failing test still shows its row); the table is printed once at the end of the run
(tests/security/report.py). Fixtures (tests/security/conftest.py): ``security_lab`` (the shared lab of the module,
rules/lab-policy.yaml), ``lab_factory(policy=None, workers=2)`` (a lab of the module's own with its policy, e.g.
tests/security/policies/*.yaml; torn down at the end of the module). Wait with `eventually` (tests/waiting.py),
never sleep; every timeout goes through `scaled`.

With ``EGRESS_RECORD_PCAPS=DIR`` set (``make pcaps``), each ``lab.capture`` block also captures at the gateway's
sandbox side, and `report` keeps that as the technique's file for pcaps/ (tests/security/recording.py): report
after the capture block, in the same test.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from egress.lab import netns
from egress.lab.demo import GatewayRun, running_gateway
from egress.lab.scenarios import ScenarioResult
from egress.lab.topology import Lab
from egress.record.schema import AttemptRecord
from tests.security import recording
from tests.security.capture import Capture, Crossed, capturing
from tests.security.report import report as report_row
from tests.security.report import report_fault, report_fuzz
from tests.waiting import eventually, scaled

__all__ = [
    "Attacker",
    "Capture",
    "Crossed",
    "SecurityLab",
    "lab_prefix",
    "open_lab",
    "report",
    "report_fault",
    "report_fuzz",
]

ROOT = pathlib.Path(__file__).resolve().parents[2]
POLICIES = pathlib.Path(__file__).resolve().parent / "policies"
LAB_READY = 90.0
"""Seconds (scaled) each part of a lab may take to listen (as tests/e2e: a busy machine is slow)."""
RECORD_WAIT = 30.0
"""Seconds (scaled) to wait for records: a repeat is written when its aggregation window (10 s) closes."""

_labs = itertools.count()


def lab_prefix() -> str:
    """A lab prefix of this process's own (``s<n><pid>-``): labs of two workers or runs never share namespaces."""
    return f"s{next(_labs):x}{os.getpid() % 100000}-"


@dataclass
class Attacker:
    """A process the attacker runs (a server in the internet namespace, or a client in the sandbox), with its log."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path

    def log(self) -> str:
        """Everything it wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait (scaled) until its log matches ``pattern`` (a regex); fail if it exits first."""

        def found() -> re.Match[str]:
            if self.process.poll() is not None and not re.search(pattern, self.log()):
                raise AssertionError(f"{self.name} exited {self.process.returncode}: {self.log()[-2000:]}")
            match = re.search(pattern, self.log())
            assert match, f"{self.name} has not logged {pattern!r} yet: {self.log()[-500:]}"
            return match

        return eventually(found, timeout=timeout, interval=0.05)

    def stop(self) -> None:
        """End it by its pid (``ip netns exec`` execs into the command, so the pid is the command's)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=scaled(5))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@dataclass
class SecurityLab:
    """One lab with the gateway running (`GatewayRun`), and what a technique test does with it."""

    run: GatewayRun
    processes: list[Attacker] = field(default_factory=list)
    _captures: Iterator[int] = field(default_factory=itertools.count)

    @property
    def lab(self) -> Lab:
        return self.run.lab

    @property
    def logs(self) -> pathlib.Path:
        return self.lab.state_dir / "logs"

    def sandbox(
        self, argv: Sequence[str], *, timeout: float = 30.0, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as the agent in the sandbox namespace and wait (``timeout`` scaled); never raises on the
        exit status (a blocked attempt usually fails: judge by the capture, not by the exit code)."""
        return netns.exec_in(self.lab.sandbox_ns, argv, timeout=scaled(timeout), input=stdin)

    def sandbox_python(self, code: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """`sandbox` for a Python snippet (``sys.argv[1:]`` are ``args``); egress is importable in it."""
        return self.sandbox([sys.executable, "-c", code, *args], timeout=timeout)

    def gateway(self, argv: Sequence[str], *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the gateway namespace (e.g. ``nft list ruleset``) and wait."""
        return netns.exec_in(self.lab.gateway_ns, argv, timeout=scaled(timeout))

    def attacker(self, name: str, argv: Sequence[str], *, where: str = "internet") -> Attacker:
        """Start ``argv`` in the internet namespace (``where="sandbox"``: in the sandbox, e.g. a looping client);
        its stdout and stderr go to ``<lab>/logs/attacker-<name>.log``; stopped by pid at teardown."""
        ns = {"internet": self.lab.internet_ns, "sandbox": self.lab.sandbox_ns, "gateway": self.lab.gateway_ns}[where]
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"attacker-{name}.log"
        with log_path.open("wb") as log:
            process = netns.popen_in(ns, argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        attacker = Attacker(name, process, log_path)
        self.processes.append(attacker)
        return attacker

    def capture(self, name: str = "capture") -> contextlib.AbstractContextManager[Capture]:
        """A capture on the internet side, live (positive control seen) when the block starts; ``.result`` (a
        `Crossed`) after it. While it runs, ``.snapshot()`` parses what crossed so far."""
        self.logs.mkdir(parents=True, exist_ok=True)
        path = self.logs / f"{name}-{next(self._captures)}.pcap"
        if recording.target() is not None:  # EGRESS_RECORD_PCAPS: the sandbox side too, for pcaps/
            return recording.sandbox_side(self.run, path.with_suffix(".sandbox.pcap"), capturing(self.lab, path))
        return capturing(self.lab, path)

    def attempts(self, names: Sequence[str], ipv6: bool = False) -> list[ScenarioResult]:
        """The demo's attempts (egress.lab.scenarios) played from the sandbox."""
        return self.run.attempts(names, ipv6=ipv6)

    def records(self, since: float) -> list[AttemptRecord]:
        """Records in the lab's Redis of attempts at or after ``since`` (epoch seconds)."""
        argv = [sys.executable, "-m", "egress", "events", "--json", "--limit", "10000", "--redis-url"]
        done = self.gateway([*argv, self.run.redis_url])
        found = [AttemptRecord.from_json(json.loads(line)) for line in done.stdout.splitlines() if line]
        return [record for record in found if max(record.ts, record.last_ts) >= since]

    def records_until(
        self, since: float, check: Callable[[list[AttemptRecord]], object], timeout: float = RECORD_WAIT
    ) -> list[AttemptRecord]:
        """The records since ``since`` once ``check`` (asserting, or returning truthy) passes on them."""
        found: list[AttemptRecord] = []

        def ready() -> bool:
            found[:] = self.records(since)
            result = check(found)
            assert result is None or result, f"not yet: {[(r.reason, r.dst, r.dport) for r in found]}"
            return True

        eventually(ready, timeout=timeout, interval=0.3)
        return found

    def reason_of(self, since: float, predicate: Callable[[AttemptRecord], bool], timeout: float = RECORD_WAIT) -> str:
        """The reason of the first record since ``since`` that matches ``predicate`` (waiting for it), or "" when
        none comes within ``timeout``: for `report`'s record_reason, before the test asserts on it."""
        try:
            found = self.records_until(since, lambda rs: any(predicate(r) for r in rs), timeout=timeout)
        except AssertionError:
            return ""
        return next(str(r.reason) for r in found if predicate(r))

    def reasons_to(self, since: float, address: str, port: int, timeout: float = 20.0) -> list[str]:
        """The reasons of the records since ``since`` towards ``address``:``port`` (sorted, each once), once there
        is one; empty when none comes within ``timeout``: for `report`, before the test asserts on them."""
        found: list[str] = []

        def any_record(records: list[AttemptRecord]) -> bool:
            found[:] = sorted({str(r.reason) for r in records if r.dst == address and r.dport == port})
            return bool(found)

        with contextlib.suppress(AssertionError):
            self.records_until(since, any_record, timeout=timeout)
        return found

    def stop_processes(self) -> None:
        for attacker in reversed(self.processes):
            attacker.stop()
        self.processes.clear()


def report(
    technique: str, cls: str, leaked_bytes: int, goal_achieved: bool, record_reason: str | None, note: str = ""
) -> None:
    """The technique's row (`tests.security.report.report`: call it before asserting); with
    ``EGRESS_RECORD_PCAPS`` set, also keeps what this test's `SecurityLab.capture` blocks saw at the gateway's
    sandbox side as the technique's capture (tests/security/recording.py)."""
    report_row(technique, cls, leaked_bytes, goal_achieved, record_reason, note)
    recording.keep(technique, cls, leaked_bytes, goal_achieved, record_reason, note)


OPEN_LABS: list[SecurityLab] = []
"""The labs open in this process (`open_lab`): a failed test's report shows their gateways' troubles (conftest)."""
TROUBLE = re.compile(r" (?:WARNING|ERROR|CRITICAL) |^Traceback |^\S*(?:Error|Exception)\b")
"""A gateway log line (text format) worth a failed test's report: a warning or worse, or an exception's text."""


def troubles(lab: SecurityLab, limit: int = 60) -> str:
    """The last ``limit`` lines of the lab's gateway log at WARNING or above (and exceptions' first and last
    lines): what a failed row's report shows, as the log goes with the lab when the module ends."""
    try:
        text = (lab.logs / "gateway.log").read_text(errors="replace")
    except OSError as exc:
        return f"(no gateway log: {exc})"
    return trouble_lines(text, limit)


def trouble_lines(text: str, limit: int = 60) -> str:
    """`troubles` of a log's ``text``."""
    found = [line[:400] for line in text.splitlines() if TROUBLE.search(line)]
    skipped = f"({len(found) - limit} earlier lines left out)\n" if len(found) > limit else ""
    return skipped + "\n".join(found[-limit:]) if found else "(no warning or error in the gateway log)"


@contextlib.contextmanager
def open_lab(
    policy: pathlib.Path | None = None, workers: int = 2, extra_args: tuple[str, ...] = ()
) -> Iterator[SecurityLab]:
    """A lab of this process's own with the gateway running under ``policy`` (default rules/lab-policy.yaml) and
    ``extra_args`` (more ``egress gateway run`` options); everything (attackers, gateway, namespaces) is removed on
    exit."""
    chosen = policy if policy is not None else ROOT / "rules" / "lab-policy.yaml"
    ready = scaled(LAB_READY)
    with running_gateway(lab_prefix(), chosen, workers=workers, ready_timeout=ready, extra_args=extra_args) as run:
        security_lab = SecurityLab(run)
        OPEN_LABS.append(security_lab)
        try:
            yield security_lab
        finally:
            OPEN_LABS.remove(security_lab)
            security_lab.stop_processes()
