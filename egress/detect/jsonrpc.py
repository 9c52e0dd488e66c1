"""Cheap helpers shared by the JSON-RPC based detectors (Stratum v1, CryptoNote, Ethereum stratum, getwork, nodes).

Pool and node protocols put JSON-RPC 1.0/2.0 objects (https://www.jsonrpc.org/specification) on the wire either as
newline-delimited messages on a raw TCP stream (Stratum, see https://braiins.com/stratum-v1/docs), concatenated
frame payloads handed in by the WebSocket/TLS unwrappers, or as HTTP/1.x message bodies (RFC 9112: ``Content-Length``
or ``chunked`` framing). This module turns one direction's byte prefix into the JSON-bearing text to search, and
reads ``"method"`` values by scanning for the key instead of parsing whole documents: the prefix is usually
truncated, and a key scan costs a few ``bytes.find`` calls however much JSON there is.

The text is what a *lenient* server decodes, since the pool is the attacker's and may accept anything
(issue 9): leading bytes before the first ``{``/``[`` (a byte-order mark, NULs, whitespace, a fake TLS record
header, any junk) are skipped; NULs and byte-order marks are dropped anywhere, which also reads the ASCII of
UTF-16 and UTF-32 text (RFC 8259 §8.1 forbids them on the wire, Python's ``json.loads`` accepts them);
``\\uXXXX`` escapes of printable ASCII and ``\\/`` are decoded (RFC 8259 §7), so ``"\\u006dethod"`` is
``"method"``, and so are the ``\\xXX`` and ``\\U`` escapes of lenient readers (JSON5; red team 3). Every
``"method"`` key anywhere is read (duplicates, nested objects, batches; in any case, quoted or not, comments around
its colon: `egress.detect.jsonscan`), with no cap on how many: the engine's buffer cap bounds the work.

`drive` is the common decision loop. A direction is ruled out only when it has been shown to be another protocol
in a way that more bytes cannot undo: a whole TLS hello at its start (`egress.detect.tls.starts_with_hello`), or
an SSH banner. A flow is answered ``None`` once both directions are ruled out; otherwise the detectors keep
looking until the flow ends or the engine's cap, where the engine judges what is left (`egress.detect.engine`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Final

from egress.detect import codings, jsonfast, rpcparams, tls
from egress.detect.base import MORE, Finding, FlowView, Result
from egress.detect.httpread import from_bracket, start_pieces
from egress.detect.jsonscan import (
    MAX_METHODS,
    WRAPPED_MAX,
    Calls,
    has_key,
    message_at,
    methods,
    read_methods,
    read_wrapped,
    string_after,
    wrapped_strings,
)

__all__ = [  # the detectors read messages through this module; jsonscan.py owns the reading
    "MAX_METHODS",
    "SCAN_LIMIT",
    "Calls",
    "Kind",
    "Matcher",
    "Payload",
    "decode",
    "drive",
    "drive_each",
    "has_key",
    "message_at",
    "methods",
    "payload",
    "read",
    "read_methods",
    "string_after",
]  # fmt: skip

SCAN_LIMIT: Final = 64 * 1024
"""Bytes of each direction searched at most, for callers that hand in a view without the engine's cap."""

