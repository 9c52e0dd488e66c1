"""Red team 7: one sandbox's TCP connections to the resolver that are never idle, against another sandbox's DNS.

The resolver bounds its TCP connections (`egress.dnsserver.tcpbound`: 128 a sandbox, 2,048 or a quarter of its
descriptor limit in all); over the bound in all it closes the connection idle the longest of the sandbox holding
the most. A connection is idle only while the resolver waits for its next query: while it answers (the upstream,
the write) it is busy. An agent makes its connections busy for good: it pipelines 600 queries on each and never
reads, so the resolver's handler waits in ``drain`` for as long as the connection lives (no read timeout runs
there). Two sandboxes share the lab's link (tests/security/policies/redteam_sources_pinned.yaml: ``agent`` at
10.203.1.2, ``builder`` at 10.203.1.3, which the agent's namespace also holds to play builder's part); the agent
holds its 128 busy connections and tries more, then builder asks an allowed name over new TCP connections and
over UDP.

With the default bound (2,048 in all) builder is answered: the per-sandbox share holds (a passing row). Where the
bound in all is no more than what the sandboxes' shares add up to (a gateway serving more than 16 sandboxes, or
one with fewer descriptors: here the lab's gateway runs with a hard limit of 512, a bound of 128), the agent's
busy connections filled it, and the bound, finding nothing idle in the agent's, closed each of builder's new
connections instead (was: every TCP query of builder's unanswered, each close recorded under builder's name).
Now a sandbox that holds more than the newcomer's would close its oldest connection, busy or not.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time

import pytest

from egress.dnsserver.tcpbound import RULE
from egress.lab.topology import GATEWAY_SBX_V4
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.security

POLICY = POLICIES / "redteam_sources_pinned.yaml"
AGENT, BUILDER = "10.203.1.2", "10.203.1.3"
LOW_HARD_LIMIT = 256
"""The lab gateway's descriptor limit: the resolver's bound in all is a quarter (`BOUND`)."""
BOUND = LOW_HARD_LIMIT // 4
"""The resolver's bound in all, and so (capped by it) a sandbox's share."""
KIT = "from tests.security.redteam_dnsbusy_kit import {0}; {0}()"


def _builder_address(lab: SecurityLab) -> None:
    """Root in the sandbox: builder's address on the agent's interface too (the lab has one sandbox namespace)."""
    done = lab.sandbox(["ip", "addr", "replace", f"{BUILDER}/24", "dev", lab.lab.sandbox_if])
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> SecurityLab:
    """The gateway with `LOW_HARD_LIMIT` descriptors (its processes start through ``prlimit``; this one keeps its
    own): the resolver's bound in all is `BOUND`, no more than one sandbox's share."""
    wrapper = tmp_path_factory.mktemp("low") / "python"
    limit = f"--nofile={LOW_HARD_LIMIT}:{LOW_HARD_LIMIT}"
    wrapper.write_text(f'#!/bin/sh\nexec prlimit {limit} -- {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "executable", str(wrapper))
        opened = lab_factory(POLICY, workers=1)
    said = (opened.logs / "gateway.log").read_text(errors="replace")
    assert f"resolver TCP: at most {BOUND} connections, {BOUND} per sandbox" in said, said[-2000:]
    _builder_address(opened)
    return opened


def _hold(lab: SecurityLab, count: int) -> Attacker:
    argv = [sys.executable, "-c", KIT.format("hold_main"), GATEWAY_SBX_V4, AGENT, str(count)]
    holder = lab.attacker(f"dnsbusy-{count}", argv, where="sandbox")
    holder.wait_for(r"held \d+", timeout=120)
    return holder


def _resolver_busy(lab: SecurityLab) -> int:
    """The agent's connections whose queries the resolver stopped reading (its handler waits in ``drain``)."""
    done = lab.gateway(["ss", "-Htn", "state", "established", "src", GATEWAY_SBX_V4, "dst", AGENT])
    return sum(1 for line in done.stdout.splitlines() if line.split() and int(line.split()[0]) > 0)


@pytest.mark.parametrize("tries", [1, 5])
def test_busy_connections_of_one_sandbox_leave_anothers_dns_answered(lab: SecurityLab, tries: int) -> None:
    since = time.time()
    holder = _hold(lab, BOUND)
    try:

        def busy() -> int:
            count = _resolver_busy(lab)
            assert count == BOUND, (count, holder.log()[-300:])
            return count

        stuck = eventually(busy, timeout=scaled(90), interval=0.5)
        argv = [KIT.format("probe_main"), GATEWAY_SBX_V4, BUILDER, "allowed.lab", str(tries)]
        done = lab.sandbox_python(*argv, timeout=120)
        held = _resolver_busy(lab)
    finally:
        holder.stop()
    seen = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {"error": done.stderr}
    with contextlib.suppress(AssertionError):  # judged below
        lab.records_until(since, lambda rs: any(r.rule == RULE for r in rs))
    records = lab.records(since)
    closed = {r.sandbox: 0 for r in records if r.rule == RULE}
    for record in records:
        if record.rule == RULE:
            closed[record.sandbox] += record.count
    answered = seen.get("tcp") == [0] * tries and seen.get("udp") == 0
    note = f"agent's busy connections {stuck} then {held}; builder's {seen}; closes recorded by sandbox {closed}"
    report(f"redteam/dns-tcp-busy-{tries}", "denial", 0, not answered, RULE if closed else None, note)
    assert answered, note
    assert "builder" not in closed, note
