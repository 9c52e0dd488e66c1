"""A table replaced by a reload or the lockdown keeps the drop counters (root): sandbox ── gateway ── internet
namespaces, the rendered ruleset in the gateway, the real `CountReader` reading and swapping its generations.

The loss (docs/nftables.md, "Logging"): a reload or the lockdown used to delete the table and declare it anew, which
emptied both generations of counting sets: what was counted since the reader's last swap and the retired generation
it had not read yet. `runner.replace_table` keeps them (`counting.keeping`). Packets are counted into both
generations around a reload, a lockdown and the unlock that follows; every one must be read exactly once.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from egress.gateway.dropread import CountReader
from egress.nft import counting, runner
from egress.nft.names import COUNT_GENERATIONS, LogKind, count_set
from egress.nft.render import GatewaySettings, render, render_lockdown
from egress.policy.model import Policy
from tests.nft import make_sandbox
from tests.nft.netns import Topology, socket_in, topology
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.root

T = Topology
GRE = 47
BEFORE = Policy(1, (make_sandbox("agents", "10.77.0.0/26", "fd77::/120"),))
AFTER = Policy(1, (*BEFORE.sandboxes, make_sandbox("builders", "10.77.0.128/26", "fd77::300/120")))
"""The reloaded policy: a sandbox more, so chains and sets come and go around the kept counting state."""


@dataclass(frozen=True, slots=True)
class Lab:
    topo: Topology
    settings: GatewaySettings


@pytest.fixture
def lab() -> Iterator[Lab]:
    with topology() as topo:
        settings = GatewaySettings(sandbox_if=topo.sandbox_if, uplink_if=topo.uplink_if, nflog_group=13)
        runner.apply(render(BEFORE, settings), netns=topo.gateway)
        yield Lab(topo, settings)


def flood(lab: Lab, dst: str, packets: int) -> None:
    """``packets`` GRE packets from the sandbox to ``dst``: dropped and counted by the gateway (waited for)."""
    version = 6 if ":" in dst else 4
    source = T.SANDBOX6 if version == 6 else T.SANDBOX4
    before = in_kernel(lab, source, dst)
    with socket_in(lab.topo.sandbox, socket.AF_INET6 if version == 6 else socket.AF_INET, socket.SOCK_RAW, GRE) as s:
        s.bind((source, 0))
        for _ in range(packets):
            s.sendto(b"\x00\x00\x08\x00" + bytes(20), (dst, 0))
    eventually(lambda: in_kernel(lab, source, dst) == before + packets, timeout=scaled(10))


def in_kernel(lab: Lab, source: str, dst: str) -> int:
    """Packets of the key counted in the kernel now, both generations (listing empties nothing)."""
    total = 0
    for generation in range(COUNT_GENERATIONS):
        sets = tuple(count_set(LogKind.DROP, version, generation) for version in (4, 6))
        total += runner.drop_counters(lab.settings.table, sets, netns=lab.topo.gateway).get((source, GRE, dst), 0)
    return total


def test_a_reload_and_the_lockdown_lose_no_count(lab: Lab) -> None:
    gw, table = lab.topo.gateway, lab.settings.table
    reader = CountReader(table, gw)
    read: Counter[str] = Counter()

    def take() -> None:
        for (_src, _proto, dst, _passed), packets in reader.read().counts.items():
            read[dst] += packets

    flood(lab, "10.78.0.120", 100)  # generation a, current
    take()  # reads b (empty), retires a with its 100 unread
    flood(lab, "fd78::99", 70)  # generation b, current
    kept = [runner.replace_table(render(AFTER, lab.settings), table, gw)]  # the reload
    generation = runner.count_generation(table, gw)
    flood(lab, "10.78.0.121", 30)
    kept.append(runner.replace_table(render_lockdown(lab.settings, AFTER), table, gw))  # the lockdown
    assert "builders" not in runner.list_table(table, gw)  # the lockdown table: nothing else of the policy's
    kept.append(runner.replace_table(render(AFTER, lab.settings), table, gw))  # the unlock
    flood(lab, "10.78.0.120", 20)
    for _ in range(COUNT_GENERATIONS + 1):
        take()
    assert read == {"10.78.0.120": 120, "fd78::99": 70, "10.78.0.121": 30}
    assert kept == [True, True, True]
    assert generation == 1  # the reader's generation went on across the reload
    assert "src4_builders" in runner.list_table(table, gw)  # the reloaded policy is what is in force


def test_a_table_without_the_counting_state_is_replaced_whole(lab: Lab) -> None:
    gw, table = lab.topo.gateway, lab.settings.table
    stale = (
        f"table inet {table} {{}}\ndelete table inet {table}\ntable inet {table} {{\n\tset stale {{ type mark; }}\n}}\n"
    )
    runner.apply(stale, gw)  # a table of another shape (an older version's lockdown table has no counters)
    assert not runner.replace_table(render(BEFORE, lab.settings), table, gw)
    chains, sets = runner.table_names(table, gw) or (set(), set())
    assert "stale" not in sets and sets >= counting.KEPT_SETS and chains >= counting.KEPT_CHAINS
    assert runner.table_names("nosuchtable", gw) is None
