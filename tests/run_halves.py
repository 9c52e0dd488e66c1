"""`make unit`'s runner: the tests in three plain pytest processes side by side on the two cores (`PROCESSES`), each
collecting only its part of the test modules; then one summary line and one exit status for all. (Named for the
two halves it began with.)

    python -m tests.run_halves [--record-cpu] [--processes=N] [pytest arguments...]

Why not pytest-xdist: its controller cost ~13 s of CPU (three reports a test received and unpickled), and every
worker imported every test module to collect it (~10 s each: mitmproxy, fastapi, schemathesis, hypothesis), so
the cores paid collection once per worker. Here each module is imported by one process only (tests/halves.py
ignores the other parts' modules before importing them), and a test costs pytest's own overhead once. Why three
processes on two cores: a third of a process's wall time its tests wait on processes they started (an API with
two uvicorn workers, `scan --jobs`, a proxy worker, a Redis restarted); a third process uses the core meanwhile,
for ~5 s more CPU of imports (docs/testing.md).

The parts are balanced by each module's measured CPU, kept in tests/unit_cpu.json (``--record-cpu`` measures it
again on this run and rewrites the file); a module it does not list counts as its number of tests times the
average cost of a test. Each part runs in its own random order (pytest-randomly: each prints its seed). Their
outputs are kept apart: each part's whole output is printed when it ends, under a heading that names it. The exit
status is the first failing part's; 5 (no tests) only if no part ran a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO

from tests.halves import is_test_module

ROOT = pathlib.Path(__file__).resolve().parent.parent
CPU_FILE = ROOT / "tests" / "unit_cpu.json"
PROCESSES = 3
"""pytest processes side by side: three on two cores, as a third of each process's time is spent waiting on the
processes and servers its tests start (another's tests use the core meanwhile); docs/testing.md has the figures."""
NO_TESTS = 5  # pytest's exit status when nothing was collected (or everything deselected)
_TEST = re.compile(r"^\s*(?:async\s+)?def test_", re.MULTILINE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|xfailed|xpassed|warnings?|errors?|rerun)\b")


def module_paths(root: pathlib.Path = ROOT) -> list[str]:
    """Every test module under tests/ as pytest's default rules find them (hidden folders and caches left out)."""
    found = []
    for path in (root / "tests").rglob("*.py"):
        parts = path.relative_to(root).parts
        if is_test_module(path) and not any(part.startswith((".", "__")) for part in parts[:-1]):
            found.append(path.relative_to(root).as_posix())
    return sorted(found)


def weights(modules: list[str], measured: dict[str, float], root: pathlib.Path = ROOT) -> dict[str, float]:
    """Each module's expected CPU: measured, else its count of tests times the measured average per test."""
    tests = {name: max(1, len(_TEST.findall((root / name).read_text()))) for name in modules}
    known = [name for name in modules if name in measured]
    per_test = sum(measured[name] for name in known) / sum(tests[name] for name in known) if known else 1.0
    return {name: measured[name] if name in measured else tests[name] * per_test for name in modules}


def plan(expected: dict[str, float], halves: int = PROCESSES) -> dict[str, int]:
    """Longest first, each module to the half with the least so far (ties to the lower half): deterministic."""
    totals = [0.0] * halves
    assigned = {}
    for name in sorted(expected, key=lambda name: (-expected[name], name)):
        half = min(range(halves), key=lambda index: (totals[index], index))
        assigned[name] = half
        totals[half] += expected[name]
    return assigned


@dataclass(frozen=True, slots=True)
class Finished:
    half: int
    status: int
    cpu: float
    wall: float
    output: str

    def counts(self) -> dict[str, int]:
        """The counts of pytest's last summary line (``3 failed, 4200 passed, 4 skipped in 51.2s``)."""
        for line in reversed(_ANSI.sub("", self.output).splitlines()):
            if found := _COUNT.findall(line):
                return {_plural(word): int(number) for number, word in found}
        return {}


def _plural(word: str) -> str:
    return {"warning": "warnings", "error": "errors"}.get(word, word)


def combined_status(statuses: list[int]) -> int:
    failed = [status for status in statuses if status not in (0, NO_TESTS)]
    if failed:
        return failed[0]
    return NO_TESTS if all(status == NO_TESTS for status in statuses) else 0


def summary(finished: list[Finished]) -> str:
    """One line for every part: the counts added up, then each part's wall and CPU."""
    counts: dict[str, int] = {}
    for half in finished:
        for word, number in half.counts().items():
            counts[word] = counts.get(word, 0) + number
    order = ["failed", "errors", "passed", "skipped", "deselected", "xfailed", "xpassed", "warnings", "rerun"]
    said = ", ".join(f"{counts[word]} {word}" for word in order if counts.get(word)) or "no tests ran"
    each = "; ".join(f"part {half.half + 1}: {half.wall:.1f} s wall, {half.cpu:.1f} s CPU" for half in finished)
    return f"all {len(finished)} parts: {said} ({each})"


def _start(
    root: pathlib.Path, half: int, plan_file: str, args: list[str], out: IO[bytes], cpu_file: str | None
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "tests.halves"]  # tests/conftest.py has it too
    command += [f"--half={half}", f"--half-plan={plan_file}"]
    if cpu_file:
        command.append(f"--cpu-per-module={cpu_file}")
    if sys.stdout.isatty() and not any(arg.startswith("--color") for arg in args):
        command.append("--color=yes")  # its output goes to a file first, but ends on this terminal
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # where tests.halves is
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.Popen([*command, *args], stdout=out, stderr=subprocess.STDOUT, cwd=root, env=env)


def _wait(
    started: dict[int, subprocess.Popen[bytes]], outputs: dict[int, IO[bytes]], modules: dict[int, int]
) -> list[Finished]:
    parts = len(started)
    """Each half as it ends: its status, CPU (its own and its children's, from wait4) and whole output, printed."""
    began, finished, interrupted = time.monotonic(), [], False
    while started:
        try:
            pid, wait_status, usage = os.wait4(-1, 0)
        except KeyboardInterrupt:
            if interrupted:
                raise  # a second ^C: the caller kills what still runs
            interrupted = True  # the first reached both halves too (one process group): let them stop cleanly
            continue
        if (half := next((half for half, process in started.items() if process.pid == pid), None)) is None:
            continue
        status = started.pop(half).returncode = os.waitstatus_to_exitcode(wait_status)  # reaped here, not by Popen
        outputs[half].seek(0)
        output = outputs[half].read().decode(errors="replace")
        cpu = usage.ru_utime + usage.ru_stime
        finished.append(Finished(half, status, cpu, time.monotonic() - began, output))
        print(f"\n===== part {half + 1} of {parts}: {modules[half]} modules, exit status {status} =====", flush=True)
        sys.stdout.write(output)
        sys.stdout.flush()
    return sorted(finished, key=lambda done: done.half)


def run(args: list[str], record_cpu: bool = False, root: pathlib.Path = ROOT, processes: int = PROCESSES) -> int:
    """The tests of the checkout at ``root`` in ``processes`` parts (two: halves); pytest's exit status for all
    (see the docstring)."""
    cpu_file = root / CPU_FILE.relative_to(ROOT)
    measured = json.loads(cpu_file.read_text()) if cpu_file.exists() else {}
    assigned = plan(weights(module_paths(root), measured, root), processes)
    modules = {half: sum(chosen == half for chosen in assigned.values()) for half in range(processes)}
    with tempfile.TemporaryDirectory(prefix="egress-halves-") as scratch, contextlib.ExitStack() as files:
        plan_file = os.path.join(scratch, "plan.json")
        pathlib.Path(plan_file).write_text(json.dumps(assigned))
        started: dict[int, subprocess.Popen[bytes]] = {}
        outputs: dict[int, IO[bytes]] = {}
        cpu_files: dict[int, str | None] = {}
        for half in range(processes):
            outputs[half] = files.enter_context(open(os.path.join(scratch, f"half{half}.out"), "w+b"))
            cpu_files[half] = os.path.join(scratch, f"cpu{half}.json") if record_cpu else None
            started[half] = _start(root, half, plan_file, args, outputs[half], cpu_files[half])
        try:
            finished = _wait(started, outputs, modules)
        finally:
            for process in started.values():  # only if this process was interrupted: the halves still running
                process.kill()
                process.wait()
        print(f"\n{summary(finished)}", flush=True)
        if record_cpu:
            _record(cpu_files, cpu_file)
    return combined_status([done.status for done in finished])


def _record(cpu_files: dict[int, str | None], into: pathlib.Path) -> None:
    spent: dict[str, float] = {}
    for name in cpu_files.values():
        if name and os.path.exists(name):
            spent.update(json.loads(pathlib.Path(name).read_text()))
    into.write_text(json.dumps(dict(sorted(spent.items())), indent=1) + "\n")
    print(f"wrote {into} ({len(spent)} modules, {sum(spent.values()):.1f} s CPU)")


def main(argv: list[str]) -> int:
    record_cpu = "--record-cpu" in argv
    processes = next((int(arg.partition("=")[2]) for arg in argv if arg.startswith("--processes=")), PROCESSES)
    args = [arg for arg in argv if arg != "--record-cpu" and not arg.startswith("--processes=")]
    return run(args, record_cpu, processes=processes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
