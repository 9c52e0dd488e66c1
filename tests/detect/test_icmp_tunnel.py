"""Tests for egress.detect.icmp_tunnel: ICMP echo payloads that carry data, and ordinary pings."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.detect import icmp_tunnel
from egress.detect.base import Category, Transport
from tests.budget import examples
from tests.detect.feeding import feed_datagrams, meta

_RANDOM = random.Random(1729)
"""Seeded: parametrize ids are built from these bytes, and every xdist worker must collect the same ids."""

FLOW = meta(0, Transport.ICMP, 0)

# tunnel/ndpi_icmp-tunnel.pcap: the first echo request's data is a whole IPv4 packet (10.95.1.1 -> 10.95.1.2,
# itself an ICMP echo request)
IP_IN_ICMP = bytes.fromhex(
    "4500005400004000400123e90a5f01010a5f010208005beb3d0800012d6e13512d49060008090a0b0c0d0e0f101112131415"
    "161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637"
)
# the inner packet's own echo data: what Linux iputils ping sends (8-byte timeval, then bytes 0x08..0x37)
LINUX_PING = IP_IN_ICMP[28:]
LINUX_PING_64BIT = bytes(16) + bytes(range(16, 56))
WINDOWS_PING = b"abcdefghijklmnopqrstuvwabcdefghi"
# mining/nesfit_cgminer.g0.pcapng: a destination unreachable (type 3) quoting the refused TCP packet
UNREACHABLE = bytes.fromhex(
    "4500012e0a87400071063117c0a8016405c4055ce0b70d09cee68b6b61280f1d5018010459d90000504f5354202f20485454"
    "502f312e310d0a417574"
)
# ptunnel header: magic 0xD5200880, destination, port, state, ack, length, seq, id (ptunnel.h ping_tunnel_pkt_t)
PTUNNEL = bytes.fromhex("d5200880") + bytes.fromhex("c0000201") + (22).to_bytes(4) + bytes(16)
HANS = b"hanc\x02" + bytes(5)
RANDOM = [_RANDOM.randbytes(size) for size in (200, 333, 512, 97, 1024)]


def echo(payloads: list[bytes]) -> tuple[list[tuple[bool, bytes]], list[int]]:
    """Alternate requests and replies carrying the given payloads."""
    datagrams = [(index % 2 == 0, payload) for index, payload in enumerate(payloads)]
    return datagrams, [8 if index % 2 == 0 else 0 for index in range(len(payloads))]


@pytest.mark.parametrize(
    ("payloads", "protocol"),
    [
        ([IP_IN_ICMP, IP_IN_ICMP], "ip-over-icmp"),
        ([LINUX_PING, IP_IN_ICMP], "ip-over-icmp"),
        ([PTUNNEL], "icmp-ptunnel"),
        ([HANS], "icmp-hans"),
        (RANDOM, "icmp-tunnel"),
        ([bytes([n]) * 40 + _RANDOM.randbytes(n) for n in (30, 40, 50, 60)], "icmp-tunnel"),
    ],
    ids=["ndpi-icmp-tunnel", "ping-then-tunnel", "ptunnel", "hans", "random-sizes", "varying-sizes"],
)
def test_tunnels_are_found(payloads: list[bytes], protocol: str) -> None:
    datagrams, types = echo(payloads)
    finding = feed_datagrams(icmp_tunnel.detect, datagrams, FLOW, types)
    assert finding is not None
    assert finding.category is Category.TUNNEL
    assert finding.protocol == protocol
    # the same payloads all from one side give the same answer
    assert feed_datagrams(icmp_tunnel.detect, [(True, p) for p in payloads], FLOW, [8] * len(payloads)) == finding


@pytest.mark.parametrize(
    "payloads",
    [
        [LINUX_PING] * 10,
        [LINUX_PING_64BIT] * 10,
        [WINDOWS_PING] * 8,
        [(b"abcdefghijklmnopqrstuvw" * 100)[:1000]] * 4,  # ping.exe -l 1000
        [bytes(16) + bytes(i & 0xFF for i in range(16, 1216))] * 4,  # ping -s 1200
        [bytes(16) + b"\xff\x00" * 100] * 4,  # ping -p ff00
        [b""] * 6,  # nmap -PE
        [bytes(56)] * 6,  # fping
        [bytes(8)],
    ],
    ids=["linux", "linux-64bit", "windows", "windows-large", "linux-large", "pattern", "empty", "zeros", "short"],
)
def test_ordinary_pings_stay_clean(payloads: list[bytes]) -> None:
    datagrams, types = echo(payloads)
    assert feed_datagrams(icmp_tunnel.detect, datagrams, FLOW, types) is None


def test_error_messages_quoting_ip_headers_are_not_tunnels() -> None:
    assert feed_datagrams(icmp_tunnel.detect, [(True, UNREACHABLE)] * 3, FLOW, [3] * 3) is None
    assert icmp_tunnel.classify(UNREACHABLE) == "other"  # quoted header, truncated: not a whole packet


def test_other_transports_are_not_judged() -> None:
    finding = feed_datagrams(icmp_tunnel.detect, [(True, PTUNNEL)], meta(53, Transport.UDP))
    assert finding is None


@pytest.mark.parametrize(
    ("payload", "label"),
    [
        (IP_IN_ICMP, "ip-over-icmp"),
        (IP_IN_ICMP[:-1], "other"),  # length field no longer matches
        (IP_IN_ICMP[:10] + b"\x00\x00" + IP_IN_ICMP[12:], "other"),  # bad header checksum
        (LINUX_PING, "ping"),
        (PTUNNEL, "ptunnel"),
        (b"hans\x07" + bytes(20), "hans"),
    ],
)
def test_classify(payload: bytes, label: str) -> None:
    assert icmp_tunnel.classify(payload) == label


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.binary(max_size=300), st.sampled_from([0, 3, 8, 11, 128, 129])), max_size=30)
)
def test_arbitrary_datagrams_never_raise(items: list[tuple[bool, bytes, int]]) -> None:
    feed_datagrams(icmp_tunnel.detect, [(side, data) for side, data, _ in items], FLOW, [t for _, _, t in items])


def ptunnel_ng(magic: int, state: int, data: bytes = b"", port: int = 22) -> bytes:
    """A ptunnel-ng packet (src/pkt.h ping_tunnel_pkt_t, network order): its magic is 0xDEADC0DE unless ``-m``."""
    head = struct.pack("!6IHH", magic, 0x0A4E0002, port, state, 0, len(data), 1, 0x1234)
    return head + data


@pytest.mark.parametrize(
    "payload",
    [
        ptunnel_ng(0xDEADC0DE, 0 | 1 << 30),  # the client's first packet: kProxy_start, kUser_flag, no data
        ptunnel_ng(0x12345678, 2 | 1 << 30, b"SSH-2.0-OpenSSH_9.6\r\n"),  # -m 12345678, data
        ptunnel_ng(0xDEADC0DE, 1 | 1 << 31),  # the proxy's ack
        ptunnel_ng(0xDEADC0DE, 4 | 1 << 31, _RANDOM.randbytes(16)),  # authentication challenge
    ],
    ids=["start", "custom-magic-data", "proxy-ack", "auth"],
)
def test_ptunnel_ng_is_found_by_its_header_whatever_the_magic(payload: bytes) -> None:
    assert icmp_tunnel.classify(payload) == "ptunnel"
    finding = feed_datagrams(icmp_tunnel.detect, [(True, payload)], FLOW, [8])
    assert finding is not None and finding.protocol == "icmp-ptunnel"


@pytest.mark.parametrize(
    "payload",
    [
        ptunnel_ng(0xDEADC0DE, 0 | 1 << 30, b"x")[:-1],  # length field says one more byte
        ptunnel_ng(0xDEADC0DE, 7 | 1 << 30),  # no such state
        ptunnel_ng(0xDEADC0DE, 0),  # neither flag
        ptunnel_ng(0xDEADC0DE, 0 | 3 << 30),  # both flags
    ],
)
def test_near_ptunnel_headers_are_not_ptunnel(payload: bytes) -> None:
    assert icmp_tunnel.classify(payload) != "ptunnel"


def linux_ping(sec: int, usec: int, size: int = 56) -> bytes:
    return struct.pack("<qq", sec, usec) + bytes(i & 0xFF for i in range(16, size))


def test_real_linux_pings_with_changing_send_times_stay_clean() -> None:
    payloads = [linux_ping(1_764_400_000 + n, 1000 * n) for n in range(12)]
    assert all(icmp_tunnel.classify(p) == "ping" for p in payloads)
    assert feed_datagrams(icmp_tunnel.detect, [(True, p) for p in payloads], FLOW, [8] * 12) is None


def test_data_hidden_in_the_send_time_is_a_tunnel() -> None:
    """16 bytes of data where the timeval goes, the iputils pattern after it: looks like ping, is not."""
    payloads = [_RANDOM.randbytes(16) + bytes(range(16, 56)) for _ in range(4)]
    assert all(icmp_tunnel.classify(p) == "other" for p in payloads)
    finding = feed_datagrams(icmp_tunnel.detect, [(True, p) for p in payloads], FLOW, [8] * 4)
    assert finding is not None and finding.protocol == "icmp-tunnel"


def test_one_large_payload_that_no_ping_sends_is_a_tunnel() -> None:
    payload = b"POST /upload HTTP/1.1\r\n" + b"A" * 300 + b"secret"
    finding = feed_datagrams(icmp_tunnel.detect, [(True, payload)], FLOW, [8])
    assert finding is not None and finding.protocol == "icmp-tunnel"


@pytest.mark.parametrize(
    ("kind", "payload", "covert"),
    [
        (13, struct.pack("!3I", 1, 2, 3), False),  # timestamp request: exactly three timestamps
        (13, struct.pack("!3I", 1, 2, 3) + b"exfiltrated", True),
        (14, struct.pack("!3I", 1, 2, 3) + _RANDOM.randbytes(100), True),
        (15, b"", False),  # information request
        (15, b"data", True),
        (17, bytes(4), False),  # address mask request
        (17, bytes(4) + b"more", True),
        (10, b"", False),  # router solicitation (RFC 1256)
        (10, b"hidden", True),
        (256 + 133, b"\x01\x01" + bytes(6), False),  # ICMPv6 router solicitation, source link-layer option
        (256 + 133, b"\x01\x01" + bytes(6) + b"trailing", True),
        (256 + 133, b"\x01\x00" + bytes(6), True),  # option length 0 is invalid
        (3, UNREACHABLE, False),
        (3, b"secret data, not a quoted header", True),
    ],
)
def test_data_in_icmp_messages_that_carry_none(kind: int, payload: bytes, covert: bool) -> None:
    finding = feed_datagrams(icmp_tunnel.detect, [(True, payload)], FLOW, [kind])
    if covert:
        assert finding is not None and finding.protocol == "icmp-covert"
    else:
        assert finding is None


def test_one_random_payload_is_a_tunnel() -> None:
    """No ping sends random bytes: one echo of them (an encrypted tunnel's packet) is enough."""
    finding = feed_datagrams(icmp_tunnel.detect, [(True, _RANDOM.randbytes(120))], FLOW, [8])
    assert finding is not None and finding.protocol == "icmp-tunnel"
