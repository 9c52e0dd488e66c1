"""Fully encrypted streams: a TCP stream that looks like random bytes from its first byte and is no protocol we know.

Signature: the heuristic the Great Firewall of China used from November 2021 against Shadowsocks, VMess and obfs4
(Wu et al., "How the Great Firewall of China Detects and Blocks Fully Encrypted Traffic", USENIX Security 2023,
Algorithm 1), as nDPI implements it for its ``NDPI_FULLY_ENCRYPTED`` risk (ntop/nDPI ``src/lib/ndpi_main.c``,
``fully_enc_heuristic``, read at commit 3b1286ab). The paper's exemptions of a first data packet:

- Ex1: the average number of set bits per byte is at most 3.4 or at least 4.6 (random bytes average 4.0);
- Ex2: its first 6 bytes are printable ASCII (0x20-0x7e);
- Ex3: more than half of its bytes are printable;
- Ex4: it holds a run of more than 20 printable bytes;
- Ex5: it begins like TLS (``[\\x16-\\x17]\\x03[\\x00-\\x09]``) or an HTTP method.

A stream none of these exempts is "fully encrypted". Where we differ, and why:

- Ex2 and Ex4 are dropped. They keep a national firewall's false positives low on traffic it knows nothing about;
  here a network rule has said what its destination speaks (`egress.policy.model.Expect`), and an attacker meets
  them for free (six printable bytes, then ciphertext). Ex1 and Ex3 cost the attacker real shaping (half the bytes
  printable, or a skewed bit count).
- Ex5 exempts only what *is* TLS or HTTP: a whole ClientHello, a request head that parses. A record header or a
  method word followed by random bytes is judged like any other bytes.
- We judge the stream, not the first packet: the first `WINDOW` bytes of a direction (all there is when the flow
  ends), so a small first segment changes nothing. The gateway's gate judges earlier, from `MIN_BYTES` on
  (`opening`), before a byte is forwarded; this detector judges the whole window again on relayed streams and in
  captures.

SSH is identified by its identification string (RFC 4253 §4.2) and left to `egress.detect.ssh` and the policy.

Gaps (docs/security.md, "Opaque streams"): ciphertext made printable (base64, hex) or shaped to a skewed bit count
is not told apart from text; a stream that opens with more than half a window of printable bytes is judged on that
opening only.
"""

from __future__ import annotations

import enum
from typing import Final

from egress.detect import http, tls
from egress.detect.base import MORE, Category, Finding, FlowView, Result, Transport, evidence

NAME = "encrypted"
PROTOCOL = "unidentified-encrypted"

WINDOW: Final = 1024
"""Bytes of a direction's opening that are judged (a Shadowsocks/VMess first packet is 50-1000 bytes)."""
MIN_BYTES: Final = 16
"""Fewer bytes than this are judged only when they are plainly a text line or mostly zero bits; otherwise the
gate waits for more: the bit count of a handful of bytes says little."""
POPCOUNT_LOW: Final = 3.4
POPCOUNT_HIGH: Final = 4.6
"""Ex1's bounds on set bits per byte (Wu et al. §4.1; nDPI: ``ratio <= 3.4 || ratio >= 4.6`` exempts)."""

_POPCOUNT: Final = bytes(bin(byte).count("1") for byte in range(256))
_PRINTABLE: Final = frozenset(range(0x20, 0x7F))
_TEXT: Final = _PRINTABLE | {0x09, 0x0A, 0x0D}
_PRINTABLE_BYTES: Final = bytes(sorted(_PRINTABLE))
_SSH_BANNERS: Final = (b"SSH-2.0-", b"SSH-1.99-")


class Opening(enum.StrEnum):
    """What the first bytes of a direction are."""

    TLS = "tls"
    """A whole TLS ClientHello."""
    HTTP = "http"
    """An HTTP request head that parses."""
    SSH = "ssh"
    """An SSH identification string."""
    ENCRYPTED = "encrypted"
    """No exemption holds: fully encrypted."""
    PLAIN = "plain"
    """Some exemption holds (Ex1 or Ex3): not random-looking; the protocol detectors judge it."""


