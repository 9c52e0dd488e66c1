"""Mining calls in binary RPC encodings: the pool protocols' method names as strings of those encodings.

Stratum, XMRig's CryptoNote stratum, Ethereum stratum and getwork can be carried by any RPC encoding that keeps
strings verbatim: msgpack-RPC, CBOR, protobuf/gRPC, Thrift, BSON, bencode, Ion, Smile, pickle, FlatBuffers (red
teams 3 and 4, docs/security.md). The detectors of `egress.detect.jsonrpc` read JSON text only; this one reads the
names wherever they sit in a stream, as a *string of one of those encodings*, where the byte(s) before the string
give its length ``L`` (the string: the name, or the name with NUL/space padding on either side, up to 16 bytes):

- ``L`` (protobuf field, msgpack str8/bin8 ``d9 L``/``c4 L``, CBOR ``78 L``/``58 L``, Thrift compact, ASN.1, the
  low byte of any big-endian length: msgpack str16/32 and bin16/32, CBOR 2- and 4-byte lengths, Thrift binary,
  Java ``writeUTF``, Erlang's term format);
- ``a0|L`` (msgpack fixstr), ``60|L``/``40|L`` (CBOR text/byte string, RFC 8949 §3.1), ``80|L`` (Ion's string
  and its VarUInt length), ``40|L-1`` (Smile's tiny ASCII);
- ``2L`` (Avro's zigzag varint length);
- a length then a type byte: msgpack ext8 ``c7 L T``, ext16 ``c8 LL T``, ext32 ``c9 LLLL T`` (any type ``T``),
  fixext ``d4``-``d8 T`` whose 1-16 bytes the string fills; BSON binary (``L`` as four little-endian bytes, then
  the subtype);
- ``L`` or ``L+1`` as four little-endian bytes (FlatBuffers, pickle's ``BINUNICODE``; BSON string, whose length
  counts its NUL), ``L`` as two (a little-endian ``uint16`` framing);
- the ASCII digits of ``L`` and ``:`` (bencode);
- CBOR's indefinite-length strings (RFC 8949 §3.2.3: ``7f`` or ``5f``, then definite chunks of either major type
  and any length form, empty ones too, then ``ff``) are joined first and the whole string compared: every CBOR
  decoder joins ``7f 68 "mining.s" 68 "ubscribe" ff`` into ``mining.subscribe`` (red team 4). So are ASN.1 BER's
  constructed strings (X.690 8.7.3, 8.23.6: ``2c 80 04 08 "mining.s" 04 08 "ubscribe" 00 00``, or a definite
  outer length; pieces ``04``/``0c``/``16`` with short or long lengths, empty or nested ones; red team 6), found
  from a constructed string tag and a length followed by a piece that may open a name (`_BER_HEAD`);
- a Cap'n Proto ``Text`` (NUL-ended, reached by a list pointer ``offset << 2 | 1``, ``(L + 1) << 3 | 2`` in one
  of the 64 words before it; the packed encoding is not read), and, for the names that count alone, a BSON
  element's key (a type byte, the name, a NUL: a document keyed by the method; red team 6).
- ``mining.`` names (not the others) also bare, right after a byte that text does not hold (a control other than
  tab and line ends, DEL, or a non-ASCII byte that does not end a UTF-8 character): whatever a custom framing
  writes before the name (a non-minimal protobuf varint, a little-endian length, an ext type, NUL padding),
  unless its last byte is text.

Names are compared in any case (``MINING.SUBSCRIBE``: a pool may lower what it reads), XMRig's words and keys as
written.

Why a string and not the bare token in any bytes: a bare ``mining.subscribe`` appears in every page, source file
and package that documents or implements Stratum (a sandbox reading a pool's docs or installing a library is not
mining), while a length prefix is how an RPC encoding writes a string that a peer will read as one. The text
encodings are left to `egress.detect.jsonrpc`. A prefix byte that is text (printable ASCII, or the end of a UTF-8
character) counts only in binary context (a control, or bytes that are no UTF-8, among the 16 before it: prose
in any language is text). Text
never holds a ``ff`` byte (UTF-8 does not use it), so CBOR's chunked strings are looked for only where one
came. Checked for false positives (bench/binrpc_fp.py, red team 3's check grown): 0 hits over
1,649 MB of shared libraries, executables and a venv's packages (/usr/lib/x86_64-linux-gnu, /usr/bin, .venv/lib)
and 1,144 MB of /usr/share, Python's standard library and /usr/libexec, cut to 16 KiB flows; none in the corpora
(tests/test_corpus.py). None of those files names a mining method at all: what the bare name does match is an
uncompressed executable of mining software (``\0mining.subscribe\0`` in its string table), as uncompressed
Python bytecode of mining code matched before.

Names (each one is the method of a call or of a pool's notification; the same sets as the JSON detectors):

- alone: ``mining.`` + a Stratum method (`egress.detect.stratum`), ``eth_submitLogin``/``eth_getWork``/
  ``eth_submitWork``/``eth_submitHashrate`` (`egress.detect.ethstratum`), ``getblocktemplate``/``getwork``/
  ``get_block_template``/``submitblock``/``submit_block`` (`egress.detect.getwork`);
- XMRig's short words (``login``, ``submit``, ``job``, ``keepalived``) are common in benign RPC, so they count
  only with the keys that `egress.detect.cryptonote` requires of the call, each a string too (never bare), within
  the same direction: ``login`` with ``pass`` and ``agent``, ``submit`` and ``job`` with ``job_id`` (plus
  ``nonce`` and ``result``, or ``blob`` and ``target``); ``keepalived`` with ``job_id`` anywhere in the flow.

Incremental: each direction is searched from where the last prefix's search stopped (minus the longest name and
its padding, so a name cut by the prefix's end is found whole next time), with a few ``bytes.find`` calls per
anchor on a lowered copy of the new bytes; CBOR's chunked strings back from each new ``ff`` (the byte that ends
one, which text never holds); BER constructed strings only where a piece holding a letter follows, walking again
only the heads a shorter prefix could not settle (`_BerRead`). A flow whose both directions
`egress.detect.jsonrpc` rules out (a whole TLS hello, an SSH banner) is ruled out here too: its later bytes are
encrypted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from egress.detect import binfast, jsonrpc
from egress.detect.base import MORE, Category, Finding, FlowView, Result, evidence

NAME: Final = "binrpc"
PROTOCOL: Final = "binary-rpc-stratum"

_STRATUM: Final = tuple(
    b"mining." + name
    for name in (
        b"subscribe", b"authorize", b"submit", b"notify", b"set_difficulty", b"set_target", b"set_extranonce",
        b"extranonce.subscribe", b"configure", b"suggest_difficulty", b"suggest_target", b"get_transactions",
        b"multi_version", b"set_version_mask", b"ping", b"hello", b"noop",
    )
)  # fmt: skip
"""Stratum's methods (slushpool's and braiins' v1 docs, BIP 310, NiceHash's extensions): the ``mining.`` anchor
is searched, then each of these at it (a name is followed by the next value's prefix, which may be a letter)."""
_ALONE: Final = (b"eth_submitLogin", b"eth_getWork", b"eth_submitWork", b"eth_submitHashrate")
_ALONE_LOWER: Final = (b"getblocktemplate", b"get_block_template", b"submitblock", b"submit_block", b"getwork")
_XMRIG: Final[dict[bytes, tuple[tuple[bytes, ...], ...]]] = {
    b"login": ((b"pass", b"agent"),),
    b"submit": ((b"job_id", b"nonce", b"result"),),
    b"job": ((b"job_id", b"blob", b"target"),),
}
NAMES: Final = frozenset(name.lower() for name in (*_STRATUM, *_ALONE, *_ALONE_LOWER))
"""Every name that counts alone, lowered: what a joined CBOR string is compared with."""
_LOWERED: Final = tuple(word.lower() for word in (*_ALONE, *_ALONE_LOWER))
_WORDS: Final = frozenset({b"keepalived", *_XMRIG, *(key for sets in _XMRIG.values() for keys in sets for key in keys)})
"""XMRig's words and keys: a joined CBOR string that is one of them is kept for `_xmrig`."""
_BINARY: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff]")
"""A control other than tab and line ends, DEL, or a non-ASCII byte."""
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""A control other than tab and line ends, or DEL: a byte that no text holds."""
_OVERLAP: Final = 48
"""Bytes re-searched before the last stop: more than the longest name and its trailing padding."""
_PADS: Final = 16
"""Padding bytes (NUL or space) read on either side of a name at most: a fixext16 holds a 7-byte name and 9."""
_CHUNKED: Final = re.compile(
    rb"[\x5f\x7f](?=[\x40\x60]|[\x41-\x57\x61-\x77][\w.\x00 ]|[\x58\x78][\x00-\x40]"
    rb"|[\x59\x79]\x00|[\x5a\x7a]\x00{3}|[\x5b\x7b]\x00{7})"
)
"""Where a CBOR indefinite-length string that may join to a name starts: its ``5f``/``7f`` head, then an empty
chunk, a chunk opening with a name's byte, or a longer length form of at most `_JOINED_MAX` bytes."""
_RUN_BYTES: Final = bytes([*range(0x7C), 0x7F])
"""The bytes a chunked name is made of: heads, lengths up to `_JOINED_MAX`, a name's bytes, padding (the ``ff``
that ends the string is not one of them)."""
_BEFORE_BREAK: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_. \x00\x40\x60")
"""What precedes the ``ff`` that ends a chunked name: its last byte, a pad, an empty chunk (``40``, ``60``, or
a longer form's zero length)."""
_NAMEISH: Final = re.compile(rb"[\w.\x00 ]*")
"""What a chunk of a name holds: a name's bytes and padding (a chunk with any other byte joins to no name)."""
_EMPTY: Final = re.compile(rb"(?:[\x40\x60]|[\x58\x78]\x00|[\x59\x79]\x00\x00|[\x5a\x7a]\x00{4}|[\x5b\x7b]\x00{8})*")
"""A run of empty chunks, skipped at C speed (a string may hold thousands of them)."""
_JOINED_MAX: Final = 64
"""Content bytes of a chunked string read at most: a longer one is no name (and the walk stays short)."""
_BER_HEAD: Final = re.compile(
    rb"[\x24\x2c\x32-\x36\x39-\x3c\xa0-\xbf](?=(?:\x80|[\x04-\x7f]|\x81[\x04-\xff]|\x82[\x00-\x01][\x00-\xff])"
    rb"(?:[\x04\x0c\x16](?:\x00|\x81\x00|(?:\x81)?[\x01-\x40][mMeEgGsS\x00 ])"
    rb"|[\x24\x2c\x36](?:\x80|[\x02-\x7f]|\x81[\x02-\xff])[\x04\x0c\x16\x24\x2c\x36]))",
    re.DOTALL,
)
"""Where an ASN.1 BER constructed string may start (X.690 8.7.3, 8.23.6): a string tag with the constructed bit
(OCTET STRING ``24``, UTF8String ``2c``, the restricted strings ``32``-``36``/``39``-``3c``) or a context tag
``a0``-``bf`` (an implicitly tagged string), a length (``80`` indefinite, short, ``81 L``, ``82 LL``), then an
empty piece, a piece opening with a name's first byte (every name starts with ``m``, ``e``, ``g`` or ``s``) or a
pad, or a nested constructed piece: the few heads that may join to a name are walked."""
_BER_PIECE_TAGS: Final = (b"\x04", b"\x0c", b"\x16")
_BER_LETTERED: Final = tuple(
    (tag, re.compile(re.escape(tag) + rb"(?:[\x01-\x40]|\x81[\x01-\x40]|\x82\x00[\x01-\x40])[\x00 .0-9_]*[A-Za-z]"))
    for tag in _BER_PIECE_TAGS
)
"""A primitive piece (`_BER_PIECES`) of 1 to `_JOINED_MAX` bytes, in any length form, whose bytes as far as its
first letter are a name's (`_NAMEISH`), one pattern per tag: every name and word holds a letter, so a string that
joins to one has such a piece. Where none is, no head is looked for (in the loop's binary bytes 1 head in 30,000
bytes, where `_BER_HEAD`'s first byte is 1 in 5 and `sre` tries each). A pattern per tag starts with a literal
byte, which `sre` scans for as ``bytes.find`` does; one pattern for the three tags would call its charset test
at every byte (a quarter more instructions)."""
_BER_HEAD_SPAN: Final = 8
"""Bytes `_BER_HEAD` reads at a head (the tag, a length of up to 3 bytes, a piece's tag, length and first byte,
or a nested tag, length and tag): a head that many bytes before a prefix's end was told for good."""
_BER_PIECES: Final = frozenset((0x04, 0x0C, 0x16))
"""A primitive piece: OCTET STRING (what X.690 requires), UTF8String, IA5String (what lenient decoders join)."""
_BER_NESTED: Final = frozenset((0x24, 0x2C, 0x36))
"""A constructed piece (its own pieces joined in place)."""
_BER_EMPTY: Final = re.compile(rb"(?:[\x04\x0c\x16](?:\x00|\x81\x00|\x82\x00\x00))*")
"""A run of empty primitive pieces, skipped at C speed."""
_BER_SPAN: Final = 512
"""Encoded bytes of a constructed string read at most (its heads, pieces and ends): a longer one is no name; new
bytes are searched for heads from this far back, so a string cut by a prefix's end is read whole next time."""
_BER_DEPTH: Final = 4
"""Constructed pieces nested at most."""
_BSON_TYPES: Final = frozenset(b"\x01\x02\x03\x04\x05\x07\x08\x09\x0a\x10\x11\x12\x13")
"""BSON element types that key a document's value (the deprecated ones left out: ``0f``, code with scope, is a
length byte of a 15-byte string too)."""
_CBOR_MEMO: Final[list[tuple[bytes, frozenset[int]]]] = [(b"", frozenset())]
"""`_cbor_reached`'s last answer with the bytes it read, swapped as one item (threads of the gateway share it)."""
_CAPNP_BACK: Final = 64
"""Words before a Cap'n Proto Text searched for the list pointer that reaches it."""


