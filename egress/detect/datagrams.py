"""Datagrams of a UDP flow a network rule allows, judged by the UDP gate (`egress.gateway.udpgate`). Pure.

A flow is judged on a window of its latest datagrams from the sandbox (`WINDOW`, `WINDOW_BYTES`), each time one
arrives, so that what an attacker splits over several datagrams, or pads with junk datagrams first, is read whole:

- the UDP detectors (`egress.detect.registry`: VPNs, encapsulations, names), as the drop logger runs them on
  dropped UDP: WireGuard, OpenVPN, IKE, VXLAN/GENEVE/Teredo, DNS-over-QUIC names... on the window, then on the
  latest datagram alone (a detector that gave up on junk datagrams first sees the handshake after them);
- DTLS (RFC 6347 §4.1, RFC 9147 §4: a record of content type 20-25 and version 0xFEFF, 0xFEFD or 0xFEFC; or DTLS
  1.3's unified header, ``001CSLEE``, with a connection id or length) and QUIC long-header packets (RFC 9000 §17.2,
  RFC 9369: the form and fixed bits, any version, connection ids of at most 20 bytes; version negotiation
  included): refused unless the rule says ``expect: [dtls]`` / ``[quic]``. Both carry tunnels (OpenConnect, WebRTC
  data channels, MASQUE, Hysteria), and neither can be read further;
- pool vocabulary (`egress.detect.registry.MINING` and the crypto-node detector: Stratum's ``mining.*``, XMRig's
  ``login``/``submit``, getwork...) on the window's latest `WINDOW_BYTES` joined as one stream (the latest
  datagram whole when it is longer), so that a JSON-RPC message split over datagrams or following junk is read as
  on TCP, and one in a single datagram is read whole however long.

What is not seen: a protocol none of these recognise (an obfuscated tunnel whose datagrams look random, a custom
encrypted framing); a message split over more than the window (16 datagrams, 4 KB). The first pieces of a split
text message are held by the gate until it is whole (`egress.detect.textframe`), those of a binary one while
the window may still become one (`egress.detect.binframe`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, cast

from egress.detect import cryptonode
from egress.detect.base import MORE, Category, Detector, Finding, FlowMeta, FlowView, Result, evidence
from egress.detect.registry import MINING

NAME: Final = "udp-gate"
WINDOW: Final = 16
"""Datagrams of a flow judged together (the latest ones)."""
WINDOW_BYTES: Final = 4096
"""Bytes of the window joined as one stream for the pool detectors (the latest ones): a pool message is a few
hundred bytes, and the pool detectors' cost grows with the stream (bench/udpgate.py)."""
POOL: Final[tuple[Detector, ...]] = (*MINING, cryptonode.detect)

_DTLS_VERSIONS: Final = frozenset({0xFEFF, 0xFEFD, 0xFEFC})
_QUIC_VERSIONS: Final = {0x00000001: "v1", 0x6B3343CF: "v2", 0x00000000: "version negotiation"}


def dtls_record(datagram: bytes) -> str | None:
    """What DTLS record ``datagram`` opens with (its description), or ``None``."""
    if len(datagram) >= 13 and 20 <= datagram[0] <= 25:
        version = int.from_bytes(datagram[1:3])
        length = int.from_bytes(datagram[11:13])
        if version in _DTLS_VERSIONS and 0 < length <= len(datagram) - 13:
            kind = {20: "change-cipher-spec", 21: "alert", 22: "handshake", 23: "application-data"}.get(datagram[0])
            hello = " ClientHello" if datagram[0] == 22 and len(datagram) > 13 and datagram[13] == 1 else ""
            return f"DTLS record {kind or datagram[0]} version {version:#06x}{hello}"
    if len(datagram) >= 5 and datagram[0] & 0xE0 == 0x20 and datagram[0] & 0x04:  # DTLS 1.3 unified, with a length
        sequence = 2 if datagram[0] & 0x08 else 1
        offset = 1 + (8 if datagram[0] & 0x10 else 0) + sequence
        if offset + 2 <= len(datagram) and int.from_bytes(datagram[offset : offset + 2]) == len(datagram) - offset - 2:
            return "DTLS 1.3 unified-header record"
    return None


def quic_long_header(datagram: bytes) -> str | None:
    """What QUIC long-header packet ``datagram`` is (its description), or ``None``."""
    if len(datagram) < 7 or datagram[0] & 0x80 == 0:
        return None
    version = int.from_bytes(datagram[1:5])
    if version != 0 and datagram[0] & 0x40 == 0:  # the fixed bit (version negotiation may clear it)
        return None
    dcid = datagram[5]
    if dcid > 20 or 6 + dcid >= len(datagram):
        return None
    scid = datagram[6 + dcid]
    if scid > 20 or 7 + dcid + scid > len(datagram):
        return None
    name = _QUIC_VERSIONS.get(version)  # any version: drafts, greased ones (RFC 9000 §15), gQUIC's Q0xx
    kind = ("Initial", "0-RTT", "Handshake", "Retry")[(datagram[0] >> 4) & 3] if version else "negotiation"
    return f"QUIC long header {kind} version {name or f'{version:#010x}'} dcid {datagram[6 : 6 + dcid].hex()[:16]}"


