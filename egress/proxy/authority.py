"""The authorities an HTTP request names besides its Host, as lenient servers read them: pure, no I/O.

Red team 9: an origin-form target that starts with two slashes (``//blocked.lab/``) is a path to RFC 9112 and to
the gateway, but a server that builds its upstream URL with a WHATWG parser (Node's ``new URL(req.url, base)``:
a backslash is a slash, any number of slashes start the authority, the host after the last ``@``,
percent-decoded, a number an IPv4 address) or a forward proxy on `http.server` (``urlsplit(self.path)``) reads
it as another host. `target_authorities` gives every (host, port) such a target can be read as, each to be
judged as another host of the request (`egress.proxy.mitm.addon`); `is_authority_target` says whether a target
is one (the fast path hands those to mitmproxy). `port_differs` says whether an authority's port is not the
connection's: ordinary clients behind a transparent gateway name the port they connect to or none, and a server
that routes by the Host's port would take the request to a port the policy never judged.

Red team 10a: an HTTP/2 stream names its destination in ``:authority``, in ``host`` fields and, absolute, in
``:path``; servers and proxies differ in which they follow (Host first when the request came through an HTTP/1
hop; a WHATWG parser resolves an absolute ``:path`` against ``:authority``, so ``:path: http://blocked.lab/``
with ``:authority: allowed.lab`` went to blocked.lab). `stream_disagreement` says why a stream's own fields do
not agree on one destination: the addon refuses such a stream instead of guessing which one a server follows.
"""

from __future__ import annotations

import contextlib
import ipaddress
import urllib.parse
from collections.abc import Sequence
from typing import Final

_HEX: Final = frozenset("0123456789abcdefABCDEF")
_SLASHES: Final = ("//", "/\\", "\\/", "\\\\")
"""How a target that a lenient parser reads as an authority starts (a backslash is a slash to WHATWG)."""


def _readings(target: str) -> list[str]:
    """The target as lenient readers see it before they parse: as it came, backslashes made slashes, and both
    after percent-decoding (a server that decodes the path first: ``/%2f%2fblocked.lab/``)."""
    decoded = urllib.parse.unquote(target, "latin-1")
    return list(dict.fromkeys((target, target.replace("\\", "/"), decoded, decoded.replace("\\", "/"))))


def is_authority_target(target: str) -> bool:
    """Whether an origin-form ``target`` (or an absolute target's path) names an authority to some reader: it
    starts with two of ``/`` and ``\\``, as it came or percent-decoded."""
    if target.startswith(_SLASHES):
        return True
    return "%" in target[:9] and any(reading.startswith("//") for reading in _readings(target))


def target_authorities(target: str) -> list[tuple[str, str]]:
    """Every (host, port text) ``target`` names when it is an authority target (`is_authority_target`): the host
    after the last ``@`` of what follows the leading slashes up to ``/ ? #`` (WHATWG, whatever slashes and
    backslashes led), and ``urlsplit``'s reading of the target as it came; hosts normalized (`normal_host`).
    Empty for any other target, and for an empty host (no reader goes anywhere)."""
    if not is_authority_target(target):
        return []
    found: dict[tuple[str, str], None] = {}
    for reading in _readings(target):
        if reading.startswith("//"):
            authority = reading.lstrip("/")
            for end in "/?#\\":
                authority = authority.partition(end)[0]
            _add(found, authority)
    with contextlib.suppress(ValueError):
        _add(found, urllib.parse.urlsplit(target).netloc)
    return list(found)


def _add(found: dict[tuple[str, str], None], authority: str) -> None:
    host, port = split_host_port(authority.rpartition("@")[2])
    host = normal_host(host)
    if host:
        found[(host, port)] = None


def split_host_port(value: str) -> tuple[str, str]:
    """A Host value or authority → (host, port text); the port text is ``""`` when none is given."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value.partition("]")
        return host + "]", rest.removeprefix(":") if rest.startswith(":") else rest
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, port
    return value, ""


def normal_host(host: str) -> str:
    """A host as a WHATWG parser ends up with it: percent-decoded, lowercased, without trailing dots; a number
    or dotted numbers (decimal, ``0x`` hex, ``0`` octal) as the IPv4 address they mean; an IPv6 literal as its
    address (an IPv4-mapped one as the IPv4 address)."""
    host = urllib.parse.unquote(host, "latin-1").strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        try:
            address = ipaddress.ip_address(host[1:-1])
        except ValueError:
            return host[1:-1]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(address)
    numbers = [_number(part) for part in host.split(".")]
    if 1 <= len(numbers) <= 4 and all(number is not None for number in numbers):
        values = [number for number in numbers if number is not None]
        value = values[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(values[:-1]))
        if values[-1] < 256 ** (5 - len(values)) and all(n < 256 for n in values[:-1]):
            return str(ipaddress.IPv4Address(value))
    return host


def _number(part: str) -> int | None:
    """One part of a WHATWG IPv4 host: decimal, ``0x`` hex or ``0`` octal; None when it is not a number."""
    if not part.isascii():
        return None
    if part[:2] in ("0x", "0X"):
        digits = part[2:] or "0"
        return int(digits, 16) if all(c in _HEX for c in digits) else None
    if len(part) > 1 and part.startswith("0"):
        return int(part[1:], 8) if all(c in "01234567" for c in part[1:]) else None
    return int(part, 10) if part.isdigit() else None


def port_differs(port: str | int | None, dport: int) -> bool:
    """Whether a port an authority names (its text, or a number) is not the connection's ``dport``: a port
    that is not a number differs too (a server may read digits out of it); none given does not."""
    if port is None or port == "":
        return False
    if isinstance(port, int):
        return port != dport
    text = port.strip()
    return not (text.isascii() and text.isdigit()) or int(text) != dport


def stream_disagreement(method: str, authority: str, path: str, hosts: Sequence[str]) -> str | None:
    """Why an HTTP/2 (or HTTP/3) request's fields may name more than one destination, or None when they agree:
    a ``:path`` not in origin form (RFC 9113 §8.3.1: ``/...``, or ``*`` for OPTIONS; an absolute one names an
    authority of its own), an ``:authority`` with userinfo (forbidden there; a WHATWG reader takes the host after
    the ``@``), more than one ``host`` field, or a ``host`` that is not ``:authority`` (host and port compared as
    `normal_host` and the port text: a server that prefers Host would go elsewhere). ``hosts``: every ``host``
    field's value, in order."""
    if not (path.startswith("/") or (path == "*" and method.upper() == "OPTIONS")):
        return f":path {path[:80]!r} is not in origin form"
    if "@" in authority:
        return f":authority {authority[:80]!r} carries userinfo"
    if len(hosts) > 1:
        return f"{len(hosts)} host fields"
    if hosts and authority and hosts[0] != authority and _normal_authority(hosts[0]) != _normal_authority(authority):
        return f"host {hosts[0][:80]!r} is not :authority {authority[:80]!r}"
    return None


def _normal_authority(value: str) -> tuple[str, str]:
    host, port = split_host_port(value)
    return normal_host(host), port.strip()
