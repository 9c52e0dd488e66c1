"""deploy/install.sh and deploy/uninstall.sh run into a throwaway root (``--destdir``), with every command that
could change the host (systemctl, nft, sysctl, apt-get, useradd...) replaced by a stub that records its call."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy" / "install.sh"
UNINSTALL = REPO / "deploy" / "uninstall.sh"
HOST_COMMANDS = ("systemctl", "nft", "sysctl", "apt-get", "useradd", "modprobe", "dpkg")
"""Commands that act on the host: staging must call none of them."""


@dataclass(frozen=True, slots=True)
class Staged:
    root: Path
    calls: Path
    """One line per host command the scripts called (there must be none)."""

    def run(self, script: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        stubs = self.calls.parent / "stubs"
        env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
        env.pop("DESTDIR", None)
        done = subprocess.run(
            ["bash", str(script), "--destdir", str(self.root), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done

    def install(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(INSTALL, "--no-venv", *args)

    def uninstall(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(UNINSTALL, *args)

    def host_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


def staging(tmp_path: Path) -> Staged:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    calls = tmp_path / "calls"
    for name in HOST_COMMANDS:
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\n')
        stub.chmod(0o755)
    return Staged(root=tmp_path / "root", calls=calls)


def tree(root: Path) -> dict[str, tuple[str, int, int, str]]:
    """Every path under ``root``: (mode, uid, gid, content hash or link target); what a second install must leave
    exactly as it was."""
    found: dict[str, tuple[str, int, int, str]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            what = "-> " + os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = ""
        found[str(path.relative_to(root))] = (stat.filemode(info.st_mode), info.st_uid, info.st_gid, what)
    return found