def _pads(data: bytes, at: int, step: int) -> int:
    """How many NUL or space bytes (at most `_PADS`) run from ``at`` (forwards) or before it (``step`` -1)."""
    count, index = 0, at if step > 0 else at - 1
    while count < _PADS and 0 <= index < len(data) and data[index] in (0, 0x20):
        count += 1
        index += step
    return count


def _bare(data: bytes, at: int) -> bool:
    """Whether the byte before ``at`` is one that text does not hold: a control other than tab and line ends,
    DEL, or a non-ASCII byte that does not end a UTF-8 character (prose in Chinese writes a name right after its
    own letters)."""
    if at < 1:
        return False
    byte = data[at - 1]
    if byte < 0x80:
        return (byte < 0x20 and byte not in (9, 10, 13)) or byte == 0x7F
    for width in (2, 3, 4):
        if at >= width:
            try:
                data[at - width : at].decode()
            except UnicodeDecodeError:
                continue
            return False
    return True


def _binary_context(data: bytes, begin: int) -> bool:
    """Whether the prefix byte before ``begin`` and the 16 before it hold one that text does not: a control other
    than tab and line ends, DEL, or non-ASCII bytes that are no UTF-8 (prose in French or Chinese is text)."""
    window = data[max(begin - 17, 0) : begin]
    if _CONTROL.search(window) is not None:
        return True
    if _BINARY.search(window) is None:
        return False
    for skip in range(4):  # the window may begin inside a character
        try:
            window[skip:].decode()
        except UnicodeDecodeError:
            continue
        return False
    return True


