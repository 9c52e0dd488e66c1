"""The detector contract: what a detector is given (a `FlowView`) and what it answers (a `Finding`).

A detector is a pure function ``detect(view) -> Finding | None | MORE``:

- a `Finding` when the bytes seen so far match its protocol (the engine stops inspecting the flow);
- ``None`` when they cannot be its protocol (the engine stops asking this detector about this flow);
- `MORE` when it cannot tell yet (the engine asks again when more bytes arrive, until its buffer cap).

The engine calls a detector again with the *whole* prefix seen so far each time a flow grows, so segment
boundaries never matter; detectors must therefore be cheap to say ``None`` from the first bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final


class Category(enum.StrEnum):
    """What kind of traffic a finding is. The values are part of the API (JSON, Redis, logs)."""

    MINING = "mining"
    CRYPTO_NODE = "crypto-node"
    TUNNEL = "tunnel"


class Transport(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"
    """ICMP and ICMPv6."""
    IP = "ip"
    """Any other IP protocol (GRE, IPIP, SCTP, ESP...): only the drop logger sees them; a record's ``protocol``
    names which one (`egress.detect.ipproto.protocol_name`)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One detector's conclusion about one flow."""

    category: Category
    protocol: str
    """Short stable label of what was recognised, e.g. ``stratum-v1``, ``ssh-nonstandard-port``."""
    detector: str
    """Name of the detector module that matched, e.g. ``stratum``."""
    evidence: str
    """A short printable excerpt of what matched (at most `EVIDENCE_MAX` characters)."""


EVIDENCE_MAX: Final = 160


_PRINTABLE: Final = bytes(byte if 32 <= byte < 127 else 0x2E for byte in range(256))


def evidence(data: bytes | str, limit: int = EVIDENCE_MAX) -> str:
    """Render bytes as a short single-line printable excerpt: non-printables become ``.``."""
    if isinstance(data, bytes):
        text = data[: limit * 2].translate(_PRINTABLE).decode("ascii")
    else:
        text = "".join(ch if 32 <= ord(ch) < 127 else "." for ch in data[: limit * 2])
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class FlowMeta:
    """Addresses of a flow. ``src`` is the side that spoke first (the client) when that is known."""

    transport: Transport
    src: str
    sport: int
    dst: str
    dport: int


@dataclass(slots=True)
class FlowView:
    """What a detector sees of a flow: the reassembled prefix of each direction.

    For TCP (and for decrypted TLS/HTTP payloads handed in by the proxy) ``client`` and ``server`` hold the
    in-order byte stream of each direction, capped by the engine. For UDP and ICMP, ``client_datagrams`` and
    ``server_datagrams`` hold the first payloads of each direction (ICMP: the echo data after the 8-byte header),
    and ``client``/``server`` are empty.
    """

    meta: FlowMeta
    client: bytes = b""
    server: bytes = b""
    client_datagrams: list[bytes] = field(default_factory=list)
    server_datagrams: list[bytes] = field(default_factory=list)
    icmp_types: list[int] = field(default_factory=list)
    """ICMP only: the ICMP type of each datagram in arrival order (client and server mixed)."""
    complete: bool = False
    """True when no more data will come (flow ended or buffer cap reached): answer now, `MORE` means no."""
    memo: dict[str, object] = field(default_factory=dict, compare=False, repr=False)
    """What a detector keeps between its calls on this flow so as to read only the new bytes of a longer prefix
    (`egress.detect.jsonrpc.Reading`), keyed by the detector's module. A memo of a pure function of the bytes: a
    fresh view of the same bytes gets the same answers."""


class _More(enum.Enum):
    MORE = "more"


MORE: Final = _More.MORE
"""Returned by a detector that needs more bytes to decide."""

Result = Finding | None | _More
Detector = Callable[[FlowView], Result]
