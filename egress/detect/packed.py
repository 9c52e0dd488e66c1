"""Pool calls whose names are packed as 7-, 6- or 5-bit characters at any bit offset (red team 6, unaligned PER).

ASN.1 unaligned PER (X.691 §30.5, asn1tools' ``uper``) writes an unconstrained ``IA5String`` at 7 bits a
character with no octet alignment, so ``mining.subscribe`` crosses as 14 bytes holding none of its letters; a
string constrained to a permitted alphabet (``IA5String (FROM ("a".."z" | "." | "_"))``) is written at 5 or 6 bits
a character as its index in that alphabet (§30.5.4: ``b`` is the bits the alphabet's size needs). GSM's 7-bit
packing (3GPP TS 23.038) writes the same septets least significant bit first. None of the other readers sees a
name in such bytes; this one unpacks each direction at every bit offset and searches the characters:

- ``7``: 7-bit codes, most significant bit first (PER) and least significant bit first (GSM), the names as written
  (binrpc's: Stratum's ``mining.`` methods, the Ethereum and getwork methods, XMRig's words and keys);
- ``6``, ``5``: characters as indexes of an alphabet the attacker chose: any alphabet where the lowercase letters
  follow each other (every PER alphabet that holds ``a``..``z``, any ``char - base`` code, DEC's SIXBIT) keeps the
  differences between consecutive letters, so each long run of lowercase letters of a name (`RUN_BITS`:
  ``subscribe``, ``getblocktemplate``) is searched as its differences modulo ``2**b`` in the differences of the
  unpacked characters.

How: the bytes are shifted right by 0 to 7 bits (big-integer shifts, `shifts`); a character of any width and
offset ends a byte of one of those copies every ``b`` bytes, so each of the 8 characters of a block of ``b``
bytes is a strided slice masked by ``bytes.translate``, put in place by a strided slice assignment (`unpack`): a
few C passes per offset, no Python loop per byte. The 7-bit characters of every offset, joined, are reduced to a
class stream (a name's lowercase, ``.``, ``_``: 28 of 128 values) in which runs of 5 are found with
``bytes.find``, only those runs looked up among the names' 5-grams; the 5- and 6-bit differences of every offset,
joined, are searched with one ``bytes.find`` per letter run. A window of text is not searched (`_TEXT`).

When: a single short word at a random offset is found by chance (``login``, 35 bits, is in 1 MiB of random bytes
once in 4,000), so a hit counts for its *surprise*: its bits (7 a character for a 7-bit name, ``b`` per letter
difference) less `CHANCE_BITS`, the bits of offsets a flow may be searched at (two directions of `LIMIT` bytes,
8 bit offsets a byte: 2**20). Hits under `MIN_BITS` do not count (``job``, ``pass``, ``blob``: too likely), a
name found inside a longer name found is not counted again, and a flow is mining once the surprise of its
distinct names reaches `THRESHOLD` bits: one 7-bit Stratum method (``mining.submit``, 91 bits), or two long
5-bit runs (``subscribe`` and ``authorize``, 40 bits each), or an XMRig login with its job's keys. What that
costs in false positives is in docs/security.md ("Sixth round", closed by packed).

Incremental: each direction is searched from where the last prefix's search stopped, less `OVERLAP` bytes (more
than the longest name packed), at every offset again, and the names found are kept in the view's memo. The
server's bytes are searched (from their start) only once the client's hold a name: a pool's pushes add to a
client's calls, and a download alone costs nothing. A flow
both of whose directions `egress.detect.jsonrpc` rules out (a whole TLS hello, an SSH banner) is ruled out here
too: its bytes are ciphertext.

Compiled: egress/detect/_packed.c searches the same patterns at every bit offset in one pass a width (a table of
the bit shifts a name may start at, from the two bytes after each; each block of 8 characters from one 64-bit
load), loaded by `egress.detect.packedfast`; `_search_pure` below is its twin, run where it is not built or
``EGRESS_SCAN_PURE=1``, and tests/detect/test_packed_fast.py compares both on every input it has. A search that
raises (the C's MemoryError) is a finding: the flow is blocked, never let through unsearched.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Final

from egress.detect import binrpc, jsonrpc, packedfast
from egress.detect.base import MORE, Category, Finding, FlowView, Result, evidence

NAME: Final = "packed"
PROTOCOL: Final = "packed-chars-stratum"

LIMIT: Final = jsonrpc.SCAN_LIMIT
"""Bytes of each direction searched at most (binrpc's)."""
CHANCE_BITS: Final = 20
"""log2 of the bit offsets a flow is searched at: two directions of `LIMIT` (64 KiB) bytes, 8 offsets a byte.
A pattern of ``n`` bits is found by chance in random bytes about ``2 ** (CHANCE_BITS - n)`` times a flow."""
MIN_BITS: Final = 30
"""A hit of fewer bits does not count: a 4-letter 7-bit word (28 bits) is in a 64 KiB flow of random bytes 1
time in 256; a 30-bit one 1 time in 1,024, and counts for 10 bits of surprise."""
THRESHOLD: Final = 40
"""Surprise (bits beyond chance, summed over a flow's distinct names) that makes a finding."""
RUN_BITS: Final = 40
"""A letter run is searched in 6- and 5-bit differences only if it holds this many bits (8 letters at 6 bits, 9 at
5: ``subscribe``, ``authorize``, ``difficulty``, ``getblocktemplate``...): each run searched is one more pass
over the differences, and a shorter one adds at most 16 bits of surprise."""
OVERLAP: Final = 24
"""Bytes searched again before the last stop: more than the longest name packed (``mining.extranonce.subscribe``,
27 characters of 7 bits: 189 bits, under 24 bytes' 192 wherever it starts). A name not wholly in the bytes
searched before ends past the stop, so starts after the stop less 189 bits: inside the overlap."""
WIDTHS: Final = (7, 6, 5)

VOCABULARY: Final[tuple[bytes, ...]] = tuple(
    dict.fromkeys(
        (
            *binrpc._STRATUM,
            *binrpc._ALONE,
            *binrpc._ALONE_LOWER,
            *binrpc._XMRIG,
            *(key for sets in binrpc._XMRIG.values() for keys in sets for key in keys),
            b"keepalived",
        )
    )
)
"""binrpc's names: those that count alone and XMRig's words and keys (the same lists the JSON detectors use)."""

_CLASS_CHARS: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz._")
_CLASS: Final = bytes(1 if byte in _CLASS_CHARS else 0 for byte in range(256))
"""A 7-bit character's class: 1 for a name's lowercase letters, ``.`` and ``_``."""
_RUN: Final = b"\x01" * 5
_APART: Final = b"\x80"
"""Between the characters of two offsets searched as one stream: no character (they are under 128), class 0. In
differences it makes two values of no pattern's choosing: like two more offsets searched."""
_TEXT: Final = bytes([9, 10, 13, *range(0x20, 0x7F)])
"""Bytes of text: a window of nothing else is not searched. No name of the vocabulary packed in 7 bits, at any
bit offset, is text in every byte it fills whole but ``submit`` in GSM's order (its 22 bits of surprise make no
finding alone); a name packed in an alphabet the attacker chose may be (a text encoding: docs/security.md)."""
_BITREV: Final = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))
"""Each byte's bits reversed: GSM's least-significant-first septets, so reversed, read most significant first,
are the septets with their 7 bits reversed (`_BITREV_7` puts them back)."""
_BITREV_7: Final = bytes(int(f"{byte & 0x7F:07b}"[::-1], 2) for byte in range(256))
"""A septet's 7 bits reversed (GSM's, read after `_BITREV`, back to the character)."""


