"""Red team 10b: the gateway's own surfaces, from the sandbox and from the internet side.

The proxy workers and the resolver listen on every address of the gateway (``0.0.0.0`` and ``::``, ports 8081,
8082 and 5353 in the lab), mitmproxy's workers and the metrics on loopback, Redis on loopback. From the sandbox the
table's ``sandbox_input`` chain stands in front of all of them: only a connection the table redirected reaches a
proxy port or the resolver. From the uplink nothing of the table stands in front of them (its chains are about the
sandbox interfaces), and the resolver judges a query by its source address alone: a query that arrives on the
uplink from a sandbox's address is that sandbox's query. The deployed host has strict ``rp_filter``
(deploy/sysctl/60-egress.conf), which is IPv4 only: the kernel has no reverse-path filter for IPv6.

Rows (one lab, rules/lab-policy.yaml, ``rp_filter`` strict in the gateway namespace as deployed):
- ``sandbox-direct-v4``/``-v6``: the agent dials every TCP port the gateway listens on (``ss``), on every gateway
  address of the family, asks the resolver's port directly, and its broadcast and all-hosts forms;
- ``sandbox-loopback``: root in the sandbox routes 127.0.0.0/8 to the gateway (Redis, metrics, mitmproxy);
- ``uplink-own-source``: the outsider dials the same ports on the uplink's addresses from its own address;
- ``uplink-forged-v4``/``-v6`` (and ``-v4-no-rp-filter``): the outsider asks the uplink's resolver from the agent's
  address (held on its own loopback), for a pool's name and a name carrying its chosen bytes; ground truth: the
  agent's receiver in the sandbox (what arrived unasked) and the records (whose they say the queries were).
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Iterator

import pytest

from egress.gateway.config import DNS_PORT
from egress.lab.topology import (
    GATEWAY_SBX_V4,
    GATEWAY_SBX_V6,
    GATEWAY_UP_V4,
    GATEWAY_UP_V6,
    SANDBOX_V4,
    SANDBOX_V6,
    server,
)
from tests.security.conftest import LabFactory
from tests.security.harness import Attacker, SecurityLab, report
from tests.security.redteam_surfaces_kit import MARK

pytestmark = pytest.mark.security

KIT = "from tests.security.redteam_surfaces_kit import {0}; {0}()"
LISTEN_PORT = 40000
"""The agent's receiver: the port the outsider's forged queries name as their source."""
POOL_NAME = "pool.supportxmr.com"
"""On the shipped pool list: a query for it is a `mining` record against whoever the resolver thinks asked."""
CARRIER = f"{MARK.decode()}-run-this.allowed.lab"
"""The outsider's chosen bytes, in a name: the resolver's answer (a refusal) quotes the question."""


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> Iterator[SecurityLab]:
    opened = lab_factory()
    done = opened.gateway(["sysctl", "-w", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.default.rp_filter=1"])
    assert done.returncode == 0, done.stderr  # as deploy/sysctl/60-egress.conf sets it
    yield opened


def _listening_ports(lab: SecurityLab) -> list[int]:
    """Every TCP port some process of the gateway namespace listens on (any address: loopback ones too)."""
    done = lab.gateway(["ss", "-Htln"])
    ports = {int(match) for match in re.findall(r":(\d+)\s", done.stdout)}
    assert {8081, 8082, DNS_PORT} <= ports, done.stdout
    return sorted(ports)


def _probe(lab: SecurityLab, targets: list[str], where: str = "sandbox") -> dict[str, str]:
    argv = [sys.executable, "-c", KIT.format("probe_main"), *targets]
    if where == "sandbox":
        done = lab.sandbox(argv, timeout=60)
    else:
        from egress.lab import netns

        done = netns.exec_in(lab.lab.internet_ns, argv, timeout=60)
    found = dict(re.findall(r"^probe (\S+) (.+)$", done.stdout, re.MULTILINE))
    assert set(found) == set(targets), done.stdout + done.stderr
    return found


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_the_sandbox_reaches_no_port_of_the_gateway_itself(lab: SecurityLab, family: str) -> None:
    ports = _listening_ports(lab)
    addresses = [GATEWAY_SBX_V4, GATEWAY_UP_V4] if family == "v4" else [GATEWAY_SBX_V6, GATEWAY_UP_V6]
    targets = [f"tcp:{address}:{port}" for address in addresses for port in ports]
    targets += [f"udp:{address}:{DNS_PORT}" for address in addresses]
    if family == "v4":  # the subnet's broadcast, the limited broadcast, all-hosts (every host has joined it)
        targets += [f"udp:{address}:{DNS_PORT}" for address in ("10.203.1.255", "255.255.255.255", "224.0.0.1")]
    since = time.time()
    with lab.capture(f"surfaces-direct-{family}") as capture:
        found = _probe(lab, targets)
    crossed = capture.result
    assert crossed is not None
    reached = {target: said for target, said in found.items() if said.startswith(("connected", "answered"))}
    source = SANDBOX_V4 if family == "v4" else SANDBOX_V6
    expected = {(target.split(":")[0], target.rsplit(":", 1)[0].split(":", 1)[1], int(target.rsplit(":", 1)[1]))
                for target in targets}  # fmt: skip
    missing: set[tuple[str, str, int]] = set()

    def recorded(records: list) -> bool:  # type: ignore[type-arg]
        seen = {(r.transport, r.dst, r.dport) for r in records if r.src == source and r.sandbox == "agent"}
        missing.clear()
        missing.update(expected - seen)
        return not missing

    with contextlib.suppress(AssertionError):  # what is missing is reported, then asserted
        lab.records_until(since, recorded)
    report(
        f"redteam10/sandbox-direct-{family}",
        "gateway-surface",
        len(reached),
        bool(reached),
        None if missing else "firewall-drop",
        f"{len(targets)} probes ({len(ports)} TCP ports x {len(addresses)} addresses, UDP {DNS_PORT}); "
        f"reached {sorted(reached)}; unrecorded {sorted(missing)[:4]}",
    )
    assert not reached, reached
    assert not crossed.contains(MARK)
    assert not missing, f"probes left no record under the agent: {sorted(missing)}"


def test_a_route_to_the_gateways_loopback_reaches_nothing(lab: SecurityLab) -> None:
    """Root in the sandbox: 127.0.0.0/8 looked up in a table of its own, via the gateway, before the local table.
    The gateway's kernel drops a loopback destination arriving on another interface (``route_localnet`` off)."""
    dev = lab.lab.sandbox_if
    setup = [
        ["ip", "route", "add", "127.0.0.0/8", "via", GATEWAY_SBX_V4, "dev", dev, "table", "100"],
        ["ip", "rule", "add", "to", "127.0.0.0/8", "lookup", "100", "pref", "10"],
        ["ip", "rule", "add", "lookup", "local", "pref", "20"],
        ["ip", "rule", "del", "pref", "0"],
        ["sysctl", "-w", f"net.ipv4.conf.{dev}.route_localnet=1", "net.ipv4.conf.all.route_localnet=1"],
    ]
    undo = [
        ["ip", "rule", "add", "lookup", "local", "pref", "0"],
        ["ip", "rule", "del", "pref", "20"],
        ["ip", "rule", "del", "pref", "10"],
        ["ip", "route", "flush", "table", "100"],
        ["sysctl", "-w", f"net.ipv4.conf.{dev}.route_localnet=0", "net.ipv4.conf.all.route_localnet=0"],
    ]
    ports = [port for port in _listening_ports(lab)]
    try:
        for argv in setup:
            done = lab.sandbox(argv)
            assert done.returncode == 0, (argv, done.stderr)
        route = lab.sandbox(["ip", "route", "get", "127.0.0.1"]).stdout
        assert GATEWAY_SBX_V4 in route, route  # the probe really goes to the gateway
        with lab.capture("surfaces-loopback") as capture:
            found = _probe(lab, [f"tcp:127.0.0.1:{port}" for port in ports])
    finally:
        for argv in undo:
            lab.sandbox(argv)
    crossed = capture.result
    assert crossed is not None
    reached = {target: said for target, said in found.items() if said.startswith("connected")}
    report(
        "redteam10/sandbox-loopback",
        "gateway-surface",
        len(reached),
        bool(reached),
        None,
        f"{len(ports)} loopback ports via the gateway: dropped (the table's guard, recorded; else a martian)",
    )
    assert not reached, reached
    assert not crossed.contains(MARK)


