"""Pool calls as XML: XML-RPC ``<methodCall>``/``<methodResponse>`` and SOAP or other XML envelopes, in either
direction, on a raw stream or in HTTP bodies.

XML-RPC (http://xmlrpc.com/spec.md) writes a call's method verbatim, ``<methodCall><methodName>mining.submit
</methodName><params>...``, and SOAP 1.1/1.2 names it as the element inside ``<Body>`` (``<m:mining.submit>``);
Python's ``xmlrpc.server`` and PHP's, Apache's or Go's XML-RPC servers carry Stratum that way unchanged (red team
4, docs/security.md), and the JSON readers (`egress.detect.jsonrpc`) and `egress.detect.binrpc` leave XML text
alone. Names are read as a lenient server reads them (`egress.detect.xmlscan`: entities, CDATA, comments,
prefixes, case, UTF-16), in a direction that holds XML-RPC or SOAP markup (`_MARKUP`), and judged by the same
name sets as the JSON detectors:

- a method (a ``methodName`` element's text, or a ``system.multicall`` member's) or an element named for one:
  Stratum's ``mining.<name>`` (`egress.detect.stratum.is_method`), the Ethereum work calls
  (`egress.detect.ethstratum.MINING_METHODS`), getwork and the block-template calls
  (`egress.detect.getwork.MINING_METHODS`), XMRig's ``login``/``submit``/``job`` with the keys
  `egress.detect.cryptonote.REQUIRED` asks of them present as struct member or element names in the same
  direction, and ``keepalived`` (as a method only: a ``<keepalived>`` element is the daemon's);
- a string value that is a pool method's name, whole (`binrpc`'s lists of the names that count alone): what a pool
  answers ``mining.subscribe`` with (``mining.notify`` pairs), or a call handed to a generic dispatcher
  (``call("mining.submit", ...)``); and a CryptoNote job (members ``job_id``, ``blob`` and ``target``).

An XML document that is a JSON string's value (red team 6: ``{"xmlrpc": "\\u003cmethodCall\\u003e..."}``, Go's
``json.Marshal`` escaping) is read from what `egress.detect.jsonrpc.wrap` unwrapped, and a document that is an
element's text or an attribute's value is read again by `egress.detect.xmlscan.items`.

HTTP bodies are read as the server reads them: chunked framing and content codings undone (`egress.detect.codings`,
as the JSON reader does), each body alone and a connection's bodies joined (a document cut across keep-alive
requests); a ``SOAPAction`` header naming a pool method counts too (SOAP 1.1 dispatches on it).

Cost: a direction is read as XML only once `_MARKUP` has shown up in it (its new bytes, lowercased, the decoded
body of each chunked or coded message once whole, or a request target holding ``%3C``); until then a longer prefix
costs a ``<`` search over its new bytes and, where one is, a lowercasing pass and two ``bytes.find`` calls; the
HTTP walk waits out an unframed body (+3.9 % of the scanner's CPU, docs/security.md). A flow whose both
directions `egress.detect.jsonrpc` rules out (a whole TLS hello, an SSH banner) is answered None: its later bytes
are encrypted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote_to_bytes

from egress.detect import binrpc, codings, cryptonote, ethstratum, getwork, jsonrpc, stratum
from egress.detect.base import MORE, Category, Finding, FlowView, Result, evidence
from egress.detect.jsonrpc import _HTTP_FIRST, _body, _content_length, _field, _is_http_start  # HTTP as JSON's
from egress.detect.xmlscan import Item, is_document, items, normalize

NAME: Final = "xmlrpc"
PROTOCOL: Final = "xml-rpc-stratum"

_MARKUP: Final = ((b"method", (b"name", b"response"), ()), (b"envelope", (), (b"<", b":")))
"""What every XML document this detector reads holds, lowercased: XML-RPC's ``methodName`` or ``methodResponse``,
or SOAP's (or any envelope's) ``Envelope`` tag: each a word, what must follow it and what must precede it
(``Envelope-to:`` in mail is no tag). Two passes over a prefix's new bytes, a few slice compares per hit."""
_FOLD: Final = bytes.maketrans(bytes(range(0x41, 0x5B)), bytes(range(0x61, 0x7B)))
"""ASCII upper case to lower case, for `bytes.translate` (which also drops the NULs of UTF-16 in the same pass)."""
_OVERLAP: Final = 64
"""Raw bytes searched again before the last stop: a token cut by a prefix's end, UTF-16's NULs included."""
_ETH: Final = frozenset(name.lower() for name in ethstratum.MINING_METHODS)
_VALUES: Final = frozenset(
    name.decode().lower() for name in (*binrpc._STRATUM, *binrpc._ALONE, *binrpc._ALONE_LOWER)
)  # binrpc's lists of the names that count alone: a string value that is one of them, whole
"""String values that are a pool method's name, whole: the answer to ``mining.subscribe`` (``mining.notify``
pairs), or a call's name handed to a generic dispatcher (``call("mining.submit", ...)``). Exact names only:
``mining.com`` is a post's title, not a call."""
_JOB: Final = tuple(key.decode() for key in cryptonote.REQUIRED["job"])
_BLANK: Final = b" \t\r\n"
_UNTIL_CLOSE: Final = 1 << 62
"""Where a response without a length ends: its body runs to the connection's end."""
_FRAMED: Final = re.compile(rb"\n(?:transfer|content)-encoding:", re.I)
"""A head whose body's bytes are not the body the server reads (chunked, coded): searched once decoded."""