def _one_byte(byte: int, low: int, high: int) -> bool:
    """Whether ``byte`` gives a length from ``low`` to ``high`` in one of the one-byte forms."""
    five = byte & 0x1F
    return (
        low <= byte <= high
        or (not byte & 1 and low <= byte >> 1 <= high)
        or (byte & 0xE0 == 0xA0 and low <= five <= high)
        or (byte & 0xC0 == 0x40 and five < 24 and low <= five <= high)
        or (byte & 0xE0 == 0x40 and low <= five + 1 <= high)
        or (byte >= 0x80 and low <= byte & 0x7F <= high)
    )


def _prefixed(data: bytes, begin: int, low: int, high: int) -> bool:
    """Whether a string of ``low`` to ``high`` bytes that starts at ``begin`` follows a length prefix.

    bencode's is text itself. Any other prefix whose last byte is text (printable ASCII, or the end of a UTF-8
    character: msgpack's ``a0|L``, Ion's ``80|L`` and a fixext's ``d8 T`` are such bytes of Chinese, Arabic...)
    counts only in binary context."""
    if begin < 1:
        return False
    if any(data.endswith(b"%d:" % size, 0, begin) for size in range(low, high + 1)):
        return True
    byte = data[begin - 1]
    if (0x20 <= byte < 0x7F or (byte >= 0x80 and not _bare(data, begin))) and not _binary_context(data, begin):
        return _cbor_string(data, begin, low, high)
    return _one_byte(byte, low, high) or _typed(data, begin, low, high)


