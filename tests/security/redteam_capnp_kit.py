"""Programs of test_redteam_capnp: Ethereum's and getwork's pool calls in Cap'n Proto, a fake pool that reads them,
and the miner in the sandbox. Fake both: no real mining software; the encoder and decoder are written here (the
layout pycapnp writes for this schema) so the suite needs no package.

Cap'n Proto (capnproto.org/encoding.html) writes a ``Text`` as a byte list elsewhere in the segment, NUL-ended and
padded to a word, reached by a *list pointer* whose high 32 bits hold the element count (the text's length plus
its NUL) shifted left by 3, or'ed with the element size 2 (bytes). So ``eth_submitLogin`` (15 bytes) follows
``82 00 00 00`` (16 << 3 | 2), and no byte before the name is its length: `egress.detect.binrpc` finds Stratum's
``mining.`` names there only by its bare rule (a control byte before them), which the other pools' names do not
have.

Schema (one segment, the stream framing's segment table first)::

    struct Call { id @0 :UInt64; method @1 :Text; params @2 :Text; }   # params: a JSON array of hex strings
    struct Answer { id @0 :UInt64; status @1 :Text; result @2 :Text; }  # the same layout

Dialects: ``ethereum`` (``eth_submitLogin``, ``eth_getWork``, ``eth_submitWork``) and ``getwork`` (Bitcoin's
``getblocktemplate``, ``submitblock``). The pool logs ``share accepted`` for each share it answered; the miner
prints ``share answered`` when the share's answer came.
"""

from __future__ import annotations

import functools
import json

from tests.security.redteam_wire import Short, frames_miner, miner_argv, serve_frames, serve_pools

DIALECTS: dict[str, list[tuple[str, list[str]]]] = {
    "ethereum": [
        ("eth_submitLogin", ["0x" + "ab" * 20]),
        ("eth_getWork", []),
        ("eth_submitWork", ["0x0000000000000001", "0x" + "00" * 32, "0x" + "11" * 32]),
    ],
    "getwork": [
        ("getblocktemplate", ['{"rules":["segwit"]}']),
        ("submitblock", ["00" * 80]),
    ],
}
SHARES = {"eth_submitWork", "submitblock"}


def _text(value: str) -> bytes:
    raw = value.encode() + b"\x00"
    return raw.ljust((len(raw) + 7) // 8 * 8, b"\x00")


def message(ident: int, first: str, second: str) -> bytes:
    """A one-segment message whose root is a struct of one data word (``ident``) and two ``Text`` pointers."""
    one, two = _text(first), _text(second)
    words = 4 + (len(one) + len(two)) // 8
    root = (0).to_bytes(4, "little") + (1 | 2 << 16).to_bytes(4, "little")  # struct: 1 data word, 2 pointers
    pointer1 = (1 << 2 | 1).to_bytes(4, "little") + ((len(first.encode()) + 1) << 3 | 2).to_bytes(4, "little")
    offset2 = len(one) // 8  # from the end of the second pointer (word 4) to the second text
    pointer2 = (offset2 << 2 | 1).to_bytes(4, "little") + ((len(second.encode()) + 1) << 3 | 2).to_bytes(4, "little")
    segment = root + ident.to_bytes(8, "little") + pointer1 + pointer2 + one + two
    assert len(segment) == words * 8
    return (0).to_bytes(4, "little") + words.to_bytes(4, "little") + segment


def _read_text(segment: bytes, at: int) -> str:
    """The ``Text`` the list pointer at word ``at`` points to."""
    low = int.from_bytes(segment[at * 8 : at * 8 + 4], "little")
    high = int.from_bytes(segment[at * 8 + 4 : at * 8 + 8], "little")
    assert low & 3 == 1 and high & 7 == 2, "not a byte list"
    start = (at + 1 + (low >> 2)) * 8
    return segment[start : start + (high >> 3) - 1].decode()


def read(buf: bytes) -> tuple[tuple[int, str, str], int]:
    """The first message of ``buf`` (id, first text, second text) and where the next starts; `Short` when cut."""
    if len(buf) < 8:
        raise Short
    assert int.from_bytes(buf[:4], "little") == 0, "one segment"
    end = 8 + int.from_bytes(buf[4:8], "little") * 8
    if len(buf) < end:
        raise Short
    segment = buf[8:end]
    root = int.from_bytes(segment[:8], "little")
    assert root & 3 == 0 and (root >> 32) == 1 | 2 << 16, "root struct layout"
    ident = int.from_bytes(segment[8:16], "little")
    return (ident, _read_text(segment, 2), _read_text(segment, 3)), end


def _result(method: str) -> object:
    if method == "eth_getWork":
        return ["0x" + "22" * 32, "0x" + "33" * 32, "0x" + "00" * 4 + "ff" * 28]
    if method == "getblocktemplate":
        return {"version": 536870912, "previousblockhash": "00" * 32, "bits": "1d00ffff", "height": 1}
    return True


def _answer(call: object) -> tuple[bytes, bool]:
    assert isinstance(call, tuple)
    ident, method, params = call
    print(f"pool got {method} {params}", flush=True)
    return message(ident, "ok", json.dumps(_result(method))), method in SHARES


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    serve_pools(lambda conn: serve_frames(conn, read, _answer))


def miner_main() -> None:
    """``python -c '...miner_main()' ADDRESS|- PORT HOST DIALECT``"""
    address, port, _host, (dialect,) = miner_argv()
    calls = [
        (message(ident, method, json.dumps(params)), functools.partial(_shared, ident, method))
        for ident, (method, params) in enumerate(DIALECTS[dialect], 1)
    ]
    frames_miner(address, port, calls, read)


def _shared(ident: int, method: str, got: object) -> bool:
    return isinstance(got, tuple) and method in SHARES and got[0] == ident and json.loads(got[2]) is True