def _grams(words: Iterable[bytes]) -> dict[bytes, tuple[tuple[bytes, int], ...]]:
    """Every 5-gram of class characters of each 7-bit word: (the word, where the gram sits in it)."""
    index: dict[bytes, list[tuple[bytes, int]]] = {}
    for word in words:
        if len(word) * 7 < MIN_BITS:
            continue
        for at in range(len(word) - 4):
            gram = word[at : at + 5]
            if all(byte in _CLASS_CHARS for byte in gram):
                index.setdefault(gram, []).append((word, at))
    return {gram: tuple(where) for gram, where in index.items()}


_GRAMS: Final = _grams(VOCABULARY)


def _runs(word: bytes) -> list[bytes]:
    """The runs of lowercase letters of ``word``."""
    runs, current = [], bytearray()
    for byte in word:
        if 0x61 <= byte <= 0x7A:
            current.append(byte)
        else:
            runs.append(bytes(current))
            current.clear()
    runs.append(bytes(current))
    return [run for run in runs if run]


def _differences(width: int) -> dict[bytes, tuple[bytes, int]]:
    """The letter runs of the vocabulary that hold at least `RUN_BITS` bits as ``width``-bit differences: their
    differences modulo ``2 ** width`` → (the run, its bits)."""
    found: dict[bytes, tuple[bytes, int]] = {}
    for word in VOCABULARY:
        for run in _runs(word):
            bits = (len(run) - 1) * width
            if bits >= RUN_BITS:
                steps = bytes((later - earlier) % (1 << width) for earlier, later in itertools.pairwise(run))
                found[steps] = (run, bits)
    return found


