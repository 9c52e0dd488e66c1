"""Tests for egress.detect.websocket: frame unwrapping, inner detectors, and tunnels over WebSocket."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.detect import websocket
from egress.detect.base import MORE, Category, Finding, FlowView, Result
from tests.detect.feeding import feed_every_split, feed_stream, meta
from tests.detect.test_tls import TOR_CLIENT_HELLO

_RANDOM = random.Random(1729)
"""Seeded: parametrize ids are built from these bytes, and every xdist worker must collect the same ids."""

# Client side of flow 127.0.0.1:33702 -> 127.0.0.1:1234 in tunnel/ndpi_tls_heur__vmess-websocket.pcapng: the
# upgrade request and the first (masked, binary, 691-byte) frame of V2Ray VMess.
VMESS_CLIENT = bytes.fromhex(
    "474554202f20485454502f312e310d0a486f73743a203132372e302e302e313a313233340d0a557365722d4167656e743a20476f2d687474"
    "702d636c69656e742f312e310d0a436f6e6e656374696f6e3a20557067726164650d0a5365632d576562536f636b65742d4b65793a206b5a"
    "5a497744726e486d5759786a6837612f766c38773d3d0d0a5365632d576562536f636b65742d56657273696f6e3a2031330d0a5570677261"
    "64653a20776562736f636b65740d0a0d0a82fe02b3095056f60f514552ebec0659624d57c44231ab2089af65a59f34e0386c40b0599b4ab9"
    "ad15f57b08a629f28e0c79f3cfd622f59074fb15a91230c6608fc5d17d0869df41f62e0242bf72e11cf8e235396a70f6dc6641e885a556ea"
    "43826640262e2cd1c3705bf14a980c16a6d2296df38411b63d5fc561f1fe3e0e25b446d74172bee6281d4559586eac8364aec4df271eb9e3"
    "2dc7ee0bf307b64079b21b4a8f1ce0bc1bd8bed9bfb668f5c6f6110ab32f4a3391063e8011f611e1214a45b11b40d461c98c0f627cb893cf"
    "d7e38261195e0cbe76cf13dcb2d56c377879a1ccdeb9fba63226ae1a228ba608c61db6da729ccdbacf314df52f944032a4c67a81ee1f3d5b"
    "6035a8266851303f91306596fc6915705c95f44411f3ce5e0aaab78485f5401047e8cf9c51e5d05576ac9b11e6e4ddfc407fe4adc1c15416"
    "240ff5ebaf3d49eedf62580033221c0c97f13f2eadb784e1010bed322a9824a373588d3f5877be57366e81fe8efc696e1ef8aa5bad2cb07c"
    "3dea3d479ab9e695b094161a539d4b470b3d35560277c159390d3b5c264e630be4dba7f38aa788fc7c6524d09c1cf3274926fc4fbbf1dc88"
    "80f9414a8a1d884d40fdc4457ccee18029f68d79ee2ed9bf76f80c7089e688970770db4e7bd33fd8f26808365246a416a85ebddfe989c4de"
    "547e1d76fbcdba16e329f1131f62547619fb94d67ce18723f76bcd9e22f1754912633aa70388184a1b2401e8e52b872f2e231094e3b96d9c"
    "d36e572145f9e206c85f493c00ed6fad7619426e9d4948549bcc616820e8660cbb4643926b7d81953b5ec477867fd98fb57f7102b542c4a3"
    "a1ab23df07df0938371d7d56b6f8563ac370c514e7fd5b0ec09908451feb377b686494769782d628e869fde029823aa233c6eac4a0aa17e8"
    "45baa4a34add0e0592f6c703e15d85179540dc1389d6ae8c1051648b569e027ba24fb609b7d0229abf129a0c"
)
# The server's 101 answer of the same flow.
VMESS_SERVER_HEAD = bytes.fromhex(
    "485454502f312e312031303120537769746368696e672050726f746f636f6c730d0a557067726164653a20776562736f636b65740d0a436f"
    "6e6e656374696f6e3a20557067726164650d0a5365632d576562536f636b65742d4163636570743a2043443155304a446345686d2f315262"
    "70335077786f4369513949553d0d0a0d0a"
)
# benign/ndpi_websocket.pcap, captured after the handshake: server text frames, then the client's masked frame.
WS_BENIGN_SERVER_FRAMES = bytes.fromhex(
    "811757656c636f6d652c203139322e3136382e34332e312021813232313a33333a35322028273139322e3136382e34332e31272c20353039"
    "393929207361793a2074657374206d657373616765813532313a33343a35332028273139322e3136382e34332e31272c2035303939392920"
    "7361793a2068656c6c6f20776562736f636b6574"
)
WS_BENIGN_CLIENT_FRAMES = bytes.fromhex(
    "818ce17e8eb9951bfdcdc113ebca921fe9dc818fb7cefd57dfab913bd8ee8a32d5bd9234dcab89"
)
# A handshake of the shape RFC 6455 §1.2 gives, to put the real benign frames above behind one.
HANDSHAKE = (
    b"GET /chat HTTP/1.1\r\nHost: 192.168.43.135:12345\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
ACCEPT = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)
KEY = b"\x37\xfa\x21\x3d"


def frame(payload: bytes, opcode: int = 1, fin: bool = True, mask: bytes = KEY, rsv1: bool = False) -> bytes:
    """One frame per RFC 6455 §5.2 (masked when ``mask`` is given, as clients must)."""
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + size.to_bytes(2)
    else:
        head += bytes([bit | 127]) + size.to_bytes(8)
    if not mask:
        return head + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def stratum(view: FlowView) -> Result:
    """A stand-in for the mining detectors: flags a stratum subscribe at the start of the client stream."""
    if view.client.startswith(b'{"id":1,"method":"mining.subscribe"'):
        return Finding(Category.MINING, "stratum-v1", "stratum", "mining.subscribe")
    if len(view.client) < 35 and not view.complete:
        return MORE
    return None


WITH_STRATUM = websocket.make_websocket_detector((stratum,))
SUBSCRIBE = b'{"id":1,"method":"mining.subscribe","params":["xmrig/6.21"]}\n'


def test_vmess_over_websocket_is_a_tunnel() -> None:
    results = feed_every_split(websocket.detect, VMESS_CLIENT, VMESS_SERVER_HEAD, meta(1234))
    assert all(result == results[0] for result in results)
    found = results[0]
    assert found is not None
    assert (found.category, found.protocol, found.detector) == (Category.TUNNEL, "websocket-tunnel", "websocket")
    assert found.evidence.startswith("first binary message is random")


def test_mining_inside_frames_is_found_by_inner_detector() -> None:
    client = HANDSHAKE + frame(SUBSCRIBE[:20], fin=False) + frame(SUBSCRIBE[20:], opcode=0)
    results = feed_every_split(WITH_STRATUM, client, ACCEPT, meta(80))
    assert all(result == results[0] for result in results)
    assert results[0] == Finding(Category.MINING, "stratum-v1", "websocket+stratum", "mining.subscribe")


def test_server_frames_reach_inner_detectors() -> None:
    def server_side(view: FlowView) -> Result:
        if b"say: hello websocket" in view.server:
            return Finding(Category.TUNNEL, "marker", "marker", "")
        return None if view.complete else MORE

    detect = websocket.make_websocket_detector((server_side,))
    found = feed_stream(detect, HANDSHAKE, ACCEPT + WS_BENIGN_SERVER_FRAMES, meta(80))
    assert found is not None
    assert found.detector == "websocket+marker"


@pytest.mark.parametrize(
    ("client", "server", "reason"),
    [
        (HANDSHAKE + frame(TOR_CLIENT_HELLO, opcode=2), ACCEPT, "TLS handshake"),
        (HANDSHAKE + frame(b"SSH-2.0-OpenSSH_9.6\r\n", opcode=2), ACCEPT, "SSH banner"),
        (HANDSHAKE, ACCEPT + frame(bytes(range(256)) * 4, opcode=2, mask=b""), "random"),
    ],
)
def test_other_tunnels(client: bytes, server: bytes, reason: str) -> None:
    found = feed_stream(websocket.detect, client, server, meta(443))
    assert found is not None
    assert found.protocol == "websocket-tunnel"
    assert reason in found.evidence


@pytest.mark.parametrize(
    ("client", "server"),
    [
        (WS_BENIGN_CLIENT_FRAMES, WS_BENIGN_SERVER_FRAMES),  # benign/ndpi_websocket.pcap, handshake not captured
        (HANDSHAKE + WS_BENIGN_CLIENT_FRAMES, ACCEPT + WS_BENIGN_SERVER_FRAMES),
        (HANDSHAKE + frame(SUBSCRIBE), ACCEPT),  # no inner detectors given
        (HANDSHAKE + frame(b"\x08\x96\x01" * 200, opcode=2), ACCEPT),  # structured binary
        (HANDSHAKE + frame(_RANDOM.randbytes(300), opcode=2, rsv1=True), ACCEPT),  # permessage-deflate
        (HANDSHAKE + frame(_RANDOM.randbytes(100), opcode=2), ACCEPT),  # too short to judge
        (HANDSHAKE + frame(_RANDOM.randbytes(300), opcode=2), b"HTTP/1.1 403 Forbidden\r\n\r\n"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"),
        (HANDSHAKE + b"\x83\x80" + KEY, ACCEPT),  # reserved opcode
    ],
)
def test_no_finding(client: bytes, server: bytes) -> None:
    assert feed_stream(websocket.detect, client, server, meta(80)) is None


def test_unwrap_unmasks_client_frames() -> None:
    client = websocket.unwrap(WS_BENIGN_CLIENT_FRAMES, 0)
    assert client is not None
    assert client.payload == b"test messagehello websocket"
    assert (client.first_opcode, client.first_payload, client.first_done) == (1, b"test message", True)


def test_unwrap_drops_control_frames_and_keeps_partial_payload() -> None:
    data = frame(b"ping", opcode=9, mask=b"") + frame(b"0123456789", opcode=2, mask=b"")[:8]
    unwrapped = websocket.unwrap(data, 0)
    assert unwrapped is not None
    assert unwrapped.payload == b"012345"
    assert not unwrapped.first_done


@given(st.binary(max_size=300), st.binary(max_size=120))
def test_arbitrary_bytes_never_raise(client: bytes, server: bytes) -> None:
    feed_stream(WITH_STRATUM, client, server, meta(80))
    feed_stream(WITH_STRATUM, HANDSHAKE + client, ACCEPT + server, meta(80))
    websocket.unwrap(client, 0)
