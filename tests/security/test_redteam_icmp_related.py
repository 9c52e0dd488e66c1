"""Red team (second round): chosen bytes leave the sandbox in ICMP errors that the kernel takes for "related" to
the gateway's own connections, unrecorded, and the suite's capture does not count them.

The sandbox's forward chain accepts ``ct state related`` first (`egress.nft.render._forward`, chain
``sandbox_forward``). Conntrack calls an ICMP error related when the packet it quotes belongs to any connection
it tracks, and the gateway's own outbound connections are tracked in the same table: the proxy's connection to
the destination (from the uplink address), the resolver's queries upstream. The kernel only asks that the error's
outer destination be that connection's peer. So the agent, with a raw socket, sends ICMP destination-unreachable
messages to the address of a site it may reach, each quoting a segment of the proxy's own connection to that
site (site → gateway uplink, its port learnt from the site, which the attacker runs: tests/security/policies/
redteam.yaml's allowed.lab:8080) followed by 1,000 bytes of its choosing: they are forwarded to the site as they
are. ICMP is not a protocol any rule allows (echo is dropped everywhere, docs/security.md), none of those bytes
goes through a detector, and nothing is recorded. The same holds for the resolver's upstream queries (the
upstream server's address), and for IPv6.

The suite's own capture reader (tests/security/capture.py `_answers_the_internet`) drops every ICMP error whose
quoted packet comes from the internet side, taking it for the gateway's answer to an internet host: such a leak
reads as 0 bytes there. Ground truth here is therefore the attacker's raw ICMP receiver on the site's host, and
the capture file's raw bytes.

Control: the same messages quoting a port no connection uses are dropped and recorded (``firewall-drop``).
"""

from __future__ import annotations

import re
import sys
import time

import pytest

from egress.lab.topology import server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.security.redteam_icmp_kit import MARK

pytestmark = pytest.mark.security

SITES = {"v4": server("allowed").v4, "v6": server("allowed").v6}
PORT = 8080
KIT = "from tests.security.redteam_icmp_kit import {0}; {0}()"
MESSAGES = 16


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def site(lab: SecurityLab) -> Attacker:
    running = lab.attacker("icmp-site", [sys.executable, "-c", KIT.format("site_main"), str(PORT), *SITES.values()])
    running.wait_for("listening")
    return running


def _resolve(lab: SecurityLab, family: str) -> None:
    """The agent resolves allowed.lab through the gateway (binds it: the proxy then lets it reach the site)."""
    done = lab.sandbox(["dig", "+short", "+time=3", "allowed.lab", "AAAA" if family == "v6" else "A"], timeout=15)
    assert SITES[family] in done.stdout, done.stdout + done.stderr


def _attempt(
    lab: SecurityLab, site: Attacker, label: str, family: str, offset: int, chunk: int = 1000
) -> tuple[int, int, str, float]:
    """(secret bytes the site received in ICMP errors, secret bytes in the capture file, the agent's output,
    since)."""
    _resolve(lab, family)
    before = len(site.log())
    since = time.time()
    with lab.capture(label) as capture:
        argv = [SITES[family], str(PORT), str(MESSAGES), str(offset), str(chunk)]
        done = lab.sandbox_python(KIT.format("related_main"), *argv, timeout=60)
    assert capture.result is not None
    assert "sent" in done.stdout, done.stdout + done.stderr
    received = sum(int(n) for n in re.findall(r"(\d+) secret bytes", site.log()[before:]))
    captured = sorted(lab.logs.glob(f"{label}-*.pcap"))[-1].read_bytes().count(MARK) * len(MARK)
    return received, captured, done.stdout, since


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_control_an_error_quoting_no_connection_is_dropped_and_recorded(
    lab: SecurityLab, site: Attacker, family: str
) -> None:
    received, captured, output, since = _attempt(lab, site, f"icmp-related-control-{family}", family, offset=1)
    reason = lab.reason_of(since, lambda r: r.dst == SITES[family] and r.transport == "icmp", timeout=20)
    report(
        f"redteam/icmp-related-control-{family}",
        "exfiltration",
        captured,
        received > 0,
        reason or None,
        output.replace("\n", " ")[-40:],
    )
    assert received == 0 and captured == 0
    assert reason == "firewall-drop"


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_errors_quoting_the_proxys_own_connection_carry_chosen_bytes_out(
    lab: SecurityLab, site: Attacker, family: str
) -> None:
    received, captured, output, since = _attempt(lab, site, f"icmp-related-{family}", family, offset=0)
    assert "the site sees" in output, output
    reason = lab.reason_of(since, lambda r: r.dst == SITES[family] and r.transport == "icmp", timeout=20)
    note = f"site got {received} B"
    report(f"redteam/icmp-related-{family}", "exfiltration", captured, received > 0, reason or None, note)
    assert received == 0, f"{received} chosen bytes reached {SITES[family]} in ICMP errors ({captured} captured)"
    assert captured == 0


def test_errors_of_an_errors_size_quoting_the_proxys_connection_are_dropped_too(
    lab: SecurityLab, site: Attacker
) -> None:
    """Past the fix (fixnft): the size bound is not what stops it. 400 chosen bytes make a 468-byte error, within
    IPv4's 576; it still quotes a connection the sandbox did not open (the proxy's): dropped and recorded."""
    received, captured, output, since = _attempt(lab, site, "icmp-related-small", "v4", offset=0, chunk=400)
    assert "the site sees" in output, output
    reason = lab.reason_of(since, lambda r: r.dst == SITES["v4"] and r.transport == "icmp", timeout=20)
    note = f"site got {received} B"
    report("redteam/icmp-related-small", "exfiltration", captured, received > 0, reason or None, note)
    assert received == 0 and captured == 0
    assert reason == "firewall-drop"
