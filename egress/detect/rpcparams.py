"""A pool's JSON-RPC call carried as HTTP parameters, rebuilt as the JSON text the pool detectors judge.

Red team 5 (docs/security.md, "Fifth round"): JSON-RPC 1.1's HTTP GET binding (WD §6.3; jsonrpc4j, and the PHP and
Rails endpoints that take the same pairs form-encoded) carries a call as ``method``, ``params`` and ``id``
parameters: ``GET /rpc?jsonrpc=2.0&method=mining.submit&params=[...]&id=3``. No piece of that is a JSON-RPC
message, so the JSON readers saw none. This module reads the pairs of a request's target (query, matrix
parameters, fragment), of a form or multipart body, of its cookies and of headers named for a method, as a lenient
server decodes them, and gives back the call they encode as JSON text (``{"method": ..., "params": ...}`` and the
other pairs as keys), for `egress.detect.stratum`, `getwork`, `ethstratum` and `cryptonote` to judge with their own
name sets and keys. One pure function, `call_text`, for every path: the gateway's (`egress.proxy.mitm.inspect.read`,
which the front's fast path and mitmproxy's addon share) and the capture scanner's (`egress.detect.jsonrpc`).

A value is a call's method name when its key names a method (``method``, ``METHOD``, ``method[]``, ``X-Method``,
``rpc_method``: any key holding the word), when the pairs have JSON-RPC's shape (a ``jsonrpc`` or ``params`` key),
or when it is a path segment (``/rpc/mining.submit``, exact case); and when it is a pool method name
(`pool_method`). A search for ``?q=mining.submit`` is none of these. The values of method keys are also read
joined (a name split over repeated pairs). Decoding, while it changes, up to `ROUNDS` times: percent escapes
(``+`` as a space; IIS's ``%uXXXX``), overlong UTF-8, HTML character references; NULs and byte-order marks (UTF-16
and UTF-32 text) are dropped.
"""

from __future__ import annotations

import contextlib
import functools
import html
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final
from urllib.parse import unquote_to_bytes

if TYPE_CHECKING:
    import email.message