MAX_HTTP_MESSAGES: Final = 64
_HTTP_STARTS: Final = (b"POST ", b"GET ", b"PUT ", b"HTTP/1.", b"OPTIONS ", b"PATCH ", b"HEAD ", b"DELETE ")
_HTTP_FIRST: Final = b"GPHODT"
"""The first bytes of `_HTTP_STARTS`: ``raw[0] in _HTTP_FIRST`` is an integer in bytes, one ``memchr``, where a
one-byte slice in bytes makes CPython try the slice as an integer first and raise and clear a TypeError (about
2,700 instructions: so is every ``b"x" in data`` of this package's readers, which use ``0x78 in data`` or
``data.find`` instead; docs/scanner-hot-path.md, scan15)."""
_HTTP_PREFIXES: Final = frozenset(start[:size] for start in _HTTP_STARTS for size in range(len(start) + 1))
"""Every prefix of a start (the empty one too): the bytes that more bytes may still make a start (`_is_http_start`)."""
_BLANK: Final = b" \t\r\n"
_DROPPED: Final = (b"\x00", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
"""NUL and the byte-order marks of UTF-8, UTF-16 and UTF-32 (whose ASCII is the same bytes with NULs between)."""
_LEAD: Final = re.compile(rb"[^ \t\r\n\x00]")
"""The first byte that is neither blank nor NUL."""
_MAY_OPEN: Final = frozenset((b"{", b"[", b"\\", b"\xef", b"\xff", b"\xfe"))
"""First bytes (after blanks and NULs) of a body that may decode to JSON: the brackets, and the first bytes of
what `decode` removes or rewrites (a byte-order mark, an escape). Any other first byte stays first once decoded:
nothing before it can join it into a removed or rewritten sequence (blanks stay, NULs go), so such a body holds
no JSON text for any reader and is not decoded (a long non-JSON HTTP body was decoded whole at each prefix)."""
_ESCAPE: Final = re.compile(rb"\\(?:u00|x|U(?:0000)?00)([2-7][0-9a-fA-F])|\\/")
"""The escapes of printable ASCII that a lenient reader decodes: JSON's ``\\u00XX``, and ``\\xXX`` (JSON5, Gson
lenient) and ``\\U00XX``/``\\U000000XX`` (readers that take an uppercase ``U``, as Python and C do), and ``\\/``."""
_KEPT_ESCAPES: Final = frozenset({0x22, 0x5C, 0x7F})
"""``"`` and ``\\`` stay escaped (decoding them would change where strings end); DEL is not printable."""


class Kind(enum.Enum):
    EMPTY = "empty"
    """Nothing that could be judged yet: no ``{``/``[`` so far, an incomplete TLS hello or HTTP head."""
    JSON = "json"
    """The direction carries JSON text (raw stream or HTTP bodies)."""
    NOT = "not"
    """The direction has been shown to be another protocol (a whole TLS hello, an SSH banner)."""


@dataclass(frozen=True, slots=True)
class Payload:
    """One direction of a flow, reduced to what JSON-RPC detectors look at."""

    kind: Kind
    text: bytes = b""
    """The JSON-bearing bytes: the decoded stream from its first ``{``/``[``, or the HTTP bodies that start with
    ``{``/``[`` joined by newlines."""
    heads: tuple[bytes, ...] = ()
    """HTTP header blocks (request or status line included), for header-based signatures."""
    final: bool = False
    """No more bytes will be searched (the flow is complete): a trailing partial message counts."""
    body_starts: tuple[tuple[int, int], ...] = ()
    """HTTP only: (offset in ``text``, index in ``heads`` of the message it is the body of), per JSON body."""
    calls: Calls = ()
    """`methods` of ``text``: read once per prefix for every detector, and by a `Reading` only past what an
    earlier prefix settled."""
    markup: tuple[bytes, ...] = ()
    """String values of ``text`` that are an XML document (`wrap`): `egress.detect.xmlrpc` reads them."""

    def message_index(self, offset: int) -> int:
        """HTTP only: which message (index in ``heads``) the text at ``offset`` belongs to; 0 on a raw stream."""
        owner = 0
        for start, index in self.body_starts:
            if start > offset:
                break
            owner = index
        return owner


def _first_solid(data: bytes) -> int:
    rest = len(data.lstrip(_BLANK))
    return len(data) - rest if rest else -1


def _unescape(match: re.Match[bytes]) -> bytes:
    digits = match.group(1)
    if digits is None:
        return b"/"
    code = int(digits, 16)
    return match.group(0) if code in _KEPT_ESCAPES else bytes((code,))


def pure_decode(data: bytes) -> bytes:
    """What a lenient JSON reader makes of ``data``: NULs and byte-order marks dropped, ASCII escapes decoded.

    The pure twin of _jsonfast.c's ``decode`` (`decode` below is that where it was built)."""
    # bytes.replace rather than one regex: it runs at memory speed on the NUL-rich binary that most flows are.
    for dropped in _DROPPED:
        data = data.replace(dropped, b"")  # the same object where none is
    # Every escape starts with a backslash: one search where none is (most bytes), four where one is.
    find = data.find
    if 0x5C in data and (find(b"\\u00") >= 0 or find(b"\\/") >= 0 or find(b"\\x") >= 0 or find(b"\\U") >= 0):
        data = _ESCAPE.sub(_unescape, data)
    return data


def pure_inert_end(data: bytes, cut: int) -> int:
    """Where ``data`` stops at its last `_INERT` byte at or after ``cut`` (its offset plus one); 0 where none is.
    ``data.rfind(byte, cut)`` for each, in C. The pure twin of _jsonfast.c's ``inert_end``."""
    return max(map(data.rfind, _INERT, repeat(cut, len(_INERT)))) + 1


_INERT: Final = tuple(bytes((byte,)) for byte in b'\n,}": {[]\r\t')
"""Bytes that no step of `decode` reads or removes (not NUL, no byte of a byte-order mark, not in ``\\u00XX`` or
``\\/``): where one ends a prefix, ``decode(prefix + more) == decode(prefix) + decode(more)``, for any ``more``."""

decode: Callable[[bytes], bytes] = jsonfast.COMPILED.decode if jsonfast.COMPILED is not None else pure_decode
"""`pure_decode`, compiled where _jsonfast.c was built (`egress.detect.jsonfast`)."""
_inert_end: Callable[[bytes, int], int] = (
    jsonfast.COMPILED.inert_end if jsonfast.COMPILED is not None else pure_inert_end
)
"""`pure_inert_end`, compiled likewise."""


def use_compiled(compiled: bool) -> None:
    """Run _jsonfast.c's functions where built (True) or their pure twins (False): the same answers either way;
    the scanner's ``EGRESS_SCAN_PURE=1`` asks for the twins (`egress.scanner.Scanner`)."""
    global decode, _inert_end  # noqa: PLW0603 -- the readers look both up at each call: one switch for all
    module = jsonfast.COMPILED if compiled else None
    decode = module.decode if module is not None else pure_decode
    _inert_end = module.inert_end if module is not None else pure_inert_end


WRAP_DEPTH: Final = 3
"""Levels of documents inside string values read (`wrap`): a message encoded three times is still read."""


def wrap(text: bytes, first: list[bytes] | None = None) -> tuple[bytes, tuple[bytes, ...]]:
    """``text`` with the JSON documents its string values hold appended (each decoded as `decode` does and ending its
    message, `WRAP_DEPTH` levels deep), and the XML documents they hold (red team 6: ``{"payload": "{\\"method\\":
    ...}"}``, a message encoded twice; an XML-RPC call as a JSON string, Go's ``\\u003c`` escapes decoded). At most
    `SCAN_LIMIT` bytes are added; a text with no backslash, ``<`` or ``'`` costs three ``memchr``. ``first``: the
    strings of ``text`` itself, when the caller read them already (`Reading`, incrementally)."""
    if first is None:
        first = wrapped_strings(text)
    if not first:
        return text, ()
    added, markup, level, budget = bytearray(), [], [text], SCAN_LIMIT
    for depth in range(WRAP_DEPTH):
        inner = (
            [decode(found) for found in first]
            if depth == 0
            else [decode(found) for outer in level for found in wrapped_strings(outer)]
        )
        level = []
        for found in inner:
            if budget <= 0:
                break
            found = found[:budget]
            budget -= len(found)
            if found[:1] == b"<":
                markup.append(found)
            else:
                added += found.replace(b"\n", b" ").rstrip() + b"\n"
            level.append(found)
        if not level:
            break
    if not added:
        return text, tuple(markup)
    return (text if text.endswith(b"\n") else text + b"\n") + bytes(added), tuple(markup)


def _is_http_start(data: bytes) -> bool:
    """Whether ``data`` starts with one of `_HTTP_STARTS` or is the start of one: ``data.startswith`` of the tuple
    and one set look-up, in C (a generator over the starts took 8 steps of the interpreter a call)."""
    return data.startswith(_HTTP_STARTS) or data in _HTTP_PREFIXES


@dataclass(frozen=True, slots=True)
class _Settled:
    """The HTTP messages of a stream whose bodies are whole and whose end no later byte can move (`_http`), as they
    were read: the next prefix of the same stream starts reading after them."""

    pos: int = 0
    heads: tuple[bytes, ...] = ()
    bodies: tuple[bytes, ...] = ()
    owners: tuple[int, ...] = ()
    budget: int = SCAN_LIMIT
    extras: tuple[bytes, ...] = ()
    """JSON text read in the messages' start lines (`start_pieces`), each ending its message."""
    extra_owners: tuple[int, ...] = ()
    joined: bytes = b""
    """The messages' bodies joined, from the first ``{``/``[`` of the first body holding one (`from_bracket`)."""
    joins: int = 0
    """How many bodies ``joined`` holds."""


def _http(data: bytes, settled: _Settled = _Settled()) -> tuple[Payload, _Settled]:
    """Split pipelined HTTP/1.x messages into header blocks and JSON bodies (tolerant to a truncated tail), from
    the messages ``settled`` by an earlier prefix of ``data`` on; also what is settled now.

    A body is read as the server reads it: its content codings undone by the decoder the proxy uses
    (`egress.detect.codings`), within a budget of `SCAN_LIMIT` decoded bytes per direction (a decompression bomb
    is cut there: the rest is never decoded). Bytes after a message that cannot start another one are read as a
    raw stream: what a client sends after a refused or accepted ``Upgrade`` (or an unprompted ``101``) is no HTTP,
    and a pool behind the connection reads it as such.

    Read as the gateway reads them too (`egress.proxy.mitm.inspect`; red team, docs/security.md): a start line
    holding a bracket or a ``%`` gives its target or reason phrase (`start_pieces`), and the bodies of two or more
    messages, from the first bracket of one, are read joined (a message cut across keep-alive bodies), each after
    the bodies."""
    heads, bodies, owners = list(settled.heads), list(settled.bodies), list(settled.owners)
    pos, budget = settled.pos, settled.budget
    extras, extra_owners = list(settled.extras), list(settled.extra_owners)
    joined, joins = settled.joined, settled.joins
    while pos < len(data) and len(heads) < MAX_HTTP_MESSAGES:
        while pos < len(data) and data[pos] in _BLANK:
            pos += 1
        if pos >= len(data):
            break
        if not _is_http_start(data[pos : pos + 8]):
            rest = decode(data[pos:])
            brace = _first_brace(rest)
            if brace >= 0:
                bodies.append(rest[brace:])
                owners.append(max(len(heads) - 1, 0))
            break
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        head = data[pos:end]
        heads.append(head)
        _add_start_texts(head, len(heads) - 1, extras, extra_owners)
        body, pos, whole, fixed = _body(data, end + 4, head)
        if body:
            if coding := _field(head.lower(), b"content-encoding"):
                body = codings.decode(body, coding.decode("latin-1"), max(budget, 1), partial=not whole).data
                budget -= len(body)
            joined, joins = _join(joined, joins, body)
            if (opened := _json_body(body)) is not None:
                # A body known to be whole ends its last message, as a newline does on a raw stream.
                bodies.append(opened.rstrip() + b"\n" if whole else opened)
                owners.append(len(heads) - 1)
        _add_param_calls(head, body, len(heads) - 1, extras, extra_owners)
        if whole and fixed:  # nothing after this message can change what was read of it
            settled = _Settled(
                pos,
                tuple(heads),
                tuple(bodies),
                tuple(owners),
                budget,
                tuple(extras),
                tuple(extra_owners),
                joined,
                joins,
            )
    if joins > 1 and (opened := from_bracket(decode(joined[:SCAN_LIMIT]))):
        extras.append(opened)
        extra_owners.append(len(heads) - 1)
    # After every body, so that what the bodies alone read stays where it was.
    return _http_payload(tuple(heads), bodies + extras, owners + extra_owners), settled


def _http_payload(heads: tuple[bytes, ...], bodies: list[bytes], owners: list[int]) -> Payload:
    """The `Payload` of an HTTP stream's heads and JSON texts (each owned by the head of index ``owners[i]``)."""
    if not bodies:
        # A later message on the same connection may still carry JSON: HTTP is never ruled out.
        return Payload(Kind.EMPTY, heads=heads)
    text = bytearray()
    starts: list[tuple[int, int]] = []
    for index, body in enumerate(bodies):
        starts.append((len(text), owners[index]))
        text += body if body.endswith(b"\n") or index == len(bodies) - 1 else body + b"\n"
    return Payload(Kind.JSON, bytes(text), heads, body_starts=tuple(starts))


def _add_start_texts(head: bytes, owner: int, texts: list[bytes], owners: list[int]) -> None:
    """Add to ``texts`` the JSON text a lenient peer reads in the start line of ``head`` (`start_pieces`: a
    request's target, a response's reason phrase, percent-decoded), each from its first bracket and ending its
    message; a line with no bracket and no ``%`` holds none and is read no further."""
    start = head.partition(b"\r\n")[0]
    if 0x7B in start or 0x5B in start or 0x25 in start:
        for piece in start_pieces(start.decode("utf-8", "surrogateescape")):
            if text := from_bracket(decode(piece)):
                texts.append(text.rstrip() + b"\n")
                owners.append(owner)


def _add_param_calls(head: bytes, body: bytes, owner: int, texts: list[bytes], owners: list[int]) -> None:
    """Add to ``texts`` the JSON-RPC calls a request's parameters encode (`rpcparams.call_text`: its target's pairs
    and path, its cookies and method headers, its decoded body's form pairs), as the gateway reads them
    (`egress.proxy.mitm.inspect.read`), ending its message."""
    start, _, rest = head.partition(b"\r\n")
    if start.startswith(b"HTTP/"):
        return
    target = start.partition(b" ")[2].rpartition(b" ")[0]
    fields: list[tuple[str, str]] = []
    lowered = rest.lower()
    # a cookie or a header named for a method: read them all
    if lowered.find(b"cookie:") >= 0 or lowered.find(b"method") >= 0:
        for line in rest.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            fields.append((name.strip(), value.strip()))
    content_type = ""
    if body and (at := (b"\n" + lowered).find(b"\ncontent-type:")) >= 0:  # as sent: a boundary keeps its case
        content_type = rest[at + 13 :].partition(b"\r")[0].strip().decode("latin-1")
    if text := rpcparams.call_text(target, fields, body, content_type):
        texts.append(text)
        owners.append(owner)


def _join(joined: bytes, joins: int, body: bytes) -> tuple[bytes, int]:
    """``body`` (content coding undone) added to a stream's bodies joined so far (``joins`` of them in ``joined``),
    as `egress.proxy.mitm.inspect.BodyStreams` joins them: from the first body holding a bracket, at its first."""
    if joins:
        return (joined + body, joins + 1) if len(joined) < SCAN_LIMIT else (joined, joins)
    return (from_bracket(body), 1) if 0x7B in body or 0x5B in body else (joined, joins)


def _json_body(body: bytes) -> bytes | None:
    """The decoded body from its first solid byte, when that byte opens JSON text; otherwise None, and a body whose
    first byte cannot become such a byte (`_MAY_OPEN`) is not decoded."""
    lead = _LEAD.search(body)
    if lead is None or lead.group() not in _MAY_OPEN:
        return None
    body = decode(body)
    solid = _first_solid(body)
    return body[solid:] if solid >= 0 and body[solid] in b"{[" else None


def _body(data: bytes, pos: int, head: bytes) -> tuple[bytes, int, bool, bool]:
    """The body of the message whose head ends at ``pos`` (RFC 9112 §6.3): (body, next offset, whether whole,
    whether the next offset is final: a chunked body's trailer may still be arriving)."""
    lowered = head.lower()
    if lowered.find(b"chunked") >= 0:
        return _dechunk(data, pos)
    length = _content_length(lowered)
    if length is not None:
        whole = pos + length <= len(data)
        return data[pos : pos + length], pos + length, whole, whole
    if head.startswith(b"HTTP/"):
        return data[pos:], len(data), False, False
    return b"", pos, True, True


def _field(lowered_head: bytes, name: bytes) -> bytes:
    """The value of header field ``name`` (lowercase) in a lowercased head, stripped; empty when absent."""
    at = lowered_head.find(b"\n" + name + b":")
    if at < 0:
        return b""
    start = at + len(name) + 2
    line_end = lowered_head.find(b"\n", start)
    return lowered_head[start : line_end if line_end >= 0 else None].strip()


def _content_length(lowered_head: bytes) -> int | None:
    at = lowered_head.find(b"\ncontent-length:")
    if at < 0:
        return None
    line_end = lowered_head.find(b"\r", at + 16)
    digits = lowered_head[at + 16 : line_end if line_end >= 0 else None].strip()
    return int(digits) if digits.isdigit() and len(digits) < 10 else None


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int, bool, bool]:
    """Join the chunks of a chunked body at ``pos``: (body, next offset, whether the last chunk was seen, whether
    its trailer was too)."""
    parts: list[bytes] = []
    while pos < len(data):  # every chunk, however small: each costs at least its 3-byte size line
        line_end = data.find(b"\r\n", pos, pos + 20)
        if line_end < 0:
            break
        try:
            size = int(data[pos:line_end].split(b";")[0].strip(), 16)
        except ValueError:
            break
        pos = line_end + 2
        if size == 0:
            trailer = data.find(b"\r\n", pos)
            return b"".join(parts), len(data) if trailer < 0 else trailer + 2, True, trailer >= 0
        parts.append(data[pos : pos + size])
        pos += size + 2
        if pos >= len(data):
            break
    return b"".join(parts), len(data), False, False


