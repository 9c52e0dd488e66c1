"""What a server application reads of an HTTP message's header and trailer fields joined (red team 13).

A pool call cut across fields, each too short or too innocent to be judged alone, reached a site that joins them:
repeated fields of one name, which HTTP lets a recipient combine into one value with ``", "`` (RFC 9110 §5.3; Node's
``req.headers``, PHP's ``$_SERVER``, a WSGI environ's ``HTTP_*``), or an application that concatenates its own
fields in order (``"".join(request.headers[f"x-{i}"] ...)``). `joined` gives those readings as pieces for the pool
detectors: each repeated name's values joined with ``", "`` and with ``""``; every value in order, with the same two
joiners; and the same for the fields that are not `STANDARD` (a client's ordinary fields, which an application does
not take its own data from, left out so that a long ``User-Agent`` between two pieces does not hide them); the same
fields sorted by name, concatenated (what an application behind Go's ``net/http`` or a Go proxy reads: its
``Header`` writes and iterates keys sorted); and the values of the ``Cookie`` pairs in order, as they came and
percent-decoded (PHP's ``$_COOKIE``, Rack's and Express's cookie parsers decode them: red team 13b). A private
choice of fields in a private order is a private encoding, like encryption: out of reach (docs/security.md,
"Thirteenth round", "Round 13b").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Final
from urllib.parse import unquote_to_bytes

JOINERS: Final = (b", ", b"")
"""How a recipient joins values: as HTTP combines a repeated field (``", "``; ``","`` reads the same to the JSON
detectors, whitespace between tokens being insignificant), and as an application concatenates them."""
SORTED: Final = (b"",)
"""How the own fields sorted by name are joined: concatenated (an application's own join; ``", "`` is HTTP's for a
repeated name, read already). One joiner, not two: the second cost a pool-detector run per request that carries
JSON in a field (docs/security.md, "Round 13b")."""
_OPENS: Final = re.compile(rb"[{\[<]|[^\x20-\x7e]")
"""What a pool detector needs to read a call or an answer at all: a JSON bracket, XML markup, or a byte that is
not printable ASCII (the binary encodings; `egress.detect.packed` skips windows of text, `egress.detect.binrpc`
counts a text head only near a binary byte). A reading without one is not given: printable text with no bracket
is nothing any of them names, and no reading costs a run for nothing."""
_OPENS_TEXT: Final = re.compile(r"[{\[<]|[^\x20-\x7e]|(?i:%(?:7b|5b|3c|25))")
"""`_OPENS` on the values as sent, and a percent escape of an opener (or of ``%``, escaped twice) that a cookie
parser decodes (`_cookie_values`)."""
DECODE_ROUNDS: Final = 3
"""Times a cookie value is percent-decoded at most (as `egress.detect.rpcparams.ROUNDS`: a lenient server may
decode twice)."""
JOINED_MIN: Final = 16
"""A joined reading shorter than this is not a piece (as `egress.proxy.mitm.inspect.PIECE_MIN`: no call is that
short)."""
STANDARD: Final = frozenset(
    {"host", "user-agent", "accept", "accept-encoding", "accept-language", "accept-charset", "accept-ranges",
     "connection", "keep-alive", "cookie", "set-cookie", "content-type", "content-length", "content-encoding",
     "content-language", "content-disposition", "content-location", "content-range", "range", "referer", "origin",
     "authorization", "proxy-authorization", "www-authenticate", "proxy-authenticate", "cache-control", "pragma",
     "date", "age", "expires", "etag", "last-modified", "if-match", "if-none-match", "if-modified-since",
     "if-unmodified-since", "if-range", "vary", "via", "forwarded", "x-forwarded-for", "x-forwarded-proto",
     "x-forwarded-host", "te", "trailer", "transfer-encoding", "upgrade", "expect", "server", "location",
     "retry-after", "allow", "alt-svc", "strict-transport-security", "link", "priority", "dnt",
     "upgrade-insecure-requests", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest", "sec-fetch-user",
     "sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform", "accept-ch", "report-to", "nel", "reporting-endpoints",
     "content-security-policy", "content-security-policy-report-only", "permissions-policy", "referrer-policy",
     "cross-origin-opener-policy", "cross-origin-embedder-policy", "cross-origin-resource-policy",
     "x-content-type-options", "x-frame-options", "access-control-allow-origin", "access-control-allow-methods",
     "access-control-allow-headers", "access-control-allow-credentials", "access-control-expose-headers",
     "access-control-max-age", "access-control-request-method", "access-control-request-headers",
     "timing-allow-origin", "server-timing", "traceparent", "tracestate", "baggage"}
)  # fmt: skip
"""Fields clients, proxies and servers send for themselves (RFC 9110's and the IANA registry's common ones, the
fetch metadata, the forwarding chain, CORS, reporting, tracing): left out of the third reading and of `OWN`, which
are what an application's own fields hold. Their values are still read alone, joined per repeated name, and in
the reading of every value."""


def opens(fields: Iterable[tuple[str, str]]) -> bool:
    """Some value of ``fields`` holds what a pool detector needs (`_OPENS`): else no reading of them can."""
    return _OPENS_TEXT.search("".join(value for _, value in fields)) is not None


def joined(fields: Iterable[tuple[str, str]]) -> list[bytes]:
    """The joined readings of ``fields`` (name, value; trailers after the header fields), each at least
    `JOINED_MIN` bytes and given once, in the order described above."""
    named = [(name.lower(), value.encode("utf-8", "surrogateescape")) for name, value in fields]
    readings = [values for values in _groups(named).values() if len(values) > 1]
    values = [value for _, value in named]
    own_fields = [(name, value) for name, value in named if name not in STANDARD]
    own = [value for _, value in own_fields]
    readings += [values] if len(values) > 1 else []
    readings += [own] if 1 < len(own) < len(values) else []
    ranked = [value for _, value in sorted(own_fields, key=itemgetter(0))]  # stable: a name's values keep order
    joins: list[tuple[list[bytes], tuple[bytes, ...]]] = [(v, JOINERS) for v in readings + _cookie_values(named)]
    joins += [(ranked, SORTED)] if len(ranked) > 1 and ranked != own else []
    return _pieces(joins)


def _cookie_values(named: Sequence[tuple[str, bytes]]) -> list[list[bytes]]:
    """The values of the ``Cookie`` fields' pairs in order (HTTP/2's crumbs, one field each, too: RFC 9113
    §8.2.3), as sent when there are several, and concatenated then percent-decoded (``+`` as a space) when that
    changes them."""
    values = _cookies(named)
    decoded = _percent_decoded(b"".join(values))  # after the join: an escape cut across two values is whole
    return [*([values] if len(values) > 1 else []), *([[decoded]] if decoded != b"".join(values) else [])]


def _cookies(named: Iterable[tuple[str, bytes]]) -> list[bytes]:
    return [pair.partition(b"=")[2].strip() for name, value in named if name == "cookie" for pair in value.split(b";")]


def _percent_decoded(value: bytes) -> bytes:
    for _ in range(DECODE_ROUNDS):
        if 0x25 not in value and 0x2B not in value:
            break
        value = unquote_to_bytes(value.replace(b"+", b" "))
    return value


OWN: Final = ""
"""The name `by_name` gives the values of the fields that are not `STANDARD`, concatenated in order (no field is
named so)."""
COOKIE_VALUES: Final = ";cookie"
"""The name `by_name` gives the ``Cookie`` pairs' values, concatenated and percent-decoded (no field is named so: a
``;`` is not a token character)."""


def by_name(fields: Iterable[tuple[str, str]]) -> tuple[tuple[str, bytes], ...]:
    """Each field name (lower case) with its values concatenated, in the order the names first come, then `OWN`
    with the values of the fields that are not `STANDARD`, and `COOKIE_VALUES` with the cookies' values decoded
    as a request's: what a connection's rolling join appends per message
    (`egress.proxy.mitm.inspect.BodyStreams.fields`; an application that keeps its own fields' or its cookies'
    pieces across requests, under one name or one name per request)."""
    named = [(name.lower(), value.encode("utf-8", "surrogateescape")) for name, value in fields]
    own = b"".join(value for name, value in named if name not in STANDARD)
    cookies = _percent_decoded(b"".join(_cookies(named)))
    return (
        *((name, b"".join(values)) for name, values in _groups(named).items()),
        (OWN, own),
        (COOKIE_VALUES, cookies),
    )


def _groups(named: Iterable[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    groups: dict[str, list[bytes]] = {}
    for name, value in named:
        groups.setdefault(name, []).append(value)
    return groups


def _pieces(readings: Iterable[tuple[list[bytes], tuple[bytes, ...]]]) -> list[bytes]:
    found: dict[bytes, None] = {}
    for values, joiners in readings:
        for joiner in joiners:
            text = joiner.join(values)
            if len(text) >= JOINED_MIN and _OPENS.search(text) is not None:
                found[text] = None
    return list(found)