def _cbor_item(data: bytes, at: int) -> int:
    """Where the CBOR item head at ``at`` and its content end (RFC 8949 §3): a string's bytes are skipped, an array,
    map or tag head is one item and what it holds the next ones; -1 where no item starts."""
    byte = data[at]
    major, info = byte >> 5, byte & 0x1F
    if info < 24:
        return at + 1 + (info if major in (2, 3) else 0)
    if info == 31:
        return at + 1 if major in (2, 3, 4, 5, 7) else -1  # an indefinite length, or the break
    if info > 27:
        return -1
    width = 1 << (info - 24)
    size = int.from_bytes(data[at + 1 : at + 1 + width]) if major in (2, 3) else 0
    return at + 1 + width + size


def _cbor_reached(data: bytes) -> frozenset[int]:
    """Where CBOR items start when they are read one after another from any byte that no text holds (kept for
    the last ``data``: the detector asks it for each candidate of a prefix)."""
    last = _CBOR_MEMO[0]
    if last[0] is data:
        return last[1]
    reached: set[int] = set()
    size = len(data)
    for found in _BINARY.finditer(data):
        at = found.start()
        while 0 <= at < size and at not in reached:
            reached.add(at)
            at = _cbor_item(data, at)
        if at >= size:
            reached.add(at)
    answer = frozenset(reached)
    _CBOR_MEMO[0] = (data, answer)
    return answer


def _cbor_string(data: bytes, begin: int, low: int, high: int) -> bool:
    """Whether a CBOR string of ``low`` to ``high`` bytes starts at ``begin``, its head among the items read from a
    byte that no text holds (`_cbor_reached`). CBOR writes a text string's head as a letter (``60|L``, or ``78``
    and the length), so a name or key after a text value (Stratum's ``method`` after a 20-byte agent string, XMRig's
    ``pass`` after the wallet) had only text in the 16 bytes before it and was not taken for a string: XMRig's
    login and Stratum's subscribe so ordered in CBOR were named by no detector (stop 32)."""
    for width, info in ((0, range(24)), (1, (24,)), (2, (25,)), (4, (26,))):
        head = begin - 1 - width
        if head < 0 or data[head] & 0xC0 != 0x40 or data[head] & 0x1F not in info:
            continue
        if low <= _cbor_item(data, head) - begin <= high and head in _cbor_reached(data):
            return True
    return False


def _typed(data: bytes, begin: int, low: int, high: int) -> bool:
    """Whether the bytes before ``begin`` are a length of ``low`` to ``high`` then a type byte, or a length of more
    than one byte whose last byte is not the length's low byte."""
    if begin >= 2:
        kind = data[begin - 2]
        if 0xD4 <= kind <= 0xD8 and low <= 1 << (kind - 0xD4) <= high:  # msgpack fixext: the string fills it
            return True
        if begin >= 3 and data[begin - 3] == 0xC7 and low <= kind <= high:  # msgpack ext8, type byte last
            return True
        if low <= int.from_bytes(data[begin - 2 : begin], "little") <= high:
            return True
    if begin >= 4:
        if data[begin - 4] == 0xC8 and low <= int.from_bytes(data[begin - 3 : begin - 1]) <= high:  # ext16
            return True
        if low <= int.from_bytes(data[begin - 4 : begin], "little") <= high + 1:  # BSON string counts its NUL
            return True
    if begin >= 5 and low <= int.from_bytes(data[begin - 5 : begin - 1], "little") <= high:  # BSON binary
        return True
    return begin >= 6 and data[begin - 6] == 0xC9 and low <= int.from_bytes(data[begin - 5 : begin - 1]) <= high