@functools.lru_cache(maxsize=64)
def payload(data: bytes, complete: bool = False) -> Payload:
    """Classify one direction's prefix and extract its JSON-bearing text; ``complete``: no more bytes will come.

    Read whole each time, for callers without a flow; the detectors read a flow's prefixes through `read`, which
    reads only what is new since the last one."""
    found = _payload(data[:SCAN_LIMIT])
    if found.kind is not Kind.JSON:
        return dataclasses.replace(found, final=complete)
    text, markup = wrap(found.text)
    return dataclasses.replace(found, text=text, final=complete, calls=tuple(methods(text)), markup=markup)


def read(view: FlowView, from_client: bool) -> Payload:
    """`payload` of one direction of ``view``, read incrementally: the flow keeps a `Reading` per direction in its
    ``memo``, so each prefix costs its new bytes, and every detector asking about the same prefix shares it."""
    readings = view.memo.get(__name__)  # the view's (client, server) `Reading`, made at the first ask
    if not isinstance(readings, tuple):
        readings = view.memo[__name__] = (Reading(), Reading())
    reading: Reading = readings[0 if from_client else 1]
    data, complete = (view.client if from_client else view.server), view.complete
    if data is reading.raw and complete == reading.complete:  # what `Reading.read` answers first, without the call
        return reading.found
    return reading.read(data, complete)


