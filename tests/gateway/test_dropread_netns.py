"""A late read of the kernel's drop counters loses no count (root): sandbox ── gateway ── internet namespaces, the
rendered ruleset in the gateway, `DropLogger` reading its nflog group and the counting sets there through the real
`CountReader`, paused by the test.

The risk (docs/records.md, "What the counts of dropped packets mean"): a counter used to be an element expiring
`COUNT_TIMEOUT`, 120 s, after its last packet, and listing 50,000 of them takes a minute and more under load, so a
read later than that lost the key's count. Here the reader refuses to read (as a locked or slow ``nft`` does:
`runner.NftError`, retried every second) until `PAUSE` seconds after the burst, while the log is drained as usual.
To make the pause outlast an element's life in a test of seconds, any element timeout the ruleset still renders is
cut to `OLD_TIMEOUT` (`egress.nft.render.COUNT_TIMEOUT` on main; nothing renders one now: the reader empties what
it has read). Every packet must be counted once, logged or not: on main the counters expire unread and only the
logged packets (about 20 a destination) are recorded.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from egress.gateway import droplog
from egress.gateway.droplog import DropLogger
from egress.nft import render as render_module
from egress.nft import runner
from egress.nft.names import COUNT_GENERATIONS, LogKind, count_set
from egress.nft.render import GatewaySettings, render, render_lockdown
from egress.policy.lists import load_name_lists
from egress.policy.model import Policy
from tests.gateway.test_droplog_netns import INNER4, LISTS, Collect, _mac, ipv4, ipv6
from tests.nft import make_sandbox
from tests.nft.netns import Topology, raw_sender, topology
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.root

T = Topology
GROUP = 11
OLD_TIMEOUT = 2
"""Seconds an element of the old ruleset's counting sets lived after its last packet, in this test (120 in
production)."""
PAUSE = 3 * OLD_TIMEOUT
"""Seconds after the burst before the reader reads at all: well past `OLD_TIMEOUT`."""
PACKETS = 400
"""Packets to each destination: 20 times a key's log burst, so most of them are only counted, never logged."""
DESTINATIONS = [(4, f"10.78.0.{n}") for n in range(120, 124)] + [(6, "fd78::99")]


@dataclass(frozen=True, slots=True)
class Lab:
    topo: Topology
    sender: socket.socket
    gateway_mac: bytes
    sandbox_mac: bytes
    drops: DropLogger
    collect: Collect


class PausedReads:
    """The drop logger's counter read, refused until `resume` (what a slow or locked ``nft`` does to it)."""

    def __init__(self, read: droplog.Counters) -> None:
        self.read = read
        self.resume_at = float("inf")
        self.refused = 0

    def __call__(self):  # type: ignore[no-untyped-def]  # main's reads return a mapping, ours a `Reading`
        if time.monotonic() < self.resume_at:
            self.refused += 1
            raise runner.NftError("paused by the test")
        return self.read()


