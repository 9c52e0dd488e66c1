"""Reading XML text as a lenient XML-RPC or SOAP server reads it, without a parser: the method names, struct member
names, string values and element names of a document, with where each starts (`egress.detect.xmlrpc` judges
them).

A tolerant tokenizer rather than ``xml.parsers.expat``: the text is usually a truncated prefix (which a parser
refuses), it may be several documents back to back on one stream, and the pool is the attacker's, so what counts
is what *some* server accepts (red team 4, docs/security.md):

- NULs and byte-order marks are dropped (`normalize`), which reads the ASCII of UTF-16 and UTF-32 text, whatever
  the prolog declares (expat maps an 8-bit ``encoding=`` only where ASCII stays ASCII: the names read the same);
- comments and processing instructions vanish between pieces of text (expat joins the character data around
  them), CDATA sections are text, character references (``&#46;``, ``&#x2e;``, lenient: without ``;``), the five
  predefined entities and the internal entities a ``<!DOCTYPE`` declares (``<!ENTITY m "mining.submit">``, which
  expat expands) are decoded;
- tag names in any case, with a namespace prefix (Python's ``xmlrpc.client`` drops it), attributes, blanks;
- an element's text is read two ways: what follows its last child's tag (Python's unmarshaller restarts the text
  at every tag) and all its text joined (a reader that ignores unknown children); both are stripped;
- a decoded text node or attribute value that is itself a document (red team 6: ``<payload>&lt;methodCall&gt;
  ...</payload>``, ``payload="{&quot;method&quot;: ...}"``) is read again, `DEPTH` levels deep: XML as XML when it
  is a whole document (`is_document`: a quoted fragment is an article's, not a call), JSON
  for its ``"method"`` values (`egress.detect.jsonscan.methods`, as ``method`` items) and its string values that
  are documents (`egress.detect.jsonscan.wrapped_strings`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from egress.detect.jsonscan import methods, wrapped_strings

_BOMS: Final = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
_TOKEN: Final = re.compile(
    rb"<!--.*?-->|<\?.*?\?>|<!\[CDATA\[(?P<cdata>.*?)\]\]>"
    rb"|(?P<doctype><!DOCTYPE[^\[>]*(?:\[(?:\"[^\"]*\"|'[^']*'|<!--.*?-->|[^\]\"'<]|<(?!!--))*\])?[^>]*>)"
    rb"|<\s*(?P<close>/)?\s*(?P<name>[^\s/<>!?]+)(?P<attrs>[^<>]*)>",
    re.S | re.I,
)
"""A comment, a processing instruction (the prolog too), a CDATA section, a doctype with its internal subset (whose
quoted values and comments may hold a ``]``), or a tag (``<x:Name a="1"/>``); what lies between two is text."""
_ENTITY: Final = re.compile(rb"<!ENTITY\s+([^\s%]+)\s+(?:\"([^\"]*)\"|'([^']*)')", re.I)
_REFERENCE: Final = re.compile(rb"&(?:#(?:([0-9]{1,7})|[xX]([0-9a-fA-F]{1,6}))|([A-Za-z_][\w.:-]*));?")
_PREDEFINED: Final = {b"amp": b"&", b"lt": b"<", b"gt": b">", b"quot": b'"', b"apos": b"'"}
_EXPANSIONS: Final = 4
"""Rounds of entity expansion (an entity whose value holds references): more than any document needs."""
_TEXT_MAX: Final = 256
"""Characters of an element's text kept: every name we look for is far shorter."""
_BLANK: Final = b" \t\r\n"
DEPTH: Final = 3
"""Levels of documents inside text nodes and attribute values read."""
_NESTED_MAX: Final = 16 * 1024
"""Bytes of one text node or attribute value read as a document."""
_DOCUMENT: Final = re.compile(rb"\s*<(?:\?xml|\s*(?:[\w.-]+:)?(?:methodcall|methodresponse|envelope)\b)", re.I)
"""How a whole XML-RPC or SOAP document starts (what a client library writes)."""
_DOCUMENT_END: Final = re.compile(rb"</\s*(?:[\w.-]+:)?(?:methodcall|methodresponse|envelope)\s*>", re.I)
"""How it ends: a well-formed document is what Python's, Go's or PHP's XML-RPC and SOAP readers accept."""
_ATTR: Final = re.compile(rb"=\s*(?:\"([^\"]*)\"|'([^']*)')")
_READ: Final = {b"methodname": "method", b"name": "key", b"string": "value", b"value": "value"}
"""The elements whose text is read, and as what (`Item.kind`)."""


def normalize(data: bytes) -> bytes:
    """``data`` without NULs and byte-order marks (UTF-16 and UTF-32 text read as its ASCII)."""
    if 0 in data:
        data = data.replace(b"\x00", b"")
    for mark in _BOMS:
        data = data.replace(mark, b"")  # the same object where none is
    return data


@dataclass(frozen=True, slots=True)
class Item:
    """Something a document names: ``kind`` is ``element`` (a tag's local name), ``method`` (a ``methodName``
    element's text, or the value of a ``methodName`` struct member: ``system.multicall``), ``value`` (a ``string``
    or ``value`` element's text) or ``key`` (a ``name`` element's text: a struct member's name)."""

    kind: str
    name: str
    """Lowercase, stripped."""
    offset: int
    """Where the tag or the element that holds it starts in the text."""


@dataclass(slots=True)
class _Open:
    name: bytes
    offset: int
    joined: bytearray = field(default_factory=bytearray)
    """All the element's text, children's included."""