ROUNDS: Final = 3
"""Times a key or value is decoded at most after the first (a lenient server may decode twice, or more)."""
PAIRS_MAX: Final = 256
"""Pairs read per request; the rest stay in the bodies and pieces inspected otherwise."""
MULTIPART_DEPTH: Final = 4
"""Levels of nested multipart parts read (a ``multipart/mixed`` inside a form's part is one)."""
NAME_MAX: Final = 64
"""Longest value taken for a method name (the longest pool name is 27 characters)."""
_SEPARATORS: Final = re.compile(rb"[&;?#\r\n]")
_IIS: Final = re.compile(rb"%u00([0-7][0-9a-fA-F])")
_OVERLONG: Final = re.compile(rb"[\xc0\xc1][\x80-\xbf]|\xe0[\x80-\x9f][\x80-\xbf]")
_DROPPED: Final = (b"\x00", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
_MAY_CALL: Final = re.compile(rb"(?i)method|jsonrpc|params|[%\x00\xc0\xc1\xe0\xef\xfe\xff]")
"""What pairs that may encode a call hold as sent: a method or shape key's word, or a byte that decoding changes
(``+`` only makes blanks, and a raw ``&`` splits a character reference as every form parser does)."""
_SPECIAL: Final = re.compile(rb"[%&+\x00\xc0\xc1\xe0\xef\xfe\xff]")
"""A byte that `_decoded` may change: without one, a value is read as it came."""
_BOUNDARY: Final = re.compile(r'(?i)boundary\s*=\s*(?:"([^"]+)"|([^";\s]+))')
_INDEX: Final = re.compile(r"^([^\[\]]*)\[([^\]]*)\]")
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{1,63}")
_SHAPE_KEYS: Final = frozenset({"jsonrpc", "params"})


def pool_method(name: str) -> str | None:
    """The pool method ``name`` spells (its canonical spelling; case aside), or None: the name sets of the pool
    detectors (`stratum.is_method`, `getwork`'s and `ethstratum`'s ``MINING_METHODS``, `cryptonote.REQUIRED`)."""
    return _canonical().get(name.lower()) or (name.lower() if _is_stratum(name.lower()) else None)


def _is_stratum(name: str) -> bool:
    from egress.detect import stratum  # the pool detectors read JSON through `jsonrpc`, which calls this module

    return stratum.is_method(name)


@functools.cache
def _canonical() -> Mapping[str, str]:
    """The pool method names other than Stratum's, lowercased, to their spelling."""
    from egress.detect import cryptonote, ethstratum, getwork

    return {name.lower(): name for name in (*getwork.MINING_METHODS, *ethstratum.MINING_METHODS, *cryptonote.REQUIRED)}


def _unescape(data: bytes) -> bytes:
    """One round of what a lenient server's decoder undoes."""
    if 0x25 in data:
        data = unquote_to_bytes(_IIS.sub(lambda match: b"%" + match.group(1), data))
    if 0x26 in data:
        data = html.unescape(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
    if 0xC0 in data or 0xC1 in data or 0xE0 in data:
        data = _OVERLONG.sub(_fold_overlong, data)
    for dropped in _DROPPED:
        data = data.replace(dropped, b"")  # the same object where none is
    return data


def _fold_overlong(match: re.Match[bytes]) -> bytes:
    code = 0
    for byte in match.group():
        code = (code << 6) | (byte & 0x3F)
    return bytes((code,)) if code < 0x80 else match.group()


def _decoded(data: bytes, plus: bool = True) -> str:
    """``data`` as the server's application reads it: ``+`` as a space, then `_unescape` while it changes."""
    if _SPECIAL.search(data) is None:  # most keys and values: nothing to undo
        return data.decode("utf-8", "replace").strip()
    if plus and 0x2B in data:
        data = data.replace(b"+", b" ")
    for _ in range(ROUNDS + 1):
        done = _unescape(data)
        if done == data:
            break
        data = done
    return data.decode("utf-8", "replace").strip()


def _pairs(encoded: bytes, again: bool = True) -> list[tuple[str, str]]:
    """``a=1&b=2;c=3#d=4``'s pairs (any of ``&;?#`` between them), decoded; where an encoded separator (``%26``,
    ``%3D``) shows, the token decoded is split again too (a server that decodes before it splits)."""
    found: list[tuple[str, str]] = []
    for token in _SEPARATORS.split(encoded)[:PAIRS_MAX]:
        key, equals, value = token.partition(b"=")
        if not equals and 0x25 not in token:
            continue
        pair = (_decoded(key), _decoded(value))
        if equals:
            found.append(pair)
        if again and ("=" in pair[0] or "&" in pair[1] or ";" in pair[1]):
            found += _pairs(_decoded(token).encode("utf-8", "surrogateescape"), again=False)
    return found[:PAIRS_MAX]


def _segments(path: bytes, shaped: bool) -> list[str]:
    """The path's segments (matrix parameters cut off), decoded, that may be a pool method's name: a Stratum or
    underscored name (``/rpc/mining.submit``, ``/eth_submitWork``), or any name when the pairs have JSON-RPC's
    shape (a path ``/keepalived`` or ``/getwork`` alone is a page's name more often than a call)."""
    found: list[str] = []
    for segment in path.split(b"/")[-8:]:
        named = segment.find(b"mining.") >= 0 or 0x5F in segment or 0x25 in segment
        if segment and (shaped or named or not segment.isascii()):
            found.append(_decoded(segment.partition(b";")[0], plus=False))
    return found


def _multipart(body: bytes, content_type: str) -> list[tuple[str, str]]:
    """A ``multipart/form-data`` body's fields: (its ``name``, its content), as the standard library's ``email``
    parser reads them (red team 6: each part's ``Content-Transfer-Encoding`` undone, RFC 2231 names, LF line ends,
    ``boundary = "XB"``, folded heads, nested ``multipart/mixed``; Go's ``mime/multipart`` takes the same), then
    those a plain split on the boundary finds that the parser's reading lacks (a method field always: a server that
    splits so may name another method than the parser's)."""
    memo: dict[bytes, str] = {}

    def decoded(data: bytes) -> str:  # a part's content is read once, whichever reading found it
        if (text := memo.get(data)) is None:
            text = memo[data] = _decoded(data, plus=False)
        return text

    parsed = [(decoded(name), decoded(content)) for name, content in _parsed_parts(body, content_type)]
    keys = {name.lower() for name, _ in parsed}
    for name, content in _split_parts(body, content_type):
        pair = (decoded(name), decoded(content))
        if pair not in parsed and (pair[0].lower() not in keys or "method" in pair[0].lower()):
            parsed.append(pair)
    return parsed[:PAIRS_MAX]


def _split_parts(body: bytes, content_type: str) -> list[tuple[bytes, bytes]]:
    """The fields (name and content, as sent) a plain split on the boundary finds."""
    boundary = _BOUNDARY.search(content_type)
    if boundary is None:
        return []
    found: list[tuple[bytes, bytes]] = []
    delimiter = b"--" + (boundary.group(1) or boundary.group(2)).strip().encode("latin-1", "replace")
    for part in body.split(delimiter)[1:PAIRS_MAX]:
        head, _, content = part.partition(b"\r\n\r\n") if part.find(b"\r\n\r\n") >= 0 else part.partition(b"\n\n")
        name = re.search(rb'(?i)\bname="?([^";\r\n]*)', head)
        if name is not None:
            found.append((name.group(1), content.removesuffix(b"\n").removesuffix(b"\r")))
    return found


def _parsed_parts(body: bytes, content_type: str) -> list[tuple[bytes, bytes]]:
    """The fields the ``email`` parser finds (``policy.HTTP``): a part's name its ``Content-Disposition``'s
    ``name`` parameter (RFC 2231 decoded, continuations joined) or its enclosing part's, its content with the
    transfer coding undone. An error here is the caller's to fail closed on (the request is blocked)."""
    # imported here: the ``email`` package is about 5 % of `egress scan`'s start-up, and few bodies are multipart
    import email.parser
    import email.policy

    head = "".join(ch if ch.isprintable() else " " for ch in content_type)
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {head}\r\n\r\n".encode("utf-8", "surrogateescape") + body
    )
    return _fields(message, "", 0)


def _fields(part: email.message.Message, name: str, depth: int) -> list[tuple[bytes, bytes]]:
    """``part``'s fields: its own (a leaf) or its parts' (a multipart, to `MULTIPART_DEPTH` levels)."""
    import email.message  # loaded by `_parsed_parts` already: these are look-ups
    import email.utils

    own = part.get_param("name", header="content-disposition")
    if own is not None:
        name = email.utils.collapse_rfc2231_value(own) if isinstance(own, tuple) else str(own)
    if part.is_multipart():
        found: list[tuple[bytes, bytes]] = []
        payload = part.get_payload()
        if depth < MULTIPART_DEPTH and isinstance(payload, list):
            for inner in payload[:PAIRS_MAX]:
                if isinstance(inner, email.message.Message):
                    found += _fields(inner, name, depth + 1)
        return found
    coding = part.get("content-transfer-encoding")
    if coding is not None and str(coding) != str(coding).strip():  # folded: Go trims it, `get_payload` would not
        part.replace_header("content-transfer-encoding", str(coding).strip())
    content = part.get_payload(decode=True)
    if not name or not isinstance(content, bytes):
        return []
    charset = part.get_content_charset()
    if charset is not None and charset not in {"utf-8", "utf8", "us-ascii", "iso-8859-1"}:
        with contextlib.suppress(LookupError, UnicodeError):
            content = content.decode(charset).encode("utf-8")
    return [(name.encode("utf-8", "surrogateescape"), content.removesuffix(b"\r\n"))]


def _body_pairs(body: bytes, content_type: str) -> list[tuple[str, str]]:
    """The pairs a server's form parser reads in ``body``: a form's, a multipart form's, or (any other type but
    JSON, which the JSON readers read) a body shaped like a form, as PHP's ``parse_str`` would read it."""
    if not body or body.lstrip()[:1] in (b"{", b"["):
        return []
    media = content_type.split(";", 1)[0].strip().lower()
    charset = re.search(r"charset=\"?([\w.:-]+)", content_type, re.IGNORECASE)
    if charset is not None and charset.group(1).lower() not in {"utf-8", "utf8", "us-ascii", "iso-8859-1"}:
        # Where the charset is unknown or wrong, NULs are dropped below: UTF-16 and UTF-32 read as their ASCII.
        with contextlib.suppress(LookupError, UnicodeError):
            body = body.decode(charset.group(1)).encode("utf-8")
    if media.startswith("multipart/"):
        return _multipart(body, content_type)
    body = body[:65536]
    return _pairs(body.replace(b"\x00", b"")) if 0x3D in body and _MAY_CALL.search(body) else []


def _field_pairs(fields: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers named for a method (``X-Method``, ``X-RPC-Method``) as pairs, and the cookies' pairs."""
    found: list[tuple[str, str]] = []
    for name, value in fields:
        lowered = name.lower()
        if lowered == "cookie" and _MAY_CALL.search(cookies := value.encode("utf-8", "surrogateescape")):
            found += _pairs(cookies)
        elif "method" in lowered and lowered != "access-control-request-method":
            found.append((lowered, _decoded(value.encode("utf-8", "surrogateescape"), plus=False)))
    return found


def _key(key: str) -> tuple[str, str | None]:
    """A pair's key as a form parser files it: ``params[0]`` is (``params``, ``0``), ``method[]`` (``method``,
    ````), ``Method`` (``method``, None)."""
    lowered = key.lower()
    indexed = _INDEX.match(lowered)
    return (indexed.group(1).strip(), indexed.group(2).strip()) if indexed else (lowered.strip(), None)


def _value(text: str) -> object:
    """A parameter's value as a JSON-RPC server takes it: JSON where it parses, the string otherwise."""
    if text[:1] in ("{", "[", '"') or text[:1].isdigit() or text in {"true", "false", "null"}:
        try:
            return json.loads(text, strict=False)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser: the string, as it came
            return text
    return text


def _params(pairs: list[tuple[tuple[str, str | None], str]]) -> object:
    """``params`` as the pairs spell it: one value (JSON), repeated ``params``/``params[]``, ``params[0]``...,
    or ``params[login]``... (PHP and Rails name their fields so)."""
    values = [(index, text) for (base, index), text in pairs if base == "params"]
    if len(values) == 1 and values[0][0] is None:
        return _value(values[0][1])
    if values and all(index and not index.isdigit() for index, _ in values):
        return {index: _value(text) for index, text in values}
    ordered = sorted(values, key=lambda item: int(item[0]) if item[0] and item[0].isdigit() else -1)
    return [_value(text) for _, text in ordered]


def _folded(text: str) -> str:
    """A value as a lenient server may match it to a method name: blanks inside it dropped, compatibility forms
    folded (NFKC, as Python folds identifiers: a fullwidth ``．`` is a dot)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return "".join(text.split()) if " " in text or "\t" in text or not text.isprintable() else text


def _names(keyed: list[tuple[tuple[str, str | None], str]], path: bytes) -> list[str]:
    """The pool method names the pairs and path name as a call's method, canonical, each once."""
    method_values = [text for (base, _), text in keyed if "method" in base]
    candidates = [*method_values, "".join(method_values)] if method_values else []
    shaped = any(base in _SHAPE_KEYS for (base, _), _ in keyed)
    if shaped:
        candidates += [text for _, text in keyed]
    found = [pool_method(_folded(text)) for text in candidates if 1 < len(text) <= NAME_MAX]
    for segment in map(_folded, _segments(path, shaped)):
        if _NAME.fullmatch(segment) and pool_method(segment) == segment and (shaped or not segment.isalpha()):
            found.append(segment)
    return list(dict.fromkeys(name for name in found if name))


def call_text(
    target: bytes, fields: Iterable[tuple[str, str]] = (), body: bytes = b"", content_type: str = ""
) -> bytes:
    """The JSON-RPC calls a request's parameters encode, as newline-ended JSON text (empty when none names a pool
    method): its target (``/path;matrix?query#fragment``), headers, and decoded body (of ``content_type``)."""
    quiet = not (fields or body or 0x3D in target or 0x25 in target or target.find(b"mining.") >= 0 or 0x5F in target)
    if quiet and target.isascii():  # the most common request: a path that holds no name and no pair
        return b""
    pairs = _pairs(target) if (0x3D in target or 0x25 in target) and _MAY_CALL.search(target) else []
    pairs += _field_pairs(fields) + _body_pairs(body, content_type)
    keyed = [(_key(key), value) for key, value in pairs]
    names = _names(keyed, target.partition(b"?")[0].partition(b"#")[0])
    if not names:
        return b""
    others = {base: _value(text) for (base, _), text in reversed(keyed) if base != "params" and "method" not in base}
    params = _params(keyed)
    return b"".join(json.dumps({**others, "method": name, "params": params}).encode() + b"\n" for name in names)