@dataclass(slots=True)
class Reading:
    """How far one direction of a flow has been read (`drive`): the next, longer prefix reads only its new bytes.

    A memo, never a judgement: every field is a function of the bytes of ``raw``, so a prefix reads the same
    whether it is read at once or grown step by step (tests/detect/test_jsonrpc_incremental.py, and the security
    suite's ``jsonrpc`` fuzz target, compare both)."""

    raw: bytes = b""
    """The prefix read last (at most `SCAN_LIMIT` bytes); a prefix that does not start with it is read afresh."""
    complete: bool = False
    found: Payload = Payload(Kind.EMPTY)
    """What (``raw``, ``complete``) reads as."""
    cut: int = 0
    """``raw[:cut]`` decodes to ``decoded`` whatever follows it (``raw[cut - 1]`` is one of `_INERT`)."""
    decoded: bytes = b""
    settled: _Settled = _Settled()
    """An HTTP stream's messages that no later byte can change (offsets in the stream without leading blanks)."""
    stable: int = 0
    """How many bytes at the start of the last JSON text no later byte can change (0 where not known)."""
    known: Calls = ()
    """The methods of keys read entirely within that stable text, and where the search for more goes on:"""
    resume: int = 0
    wrapped: tuple[bytes, ...] = ()
    """The string values that are documents (`wrap`) read entirely within that stable text, and where the search
    for more goes on:"""
    wrap_resume: int = 0
    asked: dict[SideMatcher, Payload] = field(default_factory=dict)
    """`drive_sides`: the `Payload` object each side matcher last answered None for (a memo: `Payload` is frozen and
    every side matcher a pure function of it, so the very object answers the same)."""

    def read(self, data: bytes, complete: bool) -> Payload:
        """What ``data`` (this direction's prefix now) reads as, as `payload` reads it."""
        data = data[:SCAN_LIMIT]
        if data is self.raw or data == self.raw:
            if complete == self.complete:
                return self.found
        elif not data.startswith(self.raw):
            self.cut, self.decoded, self.settled, self.known, self.resume = 0, b"", _Settled(), (), 0
            self.wrapped, self.wrap_resume = (), 0
        self.raw, self.complete, self.stable = data, complete, 0
        found = _payload(data, self)
        if found.kind is Kind.JSON:
            if not self.stable:  # a text whose start may still move: nothing of it is kept
                self.known, self.resume, self.wrapped, self.wrap_resume = (), 0, (), 0
            first, self.wrapped, self.wrap_resume = read_wrapped(
                found.text, WRAPPED_MAX, self.wrapped, self.wrap_resume, self.stable
            )
            text, markup = wrap(found.text, first)  # appended after it: what ``stable`` covers stays as it was
            calls, self.known, self.resume = read_methods(text, MAX_METHODS, self.known, self.resume, self.stable)
            if calls or complete or markup or text is not found.text:
                found = Payload(found.kind, text, found.heads, complete, found.body_starts, tuple(calls), markup)
        elif complete:  # `dataclasses.replace` of these two fields, without its generic walk over every field
            found = Payload(found.kind, found.text, found.heads, True, found.body_starts, found.calls)
        if found == self.found:  # new bytes that change nothing read (a non-JSON body, binary without a bracket)
            return self.found  # the same object: `drive_sides` knows its answers
        self.found = found
        return found

    def decode(self, data: bytes) -> bytes:
        """`decode` of ``data``, of whose bytes only those from ``cut`` on are decoded now."""
        cut = self.cut
        end = _inert_end(data, cut)
        if end > cut:
            self.decoded += decode(data[cut:end])
            self.cut = cut = end
        return self.decoded + decode(data[cut:])