def length_prefixed(data: bytes, at: int, size: int, bare: bool = False) -> bool:
    """Whether the ``size`` bytes at ``at`` are a string (alone, or with NUL/space padding around) of one of the
    encodings above; with ``bare``, also right after a byte that text does not hold.

    A prefix byte that is text (CBOR's ``60|L`` is a letter, Avro's ``2L`` may be a space or a quote, msgpack's
    ``a0|L`` may end a Chinese character) counts only in binary context: a control byte, or non-ASCII bytes that
    are no UTF-8, among the 16 before it (``« mining.subscribe`` in French prose: Avro's space before a 16-byte
    name, after a UTF-8 guillemet). Text
    that merely names a method (``" mining.subscribe"``, ``"pmining.subscribe"`` in prose) is not a
    length-prefixed string."""
    if bare and _bare(data, at):
        return True
    end = at + size
    trail = _pads(data, end, 1)
    lead = _pads(data, at, -1)
    if any(_prefixed(data, begin, end - begin, end - begin + trail) for begin in range(at, at - lead - 1, -1)):
        return True
    return _capnp(data, at, size)


def find_prefixed(data: bytes, word: bytes, start: int = 0) -> int:
    """Offset of the first length-prefixed ``word`` (whole: the prefix gives its length) at or after ``start``."""
    at = data.find(word, start)
    while at >= 0:
        if length_prefixed(data, at, len(word)):
            return at
        at = data.find(word, at + 1)
    return -1


def _named(data: bytes, start: int, lowered: bytes) -> tuple[int, int]:
    """(offset, length) of the first mining name that counts alone, in any case, searched from ``start`` in
    ``lowered`` (the bytes from there, lowered; prefixes are read in the bytes themselves); (-1, 0) if none."""
    found = (-1, 0)
    at = lowered.find(b"mining.")
    while at >= 0:
        for name in _STRATUM:
            if lowered.startswith(name, at) and length_prefixed(data, start + at, len(name), bare=True):
                found = (at, len(name))
                break
        if found[0] >= 0:
            break
        at = lowered.find(b"mining.", at + 1)
    for word in _LOWERED:
        at = lowered.find(word, 0, found[0] if found[0] >= 0 else len(lowered))
        while at >= 0 and not (length_prefixed(data, start + at, len(word)) or _bson_key(data, start + at, len(word))):
            at = lowered.find(word, at + 1, found[0] if found[0] >= 0 else len(lowered))
        if at >= 0:
            found = (at, len(word))
    return (start + found[0], found[1]) if found[0] >= 0 else found


def _join(data: bytes, at: int) -> tuple[int, bytes]:
    """The CBOR indefinite-length string whose head is at ``at``: (where it ends, its chunks joined), or (-1, b"")
    when it is none, or holds more than `_JOINED_MAX` bytes or a byte that no name holds."""
    pos, total, size = at + 1, 0, 0
    parts: list[bytes] = []
    while True:
        match = _EMPTY.match(data, pos)
        pos = match.end() if match else pos
        if pos >= len(data):
            return -1, b""
        head = data[pos]
        if head == 0xFF:
            return pos + 1, b"".join(parts)
        five = head & 0x1F
        if head & 0xC0 != 0x40 or five > 27:  # a text or byte string chunk (either: a lenient decoder joins both)
            return -1, b""
        if five < 24:
            size, pos = five, pos + 1
        else:
            width = 1 << (five - 24)
            size, pos = int.from_bytes(data[pos + 1 : pos + 1 + width]), pos + 1 + width
        total += size
        if total > _JOINED_MAX or pos + size > len(data) or _NAMEISH.fullmatch(data, pos, pos + size) is None:
            return -1, b""
        parts.append(data[pos : pos + size])
        pos += size


def _ber_length(data: bytes, pos: int, short: list[int]) -> tuple[int, int] | None:
    """The BER length at ``pos``: (the length, or -1 for the indefinite form; where the contents start), or None
    (cut, or longer than `_BER_SPAN`). A length cut by the end of ``data`` appends to ``short``."""
    if pos >= len(data):
        short.append(pos)
        return None
    first = data[pos]
    if first == 0x80:
        return -1, pos + 1
    if first < 0x80:
        return first, pos + 1
    width = first & 0x7F
    if width > 2:
        return None
    if pos + 1 + width > len(data):
        short.append(pos)
        return None
    size = int.from_bytes(data[pos + 1 : pos + 1 + width])
    return (size, pos + 1 + width) if size <= _BER_SPAN else None


def _ber(data: bytes, at: int, parts: list[bytes], short: list[int], depth: int = 0) -> int:
    """Join the pieces of the BER constructed string whose tag is at ``at`` into ``parts``: where it ends, or -1
    when it is none (a piece of another kind, cut), spans more than `_BER_SPAN` bytes, holds more than
    `_JOINED_MAX` content bytes or a byte that no name holds.

    Where the answer may change once more bytes follow (a length, a piece or a run of empty pieces cut by the end
    of ``data``), the offset concerned is appended to ``short``: the walk is then not settled (`_constructed`)."""
    read = _ber_length(data, at + 1, short)
    if read is None:
        return -1
    size, pos = read
    end = pos + size if size >= 0 else -1
    while True:
        pos = _ber_empty(data, pos, short)
        if pos == end:
            return pos
        if pos - at > _BER_SPAN:
            return -1
        if pos + 2 > len(data):
            short.append(pos)
            return -1
        if 0 <= end < pos:
            return -1
        if end < 0 and data[pos] == 0 and data[pos + 1] == 0:
            return pos + 2
        tag = data[pos]
        if tag in _BER_NESTED and depth < _BER_DEPTH:
            pos = _ber(data, pos, parts, short, depth + 1)
            if pos < 0:
                return -1
            continue
        if tag not in _BER_PIECES:
            return -1
        pos = _ber_piece(data, pos, parts, short)
        if pos < 0:
            return -1


