"""VPN tunnels: OpenVPN over UDP or TCP, WireGuard, and IPsec IKE.

Signatures:

- OpenVPN (openvpn ``src/openvpn/ssl_pkt.h`` and ``ssl.c``; nDPI ``protocols/openvpn.c``): each packet opens with
  ``opcode << 3 | key_id``; control packets then carry the sender's 8-byte random session id. A session starts
  with ``P_CONTROL_HARD_RESET_CLIENT_V2``/``V3`` (opcodes 7/10; V1 is 1), answered by
  ``P_CONTROL_HARD_RESET_SERVER_V2`` (8; V1 is 2). Over TCP each packet is prefixed with a 2-byte length
  (``src/openvpn/socket.h``, stream framing). We flag a side whose first packet is a hard reset and whose second
  packet is a control packet (or a retransmitted reset) with the same session id, or whose peer answers with the
  matching reset that echoes the session id in its ack. Eight random bytes repeated make chance matches negligible.
  Gap: a flow seen only after the handshake (data packets, opcodes 6/9) is not recognised.
- WireGuard (Donenfeld, "WireGuard: Next Generation Kernel Network Tunnel" §5.4; Linux
  ``drivers/net/wireguard/messages.h``): a message starts with a type byte and three zero bytes. Handshake
  initiation is type 1 and exactly 148 bytes, response type 2 and 92 bytes, cookie reply type 3 and 64 bytes;
  transport data is type 4 with a 4-byte receiver index and a little-endian 8-byte counter, padded so the datagram
  length is a multiple of 16 and at least 32. An initiation or response alone is flagged when its key material
  looks random (a blocked client keeps retrying initiations); a response or cookie reply whose receiver index is
  the sender index of the peer's initiation is flagged whatever else it holds (nDPI ``protocols/wireguard.c``
  makes the same check). TunnelBear's handshake messages are 204 and 100 bytes in the same layout (nDPI, same
  file). Transport data needs two datagrams of one side with the same receiver index and an increasing counter.
  The UDP port plays no part: WireGuard is recognised on 51820, 443, 5060, WARP's 2408 or Tailscale's 41641.
- IPsec IKE (RFC 7296 §3.1 for IKEv2, RFC 2408 §3.1 for IKEv1; RFC 3948 §2.2 for the 4-byte zero non-ESP marker
  on port 4500): a 28-byte header with a non-zero initiator SPI, version ``0x20`` or ``0x10``, a known exchange
  type and a length field equal to the datagram length. Only on UDP ports 500 and 4500.
"""

from __future__ import annotations

from egress.detect.base import MORE, Category, Finding, FlowView, Result, Transport, evidence

NAME = "vpn"

_OVPN_RESETS = {1: 2, 7: 8, 10: 8, 2: 1, 8: 7}
"""Hard-reset opcode -> the opcode the peer answers with (client V1/V2/V3 <-> server V1/V2)."""
_OVPN_CONTROL = frozenset({1, 2, 3, 4, 5, 7, 8, 10, 11})
_OVPN_MIN = 14
"""opcode(1) + session id(8) + ack count(1) + packet id(4): the shortest hard reset (no tls-auth)."""
_OVPN_MAX = 1600

_WG_SIZES = {1: 148, 2: 92, 3: 64}
_WG_TUNNELBEAR = {1: 204, 2: 100}
"""TunnelBear's WireGuard handshake is longer, same layout (nDPI wireguard.c names it WireGuard.TunnelBear)."""
_WG_RANDOM = {1: slice(8, 132), 2: slice(12, 76), 3: slice(8, 64)}
"""The keys, ciphertexts and mac1 of each handshake message: random bytes, so at least half of them distinct
(uniform random bytes of these lengths are 75-90% distinct); a zero-filled datagram of the right size fails."""
_WG_LABEL = {1: "handshake initiation", 2: "handshake response", 3: "cookie reply"}

_IKE_PORTS = frozenset({500, 4500})
_IKE_EXCHANGES = {0x20: frozenset({34, 35, 36, 37}), 0x10: frozenset({2, 4, 5, 32})}


def _ovpn_opcode(packet: bytes) -> int:
    return packet[0] >> 3


def _ovpn_first(packet: bytes) -> bool:
    """A plausible session-opening hard reset with key id 0 and a random session id. Three or more zero bytes in
    eight random ones come by chance about once in 300,000 sessions, while a VXLAN header (flags 0x08, three
    reserved zero bytes: opcode 1, key id 0) opens just like a V1 hard reset and was once taken for OpenVPN here."""
    return (
        _OVPN_MIN <= len(packet) <= _OVPN_MAX
        and packet[0] & 7 == 0
        and _ovpn_opcode(packet) in _OVPN_RESETS
        and packet[1:9].count(0) < 3
    )


def _ovpn_match(mine: list[bytes], theirs: list[bytes]) -> Finding | None:
    """OpenVPN when ``mine`` opens with a hard reset confirmed by its next packet or by the peer's answer."""
    first = mine[0]
    session = first[1:9]
    if len(mine) > 1:
        second = mine[1]
        if len(second) >= 9 and _ovpn_opcode(second) in _OVPN_CONTROL and second[1:9] == session:
            return _ovpn_finding(first)
    if theirs:
        answer = theirs[0]
        wanted = _OVPN_RESETS[_ovpn_opcode(first)]
        if _ovpn_first(answer) and _ovpn_opcode(answer) == wanted and answer[9:96].find(session) >= 0:
            return _ovpn_finding(first)
    return None


