"""What the detectors see of decrypted and plain HTTP: each request and response as the server and client read it,
and each WebSocket message for the whole connection.

The detectors are the same ones that judge raw TCP (`egress.proxy.gate.Gate.stream`); this module only decides
which byte streams they are given:

- an HTTP message as one canonical HTTP/1.1 stream (its head without the framing and coding fields, then the
  decoded body), the decoded body alone, and the pieces a server application decodes out of it (multipart parts,
  form and query values, header and trailer values, Server-Sent Events data: `egress.proxy.mitm.payload`), and
  what a lenient peer reads in its start line (`egress.detect.httpread.start_pieces`: a request's target,
  percent-decoded, a response's reason phrase); its header and trailer fields joined as a server joins them
  (`egress.detect.httpfields.joined`: a call cut across fields, red team 13), read by the pool detectors only
  (`POOL_DETECTORS`);
- a WebSocket message alone (its first `MESSAGE_INSPECT` bytes), with the same tunnel check the WebSocket
  detector makes on raw frames, and a rolling stream per direction that starts at a message boundary, so a JSON
  message split over several WebSocket messages is still seen whole;
- the bodies of one connection's requests, and of its responses, joined per direction (`BodyStreams`), so a
  message cut across keep-alive exchanges is seen whole too.

A body that cannot be read as the server reads it (unknown coding, corrupt, a decompression bomb) is a `Problem`:
the addon blocks it as unidentified rather than pass what it could not judge.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from egress.detect import cryptonode, httpfields, rpcparams, websocket
from egress.detect.base import Category, Detector, Finding, FlowMeta, FlowView
from egress.detect.engine import FlowInspector
from egress.detect.httpread import from_bracket, start_pieces
from egress.detect.registry import MINING
from egress.proxy.mitm import payload

BODY_INSPECT: Final = 1024 * 1024
"""Bytes of each decoded body (and of each piece of it) the detectors read; the rest of a larger body passes.
Every signature sits at the start of a JSON-RPC document or line, and a body is read in one pass."""
MESSAGE_INSPECT: Final = 64 * 1024
"""Bytes of each WebSocket message the detectors read on their own."""
WINDOW_MAX: Final = 16 * 1024
"""Bytes a rolling WebSocket stream grows to before it restarts at the next message boundary."""
PIECE_MIN: Final = 16
"""Header, trailer and query values shorter than this are not inspected alone (no JSON-RPC call is that short)."""
_EVENT_FIELDS: Final = (b"data:", b"event:", b"id:", b"retry:", b":")
"""How an event stream's first line starts (HTML §9.2.6): read as events whatever the content type says."""
_SKIPPED_FIELDS: Final = frozenset({"content-encoding", "transfer-encoding", "content-length"})

POOL_DETECTORS: Final = frozenset((*MINING, cryptonode.detect))
"""The detectors that read a message's joined fields (`Read.joined`): a pool's or a node's call is what a site
that joins them reads whole; the tunnel and name detectors read the fields alone and the canonical stream (a
tunnel through a site's own joining of fields is the site's private encoding). Measured in bench/fieldjoin.py:
docs/security.md, "Thirteenth round"."""

DETECTOR: Final = "proxy"
"""The `Finding.detector` of what the proxy itself concludes (an uninspectable body, a refused upgrade)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a message cannot be judged: it is blocked as unidentified (`unidentified`)."""

    why: str


def unidentified(why: str, protocol: str = "unidentified") -> Finding:
    """The finding for traffic egress cannot inspect as the other side reads it: a tunnel until shown otherwise."""
    return Finding(Category.TUNNEL, protocol, DETECTOR, why[:160])


def _run(meta: FlowMeta, detectors: tuple[Detector, ...], client: bytes, server: bytes, cap: int) -> Finding | None:
    inspector = FlowInspector(meta, detectors, stream_cap=cap)
    inspector.feed_stream(True, client[:cap])
    found = inspector.feed_stream(False, server[:cap])
    return found or inspector.close()


def _head(start: str, fields: Iterable[tuple[str, str]], body: bytes) -> bytes:
    lines = [start]
    lines += [f"{name}: {value}" for name, value in fields if name.lower() not in _SKIPPED_FIELDS]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body[:BODY_INSPECT]