def _ber_empty(data: bytes, pos: int, short: list[int]) -> int:
    """Where the run of empty primitive pieces at ``pos`` ends (`_ber`); a run that more bytes may lengthen (a tag
    among the last 4 bytes: ``04 82 00 00`` is the longest empty piece) appends to ``short``."""
    match = _BER_EMPTY.match(data, pos)
    pos = match.end() if match else pos
    if pos + 3 >= len(data) and (pos >= len(data) or data[pos] in _BER_PIECES):
        short.append(pos)
    return pos


def _ber_piece(data: bytes, at: int, parts: list[bytes], short: list[int]) -> int:
    """Add the primitive piece at ``at`` to ``parts``: where it ends, or -1 (`_ber`)."""
    read = _ber_length(data, at + 1, short)
    if read is None or read[0] < 0:
        return -1
    size, pos = read
    if sum(map(len, parts)) + size > _JOINED_MAX:
        return -1
    if pos + size > len(data):
        short.append(pos)
        return -1
    if _NAMEISH.fullmatch(data, pos, pos + size) is None:
        return -1
    parts.append(data[pos : pos + size])
    return pos + size


def _constructed(
    data: bytes, start: int, words: dict[bytes, tuple[int, int]], read: _BerRead | None = None
) -> tuple[int, int]:
    """The first ASN.1 BER constructed string from ``start`` whose joined pieces are a name that counts alone:
    (offset, end), or (-1, 0). XMRig's words and keys met on the way are added to ``words``.

    X.690 lets a string be sent in pieces (``2c 80 04 08 "mining.s" 04 08 "ubscribe" 00 00``, or a definite
    outer length; pyasn1's ``maxChunkSize``; CER for every string over 1,000 bytes): every BER decoder joins
    them (red team 6). Heads are found by one regular expression (a constructed string tag, a length, a piece's
    tag); each is walked at most `_BER_SPAN` bytes. Bytes without a piece's tag (``04``, ``0c``, ``16``: controls
    that text does not hold) are passed by three ``bytes.find`` calls, bytes without a piece holding a letter
    (`_BER_LETTERED`) by three searches.

    ``read``: what the same search over a shorter prefix of ``data`` settled (`_BerRead`); given, only the heads
    whose answer may have changed are walked (those the regular expression could not yet tell at the end of the
    prefix, and those whose walk met its end), with the same answer and ``words`` as walking all from ``start``
    (tests/detect/test_binrpc_shortcuts.py holds the two equal on generated and corpus flows)."""
    scan = start if read is None else max(read.scan, start)
    pending = [] if read is None else [head for head in read.pending if start <= head < scan]
    first = pending[0] if pending else scan
    if not _lettered(data, first):
        return -1, 0  # no piece with a letter: no head joins to a name or a word (and `read` stays as it was)
    unsettled: list[int] = []
    heads = [*pending, *_ber_heads(data, scan)]
    found = _walk_heads(data, heads, words, unsettled)
    if read is not None:
        read.pending = unsettled
        read.scan = max(scan, len(data) - _BER_HEAD_SPAN)
    return found


def _lettered(data: bytes, first: int) -> bool:
    """Whether ``data`` holds a piece with a letter (`_BER_LETTERED`) at or after ``first``: three ``bytes.find``
    calls where none of the tags is (text), a search from the first of each tag where one is."""
    for tag, pattern in _BER_LETTERED:
        at = data.find(tag, first)
        if at >= 0 and pattern.search(data, at) is not None:
            return True
    return False


def pure_ber_heads(data: bytes, start: int) -> list[int]:
    """Where `_BER_HEAD` matches in ``data`` from ``start`` on (`_constructed`'s heads to walk)."""
    return [match.start() for match in _BER_HEAD.finditer(data, start)]


def pure_breaks(data: bytes, start: int) -> list[int]:
    """The ``ff`` bytes from ``start`` on that may end a chunked name (`_chunked`): at offset 5 or more, after a
    byte of `_BEFORE_BREAK`, with five bytes of `_RUN_BYTES` before it."""
    found = []
    end = data.find(b"\xff", start)
    while end >= 0:
        if end >= 5 and data[end - 1] in _BEFORE_BREAK and not data[end - 5 : end].translate(None, _RUN_BYTES):
            found.append(end)
        end = data.find(b"\xff", end + 1)
    return found


def pure_anchored(data: bytes, start: int) -> bool:
    """Whether ``data[start:]`` holds one of `_ANCHORS` in any case (`bytes.lower`: A-Z)."""
    lowered = data[start:].lower()
    return any(lowered.find(anchor) >= 0 for anchor in _ANCHORS)


_ber_heads: Callable[[bytes, int], list[int]] = pure_ber_heads
"""`pure_ber_heads`, compiled where _binfast.c was built (`egress.detect.binfast`, `use_compiled`)."""
_breaks: Callable[[bytes, int], list[int]] = pure_breaks
"""`pure_breaks`, compiled likewise."""
_anchored: Callable[[bytes, int], bool] = pure_anchored
"""`pure_anchored`, compiled likewise."""


