"""Issue 13: tunnels over UDP to a destination no rule allows, on ports that do not give them away. WireGuard on
Cloudflare WARP's port (2408), Tailscale's (41641), SIP's (5060, as Mullvad offers) and with TunnelBear's longer
handshake; VXLAN and Teredo carrying a packet. The agent sends them from the sandbox; a UDP receiver in the
internet namespace is the attacker's view; the capture on the internet side is the ground truth. Each must reach
nothing and be recorded by name (reason ``tunnel``, the record's protocol the detector's label), not only as a
``firewall-drop``."""

from __future__ import annotations

import sys
import time

import pytest

from egress.lab.topology import SANDBOX_V4, server
from egress.record.schema import AttemptRecord
from tests.security.harness import SecurityLab, report

pytestmark = pytest.mark.security

TARGET = server("blocked")

RECEIVER = r"""
import select, socket, sys
socks = []
for port in sys.argv[1].split(","):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", int(port)))
    socks.append(sock)
print("listening", flush=True)
while True:
    for sock in select.select(socks, [], [])[0]:
        data, peer = sock.recvfrom(65535)
        print("received", sock.getsockname()[1], len(data), flush=True)
"""

SENDER = r"""
import os, socket, struct, sys
kind, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

def wireguard_initiation(size):
    # type 1, three reserved zero bytes, sender index, then ephemeral key, static and timestamp ciphertexts and
    # the MACs: random bytes to anyone without the keys (WireGuard paper §5.4.2); TunnelBear's is 204 bytes
    return b"\x01\x00\x00\x00" + os.urandom(size - 4 - 12) + b"TUNNEL-MARK!"

inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 48, 1, 0, 64, 17, 0, bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2]))
inner += struct.pack("!HHHH", 4000, 4001, 28, 0) + b"TUNNEL-MARKER-inner!"
ipv6 = struct.pack("!IHBB", 6 << 28, 28, 17, 64) + bytes(15) + b"\x01" + bytes(15) + b"\x02"
ipv6 += struct.pack("!HHHH", 4000, 4001, 28, 0) + b"TUNNEL-MARK-inner-v6"
payloads = {
    "wireguard": wireguard_initiation(148),
    "wireguard-tunnelbear": wireguard_initiation(204),
    # VXLAN (RFC 7348 §5): flags 0x08, VNI 42, an Ethernet frame carrying IPv4
    "vxlan": b"\x08\x00\x00\x00\x00\x00\x2a\x00" + b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + inner,
    # Teredo (RFC 4380 §5.1.1): a bare IPv6 packet
    "teredo": ipv6,
}
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    sock.sendto(payloads[kind], (dst, port))
print("sent 3", flush=True)
"""

# (variant, payload kind, UDP port, protocol the record names)
VARIANTS = [
    ("wireguard-warp-2408", "wireguard", 2408, "wireguard"),
    ("wireguard-tailscale-41641", "wireguard", 41641, "wireguard"),
    ("wireguard-sip-5060", "wireguard", 5060, "wireguard"),
    ("wireguard-tunnelbear-5060", "wireguard-tunnelbear", 5060, "wireguard"),
    ("vxlan-4789", "vxlan", 4789, "vxlan"),
    ("teredo-3544", "teredo", 3544, "teredo"),
]


@pytest.mark.parametrize(("variant", "kind", "port", "protocol"), [pytest.param(*v, id=v[0]) for v in VARIANTS])
def test_udp_tunnels_reach_nothing_and_are_recorded_by_name(
    security_lab: SecurityLab, variant: str, kind: str, port: int, protocol: str
) -> None:
    lab = security_lab
    dst = TARGET.v4
    receiver = lab.attacker(f"udp-{variant}", [sys.executable, "-c", RECEIVER, str(port)])
    receiver.wait_for("listening")
    since = time.time()
    with lab.capture(f"udp-{variant}") as capture:
        sent = lab.sandbox_python(SENDER, kind, dst, str(port))
    crossed = capture.result
    assert crossed is not None
    assert "sent 3" in sent.stdout, sent.stderr

    def named(record: AttemptRecord) -> bool:
        return record.dst == dst and record.dport == port and record.protocol == protocol

    found = lab.records_until(since, lambda rs: any(named(r) for r in rs))
    record = next(r for r in found if named(r))
    leaked = crossed.bytes_to(dst)
    goal = "received" in receiver.log()
    report(f"udp-tunnel/{variant}", "unrecorded", leaked, goal, str(record.reason), protocol)
    receiver.stop()
    assert leaked == 0 and not crossed.contains(b"TUNNEL-MARK"), crossed.table()
    assert not goal, receiver.log()
    assert (str(record.reason), str(record.transport), record.sandbox, record.src) == (
        "tunnel",
        "udp",
        "agent",
        SANDBOX_V4,
    )