def popcount_ratio(data: bytes) -> float:
    """Average set bits per byte (``__builtin_popcount`` summed in nDPI's ``ndpi_popcount_count``)."""
    return sum(data.translate(_POPCOUNT)) / len(data) if data else 0.0


def printable_share(data: bytes) -> float:
    # the printable bytes deleted in C: what is left is the rest
    return (len(data) - len(data.translate(None, _PRINTABLE_BYTES))) / len(data) if data else 0.0


def fully_encrypted(data: bytes) -> bool:
    """True when neither Ex1 nor Ex3 exempts ``data`` (Ex2/Ex4 dropped and Ex5 judged by `opening`; see above)."""
    if not data:
        return False
    ratio = popcount_ratio(data)
    if ratio <= POPCOUNT_LOW or ratio >= POPCOUNT_HIGH:  # Ex1
        return False
    return printable_share(data) <= 0.5  # Ex3


def _ssh(data: bytes) -> bool | None:
    data = data.lstrip(b"\r\n")
    if any(data.startswith(banner) for banner in _SSH_BANNERS):
        return True
    if data and any(banner.startswith(data) for banner in _SSH_BANNERS):
        return None
    return False


def opening(data: bytes, ended: bool = False) -> Opening | None:
    """What ``data``, the first bytes of one direction, are; None: not enough bytes to tell yet.

    ``ended``: no more bytes will come (the flow closed, or the caller stops waiting): judge what there is.
    """
    if not data:
        return None if not ended else Opening.PLAIN
    ssh = _ssh(data)
    if ssh:
        return Opening.SSH
    window = data[:WINDOW]
    if tls.looks_like_tls(data):
        hello = tls.parse_client_hello(data)
        if isinstance(hello, tls.ClientHello):
            return Opening.TLS
        if hello is MORE and not ended:
            return None  # a ClientHello still arriving (a header with random bytes after it does not parse)
    elif len(data) < 3 and data[0] == tls.HANDSHAKE and data[1:] in (b"", b"\x03") and not ended:
        return None
    else:
        request = http.parse_request(data)
        if isinstance(request, http.HttpRequest):
            return Opening.HTTP
        random_looking = request is MORE and len(window) >= MIN_BYTES and fully_encrypted(window)
        if request is MORE and not ended and not random_looking:
            return None  # a method word or a head still arriving; a method word then random bytes is judged
    if ssh is None and not ended:
        return None
    if len(window) < MIN_BYTES and not ended:
        # A few bytes say little: judged now only when plainly a text line (a Redis PING) or mostly zero bits (a
        # binary length header: Postgres' SSLRequest); otherwise the gate waits for more. At most MIN_BYTES - 1
        # bytes of such an opening are forwarded before the rest is judged (the relay runs `detect` on it).
        text_line = window.endswith(b"\n") and all(byte in _TEXT for byte in window)
        return Opening.PLAIN if text_line or (len(window) >= 4 and popcount_ratio(window) <= 2.5) else None
    return Opening.ENCRYPTED if fully_encrypted(window) else Opening.PLAIN


def finding(data: bytes, side: str) -> Finding:
    window = data[:WINDOW]
    text = (
        f"{side} opens with {len(window)} random-looking bytes: {popcount_ratio(window):.2f} bits/byte, "
        f"{printable_share(window):.0%} printable, {window[:12].hex()}"
    )
    return Finding(Category.TUNNEL, PROTOCOL, NAME, evidence(text))


def detect(view: FlowView) -> Result:
    """A TCP flow whose first speaker opens fully encrypted, judged on its first `WINDOW` bytes (the client's
    when it said anything, else the server's: a server-first protocol)."""
    if view.meta.transport is not Transport.TCP:
        return None
    data, side = (view.client, "client") if view.client else (view.server, "server")
    return _judged(data, side, view.complete)


def _judged(data: bytes, side: str, complete: bool) -> Result:
    if not data:
        return None if complete else MORE
    full = complete or len(data) >= WINDOW
    seen = opening(data, ended=full)
    if seen is Opening.ENCRYPTED:
        return finding(data, side)
    if seen is None or (seen is Opening.PLAIN and not full):
        return MORE
    return None


