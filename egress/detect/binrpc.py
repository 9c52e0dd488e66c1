"""Mining calls in binary RPC encodings: the pool protocols' method names as length-prefixed strings.

Stratum, XMRig's CryptoNote stratum, Ethereum stratum and getwork can be carried by any RPC encoding that keeps
strings verbatim: msgpack-RPC, CBOR, protobuf/gRPC, Thrift, BSON, bencode (red team 3, docs/security.md). The
detectors of `egress.detect.jsonrpc` read JSON text only; this one reads the names wherever they sit in a stream,
but only as a *length-prefixed string* of one of those encodings, the byte(s) just before the name giving its
length ``L``:

- ``L`` (protobuf field, msgpack str8 ``d9 L``, CBOR ``78 L``, Thrift compact, the low byte of any big-endian
  length: msgpack str16, Thrift binary, Java ``writeUTF``);
- ``a0|L`` (msgpack fixstr, https://github.com/msgpack/msgpack/blob/master/spec.md#str-format-family);
- ``60|L`` (CBOR text string, RFC 8949 §3.1, major type 3);
- ``2L`` (Avro's zigzag varint length);
- ``L+1`` as four little-endian bytes (BSON string, whose length counts its NUL);
- the ASCII digits of ``L`` and ``:`` (bencode).

Why length-prefixed and not the bare token: a bare ``mining.subscribe`` appears in every page, source file and
package that documents or implements Stratum (a sandbox reading a pool's docs or installing a library is not
mining), while a length prefix is how an RPC encoding writes a string that a peer will read as one. The text
encodings are left to `egress.detect.jsonrpc`. The prefix is one byte, so a random match in encrypted or
compressed bytes needs that byte and a 10-to-20-character name: about 2^-80 per offset.

Names (each one is the method of a call or of a pool's notification; the same sets as the JSON detectors):

- alone: ``mining.`` + a Stratum method (`egress.detect.stratum`), ``eth_submitLogin``/``eth_getWork``/
  ``eth_submitWork``/``eth_submitHashrate`` (`egress.detect.ethstratum`), ``getblocktemplate``/``getwork``/
  ``get_block_template``/``submitblock``/``submit_block`` (`egress.detect.getwork`);
- XMRig's short words (``login``, ``submit``, ``job``, ``keepalived``) are common in benign RPC, so they count
  only with the keys that `egress.detect.cryptonote` requires of the call, each length-prefixed too, within the
  same direction: ``login`` with ``pass`` and ``agent``, ``submit`` and ``job`` with ``job_id`` (plus ``nonce`` and
  ``result``, or ``blob`` and ``target``); ``keepalived`` with ``job_id`` anywhere in the flow.

Incremental: each direction is searched from where the last prefix's search stopped (minus the longest name, so
a name cut by the prefix's end is found whole next time), with a few ``bytes.find`` calls per anchor. A flow whose
both directions `egress.detect.jsonrpc` rules out (a whole TLS hello, an SSH banner) is ruled out here too:
its later bytes are encrypted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from egress.detect import jsonrpc
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
_BINARY: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff]")
"""A byte that text does not hold (a control other than tab and line ends, or non-ASCII)."""
_OVERLAP: Final = 48
"""Bytes re-searched before the last stop: more than the longest name and its prefix."""


def length_prefixed(data: bytes, at: int, size: int) -> bool:
    """Whether the ``size`` bytes at ``at`` follow a length prefix of one of the encodings above.

    A prefix byte that is printable ASCII (CBOR's ``60|L`` is a letter, Avro's ``2L`` may be a space or a quote)
    counts only in binary context: a control byte or a non-ASCII byte among the 16 before it. Text that merely
    names a method (``" mining.subscribe"``, ``"pmining.subscribe"`` in prose) is not a length-prefixed string."""
    if at >= 1:
        prefix = data[at - 1]
        if prefix in (size, 2 * size) or (size < 32 and prefix == 0xA0 | size) or (size < 24 and prefix == 0x60 | size):
            return not 0x20 <= prefix < 0x7F or _BINARY.search(data, max(at - 17, 0), at - 1) is not None
    if at >= 4 and data[at - 4 : at] == (size + 1).to_bytes(4, "little"):
        return True
    digits = b"%d:" % size
    return data[at - len(digits) : at] == digits


def _find_prefixed(data: bytes, word: bytes, start: int = 0) -> int:
    """Offset of the first length-prefixed ``word`` (whole: the prefix gives its length) at or after ``start``."""
    at = data.find(word, start)
    while at >= 0:
        if length_prefixed(data, at, len(word)):
            return at
        at = data.find(word, at + 1)
    return -1


def _has_all(data: bytes, words: tuple[bytes, ...]) -> bool:
    return all(_find_prefixed(data, word) >= 0 for word in words)


def _named(data: bytes, start: int) -> tuple[int, int]:
    """(offset, length) of the first mining name that counts alone, searched from ``start``; (-1, 0) if none."""
    found = (-1, 0)
    at = data.find(b"mining.", start)
    while at >= 0:
        for name in _STRATUM:
            if data.startswith(name, at) and length_prefixed(data, at, len(name)):
                found = (at, len(name))
                break
        if found[0] >= 0:
            break
        at = data.find(b"mining.", at + 1)
    for word in (*_ALONE, *_ALONE_LOWER):
        at = _find_prefixed(data, word, start)
        if at >= 0 and (found[0] < 0 or at < found[0]):
            found = (at, len(word))
    return found


def _xmrig(data: bytes, other: bytes) -> tuple[int, int]:
    """(offset, length) of an XMRig call whose keys are all present (length-prefixed) in ``data``; (-1, 0) if
    none."""
    for word, key_sets in _XMRIG.items():
        at = _find_prefixed(data, word)
        if at >= 0 and any(_has_all(data, keys) for keys in key_sets):
            return at, len(word)
    at = _find_prefixed(data, b"keepalived")
    if at >= 0 and (_find_prefixed(data, b"job_id") >= 0 or _find_prefixed(other, b"job_id") >= 0):
        return at, 10
    return -1, 0


_ANCHORS: Final = (b"mining.", b"eth_", b"block", b"getwork")
"""Substrings of every name that counts alone (``block``: the block-template and submit-block calls), searched
in the new bytes first: a few ``bytes.find`` calls per prefix, the names themselves only where one is found."""


@dataclass(slots=True)
class _Searched:
    """How far each direction was searched (a pure function of its bytes)."""

    upto: list[int] = field(default_factory=lambda: [0, 0])
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


def _finding(data: bytes, at: int, size: int) -> Finding:
    """The name at ``at`` and the 8 bytes before it: what every prefix holding the name holds (the evidence does not
    depend on where the flow's segments were cut)."""
    return Finding(Category.MINING, PROTOCOL, NAME, evidence(data[max(at - 8, 0) : at + size]))


def detect(view: FlowView) -> Result:
    """Find pool-protocol method names written as length-prefixed strings of a binary RPC encoding."""
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
        upto = memo.upto[index]
        if len(data) == upto or (client, server)[index].kind is jsonrpc.Kind.NOT:  # TLS or SSH: encrypted after
            continue
        grown = True
        start = max(upto - _OVERLAP, 0)
        memo.upto[index] = len(data)
        for anchor in _ANCHORS:
            if data.find(anchor, start) >= 0:
                at, size = _named(data, start)
                if at >= 0:
                    memo.found = True
                    return _finding(data, at, size)
                break
        if not memo.xmrig:
            memo.xmrig = data.find(b"job_id", start) >= 0 or data.find(b"login", start) >= 0
    if grown and memo.xmrig:
        for index, data in enumerate(sides):
            at, size = _xmrig(data, sides[1 - index])
            if at >= 0:
                memo.found = True
                return _finding(data, at, size)
    return None if view.complete else MORE
