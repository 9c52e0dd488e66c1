"""Solo/pool mining over HTTP JSON-RPC: ``getwork``, ``getblocktemplate``, ``submitblock`` and the mining headers.

Signatures (Bitcoin wiki "Getwork" and "Getblocktemplate"; BIP 22/23; cgminer util.c, which sends
``X-Mining-Extensions: longpoll midstate rollntime submitold`` and reads ``X-Long-Polling``, ``X-Roll-NTime`` and
``X-Stratum`` from the pool; Monero daemon RPC docs for ``get_block_template``/``submit_block``, used by XMRig's
daemon mode; confirmed on nesfit ``cgminer.g0``):

- a ``"method"`` of ``getwork``, ``getblocktemplate``, ``submitblock``, ``get_block_template`` or ``submit_block``
  (block templates are only ever fetched to mine on them: wallets and explorers use `cryptonode`'s calls);
- a getwork answer: a result with both ``midstate`` and ``hash1`` keys;
- any of the mining HTTP headers above in a request or a response head, whatever the body.
"""

from __future__ import annotations

from typing import Final

from egress.detect import jsonrpc
from egress.detect.base import Category, Finding, FlowView, Result, evidence

NAME: Final = "getwork"
MINING_METHODS: Final = frozenset({"getwork", "getblocktemplate", "submitblock", "get_block_template", "submit_block"})
_HEADERS: Final = (b"\nx-mining-extensions:", b"\nx-long-polling:", b"\nx-roll-ntime:", b"\nx-stratum:")


def _header(heads: tuple[bytes, ...]) -> tuple[int, bytes] | None:
    """(index of the message, the header line) of the first mining header."""
    for index, head in enumerate(heads):
        lowered = head.lower()
        for header in _HEADERS:
            at = lowered.find(header)
            if at >= 0:
                line_end = head.find(b"\r", at + 1)
                return index, head[at + 1 : line_end if line_end >= 0 else None]
    return None


def _body_message(side: jsonrpc.Payload) -> tuple[int, str, bytes] | None:
    """(offset, protocol, message) of the first complete mining call or getwork answer, by position."""
    text = side.text
    found: list[tuple[int, str, bytes]] = []
    for method, offset in side.calls:
        if method in MINING_METHODS:
            message = jsonrpc.message_at(text, offset, side.final)
            if message is not None:
                found.append((offset, "getwork" if method == "getwork" else "getblocktemplate", message))
                break
    offset = text.find(b'"midstate"')
    message = jsonrpc.message_at(text, offset, side.final) if offset >= 0 else None
    if message is not None and jsonrpc.has_key(message, b"hash1"):
        found.append((offset, "getwork", message))
    return min(found) if found else None


def _match(side: jsonrpc.Payload) -> Finding | None:
    """One direction's finding (the client's is asked first: `jsonrpc.drive_sides`)."""
    header = _header(side.heads)
    body = _body_message(side) if side.kind is jsonrpc.Kind.JSON else None
    # Whichever HTTP message comes first (a head before its own body), so that the answer does not depend on
    # how much of a pipelined stream a prefix holds.
    if header is not None and (body is None or header[0] <= side.message_index(body[0])):
        return Finding(Category.MINING, "mining-http-header", NAME, evidence(header[1]))
    if body is not None:
        return Finding(Category.MINING, body[1], NAME, evidence(body[2]))
    return None


def detect(view: FlowView) -> Result:
    """Find HTTP getwork/getblocktemplate mining and the mining-extension headers on a TCP stream."""
    return jsonrpc.drive_sides(view, _match)