@dataclass(frozen=True, slots=True)
class Message:
    """One HTTP request or response as egress reads it (mitmproxy-free: the addon fills it from a flow)."""

    start: str
    """``POST /path?query HTTP/1.1`` or ``HTTP/1.1 200 OK`` (always HTTP/1.1: HTTP/2 is judged the same way)."""
    fields: tuple[tuple[str, str], ...]
    raw_body: bytes
    """The body as it came (after the transfer coding, before the content coding)."""
    trailers: tuple[tuple[str, str], ...] = ()
    query: bytes = b""

    def header(self, name: str) -> str:
        return ", ".join(value for key, value in self.fields if key.lower() == name)


@dataclass(frozen=True, slots=True)
class Read:
    """A message as read: the canonical stream, and each further piece, or the problem that stopped reading it."""

    canonical: bytes
    pieces: tuple[bytes, ...]
    problem: Problem | None
    body: bytes = b""
    """The decoded body (`BodyStreams` joins a connection's)."""
    joined: tuple[bytes, ...] = ()
    """The header and trailer fields joined as a server joins them (`egress.detect.httpfields.joined`)."""
    fields: tuple[tuple[str, str], ...] = ()
    """The header fields, then the trailer fields (`BodyStreams.fields` joins a connection's requests')."""
    opens: bool = False
    """Some field value holds what a pool detector needs (`egress.detect.httpfields.opens`)."""


def read(message: Message) -> Read:
    decoded = payload.decode(message.raw_body, message.header("content-encoding"))
    body = decoded.data
    pieces = [body] if body else []
    pieces += payload.pieces(body, message.header("content-type"))
    if body.lstrip().startswith(_EVENT_FIELDS) and "event-stream" not in message.header("content-type"):
        pieces += payload.pieces(body, "text/event-stream")  # whatever the server calls it, a client may parse it
    pieces += payload.form_values(message.query)
    pieces += start_pieces(message.start)
    if not message.start.startswith("HTTP/"):  # a call as the request's parameters (red team 5)
        target = message.start.partition(" ")[2].rpartition(" ")[0].encode("utf-8", "surrogateescape")
        pieces.append(rpcparams.call_text(target, message.fields, body, message.header("content-type")))
    pieces += [value.encode("utf-8", "surrogateescape") for _, value in (*message.fields, *message.trailers)]
    canonical = _head(message.start, (*message.fields, *message.trailers), body)
    kept = tuple(piece for piece in pieces if len(piece) >= PIECE_MIN or piece is body)
    fields = (*message.fields, *message.trailers)
    problem = Problem(decoded.problem) if decoded.problem else None
    opens = httpfields.opens(fields)
    joined = tuple(httpfields.joined(fields)) if opens else ()
    return Read(canonical, kept, problem, body, joined, fields, opens)


def inspect_exchange(
    meta: FlowMeta, detectors: tuple[Detector, ...], request: Read, response: Read | None = None
) -> Finding | None:
    """The detectors over a request (and its response): the pair as one HTTP stream, then every piece alone, then
    the joined fields of each through the pool detectors (`POOL_DETECTORS`)."""
    server = response.canonical if response is not None else b""
    found = _run(meta, detectors, request.canonical, server, BODY_INSPECT + len(request.canonical))
    if found is not None:
        return found
    pools = pool_detectors(detectors)
    for read_, from_client in ((request, True), *(((response, False),) if response is not None else ())):
        for piece_detectors, pieces in ((detectors, read_.pieces), (pools, read_.joined)):
            for piece in pieces:
                client, server = (piece, b"") if from_client else (b"", piece)
                found = _run(meta, piece_detectors, client, server, BODY_INSPECT)
                if found is not None:
                    return found
    return None


@functools.lru_cache(maxsize=8)
def pool_detectors(detectors: tuple[Detector, ...]) -> tuple[Detector, ...]:
    """``detectors`` that are `POOL_DETECTORS`, in their order (kept per tuple: a policy's gate has one)."""
    return tuple(detector for detector in detectors if detector in POOL_DETECTORS)