def test_from_the_uplink_the_gateways_ports_relay_nothing(lab: SecurityLab) -> None:
    """The outsider, from its own address, to the ports the gateway listens on from everywhere: the proxy workers
    accept and reset (no sandbox has that source), the resolver refuses and records ``spoofed-source``."""
    ports = [8081, 8082, DNS_PORT]
    targets = [f"tcp:{address}:{port}" for address in (GATEWAY_UP_V4, GATEWAY_UP_V6) for port in ports]
    targets += [f"udp:{address}:{DNS_PORT}" for address in (GATEWAY_UP_V4, GATEWAY_UP_V6)]
    since = time.time()
    found = _probe(lab, targets, where="internet")
    relayed = {t: s for t, s in found.items() if s.startswith("connected") and s != "connected 0"}
    answers = {t: s for t, s in found.items() if s.startswith("answered")}
    records = lab.records_until(since, lambda rs: [r for r in rs if r.reason == "spoofed-source" and r.dport == 53])
    report(
        "redteam10/uplink-own-source",
        "gateway-surface",
        0,
        bool(relayed),
        records[0].reason if records else None,
        f"proxy ports {sorted(set(found[t] for t in targets if t.startswith('tcp')))}; resolver {sorted(answers)} "
        "(refusals)",
    )
    assert not relayed, relayed