def use_compiled(compiled: bool) -> None:
    """Run _binfast.c's searches where built (True) or their pure twins (False): the same answers either way; the
    scanner's ``EGRESS_SCAN_PURE=1`` asks for the twins (`egress.scanner.Scanner`)."""
    global _ber_heads, _breaks, _anchored  # noqa: PLW0603 -- looked up at each call: one switch for the three
    module = binfast.COMPILED if compiled else None
    _ber_heads = module.ber_heads if module is not None else pure_ber_heads
    _breaks = module.breaks if module is not None else pure_breaks
    _anchored = module.anchored if module is not None else pure_anchored


use_compiled(True)


def _walk_heads(
    data: bytes, heads: list[int], words: dict[bytes, tuple[int, int]], unsettled: list[int]
) -> tuple[int, int]:
    """Walk the constructed strings at ``heads`` in order (`_constructed`): the first that joins to a name that
    counts alone, (offset, end), or (-1, 0); XMRig's words go to ``words``, the heads whose walk met the end of
    ``data`` to ``unsettled``."""
    for at in heads:
        parts: list[bytes] = []
        short: list[int] = []
        stop = _ber(data, at, parts, short)
        if short:
            unsettled.append(at)
        if stop < 0 or len(parts) < 2:  # one piece: a length-prefixed string, read as one
            continue
        text = b"".join(parts).strip(b"\x00 ")
        if text.lower() in NAMES:
            return at, stop
        if text in _WORDS:
            words.setdefault(text, (at, stop))
    return -1, 0


@dataclass(slots=True)
class _BerRead:
    """What `_constructed` settled over a prefix of one direction: heads from ``scan`` on are still to be found
    (the regular expression may match there once more bytes follow), and ``pending`` are the heads before it whose
    walk met the end of the prefix (a pure function of the prefix's bytes)."""

    scan: int = 0
    pending: list[int] = field(default_factory=list)


def _bson_key(data: bytes, at: int, size: int) -> bool:
    """Whether the ``size`` bytes at ``at`` are a BSON element's key: a type byte before, a NUL after (a document
    keyed by the method, ``{"getblocktemplate": {...}}``)."""
    return at >= 1 and data[at - 1] in _BSON_TYPES and data[at + size : at + size + 1] == b"\x00"


def _capnp(data: bytes, at: int, size: int) -> bool:
    """Whether the ``size`` bytes at ``at`` (and padding) are a Cap'n Proto ``Text``: NUL-ended, reached by a list
    pointer of bytes (low word ``offset << 2 | 1``, high word ``(length + 1) << 3 | 2``) in one of the
    `_CAPNP_BACK` words before it (capnproto.org/encoding.html). The packed encoding is not read."""
    trail = _pads(data, at + size, 1)
    if not trail or data[at + size] != 0:
        return False
    for word in range(_CAPNP_BACK):
        pointer = at - 8 * (word + 1)
        if pointer < 0:
            return False
        low = int.from_bytes(data[pointer : pointer + 4], "little")
        high = int.from_bytes(data[pointer + 4 : pointer + 8], "little")
        if low & 3 == 1 and low >> 2 == word and high & 7 == 2 and size < high >> 3 <= size + trail:
            return True
    return False


def _run_start(data: bytes, end: int) -> int:
    """Where the run of `_RUN_BYTES` that ends at ``end`` starts (a window at a time: runs are short in binary
    bytes, and each ``ff`` ends its own)."""
    low = end
    while low > 0:
        window = max(low - 64, 0)
        kept = len(data[window:low].rstrip(_RUN_BYTES))
        if kept:
            return window + kept
        low = window
    return 0


def _heads(data: bytes, begin: int, end: int) -> list[int]:
    """Offsets of the ``5f``/``7f`` bytes from ``begin`` to ``end`` that `_CHUNKED` accepts, in order."""
    found = []
    for head in (b"\x5f", b"\x7f"):
        at = data.find(head, begin, end)
        while at >= 0:
            if _CHUNKED.match(data, at) is not None:
                found.append(at)
            at = data.find(head, at + 1, end)
    return sorted(found)


def _chunked(data: bytes, start: int, words: dict[bytes, tuple[int, int]]) -> tuple[int, int]:
    """The first CBOR indefinite-length string that a ``ff`` at or after ``start`` ends whose joined chunks are a
    name that counts alone: (offset, end), or (-1, 0). XMRig's words and keys met on the way are added to
    ``words`` (the first of each).

    A string ends at a ``ff`` (its break) after a name's byte, a pad or an empty chunk, and lies in the run of
    `_RUN_BYTES` before it, 5 bytes at least (``7f 63 "job" ff``; a random ``ff`` has such a run 1 time in 100):
    that run alone is searched for heads, back from each such ``ff`` (linear: each ``ff`` ends its own run; an
    ELF string table's ``_init`` or text's ``_a`` is not walked)."""
    for end in _breaks(data, start):
        for at in _heads(data, _run_start(data, end), end):
            stop, joined = _join(data, at)
            if stop == end + 1:
                text = joined.strip(b"\x00 ")
                if text.lower() in NAMES:
                    return at, stop
                if text in _WORDS:
                    words.setdefault(text, (at, stop))
    return -1, 0


