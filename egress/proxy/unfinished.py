"""An HTTP/1 request head its client never finished (no blank line), judged by the pool detectors when it ends.

A head is forwarded only whole, so one the client resets or closes before its blank line forwards nothing; it was
also judged by nothing, so it left no record: `GET / HTTP/1.1`, a header, Stratum's lines where the next header
lines would be, then a reset, was the attacker's cheapest unrecorded attempt (red team 16). Decided (the lead): such
a head is judged at its end by the pool detectors (`egress.detect.registry.MINING`, and the gate's name detector:
the same the engine runs on a client's bytes), and one that carries a pool's protocol is recorded ``mining``, its
evidence naming the unfinished head. One without pool content (an ordinary aborted request) stays unrecorded.

Pure: the callers are the front's last look at a client that reset before it was served (`egress.proxy.lastlook`)
and mitmproxy's addon at the end of a client whose head never let a layer be chosen
(`egress.proxy.mitm.addon`).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Final

from egress.detect import http
from egress.detect.base import Category, Detector, Finding, FlowMeta, evidence
from egress.detect.engine import FlowInspector


def is_unfinished_head(data: bytes) -> bool:
    """Whether ``data`` (a client's bytes from its first) is an HTTP/1 request head without its end: a known method
    and a space first, and no empty line (a line ends at ``\\n``, a ``\\r`` before it ignored, as a lenient server
    reads it)."""
    if not http.looks_like_http_request(data):
        return False
    lines = data.split(b"\n")
    return all(line.rstrip(b"\r") for line in lines[:-1])


_FIELD: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+[ \t]*:[ \t]*")
"""A header field line's name and colon (RFC 9110 5.1: a token), and the blanks after them."""


def head_lines(data: bytes) -> bytes:
    """What an unfinished head ``data`` says, as the pool detectors read a client's stream: its request target,
    then each line after the request line, a header field line by its value (the name is HTTP's, the value the
    sender's), each ended by ``\n``. A pool detector reads a stream that opens with a request line as HTTP, and a
    value as a line of its own (Stratum's calls in ``X-Pad:``)."""
    first, _, rest = data.partition(b"\n")
    parts = first.rstrip(b"\r").split(b" ")
    target = parts[1] if len(parts) > 1 else b""
    lines = [target]
    for line in rest.split(b"\n"):
        field = _FIELD.match(line)
        lines.append(line[field.end() :] if field is not None else line)
    return b"\n".join(line.rstrip(b"\r") for line in lines) + b"\n"


def pool_finding(data: bytes, meta: FlowMeta, detectors: tuple[Detector, ...], ended: str) -> Finding | None:
    """The pool detectors' finding (``detectors``; a ``mining`` one only) on ``data`` when it is an unfinished head
    (`is_unfinished_head`): its target and lines (`head_lines`: a pool's lines may sit anywhere in it), judged as a
    client stream that has ended. Its evidence names the unfinished head and how it ended
    (``ended``: "reset", "closed"). None: not an unfinished head, or nothing of a pool's in it."""
    if not is_unfinished_head(data):
        return None
    inspector = FlowInspector(meta, detectors)
    inspector.feed_stream(True, head_lines(data))
    inspector.close()
    found = next((f for f in inspector.findings if f.category is Category.MINING), None)
    if found is None:
        return None
    return replace(found, evidence=evidence(f"HTTP request head never finished ({ended}): {found.evidence}"))