@pytest.fixture
def receiver(lab: SecurityLab) -> Iterator[Attacker]:
    running = lab.attacker("rt10-receiver", [sys.executable, "-c", KIT.format("listen_main"), str(LISTEN_PORT)],
                           where="sandbox")  # fmt: skip
    running.wait_for("listening")
    yield running
    running.stop()
    lab.processes.remove(running)


def _forged(lab: SecurityLab, receiver: Attacker, family: str) -> tuple[int, bool, list[str], str]:
    """The outsider's forged queries; (bytes of the datagrams the agent heard with the chosen bytes in them, any
    heard, the sandboxes the records name, the reason of the pool query's record)."""
    from egress.lab import netns

    source, gateway, plen = (SANDBOX_V4, GATEWAY_UP_V4, "32") if family == "v4" else (SANDBOX_V6, GATEWAY_UP_V6, "128")
    net = lab.lab.internet_ns
    added = netns.exec_in(net, ["ip", "addr", "add", f"{source}/{plen}", "dev", "lo", "nodad"] if family == "v6"
                          else ["ip", "addr", "add", f"{source}/{plen}", "dev", "lo"], timeout=10)  # fmt: skip
    assert added.returncode == 0, added.stderr
    before = len(receiver.log())
    since = time.time()
    try:
        argv = [sys.executable, "-c", KIT.format("forged_query_main"), source, str(LISTEN_PORT), gateway,
                str(DNS_PORT), CARRIER, POOL_NAME]  # fmt: skip
        done = netns.exec_in(net, argv, timeout=30)
        assert done.stdout.count("asked") == 2, done.stdout + done.stderr
    finally:
        netns.exec_in(net, ["ip", "addr", "del", f"{source}/{plen}", "dev", "lo"], timeout=10)
    pool = lab.reason_of(since, lambda r: r.src == source and r.reason == "mining", timeout=15)
    heard = receiver.log()[before:]
    named = sorted({r.sandbox for r in lab.records(since) if r.src == source})
    marked = sum(int(size) for size in re.findall(r"heard (\d+) bytes from \S+, marker yes", heard))
    return marked, "heard" in heard, named, pool


