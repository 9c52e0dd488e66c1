"""Whether a UDP flow's latest datagrams may still be completing a pool message in a binary encoding. Pure.

The twin of `egress.detect.textframe` for the binary RPC encodings `egress.detect.binrpc` reads (msgpack, CBOR,
protobuf, BSON, ASN.1 BER...): the UDP gate (`egress.gateway.udpgate`) holds the verdict on a datagram after which
the flow's window may still become such a message, so that the first pieces of a binary call cut over several
datagrams do not reach the server before the joined message has been judged. Red team 12 sent XMRig's login as a
msgpack map cut in three: the first two pieces (the wallet among them) crossed before the third completed the call
and the flow was refused (docs/security.md, "Twelfth round").

A binary message has no framing that says where it ends in general (each encoding its own, a custom one the
attacker's), so it is judged by the vocabulary the detectors read, on the window's bytes joined
(`egress.detect.datagrams.joined`):

- one of XMRig's call words (``login``, ``submit``, ``keepalived``) as a length-prefixed string
  (`egress.detect.binrpc.find_prefixed`): `binrpc` names the call only once its keys are there too (``pass`` and
  ``agent``...), and they may come in later datagrams;
- the bytes end inside a length-prefixed string whose first `CUT_MIN` or more bytes begin a name that counts
  alone, or one of the call words (or, once ``mining.`` is whole, right after a byte no text holds, as `binrpc`
  reads those names bare): a name cut by the datagram's end (``mining.subscr`` | ``ibe``).

A name that counts alone and is whole is the detectors' (the flow is refused at once). What is held is never let
go on its own: the hold ends when the window names the message (refused), when a later datagram leaves neither
opening (let go with it: a cut that did not become the name), or at the hold's bounds (refused). So a binary flow
that writes XMRig's ``login`` as a string and never makes it a call is refused after two seconds: the cost, for
binary UDP RPC with such a word (none known on an egress boundary). What it does not see: a pool message whose
pieces before the first call word hold none of this vocabulary (params before the method, in an encoding of the
pool's own): those pieces cross, as bytes no detector reads.
"""

from __future__ import annotations

from typing import Final

from egress.detect import binrpc

CALL_WORDS: Final = (b"login", b"submit", b"keepalived")
"""XMRig's calls from the miner (``job`` is the pool's)."""
CUT_MIN: Final = 3
"""Bytes of a name at a datagram's end from which the cut is held (fewer are no vocabulary: ``mi``, ``lo``)."""

_MINING: Final = b"mining."
_NAMES: Final = tuple(sorted({*binrpc.NAMES, *CALL_WORDS}))
_CUTS: Final = {
    name[:size]: tuple(other for other in _NAMES if len(other) > size and other.startswith(name[:size]))
    for name in _NAMES
    for size in range(CUT_MIN, len(name))
}
"""Each cut of a name (its first `CUT_MIN` bytes or more, not all) and the names it may begin."""
_LONGEST_CUT: Final = max(len(cut) for cut in _CUTS)
_NAME_BYTES: Final = frozenset(b"".join(_NAMES) + b"".join(_NAMES).upper())
"""The bytes a cut name may end with (names are compared in any case)."""


def pending(data: bytes) -> str | None:
    """Why the flow's window joined (``data``) may still become a binary pool message, or None."""
    for word in CALL_WORDS:
        if binrpc.find_prefixed(data, word) >= 0:
            return f"XMRig's {word.decode()} as a binary string, its call not yet whole"
    size = len(data)
    if not size or data[-1] not in _NAME_BYTES:
        return None
    for cut in range(CUT_MIN, min(_LONGEST_CUT, size) + 1):
        at = size - cut
        for name in _CUTS.get(data[at:].lower(), ()):
            bare = cut >= len(_MINING) and name.startswith(_MINING)
            if binrpc.length_prefixed(data, at, len(name), bare=bare):
                return f"a binary string cut inside {name.decode()}"
    return None


__all__ = ["CALL_WORDS", "CUT_MIN", "pending"]
