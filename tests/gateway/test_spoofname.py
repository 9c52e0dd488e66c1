"""`egress.gateway.spoofname`: a spoofed-source drop names the one sandbox behind the interface it came in on
(red team 10b: IPv6 from an IPv4-only sandbox was recorded against no sandbox), and no sandbox on the uplink."""

from __future__ import annotations

import socket

import pytest

from egress.capture.nflog import LoggedPacket
from egress.decide import Reason
from egress.gateway.droplog import DropJudge
from egress.gateway.spoofname import sandbox_behind
from egress.policy.model import Policy
from tests.gateway.test_droplog import ipv6
from tests.lists import shipped_lists
from tests.nft import make_sandbox

POLICY = Policy(
    1,
    (
        make_sandbox("agent", "10.0.0.0/24"),  # IPv4 only: its IPv6 is spoofed
        make_sandbox("ci", "10.1.0.0/24", interface="sbx1"),
        make_sandbox("web", "10.2.0.0/24", interface="sbx2"),
        make_sandbox("web2", "10.3.0.0/24", interface="sbx2"),
    ),
    file="p.yaml",
)
NAMES = {1: "lo", 2: "sbx0", 3: "sbx1", 4: "sbx2", 5: "up0"}


@pytest.mark.parametrize(
    ("indev", "named"),
    [(2, "agent"), (3, "ci"), (4, ""), (5, ""), (1, ""), (99, ""), (None, "")],
    ids=["default-if", "own-if", "shared-if", "uplink", "loopback", "unknown-index", "no-indev"],
)
def test_a_spoofed_drop_names_the_one_sandbox_behind_its_interface(indev: int | None, named: str) -> None:
    judge = DropJudge(POLICY, shipped_lists(), "sbx0", NAMES.get)
    packet = ipv6("2001:db8::99", "2001:db8::7", 59, b"")  # no next header: the protocol does not matter
    decided = judge.judge(LoggedPacket("egress spoof", socket.AF_INET6, packet, indev, 1000.0))
    assert decided is not None and decided.verdict.reason is Reason.SPOOFED_SOURCE
    assert decided.sandbox == named


def test_without_the_sandbox_interface_only_sandboxes_naming_theirs_are_named() -> None:
    assert sandbox_behind(POLICY, "", 3, NAMES.get) == ""  # a judge built without it names nothing
    assert sandbox_behind(POLICY, "sbx0", 3, NAMES.get) == "ci"