def hello_at(data: bytes) -> int:
    """Where in ``data``'s first `WINDOW` bytes, after its first byte, a ClientHello begins (a handshake record
    whose message is a ClientHello, whole or still arriving), or -1."""
    at = data.find(b"\x16\x03", 1, WINDOW)
    while at > 0:
        hello = tls.parse_client_hello(data[at:])
        if hello is MORE or isinstance(hello, tls.ClientHello):
            return at
        at = data.find(b"\x16\x03", at + 1, WINDOW)
    return -1


def detect_upgrading(view: FlowView) -> Result:
    """`detect` for a host rule's stream, which may upgrade to TLS in band (STARTTLS, PostgreSQL's SSLRequest):
    the client's opening is judged up to where a ClientHello begins in it (`hello_at`), as if it ended there. A
    window that holds a post-quantum hello is random-looking (its X25519MLKEM768 key share is 1,216 random
    bytes: a STARTTLS line then OpenSSL 3.5's hello measures 3.49 bits a byte, 32 % printable); the TLS from the
    hello on is the gate's to judge (a whole hello naming no bound host is refused at it, `Gate.unbound_hello`;
    one naming a bound host is watched, `egress.proxy.upgraded`). Gap: an opening judged plain, then a hello's
    headers and anything inside the record they announce (docs/security.md, "Sixth round")."""
    if view.meta.transport is not Transport.TCP:
        return None
    if view.client:
        at = hello_at(view.client)
        if at > 0:
            return _judged(view.client[:at], "client", True)
    return detect(view)


STREAM_PROTOCOL: Final = "fully-encrypted"
"""The scanner's label for a fully encrypted proxy stream (`detect_stream`)."""
STREAM_MIN: Final = 48
"""Bytes a client's opening holds at least to be taken for a proxy's: a Shadowsocks AEAD request is a salt (16-32
bytes), an encrypted length with its tag (18) and a first payload with its tag (an address and data, 16+), so 57
bytes or more; VMess AEAD's is an authentication id (16), an encrypted length with its tag (18), a nonce (8) and a
header of 41 or more with its tag (SIP-003 and the V2Ray "VMess AEAD" specification). The corpus's: 636 and 681."""


def _record_header(data: bytes) -> bool:
    """Ex5 as the GFW and nDPI apply it: the bytes start like a TLS record (content type 20-23, version 3.x), which
    a capture that begins inside a TLS connection shows at the start of its first whole segment."""
    return len(data) >= 3 and 20 <= data[0] <= 23 and data[1] == 3 and data[2] <= 9


def detect_stream(view: FlowView) -> Result:
    """A TCP flow whose client opens fully encrypted with at least `STREAM_MIN` bytes, and whose server, if it
    answered, answers fully encrypted too: a Shadowsocks, VMess or obfs4-like proxy, wherever it listens.

    The capture scanner's form of `detect`, which needs no network rule: stricter, since it runs on every TCP flow
    of a capture, not only on a destination whose protocol a rule named. A server that answers in a protocol the
    exemptions know (a TLS record, a banner, text) clears the flow, as does a short opening (a binary protocol's
    few-byte header)."""
    if view.meta.transport is not Transport.TCP:
        return None
    client, server = view.client, view.server
    if not client:
        return None if view.complete or server else MORE
    full = view.complete or len(client) >= WINDOW
    seen = opening(client, ended=full)
    if seen in (Opening.TLS, Opening.HTTP, Opening.SSH):
        return None  # a structure, whole: more bytes do not change it
    if seen is None or not full:
        # The bit count is judged on the whole window, never a prefix of it: a prefix's count can fall either side
        # of the band, so judging early would make the answer depend on how the bytes were segmented.
        return MORE
    if seen is not Opening.ENCRYPTED or len(client) < STREAM_MIN or _record_header(client):
        return None
    if server:
        if not view.complete and len(server) < WINDOW:
            return MORE
        if not fully_encrypted(server[:WINDOW]) or _record_header(server):
            return None
    elif not view.complete:
        return MORE
    found = finding(client, "client")
    return Finding(Category.TUNNEL, STREAM_PROTOCOL, NAME, found.evidence)