@dataclass(slots=True)
class _Side:
    """How far one direction was searched for `_MARKUP` (a pure function of its bytes)."""

    upto: int = 0
    searched: int = 0
    """Where the search for `_MARKUP` stopped: it waits at the first bytes while none of them is a ``<`` (no tag)."""
    plain: int = 0
    """The bytes from ``searched`` (less `_OVERLAP`) to here hold no ``<``: the next prefix looks for one after."""
    settled: int = 0
    """HTTP: where the messages whose bodies were searched whole end (offset in the stream without leading blanks)."""
    http: bool | None = None
    """Whether the direction is HTTP (None: too few bytes to tell)."""
    wait: int = 0
    """HTTP: where the unframed body still arriving ends (no head to read before)."""
    tripped: bool = False
    """A token showed up: the direction is read as XML at each longer prefix."""
    found: Finding | None = None
    """What the direction's bytes up to ``upto`` read as."""


def _has_token(data: bytes) -> bool:
    """Whether ``data`` holds one of `_MARKUP` (in any case, UTF-16's NULs dropped)."""
    lowered = data.translate(_FOLD, b"\x00")  # lower case, UTF-16/32's NULs dropped: one pass
    for word, after, before in _MARKUP:
        at = lowered.find(word)
        while at >= 0:
            end = at + len(word)
            if (not after or lowered.startswith(after, end)) and (not before or lowered[at - 1 : at] in before):
                return True
            at = lowered.find(word, at + 1)
    return False


def _messages(
    data: bytes, pos: int, complete: bool, framed_only: bool = False
) -> tuple[list[tuple[bytes, bytes]], bytes, int, int]:
    """The HTTP messages of ``data`` from ``pos`` on: (head, body as the server reads it) each, what follows the last
    one that cannot start another (a raw stream after an upgrade), and where the last whole message ends. A coded
    body is decoded once whole (or at the flow's end): before, its bytes show nothing. ``framed_only``: the bodies of
    chunked and coded messages only, the others empty, and (4th) where the last one's unframed body still arriving
    ends: no message starts before (0 where none is)."""
    found: list[tuple[bytes, bytes]] = []
    rest, settled = b"", pos
    while pos < len(data) and len(found) < jsonrpc.MAX_HTTP_MESSAGES:
        while pos < len(data) and data[pos] in _BLANK:
            pos += 1
        if pos >= len(data):
            break
        if not _is_http_start(data[pos : pos + 8]):
            rest = data[pos:]
            break
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        head = data[pos:end]
        if framed_only and not _FRAMED.search(head):  # its body is its bytes, searched as they came: not copied
            pos, whole = _skipped(data, end + 4, head)
            found.append((head, b""))
            if not whole:
                return found, rest, settled, pos
            settled = pos
            continue
        body, pos, whole, fixed = _body(data, end + 4, head)
        if body and (coding := _field(head.lower(), b"content-encoding")):
            partial = not whole
            body = b"" if partial and not complete else _decoded(body, coding, partial)
        found.append((head, body))
        if whole and fixed:
            settled = pos
    return found, rest, settled, 0


def _skipped(data: bytes, pos: int, head: bytes) -> tuple[int, bool]:
    """Where the unframed message whose head ends at ``pos`` ends, and whether its body is whole (as `_body`)."""
    length = _content_length(head.lower())
    if length is not None:
        return pos + length, pos + length <= len(data)
    if head.startswith(b"HTTP/"):
        return _UNTIL_CLOSE, False
    return pos, True


def _decoded(body: bytes, coding: bytes, partial: bool) -> bytes:
    return codings.decode(body, coding.decode("latin-1"), jsonrpc.SCAN_LIMIT, partial=partial).data


def _target(head: bytes) -> bytes:
    """A request target that holds markup, percent-decoded (a pool may read its call there), else empty."""
    start = head.partition(b"\r\n")[0]
    if start.startswith(b"HTTP/") or (0x3C not in start and start.lower().find(b"%3c") < 0):
        return b""
    target = start.partition(b" ")[2].rpartition(b" ")[0]
    for _ in range(3):
        if 0x25 not in target:
            break
        target = unquote_to_bytes(target.replace(b"+", b" "))
    return target


