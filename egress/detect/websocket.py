"""WebSocket: unwrap the frames of an upgraded HTTP/1.1 connection, look inside, and flag tunnels over it.

Signature: the opening handshake (RFC 6455 §4.1-§4.2) is an HTTP/1.1 ``GET`` with ``Upgrade: websocket``
answered ``101``; then each side sends frames (RFC 6455 §5.2): ``FIN RSV1-3 OPCODE``, ``MASK LEN7`` with 16- or
64-bit extended lengths for 126/127, a 4-byte masking key on every client frame (§5.3), and the payload.

`make_websocket_detector` builds a detector that hands the concatenated text/binary payloads of each direction
(continuations included, control frames dropped, client payloads unmasked) to the inner detectors as a new
stream view, so a miner's JSON inside WebSocket frames is found by the mining detectors. It also flags a
WebSocket *tunnel* when the first data message of a side is binary and either carries another protocol's opening
(a TLS handshake record, an SSH banner) or is uniformly random: V2Ray's VMess over WebSocket (nDPI
``tls_heur__vmess-websocket`` capture) starts with an encrypted, authenticated header, whereas ordinary
applications send text or structured binary. Messages compressed with permessage-deflate (RSV1, RFC 7692 §6)
are skipped by the randomness test, since compressed text looks random too.

Gap: a capture that starts after the handshake is not unwrapped (frames alone are too weak a signature).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from egress.detect import http, tls
from egress.detect.base import MORE, Category, Detector, Finding, FlowView, Result, Transport, evidence

NAME = "websocket"
TEXT, BINARY, CONTINUATION = 1, 2, 0
_KNOWN_OPCODES = frozenset({0, 1, 2, 8, 9, 10})
_RANDOM_THRESHOLDS = ((1024, 7.45), (256, 6.8))
"""(sample size, Shannon entropy in bits per byte at or above which the sample is called random). Uniform random
samples of 1024 bytes measure 7.75-7.85 and of 256 bytes 7.0-7.3 (bias of the plug-in estimator); JSON or other
text stays under 5. A first message shorter than 256 bytes is not judged."""


@dataclasses.dataclass(frozen=True, slots=True)
class Unwrapped:
    payload: bytes
    """Concatenated text/binary payloads, the last one possibly partial."""
    first_opcode: int | None
    """Opcode of the first data message, or None when none started yet."""
    first_compressed: bool
    first_payload: bytes
    """What was seen of the first data message (its frames' payloads joined)."""
    first_done: bool
    """True when the first data message is complete (a FIN frame ended it)."""
    broken: bool = False
    """A malformed frame header ended the parse: what came before it is kept, nothing after it is a frame."""


def _unmask(data: bytes, key: bytes) -> bytes:
    size = len(data)
    if not size:
        return data
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(data) ^ int.from_bytes(stream)).to_bytes(size)


def unwrap(data: bytes, offset: int) -> Unwrapped:
    """Parse frames from ``offset`` to the end of ``data``, up to the first malformed frame header (``broken``).

    What precedes a malformed header is kept rather than thrown away with it: a peer's bad bytes must not hide
    what the other frames carried, and the answer for a prefix must stay the answer once more bytes come."""
    payload = bytearray()
    first: bytearray | None = None
    first_opcode: int | None = None
    first_compressed = False
    first_done = False
    broken = False
    while offset + 2 <= len(data):
        head, size = data[offset], data[offset + 1] & 0x7F
        opcode, masked = head & 0x0F, data[offset + 1] & 0x80
        if opcode not in _KNOWN_OPCODES or head & 0x30:
            broken = True
            break
        pos = offset + 2
        if size >= 126:
            width = 2 if size == 126 else 8
            if pos + width > len(data):
                break
            size = int.from_bytes(data[pos : pos + width])
            pos += width
        key = data[pos : pos + 4] if masked else b""
        if len(key) < (4 if masked else 0):
            break
        pos += len(key)
        body = data[pos : pos + size]
        if key:
            body = _unmask(body, key)
        if opcode < 8:
            payload += body
            if first_opcode is None and opcode != CONTINUATION:
                first, first_opcode, first_compressed = bytearray(body), opcode, bool(head & 0x40)
            elif first is not None and not first_done:
                first += body
            if first is not None and head & 0x80 and len(body) == size:
                first_done = True
        offset = pos + size
    return Unwrapped(bytes(payload), first_opcode, first_compressed, bytes(first or b""), first_done, broken)


