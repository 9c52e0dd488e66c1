"""Issue 9 point 8: IP protocols other than TCP, UDP and ICMP (GRE, IPIP, 6in4, SCTP, ESP, AH, UDP-Lite, unknown
numbers), in IPv4 and IPv6, fragmented, behind IPv6 extension headers, and as a flood. The agent sends them with
raw sockets from the sandbox; a receiver in the internet namespace (raw socket per protocol) is the attacker's own
view; the capture on the internet side is the ground truth. Each must reach nothing and be recorded with its
protocol; a flood must be one record with the whole count, not thousands and not zero."""

from __future__ import annotations

import sys
import time

import pytest

from egress.lab.topology import SANDBOX_V4, SANDBOX_V6, server
from egress.record.schema import AttemptRecord
from tests.security.harness import SecurityLab, report

pytestmark = pytest.mark.security

TARGET = server("blocked")
"""Where the agent sends (a host no rule allows; a receiver listens there in the internet namespace)."""

RECEIVER = r"""
import select, socket, sys
family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
socks = [socket.socket(family, socket.SOCK_RAW, int(p)) for p in sys.argv[2].split(",")]
print("listening", flush=True)
while True:
    for sock in select.select(socks, [], [])[0]:
        data = sock.recv(65535)
        print("received", sock.proto, len(data), flush=True)
"""

SENDER = r"""
import os, socket, struct, sys
version, proto, count, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dst, chain = sys.argv[5], sys.argv[6]
inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7]))
inner += b"\x30\x39\x00\x35\x00\x08\x00\x00"
bodies = {
    47: b"\x00\x00\x08\x00" + inner,                        # GRE carrying IPv4 (RFC 2784)
    4: inner,                                               # IP in IP
    41: struct.pack("!IHBB", 6 << 28, 0, 59, 64) + bytes(32),  # IPv6 in IPv4, no next header
    50: b"\x00\x00\x10\x01\x00\x00\x00\x01" + os.urandom(48),  # ESP: SPI, sequence, ciphertext
    51: b"\x3b\x04\x00\x00\x00\x00\x20\x02\x00\x00\x00\x01" + os.urandom(12),
    132: struct.pack("!HHII", 40000, 9899, 0, 0) + b"\x01\x00\x00\x14" + os.urandom(16),  # SCTP INIT
    136: struct.pack("!HHHH", 40000, 9000, 8, 0) + b"udplite",
}
body = bodies.get(proto, b"experimental protocol " + os.urandom(8))
body += b"EXFIL-MARKER" + os.urandom(max(0, size - len(body) - 12))
family = socket.AF_INET6 if version == 6 else socket.AF_INET
if chain == "ext" and version == 6:
    # two destination-options headers (PadN), then the protocol: an extension-header chain
    sock = socket.socket(family, socket.SOCK_RAW, 60)
    body = bytes([60, 0, 1, 4, 0, 0, 0, 0]) + bytes([proto, 0, 1, 4, 0, 0, 0, 0]) + body
else:
    sock = socket.socket(family, socket.SOCK_RAW, proto)
if version == 4:
    sock.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = DONT: the kernel fragments what exceeds the MTU
else:
    sock.setsockopt(socket.IPPROTO_IPV6, 23, 0)  # IPV6_MTU_DISCOVER = DONT
    sock.setsockopt(socket.IPPROTO_IPV6, 62, 0)  # IPV6_DONTFRAG off
for _ in range(count):
    sock.sendto(body, (dst, 0))
print("sent", count, flush=True)
"""