_WS_REQUEST: Final = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
_WS_RESPONSE: Final = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


def _frame(content: bytes, text: bool) -> bytes:
    """One unmasked final frame (RFC 6455 §5.2) carrying ``content``: what the raw-frame detector reads."""
    size = len(content)
    head = bytes([0x80 | (websocket.TEXT if text else websocket.BINARY)])
    if size < 126:
        head += bytes([size])
    elif size < 1 << 16:
        head += bytes([126]) + size.to_bytes(2)
    else:
        head += bytes([127]) + size.to_bytes(8)
    return head + content


def websocket_tunnel(meta: FlowMeta, content: bytes, text: bool, from_client: bool) -> Finding | None:
    """The WebSocket detector's tunnel check (TLS or SSH inside, or random binary) on one parsed message, as if
    it were the first message of a raw connection: mitmproxy parses the frames, so the check is made per message."""
    frame = _frame(content[:MESSAGE_INSPECT], text)
    client = _WS_REQUEST + (frame if from_client else b"")
    server = _WS_RESPONSE + (b"" if from_client else frame)
    result = websocket.detect(FlowView(meta, client, server, complete=True))
    return result if isinstance(result, Finding) else None


class WebSocketInspection:
    """Every message of one WebSocket connection: alone, through the tunnel check, and in a rolling stream per
    direction (restarted at a message boundary once decided or `WINDOW_MAX` long). Cost per message is bounded by
    `MESSAGE_INSPECT` plus `WINDOW_MAX`, however long the connection lives."""

    __slots__ = ("meta", "detectors", "rolling")

    def __init__(self, meta: FlowMeta, detectors: tuple[Detector, ...]) -> None:
        self.meta = meta
        self.detectors = detectors
        self.rolling: dict[bool, FlowInspector] = {}

    def message(self, content: bytes, text: bool, from_client: bool) -> Finding | None:
        head = content[:MESSAGE_INSPECT]
        client, server = (head, b"") if from_client else (b"", head)
        found = _run(self.meta, self.detectors, client, server, MESSAGE_INSPECT)
        if found is None:
            found = websocket_tunnel(self.meta, content, text, from_client)
        return found or self._roll(head[:WINDOW_MAX], from_client)

    def _roll(self, content: bytes, from_client: bool) -> Finding | None:
        stream = self.rolling.get(from_client)
        if stream is None or stream.done:
            stream = self.rolling[from_client] = FlowInspector(self.meta, self.detectors, stream_cap=WINDOW_MAX)
        return stream.feed_stream(from_client, content)


JOINED_HEAD: Final = 1024
"""Bytes of a direction's joined bodies kept from their first bracket when they outgrow `WINDOW_MAX` (the rest is
their last bytes): a message padded past the window inside a value still shows its start."""
FIELD_WINDOW: Final = 4 * 1024
"""`WINDOW_MAX` for a request field name's joined values (`BodyStreams.fields`): a field whose JSON value every
request repeats grows its window to this, one run per request until it repeats (bench/fieldjoin.py)."""
FIELD_STREAMS: Final = 32
"""Request field names of one connection whose values may open a joined stream (`BodyStreams.fields`); one more
is unidentified."""
JOINED_MEMO: Final = 8
"""Joined windows judged clean kept per connection (`BodyStreams`): a client polling one answer reaches a window
that repeats once its stream is `WINDOW_MAX` long."""


