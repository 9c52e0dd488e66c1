"""UDP gate benchmark: CPU per datagram of `UdpJudge.judge`, what the gate's thread pays for each datagram an
allowed UDP network rule queues (docs/gateway.md, "Allowed UDP is read").

- ``benign``: STUN-sized datagrams (20 bytes) on a few long flows, each judged with its full window (16 datagrams);
- ``media``: 1,200-byte random datagrams (RTP/SRTP-like media through a TURN relay), full window;
- ``new-flow``: one datagram per new flow (a rule lookup, a flow made, one datagram judged);
- ``refused``: datagrams of a flow already refused (dropped unread, counted);
- ``json-split``: a benign 300-byte JSON-RPC line cut in 3 datagrams, on its own flow each time: the first two
  held (`egress.detect.textframe` at each), released by the third;
- ``json-whole``: the same line in one datagram (framed once, whole: never held).

CPU seconds (process time, stable on a busy machine) per datagram; the datagrams a second one core judges is its
inverse. The kernel's queue (4,096) drops what the gate does not read in time.

    python bench/udpgate.py            # a few seconds
"""

from __future__ import annotations

import os
import socket
import struct
import time

from egress.capture.nfqueue import QueuedPacket
from egress.gateway.udpgate import UdpJudge
from egress.policy.lists import load_name_lists
from egress.policy.loader import parse_policy

POLICY = """\
version: 1
sandboxes:
  agents:
    sources: [10.77.0.0/24]
    allow:
      networks:
        - {cidr: 198.18.10.3/32, ports: [3478], protocols: [udp]}
"""


def _packet(sport: int, data: bytes) -> QueuedPacket:
    udp = struct.pack("!HHHH", sport, 3478, 8 + len(data), 0) + data
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton("10.77.0.2"),
                       socket.inet_aton("198.18.10.3"))  # fmt: skip
    return QueuedPacket(1, socket.AF_INET, head + udp, 2, 3, time.time())


def _per_datagram(name: str, packets: list[QueuedPacket], judge: UdpJudge) -> None:
    started = time.process_time()
    for packet in packets:
        judge.judge(packet)
    cpu = (time.process_time() - started) / len(packets)
    print(f"{name:10s} {cpu * 1e6:8.1f} µs CPU per datagram  ({1 / cpu:,.0f} datagrams/s on one core)")


def main() -> None:
    policy = parse_policy(POLICY, "bench.yaml")
    lists = load_name_lists()
    stun = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)
    _per_datagram("benign", [_packet(1000 + n % 4, stun) for n in range(4000)], UdpJudge(policy, lists))
    media = [os.urandom(1200) for _ in range(16)]
    _per_datagram("media", [_packet(2000 + n % 4, media[n % 16]) for n in range(2000)], UdpJudge(policy, lists))
    _per_datagram("new-flow", [_packet(10000 + n, stun) for n in range(4000)], UdpJudge(policy, lists))
    refused = UdpJudge(policy, lists)
    refused.judge(_packet(3000, b"\x01\x00\x00\x00" + os.urandom(144)))
    _per_datagram("refused", [_packet(3000, stun) for _ in range(20000)], refused)
    line = b'{"id":7,"method":"status.report","params":["' + b"x" * 250 + b'"]}\n'
    pieces = [line[i : i + 100] for i in range(0, len(line), 100)]
    split = [_packet(20000 + n // len(pieces), pieces[n % len(pieces)]) for n in range(3 * 1500)]
    _per_datagram("json-split", split, UdpJudge(policy, lists))
    _per_datagram("json-whole", [_packet(1000 + n % 4, line) for n in range(2000)], UdpJudge(policy, lists))


if __name__ == "__main__":
    main()
