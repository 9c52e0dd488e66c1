"""Ethereum-family pool mining: eth-proxy / "Stratum" ``eth_*`` work methods, raw TCP or HTTP bodies.

Signatures (ethminer libpoolprotocols/stratum/EthStratumClient.cpp and getwork/EthGetworkClient.cpp; the
Ethereum JSON-RPC spec's mining methods, ethereum/execution-apis; NiceHash's EthereumStratum/1.0.0 proposal;
confirmed on nesfit ``eth-eu1.nanopool.org`` and ``pool.eth.pp.ua``, peafowl ``ethereum.pcap``):

- a ``"method"`` of ``eth_submitLogin``, ``eth_getWork``, ``eth_submitWork`` or ``eth_submitHashrate``: these are
  the work-package calls a miner makes to a pool or to a node it mines on; wallet and explorer calls such as
  ``eth_blockNumber`` belong to `cryptonode`;
- ``EthereumStratum/`` in a ``mining.subscribe`` (NiceHash's dialect);
- a work package in a result: ``["0x<64 hex header>", "0x<64 hex seed>", "0x<boundary>", ...]`` - what the pool
  answers ``eth_getWork`` with and pushes as new work, which is all a server-only capture shows.
"""

from __future__ import annotations

from typing import Final

from egress.detect import jsonrpc
from egress.detect.base import Category, Finding, FlowView, Result, evidence

NAME: Final = "ethstratum"
MINING_METHODS: Final = frozenset({"eth_submitLogin", "eth_getWork", "eth_submitWork", "eth_submitHashrate"})
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")


def _hex_string(text: bytes, pos: int, min_digits: int, max_digits: int) -> int:
    """Parse ``"0x<hex>"`` at ``pos`` (after blanks); return the offset after the closing quote or -1."""
    while pos < len(text) and text[pos] in b" \t\r\n":
        pos += 1
    if text[pos : pos + 3] != b'"0x':
        return -1
    close = text.find(b'"', pos + 3, pos + 4 + max_digits)
    if close < 0 or not min_digits <= close - pos - 3 <= max_digits:
        return -1
    if not all(byte in _HEX for byte in text[pos + 3 : close]):
        return -1
    return close + 1


def _work_package(text: bytes) -> int:
    """Offset of a ``"result": ["0x<64>", "0x<64>", "0x<1..64>"`` work package, or -1."""
    offset = text.find(b'"result"')
    for _ in range(jsonrpc.MAX_METHODS):
        if offset < 0:
            return -1
        pos = offset + 8
        while pos < len(text) and text[pos] in b" \t:":
            pos += 1
        if text[pos : pos + 1] == b"[":
            pos = _hex_string(text, pos + 1, 64, 64)
            for min_digits, max_digits in ((64, 64), (1, 64)):
                if pos < 0 or text[pos : pos + 1] != b",":
                    pos = -1
                    break
                pos = _hex_string(text, pos + 1, min_digits, max_digits)
            if pos >= 0:
                return offset
        offset = text.find(b'"result"', offset + 8)
    return -1


def _label(side: jsonrpc.Payload) -> str:
    return "ethereum-getwork-http" if side.heads else "ethereum-stratum"


def _match_side(side: jsonrpc.Payload) -> Finding | None:
    """The first complete work-package message by position (a call, or a work package pushed or answered)."""
    text = side.text
    found: list[tuple[int, str, bytes]] = []
    for method, offset in side.calls:
        if method in MINING_METHODS or method == "mining.subscribe":
            message = jsonrpc.message_at(text, offset, side.final)
            if message is None:
                continue
            if method in MINING_METHODS:
                found.append((offset, _label(side), message))
                break
            if message.find(b"EthereumStratum/") >= 0:
                found.append((offset, "ethereum-stratum", message))
                break
    offset = _work_package(text)
    message = jsonrpc.message_at(text, offset, side.final) if offset >= 0 else None
    if message is not None:
        found.append((offset, _label(side), message))
    if not found:
        return None
    _, protocol, message = min(found)
    return Finding(Category.MINING, protocol, NAME, evidence(message))


def _match(side: jsonrpc.Payload) -> Finding | None:
    """One direction's finding (the client's is asked first: `jsonrpc.drive_sides`)."""
    return _match_side(side) if side.kind is jsonrpc.Kind.JSON else None


def detect(view: FlowView) -> Result:
    """Find Ethereum work-package mining (eth-proxy stratum or HTTP getWork) on a TCP stream."""
    return jsonrpc.drive_sides(view, _match)