def _ovpn_finding(first: bytes) -> Finding:
    text = f"OpenVPN opcode {_ovpn_opcode(first)} session {first[1:9].hex()}"
    return Finding(Category.TUNNEL, "openvpn", NAME, evidence(text))


def _ovpn_stream(data: bytes) -> tuple[list[bytes], bool]:
    """The first two length-prefixed packets of a TCP stream; True when the framing cannot be OpenVPN."""
    packets: list[bytes] = []
    offset = 0
    while len(packets) < 2 and offset + 2 <= len(data):
        size = int.from_bytes(data[offset : offset + 2])
        if not 9 <= size <= _OVPN_MAX:
            return packets, True
        packet = data[offset + 2 : offset + 2 + size]
        if len(packet) < size:
            break
        packets.append(packet)
        offset += 2 + size
    return packets, False


def _openvpn_tcp(view: FlowView) -> Result:
    client, bad = _ovpn_stream(view.client)
    if not client:
        return None if bad or view.complete else MORE
    if not _ovpn_first(client[0]):
        return None
    server, _ = _ovpn_stream(view.server)
    found = _ovpn_match(client, server)
    if found is None and server and _ovpn_first(server[0]):
        found = _ovpn_match(server, client)
    if found:
        return found
    return None if view.complete else MORE


def _openvpn_udp(client: list[bytes], server: list[bytes]) -> Finding | None:
    for mine, theirs in ((client, server), (server, client)):
        if mine and _ovpn_first(mine[0]):
            found = _ovpn_match(mine, theirs)
            if found:
                return found
    return None


def _wg_header(packet: bytes) -> bool:
    return len(packet) >= 32 and 1 <= packet[0] <= 4 and packet[1:4] == b"\x00\x00\x00"


def _wg_handshake(packet: bytes) -> int:
    """The handshake message type (1-3) of a datagram of its fixed length (standard or TunnelBear's), else 0."""
    kind = packet[0]
    return kind if kind in _WG_SIZES and len(packet) in (_WG_SIZES[kind], _WG_TUNNELBEAR.get(kind)) else 0


def _wg_finding(packet: bytes, what: str) -> Finding:
    variant = " (TunnelBear's longer handshake)" if len(packet) in _WG_TUNNELBEAR.values() else ""
    text = f"WireGuard {what} sender {packet[4:8].hex()}{variant}"
    return Finding(Category.TUNNEL, "wireguard", NAME, evidence(text))


def _wg_answer(mine: list[bytes], theirs: list[bytes]) -> Finding | None:
    """A response or cookie reply whose receiver index is the sender index of the peer's initiation (nDPI
    wireguard.c: the same index check; the sizes and random key material checked on each message too)."""
    senders = {packet[4:8] for packet in theirs if _wg_header(packet) and _wg_handshake(packet) == 1}
    for packet in mine:
        kind = _wg_header(packet) and _wg_handshake(packet)
        receiver = packet[8:12] if kind == 2 else packet[4:8]
        if kind in (2, 3) and receiver in senders:
            return _wg_finding(packet, f"{_WG_LABEL[kind]} to the peer's initiation")
    return None


def _wireguard(datagrams: list[bytes]) -> Finding | None:
    previous: dict[bytes, int] = {}
    for packet in datagrams:
        if not _wg_header(packet):
            return None
        kind = packet[0]
        if kind in _WG_SIZES:
            body = packet[_WG_RANDOM[kind]]
            if _wg_handshake(packet) and len(set(body)) * 2 >= len(body):
                return _wg_finding(packet, _WG_LABEL[kind])
            return None
        if len(packet) % 16:
            return None
        receiver = packet[4:8]
        counter = int.from_bytes(packet[8:16], "little")
        last = previous.get(receiver)
        if last is not None and last < counter <= last + 4096:
            text = f"WireGuard transport data receiver {receiver.hex()} counter {counter}"
            return Finding(Category.TUNNEL, "wireguard", NAME, evidence(text))
        previous[receiver] = counter
    return None


def _ike(view: FlowView) -> Finding | None:
    meta = view.meta
    if meta.dport not in _IKE_PORTS and meta.sport not in _IKE_PORTS:
        return None
    for packet in view.client_datagrams[:1] + view.server_datagrams[:1]:
        body = packet[4:] if packet[:4] == b"\x00\x00\x00\x00" else packet
        if len(body) < 28 or body[:8] == bytes(8):
            continue
        version, exchange = body[17], body[18]
        if exchange in _IKE_EXCHANGES.get(version, ()) and int.from_bytes(body[24:28]) == len(body):
            text = f"IKEv{version >> 4} exchange {exchange} SPI {body[:8].hex()}"
            return Finding(Category.TUNNEL, "ipsec-ike", NAME, evidence(text))
    return None


def _udp(view: FlowView) -> Result:
    client, server = view.client_datagrams, view.server_datagrams
    found = (
        _wg_answer(server, client)
        or _wg_answer(client, server)
        or _wireguard(client)
        or _wireguard(server)
        or _openvpn_udp(client, server)
        or _ike(view)
    )
    if found:
        return found
    if view.complete:
        return None
    if any(side and not (_wg_header(side[0]) or _ovpn_first(side[0])) for side in (client, server)):
        return None
    return MORE


def detect(view: FlowView) -> Result:
    """A UDP or TCP flow that starts an OpenVPN, WireGuard or IKE session."""
    transport = view.meta.transport
    if transport is Transport.UDP:
        return _udp(view)
    if transport is Transport.TCP:
        return _openvpn_tcp(view)
    return None