def _payload(data: bytes, reading: Reading | None = None) -> Payload:
    # A record header with no whole hello after it is not TLS (a fake header before JSON): junk to skip. While a
    # hello is still arriving its bytes are searched like any junk (a real hello holds no JSON-RPC call).
    if data[:1] == b"\x16" and tls.starts_with_hello(data):
        return Payload(Kind.NOT)
    if data.startswith(b"SSH-"):
        return Payload(Kind.NOT)
    # HTTP is split on the raw bytes: a coded body's NULs are part of its coding (`decode` runs on each body).
    raw = data.lstrip(_BLANK)
    if (not raw or raw[0] in _HTTP_FIRST) and _is_http_start(raw[:8]):
        if len(raw) < 8:
            return Payload(Kind.EMPTY)
        if reading is None:
            return _http(raw)[0]
        found, reading.settled = _http(raw, reading.settled)
        reading.stable = sum(len(body) for body in reading.settled.bodies)  # each ends its last message: "\n"
        return found
    text = decode(data) if reading is None else reading.decode(data)
    solid = _first_solid(text)
    if solid < 0:
        return Payload(Kind.EMPTY)
    rest = text[solid:]
    if (not rest or rest[0] in _HTTP_FIRST) and _is_http_start(rest[:8]):
        return _http(rest)[0] if len(rest) >= 8 else Payload(Kind.EMPTY)
    brace = _first_brace(rest)
    if brace < 0:
        return Payload(Kind.EMPTY)  # junk so far: a lenient reader skips it, and so do we
    if reading is not None:  # the decoded part before the cut, and where the text starts in it, stay as they are
        reading.stable = max(len(reading.decoded) - solid - brace, 0)
    return Payload(Kind.JSON, rest[brace:])


