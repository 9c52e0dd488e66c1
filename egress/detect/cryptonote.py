"""CryptoNote/Monero pool stratum, the JSON-RPC dialect spoken by XMRig, xmr-stak and their pools.

Signatures (XMRig src/base/net/stratum/Client.cpp and its docs/API; xmr-stak jpsock.cpp; node-cryptonote-pool
lib/pool.js; confirmed on nesfit ``xmr-eu1.nanopool.org`` and peafowl ``monero.pcap``):

- miner requests: ``login`` whose params object carries ``login``, ``pass`` and ``agent``; ``submit`` whose params
  carry ``job_id``, ``nonce`` and ``result``; ``keepalived`` (an XMRig-only keep-alive name);
- pool messages: the ``job`` notification and the login result, both carrying a job object with ``blob``,
  ``job_id`` and ``target`` keys.

A ``login`` method alone is too common in generic JSON-RPC APIs, hence the required params keys.
"""

from __future__ import annotations

from typing import Final

from egress.detect import jsonrpc
from egress.detect.base import Category, Finding, FlowView, Result, evidence

NAME: Final = "cryptonote"
PROTOCOL: Final = "cryptonote-stratum"
REQUIRED: Final[dict[str, tuple[bytes, ...]]] = {
    "login": (b"login", b"pass", b"agent"),
    "submit": (b"job_id", b"nonce", b"result"),
    "job": (b"blob", b"job_id", b"target"),
    "keepalived": (),
}
"""Each call's method and the params keys it must carry to count (also read by `egress.detect.xmlrpc`)."""
_JOB_KEYS: Final = (b"job_id", b"blob", b"target")


def _match_side(side: jsonrpc.Payload) -> bytes | None:
    """The first complete CryptoNote message by position (a call, or a job object without a method)."""
    text = side.text
    found: list[tuple[int, bytes]] = []
    for method, offset in side.calls:
        keys = REQUIRED.get(method)
        if keys is None:
            continue
        message = jsonrpc.message_at(text, offset, side.final)
        if message is not None and all(jsonrpc.has_key(message, key) for key in keys):
            found.append((offset, message))
            break
    # A job object without a method: the pool's answer to login (result.job), e.g. in a server-only capture.
    offset = text.find(b'"job_id"')
    while offset >= 0:
        message = jsonrpc.message_at(text, offset, side.final)
        if message is not None and all(jsonrpc.has_key(message, key) for key in _JOB_KEYS):
            found.append((offset, message))
            break
        offset = text.find(b'"job_id"', offset + 8)
    return min(found)[1] if found else None


def _match(side: jsonrpc.Payload) -> Finding | None:
    """One direction's finding (the client's is asked first: `jsonrpc.drive_sides`)."""
    if side.kind is jsonrpc.Kind.JSON:
        message = _match_side(side)
        if message is not None:
            return Finding(Category.MINING, PROTOCOL, NAME, evidence(message))
    return None


def detect(view: FlowView) -> Result:
    """Find XMRig-style CryptoNote stratum on a TCP stream (or unwrapped WebSocket/TLS payloads)."""
    return jsonrpc.drive_sides(view, _match)
