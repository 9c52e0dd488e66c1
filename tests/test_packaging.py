"""The wheel carries the rule data, and an egress installed from it (not editable, run outside the checkout) scans
a corpus capture as the checkout does, with its own name lists; ``--lists DIR`` replaces them.

Slow (a wheel build, then a fresh virtualenv with every dependency): marked e2e. pip gets setuptools and the
dependencies from the machine's configured index; where it cannot (an offline machine without one) the build is
impossible and the tests are skipped, saying so, except in CI, where that is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.corpus import CORPUS, needs_corpus

pytestmark = pytest.mark.e2e

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "egress", "rules")
"""What the build reads; copied out so that it leaves nothing in the checkout."""
CAPTURES = (CORPUS / "mining" / "nesfit_xmr-eu1.nanopool.org.pcapng", CORPUS / "tunnel" / "ndpi_doh.pcapng")
"""A small mining capture, and one whose finding comes from a shipped name list (a DoH resolver's address)."""
_NO_INDEX = ("No matching distribution found", "Could not find a version that satisfies")
PIP_TIMEOUT = 900


def _pip(args: list[str], python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [python, "-m", "pip", *args], capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False
    )
    if done.returncode != 0:
        message = f"pip {' '.join(args[:1])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        if any(sign in done.stderr for sign in _NO_INDEX) and not os.environ.get("CI"):
            pytest.skip(f"cannot build or install here (pip finds no package index): {message}")
        pytest.fail(message)
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    if importlib.util.find_spec("pip") is None and not os.environ.get("CI"):
        pytest.skip(f"cannot build a wheel: no pip in {sys.executable}")
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            built_here = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so")  # the wheel builds its own _hot
            shutil.copytree(ROOT / name, source / name, ignore=built_here)
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    _pip(["wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(source)])
    (built,) = out.glob("egress-*.whl")
    return built


def test_the_wheel_carries_the_rule_data_and_every_module(wheel: pathlib.Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    rules = ROOT / "rules"
    for data in (*rules.glob("*.yaml"), *rules.glob("lists/*.yaml")):
        assert f"egress/ruledata/{data.relative_to(rules).as_posix()}" in names
    assert "egress/ruledata/lab-policy.yaml" in names
    assert not [name for name in names if name.startswith("egress/ruledata/tools")], "the list builder is shipped"
    modules = {path.relative_to(ROOT).as_posix() for path in (ROOT / "egress").rglob("*.py")}
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"


def _findings(output: str) -> list[dict[str, object]]:
    return sorted((json.loads(line) for line in output.splitlines()), key=lambda row: json.dumps(row, sort_keys=True))


@pytest.mark.corpus
@needs_corpus
def test_an_installed_egress_scans_as_the_checkout_does(wheel: pathlib.Path, tmp_path: pathlib.Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    _pip(["install", "--quiet", str(wheel)], python)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}

    def installed(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(venv / "bin" / "egress"), *args]
        return subprocess.run(argv, cwd=outside, env=env, capture_output=True, text=True, timeout=300, check=True)

    where = subprocess.run(
        [python, "-c", "from egress import shipped; print(shipped.rules_dir())"],
        cwd=outside, env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    assert pathlib.Path(where).is_relative_to(venv), f"the installed egress reads {where}"

    captures = [str(path) for path in CAPTURES]
    in_tree = subprocess.run(
        [sys.executable, "-m", "egress", "scan", "--json", *captures],
        cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    found = _findings(installed("scan", "--json", *captures).stdout)
    assert found == _findings(in_tree)
    labels = {(row["detector"], row["protocol"]) for row in found}
    assert labels == {("cryptonote", "cryptonote-stratum"), ("names", "doh")}

    # --lists replaces the shipped lists: without the DoH list the DoH flow is not a finding.
    lists = tmp_path / "lists"
    lists.mkdir()
    shutil.copy2(ROOT / "rules" / "lists" / "reverse-tunnels.yaml", lists)
    found = _findings(installed("scan", "--json", "--lists", str(lists), *captures).stdout)
    assert {(row["detector"], row["protocol"]) for row in found} == {("cryptonote", "cryptonote-stratum")}
