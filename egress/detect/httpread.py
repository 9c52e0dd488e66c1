"""What a lenient peer reads of HTTP/1.x beyond each message's body, shared by the gateway and the capture scanner.

Red team (docs/security.md, "Red team bypasses closed"): a pool may take its messages from a request's target
(``GET /{"id":4,"method":"mining.submit",...} HTTP/1.1``, or the whole query), a miner its job from a response's
reason phrase, and either side may read the bodies of one connection's keep-alive messages as one stream. This
module owns the two pure readings: `start_pieces` (the gateway's `egress.proxy.mitm.inspect.read`, and
`egress.detect.jsonrpc` for captures) and `from_bracket` (where a joined stream starts:
`egress.proxy.mitm.inspect.BodyStreams`, and `jsonrpc`'s joined bodies).
"""

from __future__ import annotations

from typing import Final
from urllib.parse import unquote_to_bytes

UNQUOTE_ROUNDS: Final = 3
"""Times a start line's text is percent-decoded at most (a lenient server may decode twice)."""


def start_pieces(start: str) -> list[bytes]:
    """What a peer that reads its start line leniently may take a message from (red team: Stratum verbatim in
    ``GET /{"id":4,...} HTTP/1.1``, or as the whole query, and a job in a response's reason phrase): a request's
    target or a response's reason phrase, as it came and percent-decoded (``+`` as a space too), each while it
    changes, up to `UNQUOTE_ROUNDS` times. Only text holding a ``{`` or ``[`` (decoded) is given: every JSON-RPC
    signature sits in a document, and the detectors skip what comes before its first bracket."""
    if start.startswith("HTTP/"):
        text = start.split(" ", 2)[2] if start.count(" ") >= 2 else ""  # the reason phrase
    else:
        text = start.partition(" ")[2].rpartition(" ")[0]  # METHOD TARGET HTTP/1.1: the target
    raw = text.encode("utf-8", "surrogateescape")
    found: list[bytes] = []
    for form in (raw, raw.replace(b"+", b" ")) if 0x2B in raw else (raw,):
        for _ in range(UNQUOTE_ROUNDS + 1):
            if (0x7B in form or 0x5B in form) and form not in found:
                found.append(form)
            decoded = unquote_to_bytes(form) if 0x25 in form else form
            if decoded == form:
                break
            form = decoded
    return found


def from_bracket(data: bytes) -> bytes:
    """``data`` from its first ``{`` or ``[`` on (empty without one): the JSON-RPC detectors skip what comes
    before it, and a stream without one holds no message to complete."""
    starts = [at for at in (data.find(b"{"), data.find(b"[")) if at >= 0]
    return data[min(starts) :] if starts else b""