def test_a_forged_ipv4_sandbox_source_from_the_uplink_is_dropped_by_rp_filter(
    lab: SecurityLab, receiver: Attacker
) -> None:
    marked, heard, named, pool = _forged(lab, receiver, "v4")
    report(
        "redteam10/uplink-forged-v4",
        "gateway-surface",
        marked,
        heard,
        pool or None,
        f"the table's foreign-source drop, then strict rp_filter; records name {named}",
    )
    # Dropped at the table's raw hook (a sandbox's source on the uplink), recorded as spoofed naming no sandbox.
    assert not heard and "agent" not in named, (heard, named)


def test_a_forged_ipv4_sandbox_source_from_the_uplink_is_dropped_without_rp_filter(
    lab: SecurityLab, receiver: Attacker
) -> None:
    """The table alone holds the v4 form (a host set up by hand, the lab's namespaces): ``rp_filter`` off here."""
    rp = ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"]
    off = lab.gateway(["sysctl", "-w", *(f"{name}=0" for name in rp)])
    assert off.returncode == 0, off.stderr
    try:
        marked, heard, named, pool = _forged(lab, receiver, "v4")
    finally:
        lab.gateway(["sysctl", "-w", *(f"{name}=1" for name in rp)])
    report(
        "redteam10/uplink-forged-v4-no-rp-filter",
        "gateway-surface",
        marked,
        heard,
        pool or None,
        f"rp_filter off: the table's foreign-source drop alone; records name {named}",
    )
    assert not heard, f"the agent received answers to the outsider's queries ({marked} bytes with its name)"
    assert "agent" not in named, f"the outsider's queries were recorded as {named}'s ({pool})"


def test_a_forged_ipv6_sandbox_source_from_the_uplink_is_not_the_sandboxs_query(
    lab: SecurityLab, receiver: Attacker
) -> None:
    marked, heard, named, pool = _forged(lab, receiver, "v6")
    report(
        "redteam10/uplink-forged-v6",
        "gateway-surface",
        marked,
        heard,
        pool or None,
        f"the agent heard {marked} bytes of answers carrying the outsider's name; records name {named}",
    )
    assert not heard, f"the agent received answers to the outsider's queries ({marked} bytes with its name)"
    assert "agent" not in named, f"the outsider's queries were recorded as {named}'s ({pool})"


EDGES = ["syn-data", "urgent", "tiny-mss", "ip-options"]


@pytest.mark.parametrize("variant", EDGES)
def test_stratum_with_tcp_and_ip_oddities_is_still_read(lab: SecurityLab, variant: str) -> None:
    """Stratum's opening to pool.lab:3333 (a network rule the lab allows: the detectors must stop it) with data in
    the SYN (TCP Fast Open, cookie-less as root in the sandbox may ask), a junk urgent byte inside each line, the
    smallest MSS and window, or an IP timestamp option. Control: the same client straight to the pool, inside the
    internet namespace, gets ``mining.notify``: the variant itself works."""
    from egress.lab import netns

    pool = server("pool")
    argv = [sys.executable, "-c", KIT.format("tcp_edge_main"), variant, pool.v4, "3333"]
    control = netns.exec_in(lab.lab.internet_ns, argv, timeout=30)
    assert "notify yes" in control.stdout, control.stdout + control.stderr
    if variant == "syn-data":
        done = lab.sandbox(["sysctl", "-w", "net.ipv4.tcp_fastopen=5"])  # client on, data without a cookie
        assert done.returncode == 0, done.stderr
    since = time.time()
    try:
        with lab.capture(f"surfaces-edge-{variant}") as capture:
            done = lab.sandbox(argv, timeout=30)
    finally:
        if variant == "syn-data":
            lab.sandbox(["sysctl", "-w", "net.ipv4.tcp_fastopen=1"])
    crossed = capture.result
    assert crossed is not None
    goal = "notify yes" in done.stdout
    reason = lab.reason_of(since, lambda r: r.dport == 3333 and r.sandbox == "agent")
    leaked = crossed.bytes_to(pool.v4, 3333, "tcp")
    report(f"redteam10/tcp-edge-{variant}", "mining", leaked, goal, reason or None, done.stdout.strip()[-60:])
    assert not goal and leaked == 0 and not crossed.contains(b"mining.subscribe"), done.stdout
    assert reason == "mining", reason