_DIFFERENCES: Final = {width: _differences(width) for width in WIDTHS if width < 7}


_MASKS: Final = {width: bytes(byte & ((1 << width) - 1) for byte in range(256)) for width in WIDTHS}


def shifts(data: bytes) -> tuple[bytes, ...]:
    """``data`` (and a block of zero bytes after it, so that its last characters are read whole) shifted right
    by 0 to 7 bits: whatever a character's offset and width, it ends a byte of one of them (`unpack`)."""
    padded = data + bytes(8)
    value, size = int.from_bytes(padded), len(padded)
    return tuple((value >> shift).to_bytes(size) for shift in range(8))


def unpack(shifted: tuple[bytes, ...], width: int, offset: int) -> bytes:
    """The ``width``-bit characters read most significant bit first from bit ``offset`` (0 is the first byte's top
    bit) of the bytes `shifts` shifted, one a byte, in blocks of 8 (the last block's characters past the end are
    read in the padding: zero bits).

    Character ``k`` of every block ends at bit ``offset + (k + 1) * width`` of the block (blocks are ``width``
    bytes): in the copy shifted right by the bits that end lacks to a byte boundary it is the low bits of one byte
    every ``width`` bytes, taken by a strided slice and a mask (`_MASKS`), then put in place in the output by a
    strided slice assignment."""
    size = len(shifted[0]) - 8
    blocks = -((offset - 8 * size) // (8 * width))  # the last one may end in the padding
    out = bytearray(8 * blocks)
    mask = _MASKS[width]
    for k in range(8):
        end = offset + (k + 1) * width
        shift = -end % 8
        first = (end + shift) // 8 - 1
        out[k::8] = shifted[shift][first : first + blocks * width : width].translate(mask)
    return bytes(out)


def differences(chars: bytes, width: int) -> bytes:
    """Each character's difference from the one before it, modulo ``2 ** width`` (one fewer than ``chars``): the
    later characters plus ``2 ** width`` less the earlier (`_NEGATED`, no byte carries: each sum is under 128),
    masked."""
    size = len(chars) - 1
    if size < 1:
        return b""
    total = int.from_bytes(chars[1:]) + int.from_bytes(chars[:-1].translate(_NEGATED[width]))
    return total.to_bytes(size).translate(_MASKS[width])


_NEGATED: Final = {width: bytes(((1 << width) - byte) & 0xFF for byte in range(256)) for width in WIDTHS}
"""``2 ** width`` less a character (of ``width`` bits: 1 to ``2 ** width``)."""


def _septets(chars: bytes, found: dict[bytes, int]) -> None:
    """Add to ``found`` the 7-bit words in ``chars``: runs of 5 class characters found by ``bytes.find``, each
    position of a run looked up among the names' 5-grams."""
    classes = chars.translate(_CLASS)
    at = classes.find(_RUN)
    while at >= 0:
        end = classes.find(b"\x00", at)
        end = len(classes) if end < 0 else end
        for pos in range(at, end - 4):
            for word, where in _GRAMS.get(chars[pos : pos + 5], ()):
                if pos >= where and chars.startswith(word, pos - where):
                    found[word] = max(found.get(word, 0), 7 * len(word))
        at = classes.find(_RUN, end)


def search(data: bytes, compiled: ModuleType | None | bool = True) -> dict[bytes, int]:
    """The vocabulary's names (7-bit) and letter runs (6- and 5-bit differences) packed in ``data`` at any bit
    offset: name → its bits. Text (printable ASCII, tab, line ends) holds none: it is not searched (`_TEXT`).

    The compiled search (egress/detect/_packed.c, `packedfast`) runs where it is built, unless ``compiled`` is
    False or ``EGRESS_SCAN_PURE=1``; `_search_pure` is its twin (same answers)."""
    if len(data) < 3 or not data.translate(None, _TEXT):
        return {}
    module = packedfast.wanted() if compiled is True else compiled or None
    if module is None:
        return _search_pure(data)
    return _answer(module.search(data))


def _answer(masks: tuple[int, int, int]) -> dict[bytes, int]:
    """The compiled search's bit masks (`_COMPILED_WORDS`, then each width's `_COMPILED_RUNS`) as names → bits."""
    found: dict[bytes, int] = {}
    words, *widths = masks
    for index, word in enumerate(_COMPILED_WORDS):
        if words >> index & 1:
            found[word] = 7 * len(word)
    for mask, runs in zip(widths, _COMPILED_RUNS, strict=True):
        for index, (run, bits) in enumerate(runs):
            if mask >> index & 1:
                found[run] = max(found.get(run, 0), bits)
    return found


def _search_pure(data: bytes) -> dict[bytes, int]:
    """`search` in Python (bytes.translate, strided slices and bytes.find: a few C passes per offset)."""
    found: dict[bytes, int] = {}
    shifted = shifts(data)
    flipped = shifts(data.translate(_BITREV))
    septets = [unpack(shifted, 7, offset) for offset in range(7)]
    septets += [unpack(flipped, 7, offset).translate(_BITREV_7) for offset in range(7)]
    _septets(_APART.join(septets), found)
    for width, patterns in _DIFFERENCES.items():
        steps = differences(_APART.join(unpack(shifted, width, offset) for offset in range(width)), width)
        for pattern, (run, bits) in patterns.items():
            if steps.find(pattern) >= 0:
                found[run] = max(found.get(run, 0), bits)
    return found


_COMPILED_WORDS: Final = tuple(dict.fromkeys(word for where in _GRAMS.values() for word, _at in where))
"""The 7-bit words the search can find (those with a 5-gram of class characters), for the compiled search."""
_COMPILED_RUNS: Final = tuple(tuple(_DIFFERENCES[width].values()) for width in (6, 5))
"""Each width's letter runs and bits, in the order of its difference patterns (`_COMPILED_PATTERNS`)."""
_COMPILED_PATTERNS: Final = tuple(tuple(_DIFFERENCES[width]) for width in (6, 5))
if packedfast.COMPILED is not None:
    packedfast.COMPILED.configure(_COMPILED_WORDS, *_COMPILED_PATTERNS)


def surprise(found: dict[bytes, int]) -> int:
    """Bits beyond chance of the distinct names found: each of at least `MIN_BITS` counts its bits less
    `CHANCE_BITS`, unless it lies inside a longer name found (``submit`` in ``mining.submit``)."""
    kept = [name for name, bits in found.items() if bits >= MIN_BITS]
    return sum(found[name] - CHANCE_BITS for name in kept if not any(name != other and name in other for other in kept))


@dataclass(slots=True)
class _Searched:
    """How far each direction was searched, and the names found in the flow (a pure function of its bytes)."""

    upto: list[int] = field(default_factory=lambda: [0, 0])
    found: dict[bytes, int] = field(default_factory=dict)


def _searched(view: FlowView) -> _Searched:
    memo = view.memo.get(__name__)
    if not isinstance(memo, _Searched):
        memo = view.memo[__name__] = _Searched()
    return memo


def detect(view: FlowView) -> Result:
    """Find pool names packed as 7-, 6- or 5-bit characters, at any bit offset: the client's, and the server's
    with them (a pool's pushes add to a client's calls; a download alone is not searched)."""
    client = jsonrpc.read(view, True)
    server = jsonrpc.read(view, False)
    if client.kind is jsonrpc.Kind.NOT and server.kind is jsonrpc.Kind.NOT:
        return None
    memo = _searched(view)
    for index, (data, payload) in enumerate(((view.client, client), (view.server, server))):
        if index and not memo.found:
            break  # searched from its start once the client's bytes hold a name
        data = data[:LIMIT]
        if len(data) <= memo.upto[index] or payload.kind is jsonrpc.Kind.NOT:
            continue
        start = max(memo.upto[index] - OVERLAP, 0)
        memo.upto[index] = len(data)
        try:
            found = search(data[start:])
        except Exception as error:  # fail closed: a search that cannot answer (MemoryError in C) blocks
            return Finding(Category.MINING, PROTOCOL, NAME, evidence(f"the search failed ({type(error).__name__})"))
        for name, bits in found.items():
            memo.found[name] = max(memo.found.get(name, 0), bits)
    score = surprise(memo.found)
    if score >= THRESHOLD:
        names = sorted(memo.found, key=lambda name: -memo.found[name])
        text = f"{score} bits beyond chance: " + " ".join(name.decode() for name in names)
        return Finding(Category.MINING, PROTOCOL, NAME, evidence(text))
    return None if view.complete else MORE