def _first_brace(data: bytes) -> int:
    curly, square = data.find(b"{"), data.find(b"[")
    if curly < 0 or square < 0:
        return max(curly, square)
    return min(curly, square)


Matcher = Callable[[Payload, Payload], Finding | None]
"""Looks at both directions (client, server) and returns a finding or None."""
SideMatcher = Callable[[Payload], Finding | None]
"""Looks at one direction and returns a finding or None: a pure function of the `Payload` (`drive_sides`)."""


def drive(view: FlowView, match: Matcher) -> Result:
    """The shared decision loop: ``None`` once both directions are shown to be another protocol (or the flow ended
    without a match), a finding as soon as one matches, `MORE` otherwise.

    There is no early give-up on a JSON-bearing or unrecognised stream: a benign first N calls, padding or junk
    do not make the rest clean. The engine's cap bounds the work and judges a flow still undecided there.
    """
    # `read` of each side, inline: every JSON-RPC detector asks both, every time
    readings = view.memo.get(__name__)
    if not isinstance(readings, tuple):
        readings = view.memo[__name__] = (Reading(), Reading())
    first, second = readings
    data, complete = view.client, view.complete
    client = first.found if data is first.raw and complete == first.complete else first.read(data, complete)
    data = view.server
    server = second.found if data is second.raw and complete == second.complete else second.read(data, complete)
    if client.kind is Kind.NOT and server.kind is Kind.NOT:
        return None
    finding = match(client, server)
    if finding is not None:
        return finding
    return None if view.complete else MORE


