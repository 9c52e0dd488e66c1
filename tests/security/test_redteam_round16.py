"""Red team 16: below the proxy's TCP (hand-made segments and IPv6 fragments), the ICMPv6 and link protocols the
gateway lets a sandbox speak, and a pool that answers and resets at once.

- ``overlap`` rows: a hand-made TCP connection to the pool's allowed address:3333 sends the same sequence range
  twice with different bytes (Stratum first or second), or a tail queued out of order and a head that overlaps it.
- ``frag6`` rows: the Stratum segment to the pool's allowed IPv6 address in fragments: atomic (offset 0, M=0), a
  first fragment of 8 bytes that splits the TCP header, and overlapping fragments (RFC 5722: drop), both orders.
- ``icmp6``: ICMPv6 errors quoting a proxied connection to allowed.lab, Stratum in the quote, sent towards
  allowed.lab.
- ``ndp``: neighbour solicitations, advertisements and router advertisements with Stratum in options no node
  knows, then a flood of solicitations from spoofed sources (link-local and the sandbox's own /64).
- ``dhcp6``: DHCPv6 solicits to ff02::1:2 carrying Stratum in their options (the lab runs without ``--dhcp``).
- ``answer`` rows: the attacker's pool on an allowed address (a network rule that expects anything) answers the
  client's first line with a Stratum job, or pushes the job before the client speaks, and resets at once; many
  connections side by side. The job must be judged (a ``mining`` record per connection) and never delivered.

Goal (the agent's): Stratum or the marker on the internet side, the job delivered, or an attempt the kernel
delivered to the proxy that leaves no record. Ground truth: the internet side's capture and the records.

Lab: tests/security/policies/redteam_round16.yaml (the lab's policy and the answering pool's ports).
"""

from __future__ import annotations

import contextlib
import re
import sys
import time

import pytest

from egress.lab import certs, netns
from egress.record.schema import AttemptRecord
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Crossed, SecurityLab, report
from tests.security.redteam_round16_kit import ANSWERING, MARK, UNFINISHED
from tests.waiting import eventually

pytestmark = pytest.mark.security

POLICY = POLICIES / "redteam_round16.yaml"
KIT = "from tests.security.redteam_round16_kit import {0}; {0}()"
FOUND = {"mining", "tunnel", "inspection-error", "protocol-error"}
"""Reasons that say the attempt was seen for what it is, or refused as unreadable."""


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICY)


def _mac_and_link_local(lab: SecurityLab, where: str, interface: str) -> tuple[str, str]:
    ns = lab.lab.gateway_ns if where == "gateway" else lab.lab.sandbox_ns
    shown = netns.exec_in(ns, ["ip", "-o", "link", "show", interface]).stdout
    mac = re.search(r"link/ether ([0-9a-f:]{17})", shown)
    address = netns.exec_in(ns, ["ip", "-o", "-6", "addr", "show", "dev", interface, "scope", "link"]).stdout
    found = re.search(r"inet6 (fe80::[0-9a-f:]+)/", address)
    assert mac and found, (shown, address)
    return mac.group(1), found.group(1)


def _pool_bytes(crossed: Crossed) -> bool:
    """Whether any Stratum or the marker crossed to the internet side."""
    return crossed.contains(MARK.encode()) or crossed.contains(b"mining.")


RAW = {
    "overlap-benign-first": ("198.18.10.3", set[str]()),
    "overlap-stratum-first": ("198.18.10.3", FOUND),
    "overlap-ooo-stratum-queued": ("198.18.10.3", FOUND),
    "overlap-ooo-benign-queued": ("198.18.10.3", FOUND),
    "frag6-atomic": ("2001:db8:10::3", FOUND),
    "frag6-tiny": ("2001:db8:10::3", set[str]()),
    "frag6-overlap": ("2001:db8:10::3", set[str]()),
    "frag6-overlap-reverse": ("2001:db8:10::3", set[str]()),
}
"""Each hand-made row's destination (port 3333) and the reasons its attempt must be recorded with; none where the
stream the gateway's kernel delivers holds no Stratum call the proxy could read whole: the benign copy kept, or the
datagram dropped (overlapping fragments, RFC 5722; a first fragment without the whole TCP header, RFC 7112).
``ooo-stratum-queued``: the benign head kept and the queued tail trimmed behind it, an HTTP head never finished with
Stratum's authorize where its next header line would be: never forwarded, and recorded at the reset since the
unfinished head is judged (docs/security.md, "Unfinished heads")."""