def _decode(text: bytes, entities: dict[bytes, bytes]) -> bytes:
    """Character and entity references decoded, entities expanded as far as `_EXPANSIONS` rounds go."""
    for _ in range(_EXPANSIONS):
        if 0x26 not in text:
            break
        decoded = _REFERENCE.sub(lambda match: _reference(match, entities), text)
        if decoded == text:
            break
        text = decoded
    return text


def _reference(match: re.Match[bytes], entities: dict[bytes, bytes]) -> bytes:
    decimal, hexadecimal, name = match.groups()
    if name is not None:
        return _PREDEFINED.get(name.lower()) or entities.get(name, match.group(0))
    code = int(decimal) if decimal is not None else int(hexadecimal, 16)
    return chr(code).encode("utf-8", "replace") if 0 < code < 0x110000 else b""


def _local(name: bytes) -> bytes:
    return name.rpartition(b":")[2].lower()


def _name(text: bytes | bytearray) -> str:
    return bytes(text[:_TEXT_MAX]).strip(_BLANK).decode("utf-8", "replace").lower()


def _nested(text: bytes, offset: int, depth: int) -> Iterator[Item]:
    """The items of a decoded text node or attribute value that is a document (XML or JSON), at ``offset``; none for
    other text, or past `DEPTH`."""
    text = text.lstrip(_BLANK)[:_NESTED_MAX] if depth < DEPTH else b""
    if text[:1] == b"<" and is_document(text):
        for item in items(text, depth + 1):
            yield Item(item.kind, item.name, offset)
    elif text[:1] in (b"{", b"["):
        for name, _ in methods(text):
            yield Item("method", name.strip().lower(), offset)
        for inner in wrapped_strings(text):  # markup as a string of that JSON
            yield from _nested(inner, offset, depth + 1)


def is_document(text: bytes) -> bool:
    """Whether ``text`` is a whole XML-RPC or SOAP document (a prolog or the call's, answer's or envelope's tag,
    and that element's end tag): what a text read again must be (`_nested`, `egress.detect.xmlrpc`). A fragment
    quoted as text (an article's or a docs page's ``&lt;methodCall&gt;&lt;methodName&gt;mining.submit...``) is
    not a call any reader accepts, and is not read again."""
    return _DOCUMENT.match(text) is not None and _DOCUMENT_END.search(text) is not None


def _attributes(attrs: bytes, entities: dict[bytes, bytes], offset: int, depth: int) -> Iterator[Item]:
    """The items of a tag's attribute values that are documents (`_nested`)."""
    if 0x26 in attrs or 0x7B in attrs or 0x5B in attrs:  # markup in a value is escaped ("&lt;"), JSON's quotes too
        for value in _ATTR.finditer(attrs):
            yield from _nested(_decode(value.group(1) or value.group(2) or b"", entities), offset, depth)


def items(text: bytes, depth: int = 0) -> Iterator[Item]:
    """What ``text`` names, in document order: every element's local name as it opens, and the text of the
    ``methodName``, ``name``, ``string`` and ``value`` elements as they close (both readings of it). A construct
    cut by the end of ``text`` yields nothing yet. A text node or attribute value that is a document is read too
    (`_nested`), up to `DEPTH` levels."""
    entities: dict[bytes, bytes] = {}
    stack: list[_Open] = []
    since = bytearray()  # text since the last tag: what Python's unmarshaller hands an end tag
    member = ""  # the last struct member name read
    pos = 0
    for match in _TOKEN.finditer(text):
        if match.start() > pos:
            decoded = _decode(text[pos : match.start()], entities)
            _add_text(decoded, since, stack)
            yield from _nested(decoded, pos, depth)
        pos = match.end()
        if (cdata := match.group("cdata")) is not None:
            _add_text(cdata, since, stack)
            yield from _nested(cdata, match.start(), depth)
            continue
        if (doctype := match.group("doctype")) is not None:
            for declared in _ENTITY.finditer(doctype):
                entities[declared.group(1)] = declared.group(2) or declared.group(3) or b""
            continue
        name = match.group("name")
        if name is None:
            continue  # a comment or a processing instruction: the text around it joins
        local = _local(name)
        if match.group("close"):
            item = _closed(local, stack, since, member)
            for found in item:
                if found.kind == "key":
                    member = found.name
                yield found
            if local == b"member":
                member = ""
            since = bytearray()
            continue
        since = bytearray()
        yield Item("element", local.decode("utf-8", "replace"), match.start())
        yield from _attributes(match.group("attrs"), entities, match.start(), depth)
        if not match.group("attrs").rstrip(_BLANK).endswith(b"/"):
            stack.append(_Open(local, match.start()))


def _add_text(text: bytes, since: bytearray, stack: list[_Open]) -> None:
    if len(since) < _TEXT_MAX:
        since += text
    for element in stack:
        if element.name in _READ and len(element.joined) < _TEXT_MAX:
            element.joined += text


def _closed(local: bytes, stack: list[_Open], since: bytearray, member: str) -> list[Item]:
    """The items an end tag gives: the text of the element it closes (found by name: a lenient reader closes the
    nearest open one), read both ways."""
    at = next((index for index in range(len(stack) - 1, -1, -1) if stack[index].name == local), -1)
    if at < 0:
        return []
    element = stack[at]
    del stack[at:]
    kind = _READ.get(local)
    if kind is None:
        return []
    if kind == "value" and member == "methodname":
        kind = "method"  # system.multicall: {methodName: "mining.submit", params: [...]}
    names = dict.fromkeys((_name(since), _name(element.joined)))
    return [Item(kind, name, element.offset) for name in names if name]