def drive_sides(view: FlowView, match: SideMatcher, client_only: bool = False) -> Result:
    """`drive` of ``lambda client, server: match(client) or match(server)`` (``match(client)`` alone with
    ``client_only``), asking ``match`` only about a side it has not answered None for already.

    A segment grows one side, so the other side's `Payload` is the very object the last run read (`Reading`
    keeps it, and keeps the old object where new bytes read the same); ``match`` is a pure function of a frozen
    `Payload`, so its answer for that object is the one it gave (docs/scanner-hot-path.md, scan16).
    tests/detect/test_jsonrpc_sides.py holds each detector to `drive` of both sides at every prefix."""
    readings = view.memo.get(__name__)
    if not isinstance(readings, tuple):
        readings = view.memo[__name__] = (Reading(), Reading())
    first, second = readings
    data, complete = view.client, view.complete
    client = first.found if data is first.raw and complete == first.complete else first.read(data, complete)
    data = view.server
    server = second.found if data is second.raw and complete == second.complete else second.read(data, complete)
    if client.kind is Kind.NOT and server.kind is Kind.NOT:
        return None
    asked = first.asked
    if asked.get(match) is not client:
        finding = match(client)
        if finding is not None:
            return finding
        asked[match] = client
    if not client_only:
        asked = second.asked
        if asked.get(match) is not server:
            finding = match(server)
            if finding is not None:
                return finding
            asked[match] = server
    return None if view.complete else MORE


def drive_each(view: FlowView, matches: tuple[SideMatcher, ...]) -> Result:
    """`drive_sides` of each of ``matches`` in turn (none ``client_only``), as one call: the first finding, else
    what each of them answers (None or `MORE`, the same for all); the sides are read once (`jsonmining`)."""
    readings = view.memo.get(__name__)
    if not isinstance(readings, tuple):
        readings = view.memo[__name__] = (Reading(), Reading())
    first, second = readings
    data, complete = view.client, view.complete
    client = first.found if data is first.raw and complete == first.complete else first.read(data, complete)
    data = view.server
    server = second.found if data is second.raw and complete == second.complete else second.read(data, complete)
    if client.kind is Kind.NOT and server.kind is Kind.NOT:
        return None
    asked_client, asked_server = first.asked, second.asked
    for match in matches:
        if asked_client.get(match) is not client:
            finding = match(client)
            if finding is not None:
                return finding
            asked_client[match] = client
        if asked_server.get(match) is not server:
            finding = match(server)
            if finding is not None:
                return finding
            asked_server[match] = server
    return None if complete else MORE