def _texts(data: bytes, complete: bool) -> tuple[list[bytes], list[bytes]]:
    """The XML-bearing texts of one direction (HTTP bodies alone and joined, request targets, or the raw stream),
    normalized, and its HTTP heads."""
    raw = data.lstrip(_BLANK)
    if not ((not raw or raw[0] in _HTTP_FIRST) and _is_http_start(raw[:8])):
        return [normalize(data)], []
    messages, rest, _, _ = _messages(raw, 0, complete)
    bodies = [body for _, body in messages if body]
    texts = [*bodies, b"".join(bodies)] if len(bodies) > 1 else bodies
    texts += [target for head, _ in messages if (target := _target(head))]
    return [normalize(text) for text in (*texts, rest) if text], [head for head, _ in messages]


def _pool_method(item: Item, keys: frozenset[str]) -> bool:
    name = item.name
    if item.kind == "value":
        return name in _VALUES
    if item.kind == "key":
        return False
    if stratum.is_method(name) or name in _ETH or name in getwork.MINING_METHODS:
        return True
    required = cryptonote.REQUIRED.get(name)
    if required is None or not (required or item.kind == "method"):  # a bare <keepalived> element is a daemon's
        return False
    return all(key.decode() in keys for key in required)


def _judge(texts: list[bytes]) -> Finding | None:
    """The first pool call or answer in the texts of one direction."""
    read = [list(items(text)) for text in texts if 0x3C in text]
    keys = frozenset(item.name for found in read for item in found if item.kind in ("key", "element"))
    for found in read:
        for item in found:
            if _pool_method(item, keys):
                return Finding(Category.MINING, PROTOCOL, NAME, evidence(f"XML {item.kind} {item.name}"))
    if all(key in keys for key in _JOB):
        return Finding(Category.MINING, PROTOCOL, NAME, evidence(f"XML job {' '.join(_JOB)}"))
    return None


def _soap_action(heads: list[bytes]) -> Finding | None:
    for head in heads:
        action = _field(head.lower(), b"soapaction").strip(b"\"' ")
        name = action.rsplit(b"#", 1)[-1].rsplit(b"/", 1)[-1].rsplit(b":", 1)[-1].decode("latin-1")
        if name and _pool_method(Item("method", name, 0), frozenset()):
            return Finding(Category.MINING, PROTOCOL, NAME, evidence(f"SOAPAction {action.decode('latin-1')}"))
    return None


def _trips(side: _Side, data: bytes, complete: bool) -> bool:
    """Whether `_MARKUP` shows in the new bytes of ``data``, in a chunked or coded HTTP body now whole, or a request
    target holds markup."""
    start = max(side.searched - _OVERLAP, 0)
    if data.find(b"<", max(start, side.plain)) >= 0:  # every markup word sits in a tag: none while no "<" came
        side.searched = len(data)
        if _has_token(data[start:]):
            return True
    else:
        side.plain = len(data)
    raw = data.lstrip(_BLANK)
    if side.http is None and len(raw) >= 8:
        side.http = (not raw or raw[0] in _HTTP_FIRST) and _is_http_start(raw[:8])
    if not side.http or (len(raw) <= side.wait and not complete):  # within an unframed body: no new head yet
        return False
    messages, _, side.settled, side.wait = _messages(raw, side.settled, complete, framed_only=True)
    return any(_target(head) or (_FRAMED.search(head) and _has_token(body)) for head, body in messages)


def detect(view: FlowView) -> Result:
    """Find pool calls and answers written as XML-RPC, SOAP or other XML."""
    first, second = jsonrpc.read(view, True), jsonrpc.read(view, False)
    client, server = first.kind is not jsonrpc.Kind.NOT, second.kind is not jsonrpc.Kind.NOT
    if not (client or server):
        return None
    for read in (first, second):  # XML documents as JSON string values (`jsonrpc.wrap`): no "<" in the bytes
        if not read.markup:
            continue
        documents = [normalize(text) for text in read.markup if is_document(text)]
        if documents and (found := _judge(documents)) is not None:
            return found
    memo = view.memo.get(__name__)
    sides: tuple[_Side, _Side]
    if isinstance(memo, tuple):
        sides = memo
    else:
        sides = view.memo[__name__] = (_Side(), _Side())
    complete = view.complete
    for side, data, readable in ((sides[0], view.client, client), (sides[1], view.server, server)):
        if not readable:
            continue  # TLS or SSH: encrypted after
        data = data[: jsonrpc.SCAN_LIMIT]
        if len(data) != side.upto or complete:
            if not side.tripped:
                side.tripped = _trips(side, data, complete)
            side.upto, side.found = len(data), None
            if side.tripped:
                texts, heads = _texts(data, complete)
                side.found = _soap_action(heads) or _judge(texts)
        if side.found is not None:  # as a fresh view of the same bytes answers (a caller may ask again)
            return side.found
    return None if complete else MORE
