"""Stratum v1 (the ``mining.*`` JSON-RPC pool protocol), in either direction.

Signatures (Slush Pool's Stratum v1 documentation, https://braiins.com/stratum-v1/docs; cgminer's util.c; the
nesfit/peafowl/nDPI captures):

- a request or notification whose ``"method"`` is ``mining.<name>``: the miner sends ``mining.subscribe``,
  ``mining.authorize``, ``mining.configure`` (BIP 310), ``mining.extranonce.subscribe``, ``mining.submit``; the pool
  sends ``mining.notify``, ``mining.set_difficulty``, ``mining.set_target`` (ZCash/Equihash, ZIP 301);
- the pool's answer to ``mining.subscribe``, whose result lists subscriptions as ``["mining.notify", "<id>"]`` pairs
  (seen in server-only captures where the miner's side is missing).

Matching a ``mining.`` method value rather than a bare ``mining`` word keeps generic JSON-RPC services (e.g. nDPI's
``jsonrpc.pcap``) and node RPCs such as ``getmininginfo`` out.
"""

from __future__ import annotations

from typing import Final

from egress.detect import jsonrpc
from egress.detect.base import Category, Finding, FlowView, Result, evidence

NAME: Final = "stratum"
_SUBSCRIPTION_PAIRS: Final = (b'["mining.notify"', b'["mining.set_difficulty"', b'[ "mining.notify"')


def is_method(method: str) -> bool:
    """Whether ``method`` is a Stratum method name: ``mining.`` and a letter (also read by `egress.detect.xmlrpc`)."""
    return method.startswith("mining.") and len(method) > len("mining.") and method[7].isalpha()


def _mining_message(side: jsonrpc.Payload) -> bytes | None:
    """The first complete message that is Stratum, by position: the answer must not depend on which of two
    signatures happened to be whole first in a shorter prefix."""
    text = side.text
    found: list[tuple[int, bytes]] = []
    for method, offset in side.calls:
        if is_method(method):
            message = jsonrpc.message_at(text, offset, side.final)
            if message is not None:
                found.append((offset, message))
                break
    for pair in _SUBSCRIPTION_PAIRS:
        offset = text.find(pair)
        message = jsonrpc.message_at(text, offset, side.final) if offset >= 0 else None
        if message is not None and jsonrpc.has_key(message, b"result"):
            found.append((offset, message))
    return min(found)[1] if found else None


def _match(side: jsonrpc.Payload) -> Finding | None:
    """One direction's finding (the client's is asked first: `jsonrpc.drive_sides`)."""
    if side.kind is not jsonrpc.Kind.JSON:
        return None
    message = _mining_message(side)
    if message is None:
        return None
    protocol = "ethereum-stratum" if message.find(b"EthereumStratum/") >= 0 else "stratum-v1"
    return Finding(Category.MINING, protocol, NAME, evidence(message))


def detect(view: FlowView) -> Result:
    """Find Stratum v1 ``mining.*`` traffic on a TCP stream (or unwrapped WebSocket/TLS payloads)."""
    return jsonrpc.drive_sides(view, _match)
