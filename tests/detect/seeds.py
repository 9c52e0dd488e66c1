"""Seed inputs for the detector property tests: the real bytes of tests/detect, and first payloads from the corpus.

Each seed is what one flow carried (a client and a server stream, or datagrams) together with the port and address
that flow used, since several detectors judge by port (SSH off 22, OpenVPN, IKE, DoT) or address (DoH without an
SNI). Mutations of these reach a detector's later states, which random bytes almost never do.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

from egress.capture import packet
from egress.capture.reader import CaptureError, read_frames
from egress.detect.base import Transport
from tests.corpus import CORPUS, HAVE_CORPUS
from tests.detect import (
    test_cryptonode,
    test_cryptonote,
    test_dns,
    test_dns_tunnel,
    test_ethstratum,
    test_getwork,
    test_http,
    test_icmp_tunnel,
    test_jsonrpc,
    test_names,
    test_proxytunnel,
    test_ssh,
    test_stratum,
    test_stratum2,
    test_tls,
    test_vpn,
    test_websocket,
)

OTHER_DST = "198.51.100.7"
DOH_DST = "1.1.1.1"
"""On the shipped DoH list: TLS without SNI to it on 443 is DoH."""


@dataclass(frozen=True, slots=True)
class StreamSeed:
    client: bytes
    server: bytes
    dport: int
    dst: str = OTHER_DST


@dataclass(frozen=True, slots=True)
class DatagramSeed:
    transport: Transport
    datagrams: tuple[tuple[bool, bytes], ...]
    """(from the client, payload) in arrival order."""
    dport: int
    dst: str = OTHER_DST
    icmp_types: tuple[int, ...] = ()
    """ICMP only: the type of each datagram (empty for UDP)."""


def _ws(payload: bytes) -> bytes:
    return test_websocket.frame(payload, opcode=2)


_ST, _CN, _ES, _GW, _S2 = test_stratum, test_cryptonode, test_ethstratum, test_getwork, test_stratum2
_PT, _SSH, _VPN, _WS, _NM = test_proxytunnel, test_ssh, test_vpn, test_websocket, test_names

STREAMS: tuple[StreamSeed, ...] = (
    StreamSeed(_ST.EWBF_CLIENT, b"", 3333),
    StreamSeed(_ST.CGMINER_SUBSCRIBE, _ST.HTTP_400, 3333),
    StreamSeed(_ST.CGMINER_SUBSCRIBE, _ST.POOL_SUBSCRIBE_RESULT, 3333),
    StreamSeed(b"", _ST.ZEC_SERVER, 3333),
    StreamSeed(_ST.CONCATENATED, b"", 3333),
    StreamSeed(test_cryptonote.XMR_LOGIN, test_cryptonote.XMR_LOGIN_RESULT, 3333),
    StreamSeed(test_cryptonote.XMRSTAK_SUBMIT, test_cryptonote.XMR_JOB, 3333),
    StreamSeed(_ES.ETH_LOGIN, _ES.ETH_WORK, 4444),
    StreamSeed(_ES.HTTP_HASHRATE, _ES.HTTP_WORK, 80),
    StreamSeed(_GW.CGMINER_GBT, _GW.POOL_REDIRECT, 3333),
    StreamSeed(_GW.BARE_GBT, _GW.GETWORK_RESULT, 8332),
    StreamSeed(_S2.setup_connection(), b"", 34254),
    StreamSeed(_S2.ACT1, _S2.ACT2_SPEC, 34254),
    StreamSeed(_CN.BITCOIN_VERSION, _CN.BITCOIN_VERSION, 8333),
    StreamSeed(_CN.MONERO_LEVIN, b"", 18080),
    StreamSeed(_CN.GETH_VERSION, b"", 8545),
    StreamSeed(_CN.BITCOIN_RPC + b"\n" + _CN.MONERO_RPC, _CN.NANO_RPC, 8332),
    *(StreamSeed(client, server, 80) for client, server in test_jsonrpc.NEGATIVES),
    StreamSeed(test_http.CONNECT_REQUEST, test_http.CONNECT_RESPONSE, 8080),
    StreamSeed(*_PT.SOCKS5_PIPELINED, 1080),
    StreamSeed(*_PT.SOCKS4, 1080),
    StreamSeed(*_PT.SOCKS4A, 1080),
    StreamSeed(*_PT.SS_LOCAL, 1080),
    StreamSeed(*_PT.CONNECT, 8080),
    StreamSeed(_SSH.PORT80_CLIENT, _SSH.PORT80_SERVER, 80),
    StreamSeed(_SSH.PORT8000_CLIENT, _SSH.PORT8000_SERVER, 8000),
    StreamSeed(_SSH.PORT22_CLIENT, _SSH.PORT22_SERVER, 2222),
    StreamSeed(test_tls.TOR_CLIENT_HELLO, test_tls.TOR_SERVER_FLIGHT, 443),
    StreamSeed(test_tls.ANDROID_GOOGLE_HELLO, b"", 443),
    StreamSeed(_NM.DOH_HELLO, b"", 443, DOH_DST),
    StreamSeed(_NM.DOH_HELLO, b"", 853),
    StreamSeed(_NM.CURL_HELLO, b"", 443),
    StreamSeed(_NM.POOL_HTTP, b"", 80),
    StreamSeed(_NM.DOH_GET, b"", 80),
    StreamSeed(_NM.DOH_POST, b"", 80),
    StreamSeed(_NM.NGROK_HTTP, b"", 80),
    StreamSeed(_NM.CONNECT_POOL, b"", 3128),
    StreamSeed(_VPN.OVPN_TCP_CLIENT, _VPN.OVPN_TCP_SERVER, 1194),
    StreamSeed(_WS.VMESS_CLIENT, _WS.VMESS_SERVER_HEAD, 1234),
    StreamSeed(_WS.HANDSHAKE + _WS.WS_BENIGN_CLIENT_FRAMES, _WS.ACCEPT + _WS.WS_BENIGN_SERVER_FRAMES, 80),
    StreamSeed(_WS.HANDSHAKE + test_websocket.frame(_WS.SUBSCRIBE), _WS.ACCEPT, 80),
    StreamSeed(_WS.HANDSHAKE + _ws(test_tls.TOR_CLIENT_HELLO), _WS.ACCEPT + _ws(_SSH.PORT80_SERVER), 80),
)
"""Real flows (or their heads) from the detector tests, with the port their capture used."""

_IC = test_icmp_tunnel
_ECHO = (8, 0)

DATAGRAMS: tuple[DatagramSeed, ...] = (
    DatagramSeed(Transport.UDP, tuple((True, d) for d in _VPN.OVPN_UDP_CLIENT), 443),
    DatagramSeed(Transport.UDP, ((True, _VPN.OVPN_UDP_RESET), (False, _VPN.OVPN_UDP_ANSWER)), 1194),
    DatagramSeed(Transport.UDP, tuple((True, d) for d in _VPN.OVPN_TLS_AUTH), 443),
    DatagramSeed(Transport.UDP, ((True, _VPN.WG_INITIATION), (False, _VPN.WG_RESPONSE)), 51820),
    DatagramSeed(Transport.UDP, ((True, _VPN.WG_DATA_1), (True, _VPN.WG_DATA_2)), 36116),
    DatagramSeed(Transport.UDP, ((True, _VPN.IKE_SA_INIT),), 500),
    DatagramSeed(Transport.UDP, ((True, b"\x00\x00\x00\x00" + _VPN.IKE_SA_INIT),), 4500),
    DatagramSeed(Transport.UDP, ((True, bytes.fromhex("c3000000010811223344556677880000") + bytes(200)),), 853),
    DatagramSeed(Transport.ICMP, ((True, _IC.IP_IN_ICMP), (False, _IC.IP_IN_ICMP)), 0, icmp_types=_ECHO),
    DatagramSeed(Transport.ICMP, ((True, _IC.LINUX_PING), (False, _IC.LINUX_PING)), 0, icmp_types=_ECHO),
    DatagramSeed(Transport.ICMP, ((True, _IC.WINDOWS_PING), (True, _IC.LINUX_PING_64BIT)), 0, icmp_types=(8, 8)),
    DatagramSeed(Transport.ICMP, ((True, _IC.PTUNNEL), (False, _IC.HANS)), 0, icmp_types=_ECHO),
    DatagramSeed(Transport.ICMP, ((False, _IC.UNREACHABLE),), 0, icmp_types=(3,)),
    DatagramSeed(
        Transport.ICMP, tuple((n % 2 == 0, p) for n, p in enumerate(_IC.RANDOM)), 0, icmp_types=(8, 0, 8, 0, 8)
    ),
)
"""Real datagram flows: OpenVPN, WireGuard, IKE, QUIC to 853 (DoQ), ICMP echo tunnels and pings."""

_TN = test_dns_tunnel
DNS_MESSAGES: tuple[bytes, ...] = (
    test_dns.EXAMPLE_QUERY,
    test_dns.SCDN_RESPONSE,
    test_dns.DNSKEY_HEAD,
    test_dns.IODINE_8BIT,
    *_TN.IODINE_DMACHARD,
    *_TN.IODINE_NDPI,
    *_TN.DNS2TCP,
    *_TN.DNSCAT_EXFIL,
    *_TN.PUNYCODE,
    *_TN.ANDROID,
)
"""Real DNS messages: tunnel queries (iodine, dns2tcp, dnscat2) and ordinary lookups and answers."""

# The captures whose first flows seed the tests: every kind of finding, a few packets each.
CORPUS_FOLDERS = ("mining", "crypto-node", "tunnel")
FRAMES_PER_CAPTURE = 400
FLOWS_PER_CAPTURE = 8
STREAM_BYTES = 4096
DATAGRAMS_PER_FLOW = 6
DNS_PER_CAPTURE = 12
_SYN_ACK = 0x12


@dataclass(frozen=True, slots=True)
class CorpusSeeds:
    streams: tuple[StreamSeed, ...]
    datagrams: tuple[DatagramSeed, ...]
    dns: tuple[bytes, ...]


def _address(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


_FlowBytes = tuple[bytearray, bytearray, list[tuple[bool, bytes]], list[int]]
_FlowKey = tuple[int, bytes, int, bytes, int]


def _segments(path: str) -> Iterator[packet.Segment]:
    """The decodable segments among the capture's first frames; a truncated capture ends the walk quietly."""
    defrag = packet.Defragmenter()
    try:
        for index, (ts, linktype, frame) in enumerate(read_frames(path)):
            if index >= FRAMES_PER_CAPTURE:
                return
            try:
                segment = packet.decode(linktype, frame, ts, defrag)
            except packet.Malformed:
                continue
            if segment is not None:
                yield segment
    except CaptureError:
        return


