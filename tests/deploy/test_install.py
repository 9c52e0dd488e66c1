"""deploy/install.sh in a throwaway root: the files and their modes, secrets 0600, a second run changes nothing, an
upgrade keeps the administrator's settings, uninstall takes it away again, and the host is never touched."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from egress.api.auth import TokenTable, load_tokens
from egress.policy.loader import load_policy
from tests.deploy.staging import Staged, staging, tree

pytestmark = pytest.mark.root  # chown/chgrp to the staged user's group

INSTALLED = (
    "etc/systemd/system/egress-gateway.service",
    "etc/systemd/system/egress-api.service",
    "etc/systemd/system/nftables.service.d/egress.conf",
    "etc/nftables.d/egress-boot.nft",
    "etc/sysctl.d/60-egress.conf",
    "etc/modules-load.d/egress.conf",
    "etc/sysusers.d/egress.conf",
    "opt/egress/libexec/egress-lockdown",
)
KEPT = ("etc/egress/policy.yaml", "etc/egress/gateway.env", "etc/egress/api.env", "etc/egress/api-tokens.yaml")
SECRETS = ("etc/egress/api-tokens.yaml", "etc/egress/api-token.admin", "etc/egress/gateway.env", "etc/egress/api.env")
HOST_FILES = (
    "/etc/passwd",
    "/etc/group",
    "/etc/nftables.conf",
    "/etc/egress",
    "/etc/systemd/system/egress-gateway.service",
    "/etc/systemd/system/nftables.service.d/egress.conf",
    "/etc/nftables.d/egress-boot.nft",
    "/etc/sysctl.d/60-egress.conf",
    "/etc/modules-load.d/egress.conf",
    "/etc/sysusers.d/egress.conf",
    "/opt/egress",
    "/var/lib/egress",
)


def _host() -> dict[str, str | None]:
    def state(path: Path) -> str | None:
        if not path.exists():
            return None
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"

    return {name: state(Path(name)) for name in HOST_FILES}


@pytest.fixture
def staged(tmp_path: Path) -> Staged:
    return staging(tmp_path)


def _gid(root: Path, group: str) -> int:
    for line in (root / "etc/group").read_text().splitlines():
        name, _, gid, _ = line.split(":", 3)
        if name == group:
            return int(gid)
    raise AssertionError(f"no group {group} in {root}/etc/group")


def test_files_modes_and_secrets(staged: Staged) -> None:
    before = _host()
    staged.install("--sandbox-if", "eth0.42", "--uplink-if", "eth0", "--upstream-dns", "192.0.2.1", "--name", "gw1")
    root = staged.root
    for name in (*INSTALLED, *KEPT):
        assert (root / name).is_file(), name
    for name in SECRETS:
        assert (root / name).stat().st_mode & 0o777 == 0o600, name
    gid = _gid(root, "egress")
    assert "egress:x:" in (root / "etc/passwd").read_text()
    policy = root / "etc/egress/policy.yaml"
    assert (policy.stat().st_mode & 0o777, policy.stat().st_gid) == (0o640, gid)
    assert ((root / "etc/egress").stat().st_mode & 0o777, (root / "etc/egress").stat().st_gid) == (0o750, gid)
    for name in ("var/lib/egress", "var/lib/egress/spool"):
        info = (root / name).stat()
        assert (info.st_mode & 0o777, info.st_uid) == (0o700, 0), name
    assert (root / "opt/egress/libexec/egress-lockdown").stat().st_mode & 0o777 == 0o755
    env = (root / "etc/egress/gateway.env").read_text()
    for line in ("EGRESS_SANDBOX_IF=eth0.42", "EGRESS_UPSTREAM_DNS=192.0.2.1", "EGRESS_NAME=gw1"):
        assert line in env.splitlines()
    assert 'include "/etc/nftables.d/egress-boot.nft"' in (root / "etc/nftables.conf").read_text()
    unit = (root / "etc/systemd/system/egress-gateway.service").read_text()
    assert re.search(r"@[A-Z_]+@", unit) is None, "a template placeholder was left in the unit"
    # the staged policy and tokens are what the gateway and the API load
    load_policy(str(policy))
    tokens = TokenTable(load_tokens(root / "etc/egress/api-tokens.yaml"))
    admin = (root / "etc/egress/api-token.admin").read_text().strip()
    assert len(admin) >= 32
    found = tokens.authenticate(admin)
    assert found is not None and found.name == "admin"
    assert admin not in (root / "etc/egress/api-tokens.yaml").read_text(), "the tokens file holds only a digest"
    assert staged.host_calls() == []
    assert _host() == before


def test_installing_twice_changes_nothing(staged: Staged) -> None:
    staged.install()
    first = tree(staged.root)
    second = staged.install()
    assert tree(staged.root) == first
    assert "wrote" not in second.stderr and "created" not in second.stderr, second.stderr
    assert staged.host_calls() == []


def test_an_upgrade_keeps_settings_policy_tokens_and_state(staged: Staged) -> None:
    staged.install()
    root = staged.root
    (root / "etc/egress/gateway.env").write_text("EGRESS_SANDBOX_IF=vlan7\n")
    (root / "etc/egress/policy.yaml").write_text("version: 1\nsandboxes: {}\n")
    token = (root / "etc/egress/api-tokens.yaml").read_text()
    spooled = root / "var/lib/egress/spool/proxy-0"
    spooled.mkdir()
    (spooled / "000001.jsonl").write_text("{}\n")
    (root / "etc/systemd/system/egress-gateway.service").write_text("stale\n")
    staged.install()
    assert (root / "etc/egress/gateway.env").read_text() == "EGRESS_SANDBOX_IF=vlan7\n"
    assert (root / "etc/egress/policy.yaml").read_text() == "version: 1\nsandboxes: {}\n"
    assert (root / "etc/egress/api-tokens.yaml").read_text() == token
    assert (spooled / "000001.jsonl").read_text() == "{}\n"
    assert (root / "etc/systemd/system/egress-gateway.service").read_text() != "stale\n", "units are not settings"


def test_an_administrators_nftables_conf_keeps_its_rules(staged: Staged) -> None:
    conf = staged.root / "etc/nftables.conf"
    conf.parent.mkdir(parents=True)
    mine = "#!/usr/sbin/nft -f\n\nflush ruleset\n\ntable inet filter {\n}\n"
    conf.write_text(mine)
    staged.install()
    staged.install()
    text = conf.read_text()
    assert text.startswith(mine) and text.count("egress-boot.nft") == 1
    staged.uninstall()
    assert conf.read_text() == mine


def test_uninstall_keeps_records_and_policy_and_purge_removes_them(staged: Staged) -> None:
    staged.install()
    staged.uninstall()
    root = staged.root
    for name in INSTALLED:
        if name != "etc/sysusers.d/egress.conf":  # the user is kept, and so what declares it
            assert not (root / name).exists(), name
    assert not (root / "etc/nftables.conf").exists(), "install created it, uninstall removes it"
    assert not (root / "opt/egress").exists()
    for name in KEPT:
        assert (root / name).is_file(), name
    assert (root / "var/lib/egress/spool").is_dir()
    staged.install()
    staged.uninstall("--purge")
    assert not (root / "etc/egress").exists() and not (root / "var/lib/egress").exists()
    assert not (root / "etc/sysusers.d/egress.conf").exists()
    assert "egress:" not in (root / "etc/passwd").read_text()
    assert "egress:" not in (root / "etc/group").read_text()
    left = {path for path, (mode, *_) in tree(root).items() if not mode.startswith("d")}
    assert left <= {
        "etc/passwd",
        "etc/passwd-",
        "etc/group",
        "etc/group-",
        "etc/shadow",
        "etc/shadow-",
        "etc/gshadow",
        "etc/gshadow-",
        "etc/.pwd.lock",
    }, left
    assert staged.host_calls() == []
