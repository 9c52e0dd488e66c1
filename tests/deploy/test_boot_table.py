"""The boot table and the lockdown in namespaces (sandbox ── host ── internet): with the table the install puts in
place, nothing from the sandbox reaches the internet side (UDP and ping), whatever the interface is called; the
staged nftables.conf that includes it passes ``nft -c``; egress-lockdown, the gateway unit's ExecStopPost, leaves
the host forwarding nothing whether the policy renders or not."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.staging import Staged, staging
from tests.nft.netns import Topology, socket_in, topology

pytestmark = pytest.mark.root

PORT = 9531


@pytest.fixture(scope="module")
def lab() -> Iterator[Topology]:
    with topology() as t:
        yield t


@pytest.fixture
def staged(tmp_path: Path) -> Staged:
    staged = staging(tmp_path)
    staged.install()
    return staged


@pytest.fixture(autouse=True)
def no_table(lab: Topology) -> Iterator[None]:
    yield
    subprocess.run(
        ["ip", "netns", "exec", lab.gateway, "nft", "delete", "table", "inet", "egress"],
        capture_output=True,
        check=False,
    )


def _echo(payload: bytes) -> bytes:
    """An ICMP echo request carrying ``payload`` (the checksum is ours to compute on a raw socket)."""
    header = struct.pack("!BBHHH", 8, 0, 0, 0x4567, 1)
    data = header + payload
    total = sum(struct.unpack(f"!{len(data) // 2}H", data + b"\0" * (len(data) % 2)))
    total = (total >> 16) + (total & 0xFFFF)
    checksum = ~(total + (total >> 16)) & 0xFFFF
    return header[:2] + struct.pack("!H", checksum) + header[4:] + payload


def _forwarded(lab: Topology, icmp: bool = False) -> bool:
    """Whether a UDP datagram (or a ping) from the sandbox arrives on the internet side. One the host itself sends
    after it, on the same link, marks the end of the wait: once it is in, the sandbox's would be too."""
    kind, proto = (socket.SOCK_RAW, socket.IPPROTO_ICMP) if icmp else (socket.SOCK_DGRAM, 0)
    with (
        socket_in(lab.internet, socket.AF_INET, kind, proto) as listener,
        socket_in(lab.sandbox, socket.AF_INET, kind, proto) as sandbox,
        socket_in(lab.gateway, socket.AF_INET, kind, proto) as host,
    ):
        if not icmp:
            listener.bind((Topology.INTERNET4, PORT))
        listener.settimeout(10 * float(os.environ.get("EGRESS_TEST_TIME_FACTOR", "1")))
        for sender, payload in ((sandbox, b"from the sandbox"), (host, b"marker")):
            sender.sendto(_echo(payload) if icmp else payload, (Topology.INTERNET4, PORT))
        seen: list[bytes] = []
        while not any(b"marker" in packet for packet in seen):
            seen.append(listener.recv(2048))
        return any(b"from the sandbox" in packet for packet in seen)


def _nft(lab: Topology, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", lab.gateway, "nft", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_boot_table_forwards_nothing(lab: Topology, staged: Staged) -> None:
    assert _forwarded(lab) and _forwarded(lab, icmp=True), (
        "the lab forwards without a table (else this test proves nothing)"
    )
    boot = staged.root / "etc/nftables.d/egress-boot.nft"
    assert _nft(lab, "-c", "-f", str(boot)).returncode == 0
    assert _nft(lab, "-f", str(boot)).returncode == 0
    assert not _forwarded(lab)
    assert not _forwarded(lab, icmp=True)
    assert _nft(lab, "-f", str(boot)).returncode == 0, "applying it twice (ExecStopPost, nftables restart) works"
    assert not _forwarded(lab)


def test_staged_nftables_conf_with_the_include_checks(lab: Topology, staged: Staged) -> None:
    conf = staged.root / "etc/nftables.conf"
    text = conf.read_text().replace('"/etc/nftables.d/', f'"{staged.root}/etc/nftables.d/')
    done = _nft(lab, "-c", "-f", "-", stdin=text)
    assert done.returncode == 0, done.stderr


def _lockdown(lab: Topology, staged: Staged, policy: str) -> subprocess.CompletedProcess[str]:
    """Run the staged egress-lockdown in the host namespace as systemd would, with the venv's egress standing in
    as this interpreter running this tree."""
    root = staged.root
    egress = root / "opt/egress/venv/bin/egress"
    egress.parent.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[2]
    egress.write_text(f'#!/bin/sh\nPYTHONPATH={repo} exec {sys.executable} -m egress "$@"\n')
    egress.chmod(0o755)
    script = (root / "opt/egress/libexec/egress-lockdown").read_text()
    script = script.replace("prefix=/opt/egress", f"prefix={root}/opt/egress")
    script = script.replace("boot=/etc/", f"boot={root}/etc/")
    env = {
        **os.environ,
        "EGRESS_POLICY": policy,
        "EGRESS_SANDBOX_IF": lab.sandbox_if,
        "EGRESS_UPLINK_IF": lab.uplink_if,
    }
    return subprocess.run(
        ["ip", "netns", "exec", lab.gateway, "sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("policy_ok", [True, False], ids=["policy-lockdown", "boot-fallback"])
def test_lockdown_after_the_gateway_stops(lab: Topology, staged: Staged, tmp_path: Path, policy_ok: bool) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nsandboxes:\n  agent:\n    sources: [10.77.0.0/24]\n" if policy_ok else "nonsense: [\n"
    )
    done = _lockdown(lab, staged, str(policy))
    assert done.returncode == 0, done.stderr
    assert ("boot table" in done.stderr) != policy_ok, done.stderr
    listing = _nft(lab, "list", "table", "inet", "egress").stdout
    assert ("egress lockdown" in listing) == policy_ok, listing
    assert not _forwarded(lab)
    assert not _forwarded(lab, icmp=True)