class BodyStreams:
    """The bodies of one HTTP connection's requests, and those of its responses, each direction read as one stream
    (red team: Stratum cut 7 bytes per keep-alive POST body, and the pool's answers per response body, reached a
    pool that joins them; each exchange alone holds no whole message). Each body is judged joined to the bodies
    before it in its direction, from their first ``{`` or ``[``, or a request's first ``<`` (what a server that
    concatenates them reads across the cut: JSON, or XML-RPC or SOAP, red team 4's cut calls): `WINDOW_MAX` bytes
    of them at most (their first `JOINED_HEAD` and their last), and at most `WINDOW_MAX` of its own: cost per body
    bounded by twice `WINDOW_MAX`, however long the connection lives. Nothing is run while the bodies before hold
    no bracket or request markup (a direction's first body, or plain text: `inspect_exchange` judged each alone),
    nor for a joined window judged clean before (`JOINED_MEMO`).

    Each request field name's values, and the application's own fields' values together, are joined the same way
    across the connection's requests (`fields`, red team 13: a call cut one piece per request into one field, or
    into a new field each time), and read by the pool detectors; requests whose fields open more than
    `FIELD_STREAMS` such streams are unidentified (dropping one would let its pieces pass). Not responses: their
    JSON fields that repeat on every answer (``Report-To``, ``NEL``) cost 400-600 µs per exchange joined, and a
    pool's answers give it away only after its calls crossed (docs/security.md, "Thirteenth round")."""

    __slots__ = ("meta", "detectors", "tails", "clean")

    def __init__(self, meta: FlowMeta, detectors: tuple[Detector, ...]) -> None:
        self.meta = meta
        self.detectors = detectors
        self.tails: dict[tuple[bool, str | None], bytes] = {}
        """Each direction's bodies (name None) and each field name's values so far, from their first bracket
        (their head and their last bytes)."""
        self.clean: dict[bool, dict[bytes, None]] = {True: {}, False: {}}
        """Joined windows judged clean, oldest first: the bodies' (True), the fields' (False, by the pool detectors)."""

    def message(self, read: Read, from_client: bool) -> Finding | None:
        """Judge a message's body joined to its direction's bodies before it, and a request's fields
        (`Read.fields`) joined to the requests' before them."""
        found = self.body(read.body, from_client)
        return found if found is not None or not from_client else self.fields(read)

    def body(self, body: bytes, from_client: bool) -> Finding | None:
        """Judge ``body`` (decoded) joined to its direction's bodies before it."""
        return self._join((from_client, None), body, self.detectors, WINDOW_MAX)

    def fields(self, request: Read) -> Finding | None:
        """Judge each of a request's field names' values (`egress.detect.httpfields.by_name`) joined to that
        name's values in the connection's requests before. Nothing to do while no name's stream is open and no
        value could open one (`Read.opens`)."""
        if not request.opens and not any(name is not None for _, name in self.tails):
            return None
        pools = pool_detectors(self.detectors)
        for name, value in httpfields.by_name(request.fields):
            found = self._join((True, name), value, pools, FIELD_WINDOW)
            if found is not None:
                return found
        if sum(1 for _, name in self.tails if name is not None) > FIELD_STREAMS:
            return unidentified(f"more than {FIELD_STREAMS} header fields opening JSON or XML on one connection")
        return None

    def _join(
        self, key: tuple[bool, str | None], data: bytes, detectors: tuple[Detector, ...], window: int
    ) -> Finding | None:
        from_client = key[0]
        if not data:
            return None
        before = self.tails.get(key, b"")
        tail = before + data if before else _stream_start(data, from_client)
        if not tail:
            return None
        if len(tail) > window:  # the start of what is open, and what came last: padding cuts neither
            tail = tail[:JOINED_HEAD] + tail[JOINED_HEAD - window :]
        self.tails[key] = tail
        if not before:
            return None
        joined = before + data[:window]
        clean = self.clean[key[1] is None]
        if joined in clean:
            return None
        client, server = (joined, b"") if from_client else (b"", joined)
        found = _run(self.meta, detectors, client, server, len(joined))
        if found is None:
            if len(clean) >= JOINED_MEMO:
                del clean[next(iter(clean))]
            clean[joined] = None
        return found


def _stream_start(body: bytes, from_client: bool) -> bytes:
    """Where a direction's joined stream starts in its first body that may open one: a JSON value's bracket, or in
    a request an XML document's first ``<`` (a call cut anywhere, its markup too, is read joined; responses keep to
    the brackets: their answers give a pool away only after its calls crossed, and HTML pages would all qualify)."""
    opened = from_bracket(body)
    if not from_client or (at := body.find(b"<")) < 0:
        return opened
    return body[at:] if not opened or len(body) - at > len(opened) else opened


def fields_of(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((str(k), str(v)) for k, v in items)