def _located(data: bytes, word: bytes, words: dict[bytes, tuple[int, int]]) -> tuple[int, int]:
    """(offset, length) of ``word`` as a length-prefixed string of ``data`` or a joined CBOR string; (-1, 0)."""
    at = find_prefixed(data, word)
    if at >= 0:
        return at, len(word)
    if word in words:
        begin, end = words[word]
        return begin, end - begin
    return -1, 0


def _xmrig(
    data: bytes, words: dict[bytes, tuple[int, int]], others: tuple[bytes, dict[bytes, tuple[int, int]]]
) -> tuple[int, int]:
    """(offset, length) of an XMRig call whose keys are all present (as strings) in ``data``; (-1, 0) if none.
    ``others``: the other direction's bytes and joined words (``keepalived``'s job may come from there)."""
    for word, key_sets in _XMRIG.items():
        at, size = _located(data, word, words)
        if at >= 0 and any(all(_located(data, key, words)[0] >= 0 for key in keys) for keys in key_sets):
            return at, size
    at, size = _located(data, b"keepalived", words)
    if at >= 0 and (_located(data, b"job_id", words)[0] >= 0 or _located(others[0], b"job_id", others[1])[0] >= 0):
        return at, size
    return -1, 0


_ANCHORS: Final = (b"mining.", b"eth_", b"block", b"getwork")
"""Substrings of every name that counts alone (``block``: the block-template and submit-block calls), searched
in the new bytes first: a few ``bytes.find`` calls per prefix, the names themselves only where one is found (one
regular expression of the four costs 2.3 times their instructions: `sre` tries it at every ``e``)."""


@dataclass(slots=True)
class _Searched:
    """How far each direction was searched (a pure function of its bytes)."""

    upto: list[int] = field(default_factory=lambda: [0, 0])
    words: tuple[dict[bytes, tuple[int, int]], ...] = field(default_factory=lambda: ({}, {}))
    """XMRig's words and keys met as joined CBOR strings, per direction: (offset, end) of the first of each."""
    ber: tuple[_BerRead, _BerRead] = field(default_factory=lambda: (_BerRead(), _BerRead()))
    """What `_constructed` settled per direction."""
    xmrig: bool = False
    """Whether the flow holds an XMRig anchor: only then are XMRig's calls looked for, at each new prefix."""
    found: bool = False
    """A name was found: a longer prefix is searched whole again, as a fresh view of its bytes is (the first name
    of the client's side, then the server's, may then be another than the one found first)."""


def _searched(view: FlowView) -> _Searched:
    memo = view.memo.get(__name__)
    if not isinstance(memo, _Searched):
        memo = view.memo[__name__] = _Searched()
    return memo


def _finding(data: bytes, at: int, size: int, before: int = 8) -> Finding:
    """The name at ``at`` and the ``before`` bytes before it: what every prefix holding the name holds (the
    evidence does not depend on where the flow's segments were cut)."""
    return Finding(Category.MINING, PROTOCOL, NAME, evidence(data[max(at - before, 0) : at + size]))


def _side(memo: _Searched, index: int, data: bytes) -> Finding | None:
    """Search one direction's new bytes: names (in a lowered copy), then CBOR's chunked strings."""
    new = memo.upto[index]
    start = max(new - _OVERLAP, 0)
    memo.upto[index] = len(data)
    if _anchored(data, start):  # the names only where an anchor is: the lowered copy only there (scan22)
        at, size = _named(data, start, data[start:].lower())
        if at >= 0:
            return _finding(data, at, size)
    at, end = _chunked(data, new, memo.words[index])  # each new ``ff``: text never holds one
    if at < 0:
        at, end = _constructed(data, max(new - _BER_SPAN, 0), memo.words[index], memo.ber[index])
    if at >= 0:
        return _finding(data, at, end - at, 0)
    if not memo.xmrig:
        words = memo.words[index]
        memo.xmrig = data.find(b"job_id", start) >= 0 or data.find(b"login", start) >= 0 or b"job_id" in words
        memo.xmrig = memo.xmrig or b"login" in words
    return None


def detect(view: FlowView) -> Result:
    """Find pool-protocol method names written as strings of a binary RPC encoding."""
    client = jsonrpc.read(view, True)
    server = jsonrpc.read(view, False)
    if client.kind is jsonrpc.Kind.NOT and server.kind is jsonrpc.Kind.NOT:
        return None
    memo = _searched(view)
    if memo.found:
        memo = _Searched(found=True)  # the engine asks no more after a finding; a caller that does gets a fresh read
    sides = (view.client[: jsonrpc.SCAN_LIMIT], view.server[: jsonrpc.SCAN_LIMIT])
    grown = False
    for index, data in enumerate(sides):
        if len(data) == memo.upto[index] or (client, server)[index].kind is jsonrpc.Kind.NOT:  # TLS or SSH
            continue
        grown = True
        if found := _side(memo, index, data):
            memo.found = True
            return found
    if grown and memo.xmrig:
        for index, data in enumerate(sides):
            at, size = _xmrig(data, memo.words[index], (sides[1 - index], memo.words[1 - index]))
            if at >= 0:
                memo.found = True
                return _finding(data, at, size)
    return None if view.complete else MORE