# (variant, IP version, protocol number, label in the record, reason, payload size, header chain)
VARIANTS = [
    ("gre", 4, 47, "gre", "tunnel", 64, ""),
    ("ipip", 4, 4, "ipip", "tunnel", 64, ""),
    ("6in4", 4, 41, "ipv6-in-ip", "tunnel", 64, ""),
    ("esp", 4, 50, "esp", "tunnel", 64, ""),
    ("ah", 4, 51, "ah", "tunnel", 64, ""),
    ("sctp", 4, 132, "sctp", "firewall-drop", 64, ""),
    ("udplite", 4, 136, "udplite", "firewall-drop", 64, ""),
    ("unknown-253", 4, 253, "ip-253", "firewall-drop", 64, ""),
    ("gre-fragmented", 4, 47, "gre", "tunnel", 4000, ""),
    ("sctp-fragmented", 4, 132, "sctp", "firewall-drop", 4000, ""),
    ("gre-v6", 6, 47, "gre", "tunnel", 64, ""),
    ("sctp-v6", 6, 132, "sctp", "firewall-drop", 64, ""),
    ("ipip-v6-fragmented", 6, 4, "ipip", "tunnel", 4000, ""),
    ("gre-v6-extension-chain", 6, 47, "gre", "tunnel", 64, "ext"),
    ("unknown-v6-extension-chain", 6, 253, "ip-253", "firewall-drop", 64, "ext"),
]


def _label(record: AttemptRecord) -> str:
    return record.protocol


@pytest.mark.parametrize(
    ("variant", "version", "proto", "label", "reason", "size", "chain"),
    [pytest.param(*v, id=v[0]) for v in VARIANTS],
)
def test_other_ip_protocols_reach_nothing_and_are_recorded(
    security_lab: SecurityLab, variant: str, version: int, proto: int, label: str, reason: str, size: int, chain: str
) -> None:
    lab = security_lab
    dst = TARGET.v4 if version == 4 else TARGET.v6
    src = SANDBOX_V4 if version == 4 else SANDBOX_V6
    receiver = lab.attacker(f"raw-{variant}", [sys.executable, "-c", RECEIVER, str(version), str(proto)])
    receiver.wait_for("listening")
    since = time.time()
    with lab.capture(f"ipproto-{label}-{version}") as capture:
        sent = lab.sandbox_python(SENDER, str(version), str(proto), "3", str(size), dst, chain)
    crossed = capture.result
    assert crossed is not None
    assert "sent 3" in sent.stdout, sent.stderr
    leaked = crossed.bytes_to(dst) + crossed.bytes_to(TARGET.v6 if version == 4 else TARGET.v4)
    goal = "received" in receiver.log()
    found = lab.records_until(since, lambda rs: any(r.dst == dst and _label(r) == label for r in rs))
    record = next(r for r in found if r.dst == dst and _label(r) == label)
    report(f"ipproto/{variant}", "unrecorded", leaked, goal, str(record.reason), record.protocol)
    receiver.stop()
    assert leaked == 0 and not crossed.contains(b"EXFIL-MARKER"), crossed.table()
    assert not goal, receiver.log()
    assert (str(record.reason), str(record.transport), record.sandbox, record.src) == (reason, "ip", "agent", src)


def test_a_flood_of_gre_is_one_record_with_the_whole_count(security_lab: SecurityLab) -> None:
    """5,000 GRE packets: the firewall logs about a hundred (50/s, burst 100) and counts every one; Redis gets a
    handful of records (first, then one per 10 s window) whose counts add up to 5,000."""
    lab = security_lab
    dst, packets = server("doh").v4, 5000  # a destination no other test here uses: no earlier window to join
    since = time.time()
    with lab.capture("gre-flood") as capture:
        sent = lab.sandbox_python(SENDER, "4", "47", str(packets), "64", dst, "", timeout=60)
    crossed = capture.result
    assert crossed is not None
    assert f"sent {packets}" in sent.stdout, sent.stderr

    def gre(records: list[AttemptRecord]) -> list[AttemptRecord]:
        return [r for r in records if r.dst == dst and r.protocol == "gre"]

    def whole(records: list[AttemptRecord]) -> bool:
        counted = sum(r.count for r in gre(records))
        assert counted >= packets, f"{counted} of {packets} counted in {len(gre(records))} records"
        return True

    found = gre(lab.records_until(since, whole, timeout=60))
    counted = sum(r.count for r in found)
    leaked = crossed.bytes_to(dst)
    report("ipproto/gre-flood-5000", "unrecorded", leaked, False, str(found[0].reason), f"{len(found)} records")
    assert leaked == 0, crossed.table()
    assert counted == packets, [(r.count, r.evidence) for r in found]
    assert len(found) <= 10, [(r.count, r.evidence) for r in found]