@pytest.mark.parametrize("variant", list(RAW))
def test_stratum_below_the_proxys_tcp(lab: SecurityLab, variant: str) -> None:
    address, wanted = RAW[variant]
    gateway_mac, _ = _mac_and_link_local(lab, "gateway", lab.lab.gateway_sandbox_if)
    since = time.time()
    with lab.capture(f"rt16-{variant}") as capture:
        done = lab.sandbox_python(KIT.format("raw_main"), variant, lab.lab.sandbox_if, gateway_mac, timeout=60)
        assert "done" in done.stdout, done.stdout + done.stderr
        reasons = lab.reasons_to(since, address, 3333, timeout=15 if wanted else 5)
    crossed = capture.result
    assert crossed is not None
    goal = _pool_bytes(crossed)
    answer = next((line for line in done.stdout.splitlines() if line.startswith("answer")), "")
    leaked = crossed.bytes_to(address, 3333, "tcp") if goal else 0
    report(f"redteam16/{variant}", "below-tcp", leaked, goal, ",".join(reasons) or None, answer[:60])
    assert not goal, crossed.table()
    assert not wanted or set(reasons) & wanted, reasons


def test_icmpv6_errors_quoting_a_proxied_connection(lab: SecurityLab) -> None:
    since = time.time()
    with lab.capture("rt16-icmp6") as capture:
        done = lab.sandbox_python(KIT.format("icmp_main"), timeout=30)
        assert "done" in done.stdout, done.stdout + done.stderr
        reasons = lab.reasons_to(since, "2001:db8:10::1", 0, timeout=5)
    crossed = capture.result
    assert crossed is not None
    icmp = sum(n for (proto, _, _), n in crossed.packets.items() if "icmp" in proto)
    goal = _pool_bytes(crossed) or icmp > 0
    answer = next((line for line in done.stdout.splitlines() if line.startswith("answer")), "")
    report("redteam16/icmp6-errors", "icmpv6", 0 if not goal else icmp, goal, ",".join(reasons) or None, answer)
    assert not goal, crossed.table()
    assert answer.count("HTTP/1.1 200") == 2, done.stdout  # the proxied connection still works


def test_neighbour_discovery_with_payloads_and_a_flood(lab: SecurityLab) -> None:
    gateway_mac, gateway_ll = _mac_and_link_local(lab, "gateway", lab.lab.gateway_sandbox_if)
    since = time.time()
    flood, sources = 5000, 400
    with lab.capture("rt16-ndp") as capture:
        argv = [lab.lab.sandbox_if, gateway_mac, gateway_ll, str(flood), str(sources)]
        done = lab.sandbox_python(KIT.format("ndp_main"), *argv, timeout=120)
        assert "done" in done.stdout, done.stdout + done.stderr
        after = lab.sandbox_python(KIT.format("stratum_main"), timeout=30)
        downloads = lab.attempts(["allowed_download"], ipv6=True) + lab.attempts(["allowed_download"])
    crossed = capture.result
    assert crossed is not None
    pools = (("v4", "198.18.10.3"), ("v6", "2001:db8:10::3"))
    recorded: dict[str, bool] = {}

    def both(records: list[AttemptRecord]) -> bool:
        for family, address in pools:
            recorded[family] = any(r.dst == address and r.dport == 3333 and str(r.reason) in FOUND for r in records)
        return all(recorded.values())

    with contextlib.suppress(AssertionError):  # judged below, after the row is reported
        lab.records_until(since, both)
    records = lab.records(since)
    link = sorted({str(r.reason) for r in records if r.src.startswith(("fe80", "fd00:203:1::")) and r.dport != 3333})
    neighbours = lab.gateway(["ip", "-6", "neigh", "show"]).stdout.count("\n")
    goal = _pool_bytes(crossed)
    note = f"{done.stdout.split()[1]} sent; after: recorded {recorded}, downloads "
    note += f"{[d.outcome for d in downloads]}, {neighbours} v6 neighbours; link records {link}"
    report("redteam16/ndp-options-flood", "link", 0, goal, ",".join(link) or None, note)
    assert not goal, crossed.table()
    assert all(recorded.values()), (recorded, after.stdout)  # the gateway still records
    assert [d.outcome for d in downloads] == ["ok", "ok"], downloads  # and still serves


def test_dhcpv6_carrying_data(lab: SecurityLab) -> None:
    since = time.time()
    with lab.capture("rt16-dhcp6") as capture:
        done = lab.sandbox_python(KIT.format("dhcp6_main"), lab.lab.sandbox_if, timeout=30)
        assert "done" in done.stdout, done.stdout + done.stderr
        reasons = lab.reasons_to(since, "ff02::1:2", 547, timeout=15)
    crossed = capture.result
    assert crossed is not None
    udp = crossed.packets_to(None, 547, None)
    goal = _pool_bytes(crossed) or udp > 0
    report("redteam16/dhcp6-solicit", "link", crossed.bytes_to(None, 547, None), goal, ",".join(reasons) or None)
    assert not goal, crossed.table()


def _counted(lab: SecurityLab, address: str, port: int) -> int:
    """The attempts to the answering pool's ``address``:``port`` recorded with a finding, ever (a record's count
    holds the repeats of its aggregation window, which may have opened in a row before: rows compare totals)."""
    return sum(r.count for r in lab.records(0.0) if (r.dst, r.dport) == (address, port) and str(r.reason) in FOUND)


