"""Red team 14: the operator's reading of the records, written by the agent.

Every blocked attempt is recorded with the host name it asked for (a TLS SNI, an HTTP Host, a DNS question), and
the operator reads the records with `egress events` (a table, or compact lines) in a terminal. Each row makes one
blocked attempt whose host name carries terminal control sequences or a line break (`redteam_round14_kit`:
``erase`` moves the cursor up and erases the lines printed before it, so the agent's earlier records vanish from
the screen; ``forge`` writes a fake record line naming another sandbox; ``title`` sets the terminal's title), then
reads the records as the operator would (`egress events` in the gateway namespace, table and compact, and
`egress timeline`).

Goal (the agent's): a control character or a line break of its own in what the operator's terminal is sent, or a
cell of `egress events -o csv` that a spreadsheet would read as a formula.
Ground truth: the bytes of the command's output; the record itself (its ``host``). Nothing crosses (each attempt
is refused), so leaked bytes are counted on the internet side for completeness.

Lab: rules/lab-policy.yaml (the module's shared lab).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import time

import pytest

from egress.lab import netns
from egress.record.schema import AttemptRecord
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, SecurityLab, report
from tests.security.redteam_round14_kit import BLOCKED, ENDINGS, MARK, PAYLOADS
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.security

KIT = "from tests.security.redteam_round14_kit import client_main; client_main()"
WHERE = {"sni": 443, "host": 80, "dns": 53}
ROWS = [f"{where}-{payload}" for where in WHERE for payload in PAYLOADS]
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
"""What no record's text may bring to a terminal: C0 but the line feed the printer itself ends lines with, DEL, C1."""
FORMULA = "=+-@"
"""What a spreadsheet reads a cell beginning with as a formula (CWE-1236)."""
FORGED = re.compile(r"^\s*2026-12-03 06:00:00\.000 other", re.MULTILINE)


def _ours(record: AttemptRecord, port: int) -> bool:
    return record.dport == port and (record.dst == BLOCKED or MARK in record.host or MARK in record.evidence)


def _shown(lab: SecurityLab, since: float, output: str) -> str:
    argv = [sys.executable, "-m", "egress", "events", "--since", f"{since:.3f}", "--limit", "1000", "-o", output]
    done = lab.gateway([*argv, "--redis-url", lab.run.redis_url])
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("row", ROWS)
def test_a_recorded_name_writes_nothing_to_the_operators_terminal(security_lab: SecurityLab, row: str) -> None:
    lab = security_lab
    since = time.time()
    with lab.capture(f"rt14-{row}") as capture:
        done = lab.sandbox_python(KIT, row, timeout=30)
    assert "done" in done.stdout, done.stdout + done.stderr
    crossed = capture.result
    assert crossed is not None
    port = WHERE[row.split("-", maxsplit=1)[0]]
    records = lab.records_until(since, lambda rs: any(_ours(r, port) for r in rs))
    ours = [r for r in records if _ours(r, port)]
    shown = {output: _shown(lab, since, output) for output in ("table", "compact")}
    cells = [cell for line in csv.reader(io.StringIO(_shown(lab, since, "csv"))) for cell in line]
    argv = [sys.executable, "-m", "egress", "timeline", "agent", "--since", f"{since:.3f}"]
    shown["timeline"] = lab.gateway([*argv, "--redis-url", lab.run.redis_url]).stdout
    lines = [line for text in shown.values() for line in text.splitlines() if MARK in line]
    written = (
        [match for text in shown.values() for match in CONTROL.findall(text)]
        + [match for text in shown.values() for match in FORGED.findall(text)]
        + [cell for cell in cells if cell and cell[0] in FORMULA]
    )
    goal = bool(written)
    leaked = crossed.bytes_to(BLOCKED, port, "tcp") if port != 53 else 0
    note = f"{len(written)} written, host {ours[0].host[:24]!r}"
    report(f"redteam14/{row}", "records", leaked, goal, str(ours[0].reason), note)
    assert leaked == 0 and not crossed.contains(MARK.encode())
    assert ours and all(r.sandbox == "agent" and r.action == "block" for r in ours), ours
    assert not goal, f"the operator's terminal gets {written!r}: {lines!r}"


ADVICE = ["ra", "redirect", "arp-uplink", "arp-gateway"]
ADVICE_KIT = "from tests.security.redteam_round14_kit import advice_main; advice_main()"


