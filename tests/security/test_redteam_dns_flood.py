"""Red team 7's open gap: one sandbox's flood of pipelined TCP queries held the resolver's event loop, and another
sandbox's queries went unanswered meanwhile.

The resolver answers every sandbox in one event loop. The agent (``agent``, 10.203.1.2; policy
tests/security/policies/redteam_sources_pinned.yaml, builder's address also on the agent's interface, as in
test_redteam_dnstcp_busy) opens 120 TCP connections to the resolver and pours 1,200 queries for a long refused name
on each (144,000 refusals, each decided, logged and recorded), reading its answers as they come. While the flood
runs, ``builder`` (10.203.1.3) asks allowed.lab again and again, over UDP (a stub resolver's retries: 2 s each, 5
attempts) and over new TCP connections (10 s), the kit `tests.security.redteam_dnsflood_kit` running both in one
process. Judged by behaviour: every query builder asked during the flood is answered within its client's budget
(10 s, what glibc's default 5 s x 2 attempts gives too), and the flood ran (most of it answered).

On main a connection's handler answered its buffered queries without yielding, so one turn of the loop answered
every connection's backlog in a row (some 12 s at this size on the loaded machine) and builder's queries went
unanswered past their budget. Now each sandbox gets `egress.dnsserver.fair.TURN_BUDGET` TCP queries per loop turn.

The UDP row (red team 7's other half, "UDP DNS has no per-sandbox share"): the agent pours refused queries over UDP
from 16 source ports for 40 s, as fast as one process sends (`tests.security.redteam_dnsflood_kit.udp_pour`),
far more than the resolver answers, and builder asks allowed.lab over UDP meanwhile (3 s x 5 attempts, generous for
a loaded machine). On main the kernel queued every sandbox's datagrams in the one socket's buffer, which the flood
kept full: builder's datagrams were dropped, or queued behind seconds of the agent's. Now each sandbox's datagrams
reach a socket of its own (`egress.dnsserver.udpshare`), whose queue only its own flood fills; the agent's drops
are recorded as ``dns-dropped`` naming the agent.
"""

from __future__ import annotations

import json
import sys

import pytest

from egress.lab.topology import GATEWAY_SBX_V4
from tests.security.conftest import LabFactory
from tests.security.harness import SecurityLab, report
from tests.security.redteam_dnsflood_kit import BUDGET, UDP_BUDGET
from tests.security.test_redteam_dnstcp_busy import AGENT, BUILDER, POLICY, _builder_address

pytestmark = pytest.mark.security

KIT = "from tests.security.redteam_dnsflood_kit import flood_main; flood_main()"
UDP_KIT = "from tests.security.redteam_dnsflood_kit import udp_flood_main; udp_flood_main()"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    opened = lab_factory(POLICY, workers=1)
    _builder_address(opened)
    return opened


def test_one_sandboxs_flood_of_pipelined_queries_leaves_anothers_dns_answered(lab: SecurityLab) -> None:
    argv = [sys.executable, "-c", KIT, GATEWAY_SBX_V4, AGENT, BUILDER, "allowed.lab"]
    done = lab.sandbox(argv, timeout=600)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-2000:]
    seen = json.loads(lines[-1])
    flood, probes = seen["flood"], [p for p in seen["probes"] if p["during_flood"]]
    unanswered = [p for p in probes if p["seconds"] is None]
    slowest = max((p["seconds"] for p in probes if p["seconds"] is not None), default=None)
    note = (f"flood {flood['answered']}/{flood['sent']} answered over {flood['seconds']} s; builder asked "
            f"{len(probes)} during it, {len(unanswered)} unanswered in {BUDGET:.0f} s, slowest {slowest}")  # fmt: skip
    said = (lab.logs / "gateway.log").read_text(errors="replace").splitlines()
    warned = [line for line in said if ("WARNING" in line or "ERROR" in line) and " decision " not in line]
    print("\n".join(warned)[-4000:])  # shown on failure: what the gateway said of its resolver
    report("redteam/dns-flood", "denial", 0, bool(unanswered) or not probes, None, note)
    assert flood["answered"] >= flood["sent"] // 2, note  # the flood ran
    assert probes, note
    assert not unanswered, note


def _said(lab: SecurityLab) -> list[str]:
    return (lab.logs / "gateway.log").read_text(errors="replace").splitlines()


def test_one_sandboxs_udp_flood_leaves_anothers_udp_dns_answered(lab: SecurityLab) -> None:
    """Also the supervisor's liveness probe (from 127.0.0.1): on main it waited in the flood's queue, the resolver
    was declared down and every sandbox locked down, twice in the 40 s."""
    before = len(_said(lab))
    argv = [sys.executable, "-c", UDP_KIT, GATEWAY_SBX_V4, AGENT, BUILDER, "allowed.lab"]
    done = lab.sandbox(argv, timeout=600)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-2000:]
    seen = json.loads(lines[-1])
    flood, probes = seen["flood"], [p for p in seen["probes"] if p["during_flood"]]
    unanswered = [p for p in probes if p["seconds"] is None]
    slowest = max((p["seconds"] for p in probes if p["seconds"] is not None), default=None)
    said = _said(lab)[before:]
    down = [line for line in said if "resolver is down" in line]
    note = (f"UDP flood {flood['answered']}/{flood['sent']} answered; builder asked {len(probes)} during it, "
            f"{len(unanswered)} unanswered in {UDP_BUDGET:.0f} s, slowest {slowest}; resolver declared down "
            f"{len(down)} times")  # fmt: skip
    warned = [line for line in said if ("WARNING" in line or "ERROR" in line) and " decision " not in line]
    print("\n".join(warned)[-4000:])  # shown on failure: what the gateway said of its resolver
    report("redteam/dns-udp-flood", "denial", 0, bool(unanswered) or not probes, None, note)
    assert flood["sent"] > 3 * flood["answered"] > 0, note  # the flood ran, well past what the resolver answers
    assert probes, note
    assert not unanswered, note
    assert not down, note  # the supervisor's probe was answered all along: no lockdown