def entropy(sample: bytes) -> float:
    """Shannon entropy of the byte distribution, in bits per byte."""
    size = len(sample)
    if not size:
        return 0.0
    return -sum(n / size * math.log2(n / size) for n in map(sample.count, set(sample)))


def _tunnel(side: Unwrapped) -> str | None | bool:
    """Why the first data message looks like a tunnel; None when undecided; False when it does not."""
    if side.first_opcode is None:
        return None
    if side.first_opcode != BINARY:
        return False
    body = side.first_payload
    if tls.looks_like_tls(body):
        return "binary message carries a TLS handshake"
    if body.startswith((b"SSH-2.0-", b"SSH-1.99-")):
        return "binary message carries an SSH banner"
    if side.first_compressed:
        return False
    for size, threshold in _RANDOM_THRESHOLDS:
        if len(body) >= size:
            if not side.first_done and len(body) < _RANDOM_THRESHOLDS[0][0]:
                return None
            bits = entropy(body[:size])
            if bits >= threshold:
                return f"first binary message is random ({bits:.2f} bits/byte over {size} bytes)"
            return False
    return False if side.first_done else None


def _upgrade(request: http.HttpRequest) -> bool:
    return request.method == "GET" and request.headers.get("upgrade", "").lower() == "websocket"


def _upgrade_request(view: FlowView) -> http.HttpRequest | Result:
    """The client's opening handshake (RFC 6455 §4.1); None or MORE while the flow is not (yet) one."""
    stream = view.client
    if view.meta.transport is not Transport.TCP or (len(stream) >= 4 and stream[:4] != b"GET "):
        return None
    if len(stream) >= 4 and stream.find(b"ebsocket", 0, http.HEAD_MAX) < 0:
        # "websocket" / "WebSocket" not in the head yet: undecided only while the head is incomplete
        return None if stream.find(b"\r\n\r\n") >= 0 or stream.find(b"\n\n") >= 0 or view.complete else MORE
    request = http.request_of(view)
    if not isinstance(request, http.HttpRequest):
        return request if request is None or not view.complete else None
    return request if _upgrade(request) else None


_NO_FRAMES = Unwrapped(b"", None, False, b"", False)


def _sides(view: FlowView, request: http.HttpRequest) -> tuple[Unwrapped, Unwrapped] | Result:
    """The frames of each side after the handshake (none yet from a server not seen); None when not WebSocket."""
    client = unwrap(view.client, request.body_offset)
    server = _NO_FRAMES
    if view.server:
        response = http.parse_response(view.server)
        if not isinstance(response, http.HttpResponse):
            return response if response is None or not view.complete else None
        if response.status != 101:
            return None
        server = unwrap(view.server, response.body_offset)
    return client, server


def _tunnel_result(client: Unwrapped, server: Unwrapped) -> Result:
    """A finding when a side's first data message looks like a tunnel; None when neither does; MORE while one
    side is undecided."""
    verdicts = (_tunnel(client), _tunnel(server))
    for why, data in zip(verdicts, (client, server), strict=True):
        if isinstance(why, str):
            text = f"{why}: {data.first_payload[:48].hex()}"
            return Finding(Category.TUNNEL, "websocket-tunnel", NAME, evidence(text))
    return None if all(why is False for why in verdicts) else MORE


def make_websocket_detector(inner: tuple[Detector, ...]) -> Detector:
    """A detector for WebSocket flows that runs ``inner`` over the unwrapped payloads and flags tunnels."""

    def detect(view: FlowView) -> Result:
        request = _upgrade_request(view)
        if not isinstance(request, http.HttpRequest):
            return request
        if not view.server and not view.complete:
            return MORE  # RFC 6455 §4.1: the client waits for the answer before sending frames
        sides = _sides(view, request)
        if not isinstance(sides, tuple):
            return sides
        client, server = sides
        inner_view = FlowView(view.meta, client.payload, server.payload, complete=view.complete)
        undecided = False
        for detector in inner:
            result = detector(inner_view)
            if isinstance(result, Finding):
                return dataclasses.replace(result, detector=f"{NAME}+{result.detector}")
            undecided = undecided or result is MORE
        tunnel = _tunnel_result(client, server)
        if isinstance(tunnel, Finding):
            return tunnel
        if view.complete or (not undecided and tunnel is None):
            return None
        return MORE

    return detect


detect: Callable[[FlowView], Result] = make_websocket_detector(())
"""The WebSocket tunnel check with no inner detectors."""