def _gateway_state(lab: SecurityLab) -> str:
    """What routing advice would change on the gateway: its IPv6 addresses and routes, its way to allowed.lab
    (both families), its IPv6 settings of the sandbox side, its neighbours."""
    commands = [
        ["ip", "-6", "addr", "show"],
        ["ip", "-6", "route", "show"],
        ["ip", "-6", "route", "get", "2001:db8:10::1"],
        ["ip", "-4", "route", "get", "198.18.10.1"],
        ["ip", "-6", "route", "show", "cache"],
        ["sysctl", f"net.ipv6.conf.{lab.lab.gateway_sandbox_if}.mtu"],
        ["ip", "neigh", "show"],
    ]
    return "\n".join(lab.gateway(argv).stdout for argv in commands)


def _link_local(lab: SecurityLab, where: str, interface: str) -> tuple[str, str]:
    ns = lab.lab.sandbox_ns if where == "sandbox" else lab.lab.gateway_ns
    shown = netns.exec_in(ns, ["ip", "-o", "link", "show", interface]).stdout
    mac = re.search(r"link/ether ([0-9a-f:]{17})", shown)
    address = netns.exec_in(ns, ["ip", "-o", "-6", "addr", "show", "dev", interface, "scope", "link"]).stdout
    found = re.search(r"inet6 (fe80::[0-9a-f:]+)/", address)
    assert mac and found, (shown, address)
    return found.group(1), mac.group(1)


def _advice_taken(before: str, after: str, sandbox_mac: str) -> list[str]:
    """The lines of the gateway's state that the sandbox's advice shows in: its prefix, its MTU, its MAC
    against any neighbour but the sandbox's own addresses, a route through a link-local next hop."""
    new = [line for line in after.splitlines() if line not in before.splitlines()]
    own = ("10.203.1.2 ", "fd00:203:1::2 ", "fe80:")
    return [
        line
        for line in new
        if "2001:db8:77" in line
        or "mtu 1280" in line
        or line.endswith("= 1280")
        or (sandbox_mac in line and not line.startswith(own))
        or re.search(r"via fe80:", line)
    ]


@pytest.mark.parametrize("kind", ADVICE)
def test_the_gateway_takes_no_routing_advice_from_the_sandbox(security_lab: SecurityLab, kind: str) -> None:
    """Layer 2/3 from the sandbox to the gateway: a router advertisement (a prefix, a route to allowed.lab, an
    MTU), an ICMPv6 redirect for allowed.lab, ARP claiming the internet side's address or the gateway's own."""
    lab = security_lab
    gateway_ll, gateway_mac = _link_local(lab, "gateway", lab.lab.gateway_sandbox_if)
    _, sandbox_mac = _link_local(lab, "sandbox", lab.lab.sandbox_if)
    before = _gateway_state(lab)
    since = time.time()
    with lab.capture(f"rt14-advice-{kind}") as capture:
        done = lab.sandbox_python(ADVICE_KIT, kind, lab.lab.sandbox_if, gateway_ll, gateway_mac, timeout=30)
        assert "done" in done.stdout, done.stdout + done.stderr
        download = lab.attempts(["allowed_download"])[0]
    crossed = capture.result
    assert crossed is not None
    taken = _advice_taken(before, _gateway_state(lab), sandbox_mac)
    reason = "" if kind.startswith("arp") else lab.reason_of(since, lambda r: r.transport == "icmp", timeout=10)
    goal = bool(taken) or download.outcome != "ok"
    report(f"redteam14/advice-{kind}", "gateway-l2l3", 0, goal, reason or None, download.outcome)
    assert not goal, (taken, download)
    assert not crossed.contains(bytes.fromhex(sandbox_mac.replace(":", "")))


def test_control_the_router_advertisement_is_taken_by_a_host_that_listens(security_lab: SecurityLab) -> None:
    """The same advertisement, its prefix alone (no router, route or MTU: the module's other rows keep their
    paths), sent the other way, by the gateway's namespace to the sandbox (a host: no forwarding, `accept_ra` 1),
    gives the sandbox an address in the advertised prefix: the packet is well made, so the gateway's not taking
    it is the gateway's doing."""
    lab = security_lab
    sandbox_ll, _ = _link_local(lab, "sandbox", lab.lab.sandbox_if)
    _, gateway_mac = _link_local(lab, "gateway", lab.lab.gateway_sandbox_if)
    interface = lab.lab.sandbox_if
    try:
        sent = lab.gateway(
            [sys.executable, "-c", ADVICE_KIT, "ra-prefix", lab.lab.gateway_sandbox_if, sandbox_ll, gateway_mac]
        )
        assert "done" in sent.stdout, sent.stdout + sent.stderr

        def taken() -> bool:
            shown = lab.sandbox(["ip", "-6", "addr", "show", "dev", interface]).stdout
            assert "2001:db8:77:" in shown, shown
            return True

        eventually(taken, timeout=scaled(10))
    finally:
        lab.sandbox(["ip", "-6", "addr", "flush", "dev", interface, "to", "2001:db8:77::/64"])
        lab.sandbox(["ip", "-6", "route", "flush", "dev", interface, "proto", "ra"])


