"""Red team 10b: UDP to an allowed UDP network, and IPv6 from a sandbox whose policy is IPv4 only.

A network rule with ``protocols: [udp]`` was rendered as an accept in the sandbox's forward chain: its datagrams
were forwarded by the kernel, read by no detector and logged by nothing (the five rows were strict xfails). Now
they are queued to the gateway's UDP gate (docs/gateway.md, "Allowed UDP is read"; docs/nftables.md), which drops
and records what carries a tunnel or a pool, as the proxy's detectors do for a TCP network rule's streams. The
agent sends a tunnel's and a pool's datagrams to the attacker's UDP server on the allowed network and port
(tests/security/policies/redteam_udp_allowed.yaml: 198.18.10.3:3478): WireGuard's handshake initiation, a DTLS
ClientHello, a QUIC Initial, Stratum's ``mining.submit`` and XMRig's ``login`` as JSON lines. Ground truth: the
internet-side capture, the server's log and the answers the client got.

The same sandbox's IPv6 (the lab gives it fd00:203:1::2, which its policy does not name): TCP to an allowed
host's IPv6 address, UDP to the allowed network's IPv6 twin and to its NAT64 form, DNS to the gateway over IPv6.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time

import pytest

from egress.lab.topology import GATEWAY_SBX_V6, SANDBOX_V6, server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.security.redteam_surfaces_kit import MARK

pytestmark = pytest.mark.security

KIT = "from tests.security.redteam_surfaces_kit import {0}; {0}()"
NETWORK = server("pool")
"""198.18.10.3: the policy's UDP network (port 3478 only)."""
PORT = 3478
SIZES = {"wireguard": 148, "dtls": 70, "quic": 1200, "stratum": 97, "xmrig": 217}
"""Each payload's size on the wire (UDP payload), as measured (all of it crossed before the UDP gate: 3 datagrams
each, answered, no record)."""


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam_udp_allowed.yaml")


@pytest.fixture(scope="module")
def sink(lab: SecurityLab) -> Attacker:
    running = lab.attacker("rt10-udp-sink", [sys.executable, "-c", KIT.format("udp_sink_main"), NETWORK.v4, str(PORT)])
    running.wait_for("listening")
    return running


def _send(lab: SecurityLab, sink: Attacker, kind: str, port: int) -> tuple[int, bool]:
    """Three datagrams of ``kind`` to the network's ``port``: (payload bytes crossed to it, goal)."""
    before = len(sink.log())
    with lab.capture(f"udp-allowed-{kind}-{port}") as capture:
        done = lab.sandbox_python(KIT.format("udp_send_main"), kind, NETWORK.v4, str(port), timeout=30)
    crossed = capture.result
    assert crossed is not None
    assert "sent 3" in done.stdout, done.stdout + done.stderr
    answers = int(re.search(r"answers (\d+)", done.stdout).group(1))  # type: ignore[union-attr]
    arrived = sink.log()[before:].count("marker yes")
    goal = arrived == 3 and answers == 3 and crossed.contains(MARK, NETWORK.v4)
    return crossed.bytes_to(NETWORK.v4, port, "udp"), goal


def _reasons(lab: SecurityLab, since: float, port: int, timeout: float = 12.0) -> list[str]:
    """The reasons of the records of the network's ``port`` since ``since`` once one came, or none after
    ``timeout`` (the recorder's aggregation window is 10 s: a datagram anything recorded is recorded within it)."""
    found: list[str] = []

    def any_record(records: list) -> bool:  # type: ignore[type-arg]
        found[:] = sorted({str(r.reason) for r in records if r.dst == NETWORK.v4 and r.dport == port})
        return bool(found)

    with contextlib.suppress(AssertionError):
        lab.records_until(since, any_record, timeout=timeout)
    return found


@pytest.fixture(scope="module")
def played(lab: SecurityLab, sink: Attacker) -> tuple[dict[str, tuple[int, bool]], list[str]]:
    """Every kind sent once, then one wait for records: (kind -> (bytes crossed, goal), the records' reasons)."""
    since = time.time()
    sent = {kind: _send(lab, sink, kind, PORT) for kind in SIZES}
    return sent, _reasons(lab, since, PORT)


