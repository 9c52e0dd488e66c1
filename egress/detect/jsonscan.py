"""Reading JSON-RPC messages out of decoded text without parsing whole documents (`egress.detect.jsonrpc` makes
the text): the ``"method"`` values and their offsets, a key's presence, and the whole message around an offset.

A key scan costs a few ``bytes.find`` calls however much JSON there is, and works on a truncated prefix, which a
JSON parser would refuse. Every ``"method"`` key anywhere is read (duplicates, nested objects, batches).

Keys are read as a *lenient* reader reads them (red team 3; Gson lenient, Jackson's ``ALLOW_*`` features, JSON5,
Go's encoding/json, which matches keys without regard to case): in any case (``"METHOD"``), in single quotes or
unquoted, with comments (``/* */``, ``//`` to the line's end) around the colon, and the value in double or single
quotes. The escapes a lenient reader decodes (``\\xHH``, ``\\U``) are decoded before (`egress.detect.jsonrpc`).

`wrapped_strings` finds the string values that are themselves a document (red team 6): a value that starts, after
blanks, with ``{``, ``[`` or ``<`` (``{"payload": "{\\"method\\": ...}"}``, a message encoded twice), unescaped
as ``json.loads`` unescapes it; `egress.detect.jsonrpc` reads them again as messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Final

MAX_METHODS: Final = 4096
"""``"method"`` keys read per call: more than a `egress.detect.jsonrpc.SCAN_LIMIT` of the shortest messages holds,
so a bound on work that never stops the search early."""

_BLANK: Final = b" \t\r\n"
_METHOD: Final = b"method"
_QUOTES: Final = b"\"'"
_KEY_BEFORE: Final = frozenset(b"{,/ \t\r\n")
"""What may stand just before an unquoted key (after a comment's ``*/`` too)."""


WRAPPED_MAX: Final = 16 * 1024
"""Bytes of one string value read as a document (a Stratum or XML-RPC call is far shorter)."""
_WRAPPED: Final = re.compile(rb'"[ \t\r\n]*[{\[<]')
"""A string whose text starts with a bracket or a tag (or a closing quote before one: then its text is read too)."""
_WRAP_GATE: Final = (0x5C, 0x3C, 0x27)
"""What such a string's document holds, one at least: an escaped quote (``\\"``, ``\\u0022``), a tag, or a lenient
reader's single quote. JSON text without any of them is not searched (each a ``memchr``: an integer in bytes, not
a one-byte bytes, which costs a raised and cleared TypeError first; jsonrpc.py's `_HTTP_FIRST` says why)."""
_STRING_END: Final = re.compile(rb'(?:[^"\\]++|\\.)*+')
_STRING_ESCAPE: Final = re.compile(rb'\\(?:(["\\/])|([nrt])|[uU]00(22|5[cC]))')


def wrapped_strings(text: bytes, limit: int = WRAPPED_MAX) -> list[bytes]:
    """The unescaped text of each string value in ``text`` that starts (after blanks) with ``{``, ``[`` or ``<``, as
    far as it goes (a string cut by the end of ``text`` counts as far as it came), at most ``limit`` bytes each.
    Strings are read one after another (never one inside another: `egress.detect.jsonrpc.wrap` reads the next
    level), so the work is one pass over ``text``."""
    return read_wrapped(text, limit)[0]


def read_wrapped(
    text: bytes, limit: int = WRAPPED_MAX, known: tuple[bytes, ...] = (), resume: int = 0, stable: int = 0
) -> tuple[list[bytes], tuple[bytes, ...], int]:
    """`wrapped_strings` of ``text``, going on from what an earlier text with the same first ``stable`` bytes
    settled (``known`` strings, the search going on at ``resume``), as `read_methods` does; returns the strings and
    what is settled now."""
    if not any(mark in text for mark in _WRAP_GATE):
        return [], (), 0
    found = list(known)
    settled, settled_at, settling = len(found), resume, True
    match = _WRAPPED.search(text, resume)
    while match is not None:
        start = match.start() + 1
        if match.start() and text[match.start() - 1] == 0x5C:  # an escaped quote: inside a string
            match = _WRAPPED.search(text, start)
            continue
        body = _STRING_END.match(text, start, start + limit)
        end = body.end() if body is not None else start
        if end > start and body is not None:
            found.append(_STRING_ESCAPE.sub(_unescaped, body.group()).lstrip(_BLANK))
        settling = settling and end < stable and end < start + limit  # its closing quote is a stable byte
        if settling:
            settled, settled_at = len(found), end
        match = _WRAPPED.search(text, max(end, start))
    if settling:
        # No string opens after the last settled one: a later one may start only at the last quote before the
        # stable end (the pattern holds blanks alone between its quote and its bracket).
        settled_at = max(settled_at, text.rfind(b'"', settled_at, stable))
    return found, tuple(found[:settled]), settled_at


def _unescaped(match: re.Match[bytes]) -> bytes:
    kept, blank, code = match.groups()
    if kept is not None:
        return kept
    if blank is not None:
        return b" "  # a newline would end the message for `message_at`: the call stays on one line
    return b'"' if code == b"22" else b"\\"


def methods(text: bytes, limit: int = MAX_METHODS) -> list[tuple[str, int]]:
    """The string values of ``"method"`` keys in ``text``, with the offset of each key, in order."""
    return read_methods(text, limit)[0]


Calls = tuple[tuple[str, int], ...]


def read_methods(
    text: bytes, limit: int = MAX_METHODS, known: Calls = (), resume: int = 0, stable: int = 0
) -> tuple[list[tuple[str, int]], Calls, int]:
    """`methods` of ``text``, going on from what an earlier, shorter text with the same first ``stable`` bytes
    settled: its ``known`` methods, and ``resume``, where its search for keys stopped being settled.

    Returns the methods and what is settled now: the methods and the resume offset of the keys read entirely
    within ``text[:stable]`` (the part of ``text`` no later byte can change: `egress.detect.jsonrpc.Reading`)."""
    found = list(known)
    settled, settled_at, settling = len(found), resume, True
    lowered = text[resume:].lower()  # keys in any case; offsets less ``resume``
    pos = lowered.find(_METHOD)
    while pos >= 0 and len(found) < limit:
        pos += resume
        key_end = _key_end(text, pos)
        if key_end >= 0:
            start = pos - 1 if key_end > pos + len(_METHOD) else pos
            value, looked = _value_after(text, key_end)
            if value is not None:
                found.append((value, start))
            settling = settling and looked < stable  # a key after one that may still change is not settled either
            if settling:
                settled, settled_at = len(found), pos + len(_METHOD)
        pos = lowered.find(_METHOD, pos - resume + len(_METHOD))
    if pos < 0 and settling:
        # Every key so far is settled and no other could start before the last few stable bytes (whether 6 bytes
        # are a key reads one byte either side): the next, longer text searches (and lowers) from there only.
        settled_at = max(settled_at, stable - len(_METHOD) - 1)
    return found, tuple(found[:settled]), settled_at


def _key_end(text: bytes, pos: int, size: int = len(_METHOD)) -> int:
    """Just past the key whose name is the ``size`` bytes at ``pos`` (quoted, in either quote, or bare), or -1 when
    they are part of some other word or string."""
    before = text[pos - 1] if pos else 0x7B
    end = pos + size
    if before in _QUOTES:
        return end + 1 if text[end : end + 1] == bytes((before,)) else -1
    if before not in _KEY_BEFORE:
        return -1
    after = text[end : end + 1]
    return end if not after or not (after.isalnum() or after in b"_$'\"") else -1


def string_after(text: bytes, pos: int, max_len: int = 96) -> str | None:
    """Read ``: "value"`` at ``pos`` (just after a key), or None if no complete short string is there."""
    return _value_after(text, pos, max_len)[0]


def _skip(text: bytes, pos: int, end: int) -> int:
    """``pos`` moved past blanks and comments (``/* ... */``, ``// ...`` to the line's end); ``end + 1`` when a
    comment runs into the end of ``text`` (more bytes may close it)."""
    while pos < end:
        byte = text[pos]
        if byte in _BLANK:
            pos += 1
        elif byte == 0x2F and pos + 1 < end and text[pos + 1] in b"*/":
            close = text.find(b"*/" if text[pos + 1] == 0x2A else b"\n", pos + 2)
            if close < 0:
                return end + 1
            pos = close + (2 if text[pos + 1] == 0x2A else 1)
        elif byte == 0x2F and pos + 1 >= end:
            return end + 1
        else:
            break
    return pos


def _value_after(text: bytes, pos: int, max_len: int = 96) -> tuple[str | None, int]:
    """`string_after`, and how far it looked: past the last byte it read, or past the end of ``text`` when it ran
    into the end (the answer may then change when more bytes come)."""
    end = len(text)
    pos = _skip(text, pos, end)
    if pos >= end:
        return None, end + 1
    if text[pos] != 0x3A:  # ':'
        return None, pos + 1
    pos = _skip(text, pos + 1, end)
    if pos >= end:
        return None, end + 1
    quote = text[pos]
    if quote not in _QUOTES:
        return None, pos + 1
    window = pos + 2 + max_len
    close = text.find(bytes((quote,)), pos + 1, window)
    if close < 0:
        return None, window if window <= end else end + 1
    value = text[pos + 1 : close]
    if 0x0A in value:  # a line ends every message (and a truncated body, `egress.detect.jsonrpc`): no string
        return None, close + 1
    return value.decode("ascii", "replace"), close + 1


def has_key(text: bytes, key: bytes) -> bool:
    """Whether ``key`` followed by a colon occurs in ``text`` as a key (not a string value), read as the method key
    is (`read_methods`): in any case, in either quote or none, comments before the colon."""
    quoted = b'"' + key + b'"'
    pos = text.find(quoted)
    while pos >= 0:
        after = text[pos + len(quoted) : pos + len(quoted) + 4].lstrip(_BLANK)
        if after[:1] == b":":
            return True
        pos = text.find(quoted, pos + 1)
    lowered, key = text.lower(), key.lower()  # the lenient spellings, once the strict one is not there
    end = len(text)
    pos = lowered.find(key)
    while pos >= 0:
        key_end = _key_end(text, pos, len(key))
        if key_end >= 0 and (colon := _skip(text, key_end, end)) < end and text[colon] == 0x3A:
            return True
        pos = lowered.find(key, pos + 1)
    return False


def message_at(text: bytes, offset: int, final: bool = True) -> bytes | None:
    """The whole message around ``offset``, or None while it is still arriving (unless ``final``).

    A message ends where the JSON value holding ``offset`` closes (braces and brackets outside strings), or else at
    the next newline or ``}{`` boundary; it starts at the previous one. Only complete messages are reported, and
    the end never depends on what follows, so a finding's evidence does not depend on where the stream was split.
    A message is never cut at a length: padding (a 2,100-byte password before XMRig's ``agent`` key, red team 12)
    must not move a required key out of what is read. What bounds it is the inspected text itself (the flow's
    inspection cap); the scan for the value's end runs in the regular-expression engine (`_structure`).
    """
    begin = max(text.rfind(b"\n", 0, offset), text.rfind(b"}{", 0, offset)) + 1
    end = text.find(b"\n", offset)
    joined = text.find(b"}{", offset, end if end >= 0 else len(text))
    if joined >= 0:
        end = joined + 1
    close = _value_end(text, begin, offset, end if end >= 0 else len(text))
    if close >= 0:
        return text[begin:close]
    if end >= 0:
        return text[begin:end]
    return text[begin:] if final else None


def _value_end(text: bytes, begin: int, offset: int, limit: int) -> int:
    """Just past the byte that closes the JSON value holding ``offset`` (scanning ``text[begin:limit]``), or -1:
    no value holds it, or it does not close before ``limit``."""
    depth, depth_at = 0, -1
    for index, byte in _structure(text[begin:limit]):
        position = begin + index
        if depth_at < 0 and position >= offset:
            depth_at = depth
            if depth_at == 0:
                return -1
        depth = max(depth + (1 if byte in b"{[" else -1), 0)
        if depth_at > 0 and depth == 0:
            return position + 1
    return -1


def _structure(text: bytes) -> Iterator[tuple[int, int]]:
    """The braces and brackets of ``text`` outside strings, with their positions.

    A string runs from a quote to the next quote not escaped by a backslash (or to the end); `_TOKENS` steps over
    each whole string in one match, so the Python loop turns once per bracket, not once per byte."""
    for match in _TOKENS.finditer(text):
        position = match.start()
        byte = text[position]
        if byte != 0x22:
            yield position, byte


_TOKENS: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[{}\[\]]', re.S)
"""A whole string (its closing quote optional: cut at the end) or one bracket."""