def _settled(lab: SecurityLab, address: str, port: int) -> int:
    """`_counted` once two readings a second apart agree."""
    last = [-1]

    def same() -> int:
        now = _counted(lab, address, port)
        before, last[0] = last[0], now
        assert now == before, f"{before} then {now}"
        return now + 1

    return int(eventually(same, timeout=30, interval=1.0)) - 1


ATTEMPTS = 400
THREADS = 8
POOLS = {"network-rule": ("198.18.10.3", "198.18.10.3"), "host-rule": ("ssh.lab", "198.18.10.7")}
"""Where the answering pool runs: the pool's address by its network rule, and ssh.lab by its host rule (on the
decrypt list: the ``-tls`` variants are intercepted): (what the client dials, the pool's address)."""
ROWS = [(v, "network-rule") for v in ANSWERING if not v.endswith("-tls")] + [(v, "host-rule") for v in ANSWERING]


@pytest.mark.parametrize(("variant", "where"), ROWS)
def test_a_pool_that_answers_and_resets_is_recorded(lab: SecurityLab, variant: str, where: str) -> None:
    host, address = POOLS[where]
    port = ANSWERING[variant]
    argv = [sys.executable, "-c", KIT.format("pool_main"), address]
    if where == "host-rule":
        argv += [str(path) for path in certs.ensure(lab.lab.state_dir).servers["ssh"]]
    pool = lab.attacker(f"rt16-pool-{variant}-{where}", argv)
    pool.wait_for("listening")
    before = _settled(lab, address, port)
    with lab.capture(f"rt16-{variant}-{where}") as capture:
        argv = [variant, str(ATTEMPTS), str(THREADS), host]
        done = lab.sandbox_python(KIT.format("answers_main"), *argv, timeout=240)
        assert "done" in done.stdout, done.stdout + done.stderr
        made = int(done.stdout.split()[-1])
        jobs = int(done.stdout.split()[done.stdout.split().index("jobs") + 1])
        seen = [0]

        def all_counted() -> bool:
            seen[0] = _counted(lab, address, port) - before
            assert seen[0] >= made, f"{seen[0]} of {made} recorded"
            return True

        with contextlib.suppress(AssertionError):  # judged below, after the row is reported
            eventually(all_counted, timeout=30, interval=1.0)
    crossed = capture.result
    assert crossed is not None
    pool.stop()
    unseen = made - seen[0]
    records = [r for r in lab.records(0.0) if (r.dst, r.dport) == (address, port)]
    others = sorted({str(r.reason) for r in records} - FOUND)
    kinds = sorted({str(r.reason) for r in records} & FOUND)
    note = f"{seen[0]} of {made} recorded {kinds}, {jobs} jobs delivered" + (f"; also {others}" if others else "")
    goal = unseen > 0 or jobs > 0
    report(f"redteam16/{variant}-{where}", "records", 0, goal, "mining" if seen[0] else None, note)
    assert made >= ATTEMPTS * 9 // 10, done.stdout
    assert not crossed.contains(b"mining.")
    assert jobs == 0, note
    assert unseen <= 0, note


UNFINISHED_AT = {"network-rule": ("198.18.10.3", "198.18.10.3", 3333), "host-rule": ("allowed.lab", "198.18.10.1", 80)}
"""Where the unfinished heads go: the pool's address by its network rule (HTTP allowed: the rule expects TLS or
HTTP), and allowed.lab's HTTP port by its host rule: (what the client dials, the address, the port)."""


@pytest.mark.parametrize("where", list(UNFINISHED_AT))
@pytest.mark.parametrize("variant", list(UNFINISHED))
def test_an_unfinished_head_with_a_pools_lines_is_recorded(lab: SecurityLab, variant: str, where: str) -> None:
    """An HTTP request head never finished (no blank line) with Stratum's calls or XMRig's login where its next
    header lines would be, then the client's reset or its half-close: nothing may cross, and the attempt must be
    recorded ``mining`` (the lead's decision, docs/security.md "Unfinished heads"); an ordinary request cut short
    (``benign-rst``) stays unrecorded."""
    host, address, port = UNFINISHED_AT[where]
    since = time.time()
    wanted = set() if variant.startswith("benign") else {"mining"}
    with lab.capture(f"rt16-unfinished-{variant}-{where}") as capture:
        done = lab.sandbox_python(KIT.format("unfinished_main"), variant, host, str(port), timeout=60)
        assert "done" in done.stdout, done.stdout + done.stderr
        reasons = lab.reasons_to(since, address, port, timeout=30 if wanted else 10)
    crossed = capture.result
    assert crossed is not None
    goal = _pool_bytes(crossed) or crossed.contains(b"X-Rt16") or bool(wanted - set(reasons))
    answer = next((line for line in done.stdout.splitlines() if line.startswith("answer")), "")
    report(f"redteam16/unfinished-{variant}-{where}", "records", 0, goal, ",".join(reasons) or None, answer[:60])
    assert not _pool_bytes(crossed) and not crossed.contains(b"X-Rt16"), crossed.table()
    assert set(reasons) == wanted, reasons