@pytest.mark.parametrize("kind", list(SIZES))
def test_a_tunnel_or_pool_over_an_allowed_udp_network_is_read_or_recorded(
    played: tuple[dict[str, tuple[int, bool]], list[str]], kind: str
) -> None:
    (leaked, goal), reasons = played[0][kind], played[1]
    report(
        f"redteam10/udp-allowed-{kind}",
        "udp-allowed",
        leaked,
        goal,
        ",".join(reasons) or None,
        f"to the policy's udp network {NETWORK.v4}:{PORT}",
    )
    assert reasons, f"{leaked} bytes of {kind} crossed to an allowed udp network with no record (goal {goal})"
    assert not goal and leaked == 0


def test_control_the_same_tunnel_to_a_port_the_rule_does_not_list_is_dropped_and_recorded(
    lab: SecurityLab, sink: Attacker
) -> None:
    since = time.time()
    leaked, goal = _send(lab, sink, "wireguard", PORT + 1)
    reasons = _reasons(lab, since, PORT + 1, timeout=30.0)
    report("redteam10/udp-allowed-other-port", "udp-allowed", leaked, goal, ",".join(reasons) or None, "control")
    assert leaked == 0 and not goal
    assert reasons, "the dropped datagrams left no record"


def test_the_ipv4_only_sandboxs_ipv6_reaches_nothing_and_is_recorded(lab: SecurityLab) -> None:
    """Every IPv6 attempt of a sandbox whose sources are IPv4 only is dropped as spoofed at the raw prerouting
    hook (``src6_agent`` is empty) and recorded under its source address, naming no sandbox."""
    allowed, nat64 = server("allowed").v6, "64:ff9b::c612:a03"  # NAT64 form of 198.18.10.3, the udp network
    targets = [
        f"tcp:{allowed}:443",
        f"tcp:{allowed}:80",
        f"udp:{NETWORK.v6}:{PORT}",
        f"udp:{nat64}:{PORT}",
        f"tcp:{nat64}:{PORT}",
        f"udp:{GATEWAY_SBX_V6}:53",
        f"tcp:{GATEWAY_SBX_V6}:53",
    ]
    # root in the sandbox: the gateway's MAC as a permanent neighbour (its neighbour solicitations from the global
    # address are themselves dropped as spoofed, so without this nothing but them would leave the sandbox)
    link = json.loads(lab.gateway(["ip", "-j", "link", "show", "dev", lab.lab.gateway_sandbox_if]).stdout)
    neigh = ["ip", "-6", "neigh", "replace", GATEWAY_SBX_V6, "lladdr", link[0]["address"], "dev", lab.lab.sandbox_if]
    done = lab.sandbox([*neigh, "nud", "permanent"])
    assert done.returncode == 0, done.stderr
    since = time.time()
    with lab.capture("udp-allowed-ipv6") as capture:
        done = lab.sandbox([sys.executable, "-c", KIT.format("probe_main"), *targets], timeout=60)
    crossed = capture.result
    assert crossed is not None
    found = dict(re.findall(r"^probe (\S+) (.+)$", done.stdout, re.MULTILINE))
    assert set(found) == set(targets), done.stdout + done.stderr
    reached = {t: s for t, s in found.items() if s.startswith(("connected", "answered"))}
    wanted = {(t.split(":")[0], t.split(":", 1)[1].rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in targets}
    seen: dict[tuple[str, str, int], str] = {}

    def all_recorded(records: list) -> bool:  # type: ignore[type-arg]
        for r in records:
            if r.src == SANDBOX_V6:
                seen[(str(r.transport), str(r.dst), int(r.dport))] = f"{r.reason}/{r.sandbox or '-'}"
        return wanted <= set(seen)

    with contextlib.suppress(AssertionError):  # what is missing is reported, then asserted
        lab.records_until(since, all_recorded)
    missing = sorted(wanted - set(seen))
    report(
        "redteam10/ipv6-from-ipv4-only",
        "ipv6",
        crossed.bytes_to() if crossed.contains(MARK) else 0,
        bool(reached),
        ",".join(sorted(set(seen.values()))) or None,
        f"{len(targets)} probes; reached {sorted(reached)}; unrecorded {missing}",
    )
    assert not reached and not crossed.contains(MARK), reached
    assert not missing, f"IPv6 attempts left no record: {missing}"
    unnamed = sorted(key for key, seen_as in seen.items() if seen_as.endswith("/-"))
    assert not unnamed, f"spoofed-source records name no sandbox (its interface names it): {unnamed}"