ENDING_KIT = "from tests.security.redteam_round14_kit import ending_main; ending_main()"
ENDING_REASONS = {
    "reset-stratum": {"mining"},
    "reset-xmrig": {"mining"},
    "reset-host": {"not-allowlisted", "host-mismatch", "direct-ip"},
    "reset-sni": {"mining", "not-allowlisted"},
    "fin-stratum": {"mining"},
    "reset-stratum-v6": {"mining"},
    "reset-stratum-paced": {"mining"},
    "reset-stratum-long-prefix": {"mining", "tunnel"},
}


@pytest.mark.parametrize("variant", list(ENDINGS))
def test_an_attempt_that_ends_at_once_is_still_recorded(security_lab: SecurityLab, variant: str) -> None:
    """Records: the whole attempt in one write, then a reset at once (or a half-close and close): the gateway
    reads it (the kernel has the bytes) and records it, and nothing crosses."""
    lab = security_lab
    (address, port), _ = ENDINGS[variant]
    since = time.time()
    with lab.capture(f"rt14-{variant}") as capture:
        done = lab.sandbox_python(ENDING_KIT, variant, timeout=30)
        assert "done" in done.stdout, done.stdout + done.stderr
        reasons = lab.reasons_to(since, address, port, timeout=15)
    crossed = capture.result
    assert crossed is not None
    leaked = crossed.bytes_to(address, port, "tcp")
    unseen = not set(reasons) & ENDING_REASONS[variant]
    report(f"redteam14/{variant}", "records", leaked, unseen, ",".join(reasons) or None)
    assert leaked == 0 and not crossed.contains(MARK.encode())
    assert not unseen, reasons


FLOOD_KIT = "from tests.security.redteam_round14_kit import flood_main; flood_main()"
FLOOD = 1200
"""Unique blocked attempts after the mining one: three times the policy's retention (400 records)."""


def test_a_flood_of_blocked_attempts_does_not_push_a_finding_out(lab_factory: LabFactory) -> None:
    lab = lab_factory(POLICIES / "redteam_round14_retention.yaml")
    argv = [sys.executable, "-m", "egress", "retention", "--json", "--redis-url", lab.run.redis_url]

    def held_and_trimmed() -> dict[str, int]:
        row: dict[str, int] = json.loads(lab.gateway(argv).stdout)["sandboxes"].get("agent", {})
        return row

    before = held_and_trimmed()
    since = time.time()
    done = lab.sandbox_python(FLOOD_KIT, str(FLOOD), timeout=300)
    assert "done" in done.stdout, done.stdout + done.stderr

    # The flood has arrived when every one of its records is either held or counted as trimmed. Not a count of the
    # records held: the size trim drops whole entries, and under load the recorder writes bigger batches, so what
    # is held after the flood is anywhere between 400 less one batch and 400.
    def accounted() -> dict[str, int]:
        row = held_and_trimmed()
        grown = sum(row.get(field, 0) - before.get(field, 0) for field in ("records", "trimmed_by_size"))
        assert grown >= FLOOD + 1, f"not yet: {grown} of {FLOOD + 1} records, {row}"
        return row

    row = eventually(accounted, timeout=120.0, interval=0.5)
    assert row["trimmed_by_size"] > before.get("trimmed_by_size", 0), f"the flood trimmed nothing: {row}"

    def mining() -> list[str]:
        argv = [sys.executable, "-m", "egress", "events", "--since", f"{since:.3f}", "--category", "mining", "--json"]
        return lab.gateway([*argv, "--redis-url", lab.run.redis_url]).stdout.splitlines()

    kept = mining()
    argv = [sys.executable, "-m", "egress", "stats", "--window", "1h", "--by", "category", "--json"]
    counted = lab.gateway([*argv, "--redis-url", lab.run.redis_url]).stdout.strip()
    report("redteam14/retention-flood", "records", 0, not kept, "mining" if kept else None, counted[:60])
    assert kept, f"the mining record is gone; counts: {counted}"