def _first(view: FlowView, detectors: Sequence[Detector]) -> Finding | None:
    for detect in detectors:
        result = detect(view)
        if isinstance(result, Finding):
            return result
    return None


def joined(window: Sequence[bytes]) -> bytes:
    """The window's latest `WINDOW_BYTES` joined, or the latest datagram whole when it is longer. Until red team 12
    the latest 4,096 bytes only: a pool message alone in one datagram of more (XMRig's login with a 5 KB parameter,
    fragmented on the wire) was read from its tail, and crossed whole."""
    return b"".join(window)[-max(WINDOW_BYTES, len(window[-1])) :]


def detect_pool(view: FlowView) -> Result:
    """The pool detectors (`POOL`) on a UDP flow's datagrams, each direction's joined as one stream: the UDP
    detector of captures (`egress scan`) and of the drop logger, which judge a flow's first datagrams as the engine
    holds them (`egress.detect.engine`). The gate judges its own window with `inspect`, which runs `POOL` itself.

    Until the lead's check of red team 12's captures, a scan named nothing in a whole Stratum subscribe or XMRig
    login in one datagram: the scanner's UDP detectors were VPNs, encapsulations and names only. A datagram list
    only grows, so the joined streams grow by their prefix, and the pool detectors keep their memos (and which of
    them have answered None, which is final) in a memo of their own."""
    memo = cast("dict[str, object]", view.memo.setdefault(_POOL_MEMO, {}))
    done = cast("set[int]", memo.setdefault(_POOL_DONE, set()))
    stream = cast("FlowView | None", view.memo.get(_POOL_VIEW))
    if stream is None:  # kept in the flow's memo, not its own (no reference cycle)
        stream = view.memo[_POOL_VIEW] = FlowView(view.meta, memo=memo)
    stream.client = _joined(memo, _POOL_CLIENT, view.client_datagrams, stream.client)
    stream.server = _joined(memo, _POOL_SERVER, view.server_datagrams, stream.server)
    stream.meta, stream.complete = view.meta, view.complete
    waiting = False
    for index, detect in enumerate(POOL):
        if index in done:
            continue
        result = detect(stream)
        if isinstance(result, Finding):
            return result
        if result is MORE:
            waiting = True
        else:
            done.add(index)
    return MORE if waiting else None


_POOL_MEMO: Final = f"{__name__}.pool"
_POOL_DONE: Final = f"{__name__}.pool.done"
_POOL_VIEW: Final = f"{__name__}.pool.view"
_POOL_CLIENT: Final = f"{__name__}.pool.client"
_POOL_SERVER: Final = f"{__name__}.pool.server"


def _joined(memo: dict[str, object], key: str, datagrams: list[bytes], last: bytes) -> bytes:
    """``b"".join(datagrams)``, kept between calls: the very bytes object of the last call where the datagrams are
    the same (the side that did not grow: each reader's memo then answers at its first identity test, where an
    equal new object was compared and read again), the last join and the new datagram where one was added. The
    datagrams it was made of are kept beside it and compared, so any other list is joined afresh."""
    made = cast("tuple[bytes, ...]", memo.get(key, ()))
    count = len(datagrams)
    if count == len(made) and tuple(datagrams) == made:
        return last
    if count == len(made) + 1 and tuple(datagrams[:-1]) == made:
        joined = last + datagrams[-1]
    else:
        joined = b"".join(datagrams)
    memo[key] = tuple(datagrams)
    return joined


def inspect(
    meta: FlowMeta,
    window: Sequence[bytes],
    udp: Sequence[Detector],
    quic: bool = False,
    dtls: bool = False,
    replies: Sequence[bytes] = (),
) -> Finding | None:
    """The finding in a flow's ``window`` of datagrams from the sandbox (the latest last), or ``None``.

    ``udp``: the UDP detectors (`egress.detect.registry.DetectorSet.udp_gate`); ``quic``/``dtls``: whether the rule
    expects that protocol (then it is not refused by itself; what it carries in clear still is);
    ``replies``: the peer's datagrams, when known."""
    latest = list(window)
    views = [latest, latest[-1:]] if len(latest) > 1 else [latest]
    for datagrams in views:  # the whole window, then the latest alone (after junk datagrams a detector gave up)
        view = FlowView(meta, client_datagrams=datagrams, server_datagrams=list(replies), complete=True)
        found = _first(view, udp)
        if found is not None:
            return found
    for datagram in latest:
        if not dtls and (what := dtls_record(datagram)) is not None:
            return Finding(Category.TUNNEL, "dtls", NAME, evidence(f"{what} (the rule does not expect dtls)"))
        if not quic and (what := quic_long_header(datagram)) is not None:
            return Finding(Category.TUNNEL, "quic", NAME, evidence(f"{what} (the rule does not expect quic)"))
    return _first(FlowView(meta, client=joined(latest), complete=True), POOL)


__all__ = [
    "NAME",
    "POOL",
    "WINDOW",
    "WINDOW_BYTES",
    "detect_pool",
    "dtls_record",
    "inspect",
    "joined",
    "quic_long_header",
]
