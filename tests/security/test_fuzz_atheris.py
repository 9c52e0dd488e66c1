"""The bounded coverage-guided run: each target of tests/security/fuzz_targets.py under atheris for a few seconds.

Each target runs in its own process (libFuzzer owns and ends it: tests/security/fuzz_run.py), from seeds cut out
of real captures (fuzz_seeds.py), for `SECONDS` × EGRESS_FUZZ_SCALE seconds of fuzzing after the seeds have run;
the row of the security table says how many inputs ran and how many crashed. A crash fails the test and names
the input file; make it a regression test (tests/security/fuzz_found/ and test_fuzz_regressions.py).

The long run is `make fuzz-long` (bench/fuzz.py, docs/testing.md). atheris is a dev extra (pyproject.toml): where
it is missing these tests skip, and fail in CI (tests/needs.py).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from tests.budget import scale
from tests.needs import unavailable
from tests.security.fuzz_run import seed_inputs, summary
from tests.security.fuzz_targets import TARGETS, Target
from tests.security.report import report_fuzz

pytestmark = pytest.mark.fuzz

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECONDS = 4
"""Seconds of fuzzing per target at EGRESS_FUZZ_SCALE=1 (the seeds run first, on top of it)."""
SEEDS = 64
"""Seeds per target in the bounded run, spread over all of them (the long run starts from every seed)."""


@functools.cache
def _seeds(kind: str) -> tuple[bytes, ...]:
    return seed_inputs(kind)


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.name)
def test_a_bounded_coverage_guided_run_finds_no_crash(target: Target, tmp_path: pathlib.Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        unavailable("needs atheris (the dev extra: deploy/bootstrap.sh installs it)")
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    every = _seeds(target.seeds)
    inputs = every[:: -(-len(every) // SEEDS) or 1]  # at most SEEDS, spread over all
    assert inputs, f"no seeds for {target.name}: fuzzing from nothing reaches little"
    for index, data in enumerate(inputs):
        (seeds / f"seed-{index}").write_bytes(data)
    seconds = max(1, round(SECONDS * scale()))
    artifacts = tmp_path / "artifacts"
    command = [sys.executable, "-m", "tests.security.fuzz_run", "run", target.name, "--seconds", str(seconds)]
    command += ["--corpus", str(tmp_path / "corpus"), "--seeds", str(seeds), "--artifacts", str(artifacts)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    found = summary(done.stderr, artifacts)
    note = f"{seconds} s coverage-guided, {len(inputs)} seeds, {found.coverage} edges"
    report_fuzz(target.parser, found.inputs, len(found.crashes), note)
    tail = "\n".join(done.stderr.splitlines()[-40:])
    shown = {str(path): path.read_bytes()[:512].hex() for path in found.crashes}  # tmp_path may be gone later
    assert not found.crashes, f"{target.name} crashed on {shown} (first 512 bytes, hex):\n{tail}"
    assert done.returncode == 0, f"fuzz_run ended with {done.returncode}:\n{tail}"
    assert found.inputs >= len(inputs), tail
