"""The generated units pass `systemd-analyze verify` (systemd reads every key: a misspelt hardening option is a
warning systemd would silently ignore, so any output fails), with the staged paths made real."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.staging import staging
from tests.needs import unavailable

UNITS = ("egress-gateway.service", "egress-api.service")


@pytest.mark.root
@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies(tmp_path: Path, unit: str) -> None:
    if shutil.which("systemd-analyze") is None:
        unavailable("needs systemd-analyze")
    staged = staging(tmp_path)
    staged.install()
    root = staged.root
    # The units name /opt/egress as on the target host; verify checks that ExecStart programs exist and run, so
    # point them at the staged tree, with a stand-in for the venv's egress (the venv is not built here).
    program = root / "opt/egress/venv/bin/egress"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    text = (root / "etc/systemd/system" / unit).read_text().replace("/opt/egress/", f"{root}/opt/egress/")
    checked = tmp_path / "verify" / unit
    checked.parent.mkdir()
    checked.write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(checked)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_gateway_unit_least_privilege(tmp_path: Path) -> None:
    staged = staging(tmp_path)
    staged.install()
    gateway = _keys(staged.root / "etc/systemd/system/egress-gateway.service")
    api = _keys(staged.root / "etc/systemd/system/egress-api.service")
    assert gateway["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert api["CapabilityBoundingSet"] == [""] and api["User"] == ["egress"]
    for keys in (gateway, api):
        assert keys["NoNewPrivileges"] == ["yes"] and keys["ProtectSystem"] == ["strict"]
        assert keys["PrivateTmp"] == ["yes"] and keys["UMask"] == ["0077"]
    assert gateway["Type"] == ["notify"] and gateway["NotifyAccess"] == ["main"] and "WatchdogSec" in gateway
    assert gateway["ExecStopPost"] == ["/opt/egress/libexec/egress-lockdown"]
    assert gateway["ReadWritePaths"] == ["/var/lib/egress"]
    assert "--state-dir /var/lib/egress" in gateway["ExecStart"][0]


def test_the_redis_url_reaches_the_services_by_environment_only(tmp_path: Path) -> None:
    """The URL holds the local Redis's password (install.sh): a command line is readable by every user in /proc,
    the settings files are root's (0600), read by systemd into the service's environment."""
    staged = staging(tmp_path)
    staged.install()
    for unit, settings in (("egress-gateway.service", "gateway.env"), ("egress-api.service", "api.env")):
        keys = _keys(staged.root / "etc/systemd/system" / unit)
        assert "redis" not in keys["ExecStart"][0].lower(), unit
        assert keys["EnvironmentFile"] == [f"/etc/egress/{settings}"]
        lines = (staged.root / "etc/egress" / settings).read_text().splitlines()
        assert [line for line in lines if line.startswith("EGRESS_REDIS_URL=redis://")], settings


def _keys(path: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            keys.setdefault(key, []).append(value)
    return keys
