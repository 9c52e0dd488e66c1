"""deploy/install.sh builds the venv (Python >= 3.12 found as deploy/bootstrap.sh finds it, egress installed
from a copy of this tree, not editable): the installed `egress` runs, the checkout is left clean, and a second
install does not rebuild it. Slow (every dependency installed into a fresh venv): marked e2e."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.deploy.staging import REPO, staging

pytestmark = [pytest.mark.e2e, pytest.mark.root]


@pytest.mark.timeout(1800)
def test_install_builds_a_venv_that_runs(tmp_path: Path) -> None:
    before = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--ignored", "--", "build", "egress.egg-info"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    staged = staging(tmp_path)
    first = staged.run(REPO / "deploy/install.sh", timeout=1500)
    assert "installing egress into /opt/egress/venv" in first.stderr
    egress = staged.root / "opt/egress/venv/bin/egress"
    # outside the checkout and without the test's PYTHONPATH: what is imported is what was installed
    clean = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [str(egress), "nft", "render", "--help"], capture_output=True, text=True, env=clean, cwd=tmp_path, check=False
    )
    assert done.returncode == 0 and "--lockdown" in done.stdout, done.stderr
    location = subprocess.run(
        [str(staged.root / "opt/egress/venv/bin/python"), "-c", "import egress; print(egress.__file__)"],
        capture_output=True, text=True, env=clean, cwd=tmp_path, check=True,
    ).stdout  # fmt: skip
    assert location.startswith(str(staged.root / "opt/egress/venv/")), "installed, not a link to the checkout"
    second = staged.run(REPO / "deploy/install.sh", timeout=1500)
    assert "installing egress" not in second.stderr, "an unchanged tree is not rebuilt"
    after = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--ignored", "--", "build", "egress.egg-info"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert after == before, "the build left files in the checkout"
    assert staged.host_calls() == []