def _add(flows: dict[_FlowKey, _FlowBytes], segment: packet.Segment) -> None:
    """Files the segment's payload under its flow; the client is whoever sent the first packet seen, unless that
    packet is a SYN-ACK."""
    forward = (segment.proto, segment.src, segment.sport, segment.dst, segment.dport)
    backward = (segment.proto, segment.dst, segment.dport, segment.src, segment.sport)
    syn_ack = segment.proto == packet.TCP and segment.flags & _SYN_ACK == _SYN_ACK
    from_client = forward in flows or (backward not in flows and not syn_ack)
    key = forward if from_client else backward
    if key not in flows:
        if len(flows) >= FLOWS_PER_CAPTURE:
            return
        flows[key] = (bytearray(), bytearray(), [], [])
    client, server, datagrams, types = flows[key]
    if not segment.payload:
        return
    if segment.proto == packet.TCP:
        side = client if from_client else server
        side += segment.payload[: STREAM_BYTES - len(side)]
    elif len(datagrams) < DATAGRAMS_PER_FLOW:
        datagrams.append((from_client, segment.payload))
        types.append(segment.flags)


def _capture_seeds(path: str) -> CorpusSeeds:
    """The first flows of one capture, in capture order (no reassembly: the order the packets were captured)."""
    flows: dict[_FlowKey, _FlowBytes] = {}
    dns: list[bytes] = []
    for segment in _segments(path):
        if segment.proto == packet.UDP and 53 in (segment.sport, segment.dport):
            if len(dns) < DNS_PER_CAPTURE and segment.payload:
                dns.append(segment.payload)
        else:
            _add(flows, segment)
    streams: list[StreamSeed] = []
    grams: list[DatagramSeed] = []
    for (proto, _, _, dst, dport), (client, server, datagrams, types) in flows.items():
        if not (client or server or datagrams):
            continue
        if proto == packet.TCP:
            streams.append(StreamSeed(bytes(client), bytes(server), dport, _address(dst)))
        elif proto == packet.UDP:
            grams.append(DatagramSeed(Transport.UDP, tuple(datagrams), dport, _address(dst)))
        else:
            grams.append(DatagramSeed(Transport.ICMP, tuple(datagrams), 0, _address(dst), tuple(types)))
    return CorpusSeeds(tuple(streams), tuple(grams), tuple(dns))


@functools.cache
def corpus_seeds() -> CorpusSeeds:
    """Seeds from the first flows of the corpus's mining, crypto-node and tunnel captures (none without it)."""
    if not HAVE_CORPUS:
        return CorpusSeeds((), (), ())
    parts = [_capture_seeds(str(path)) for folder in CORPUS_FOLDERS for path in sorted((CORPUS / folder).iterdir())]
    return CorpusSeeds(
        tuple(seed for part in parts for seed in part.streams),
        tuple(seed for part in parts for seed in part.datagrams),
        tuple(message for part in parts for message in part.dns),
    )