@pytest.fixture
def lab(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    monkeypatch.setattr(render_module, "COUNT_TIMEOUT", OLD_TIMEOUT, raising=False)
    policy = Policy(1, (make_sandbox("agents", "10.77.0.0/26", "fd77::/120"),))
    with topology() as topo:
        settings = GatewaySettings(sandbox_if=topo.sandbox_if, uplink_if=topo.uplink_if, nflog_group=GROUP)
        runner.apply(render(policy, settings), netns=topo.gateway)
        sender, sandbox_if = raw_sender(topo)
        collect = Collect()
        drops = DropLogger(GROUP, policy, load_name_lists(LISTS), collect, table="egress", netns=topo.gateway)
        assert drops.counters is not None
        drops.counters = PausedReads(drops.counters)
        drops.start(on_death=pytest.fail)
        try:
            yield Lab(topo, sender, _mac(topo.gateway, topo.sandbox_if), _mac(topo.sandbox, sandbox_if), drops, collect)
        finally:
            drops.stop()
            sender.close()


def send(lab: Lab, packet: bytes) -> None:
    ethertype = 0x0800 if packet[0] >> 4 == 4 else 0x86DD
    lab.sender.send(lab.gateway_mac + lab.sandbox_mac + struct.pack("!H", ethertype) + packet)


def test_a_read_later_than_an_element_s_life_still_counts_every_packet(lab: Lab) -> None:
    gre = b"\x00\x00\x08\x00" + INNER4
    for _ in range(PACKETS):
        for version, dst in DESTINATIONS:
            send(lab, ipv4(T.SANDBOX4, dst, 47, gre) if version == 4 else ipv6(T.SANDBOX6, dst, 47, gre))
    paused = lab.drops.counters
    assert isinstance(paused, PausedReads)
    paused.resume_at = time.monotonic() + PAUSE

    def counted() -> dict[str, int]:
        with lab.collect.lock:
            flows = list(lab.collect.flows)
        found = {dst: sum(f.count for f in flows if f.dst == dst) for _, dst in DESTINATIONS}
        assert found == {dst: PACKETS for _, dst in DESTINATIONS}, f"{found} (paused {paused.refused} reads)"
        return found

    eventually(counted, timeout=PAUSE + 20)
    assert paused.refused > 0  # the first read came only after the pause
    assert lab.drops.judge.counts.added > 0  # most of the packets were counted, not logged


def counted_now(lab: Lab, dst: str) -> int:
    """Packets from the sandbox to ``dst`` the kernel holds counted now, both generations (listing empties none)."""
    source = T.SANDBOX6 if ":" in dst else T.SANDBOX4
    total = 0
    for generation in range(COUNT_GENERATIONS):
        sets = tuple(count_set(LogKind.DROP, version, generation) for version in (4, 6))
        total += runner.drop_counters("egress", sets, netns=lab.topo.gateway).get((source, 47, dst), 0)
    return total


def all_counted(lab: Lab, packets: int) -> bool:
    return all(counted_now(lab, dst) == packets for _, dst in DESTINATIONS)


def test_a_reload_then_the_lockdown_then_the_logger_s_stop_still_count_every_packet_once(lab: Lab) -> None:
    """Nothing is read while the floods come (the reads refused): a reload and the lockdown replace the table in
    between, and the logger then stops. Every packet is recorded exactly once, logged or counted: the table kept its
    counters across both replacements (`runner.replace_table`), and the stop read both generations."""
    paused = lab.drops.counters
    assert isinstance(paused, PausedReads)
    gre = b"\x00\x00\x08\x00" + INNER4
    table, gw = "egress", lab.topo.gateway
    settings = GatewaySettings(sandbox_if=lab.topo.sandbox_if, uplink_if=lab.topo.uplink_if, nflog_group=GROUP)
    reloaded = Policy(2, (*lab.drops.policy.sandboxes, make_sandbox("builders", "10.77.0.128/26", "fd77::300/120")))
    half = PACKETS // 2
    for step in range(2):
        for _ in range(half):
            for version, dst in DESTINATIONS:
                send(lab, ipv4(T.SANDBOX4, dst, 47, gre) if version == 4 else ipv6(T.SANDBOX6, dst, 47, gre))
        eventually(lambda: all_counted(lab, half * (step + 1)), timeout=scaled(10))  # noqa: B023 (awaited here)
        if step == 0:
            runner.replace_table(render(reloaded, settings), table, gw)  # the reload
    runner.replace_table(render_lockdown(settings, reloaded), table, gw)  # the lockdown
    paused.resume_at = 0.0
    lab.drops.stop()
    with lab.collect.lock:
        flows = list(lab.collect.flows)
    found = {dst: sum(f.count for f in flows if f.dst == dst) for _, dst in DESTINATIONS}
    assert found == {dst: PACKETS for _, dst in DESTINATIONS}
