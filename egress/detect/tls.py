"""TLS handshake parsing from a stream prefix: the ClientHello, the ServerHello and the server's certificates.

A pure parser shared by the detectors, the DNS side (DoH by SNI) and the proxy. It reads the handshake messages
carried by the leading handshake records (content type 22) of one direction, so a hello split over several
records or TCP segments parses the same as a whole one. Layouts follow RFC 8446 §4 (and RFC 5246 §7.4 for the
TLS 1.2 Certificate message), extensions per RFC 6066 §3 (server_name), RFC 7301 §3.1 (ALPN) and RFC 8446 §4.2.1
(supported_versions). Certificates are walked with a minimal DER reader (X.690) just far enough to pull the
issuer and subject common names (RFC 5280 §4.1).

Public surface:

- `looks_like_tls(prefix)`: cheap test that a stream starts with a TLS handshake record.
- `starts_with_hello(prefix)`: whether a whole ClientHello or ServerHello follows that record header.
- `parse_client_hello(prefix, partial)` / `parse_server_hello(prefix, partial)`: a frozen result, ``None`` when
  the bytes are not that message, or `MORE` while the message is still incomplete. With ``partial=True`` a
  truncated message is parsed as far as it goes (use it once the flow is complete).
- `client_hello_of(view)`: `parse_client_hello` of a `FlowView`'s client bytes, read once per view (a whole hello
  read before, by the gate or another detector, is kept in the view's memo under `HELLO_MEMO`).
- `cert_names(der)`: ``(issuer CN, subject CN)`` of one DER certificate, or ``None``.
- `cert_alt_names(der)`: the DNS names of its subjectAltName extension (RFC 5280 §4.2.1.6).

Each hello parse keeps its last answer with the very bytes object it read and the ``partial`` it was asked with:
the detectors of one flow ask about the same ``view.client``/``view.server`` in turn (the JSON-RPC reader's
hello test, Tor, circumvention, names, the opaque-stream test), and the same object reads the same (bytes are
immutable), so a second ask costs one identity test. The parse itself is compiled where egress/detect/_tlsfast.c
was built (`egress.detect.tlsfast`); `_parse_client_hello` below is its pure twin, which gives the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from egress.detect import tlsfast
from egress.detect.base import MORE, FlowView, _More

HANDSHAKE = 22
CLIENT_HELLO = 1
SERVER_HELLO = 2
CERTIFICATE = 11
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
TLS13 = 0x0304
HELLO_MEMO = "egress.detect.tls"
"""`FlowView.memo` key of a whole ClientHello at the start of the client bytes (`client_hello_of`)."""
_MAX_RECORD = (1 << 14) + 2048
"""RFC 8446 §5.2: a TLSCiphertext fragment is at most 2^14 + 256 bytes; TLS 1.2 allowed + 2048."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    version: int
    """legacy_version of the hello (0x0303 for TLS 1.2 and 1.3)."""
    supported_versions: tuple[int, ...]
    sni: str | None
    alpn: tuple[str, ...]
    cipher_suites: tuple[int, ...]
    extensions: tuple[int, ...]
    """Extension types in the order sent (GREASE values included)."""
    truncated: bool
    """True when parsed with ``partial=True`` from an incomplete message: later fields may be missing."""

    @property
    def cipher_suite_count(self) -> int:
        return len(self.cipher_suites)


@dataclass(frozen=True, slots=True)
class ServerHello:
    version: int
    """The negotiated version: supported_versions when present, else legacy_version."""
    cipher_suite: int
    extensions: tuple[int, ...]
    certificates: tuple[bytes, ...]
    """DER certificates of a TLS 1.2-or-older Certificate message; empty for TLS 1.3 (encrypted) or when absent."""


def looks_like_tls(prefix: bytes) -> bool:
    """True when the prefix (at least 3 bytes) starts like a TLS handshake record: ``16 03 0x``."""
    return len(prefix) >= 3 and prefix[0] == HANDSHAKE and prefix[1] == 3 and prefix[2] <= 4


def starts_with_hello(prefix: bytes) -> bool | None:
    """Whether ``prefix`` starts with a *whole* ClientHello or ServerHello carried in handshake records.

    True when it does; False when it cannot (no record header, or the records hold something else: a 5-byte
    header followed by JSON is not TLS); None while the hello is still arriving. Only a whole hello shows a
    stream to be TLS: a record header alone is five bytes anyone can send.
    """
    if not looks_like_tls(prefix):
        return None if len(prefix) < 3 and prefix == b"\x16\x03"[: len(prefix)] else False
    stream, ended = _handshake_stream(prefix)
    if not stream:
        return False if ended else None
    if stream[0] == CLIENT_HELLO:
        hello = parse_client_hello(prefix)
        return None if hello is MORE else isinstance(hello, ClientHello)
    if stream[0] == SERVER_HELLO:
        got = _message(stream, 0, ended, False)
        if not isinstance(got, tuple):
            return None if got is MORE else False
        _, body, truncated = got
        return not truncated and len(body) >= 38  # version, random, session id length: RFC 8446 §4.1.3
    return False


def _handshake_stream(prefix: bytes) -> tuple[bytes, bool]:
    """Concatenate the payloads of the leading handshake records; True when a later non-handshake record or a
    malformed header ends the run (no more handshake bytes can follow in this flight)."""
    out = bytearray()
    offset = 0
    while offset + 5 <= len(prefix):
        ctype, major, minor = prefix[offset], prefix[offset + 1], prefix[offset + 2]
        length = int.from_bytes(prefix[offset + 3 : offset + 5])
        if ctype != HANDSHAKE or major != 3 or minor > 4 or length > _MAX_RECORD:
            return bytes(out), True
        out += prefix[offset + 5 : offset + 5 + length]
        offset += 5 + length
    return bytes(out), False


def _message(stream: bytes, offset: int, ended: bool, partial: bool) -> tuple[int, bytes, bool] | None | _More:
    """The handshake message at ``offset``: (type, body, truncated)."""
    if offset + 4 > len(stream):
        return None if ended or partial else MORE
    length = int.from_bytes(stream[offset + 1 : offset + 4])
    body = stream[offset + 4 : offset + 4 + length]
    if len(body) < length:
        if partial or ended:
            return stream[offset], body, True
        return MORE
    return stream[offset], body, False


class _Reader:
    """Bounds-checked cursor; reading past the end raises `_Short`."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Short
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2))

    def vec8(self) -> bytes:
        return self.take(self.u8())

    def vec16(self) -> bytes:
        return self.take(self.u16())

    def left(self) -> int:
        return len(self.data) - self.pos


class _Short(Exception):
    """The body ended before a field did."""


def _extensions(reader: _Reader) -> list[tuple[int, bytes]]:
    """Extensions as (type, body); a truncated block yields the whole extensions before the cut."""
    if reader.left() < 2:
        return []
    declared = reader.u16()
    block = _Reader(reader.take(min(declared, reader.left())))
    found: list[tuple[int, bytes]] = []
    while block.left() >= 4:
        kind = block.u16()
        try:
            found.append((kind, block.vec16()))
        except _Short:
            break
    return found


def _sni(body: bytes) -> str | None:
    reader = _Reader(body)
    try:
        names = _Reader(reader.vec16())
        while names.left():
            kind = names.u8()
            name = names.vec16()
            if kind == 0:
                return name.decode("ascii", "replace").lower()
    except _Short:
        return None
    return None


def _alpn(body: bytes) -> tuple[str, ...]:
    reader = _Reader(body)
    protocols: list[str] = []
    try:
        items = _Reader(reader.vec16())
        while items.left():
            protocols.append(items.vec8().decode("ascii", "replace"))
    except _Short:
        pass
    return tuple(protocols)


def _first_message(prefix: bytes, kind: int, partial: bool) -> tuple[bytes, bool, bytes, bool] | None | _More:
    """The first handshake message of a stream prefix if it is of ``kind``: (body, truncated, the handshake
    stream, whether the prefix ended it), or what the parse should answer instead (None, MORE)."""
    if len(prefix) < 3:
        return MORE if prefix == b"\x16\x03"[: len(prefix)] else None
    if not looks_like_tls(prefix):
        return None
    stream, ended = _handshake_stream(prefix)
    if stream and stream[0] != kind:
        return None
    got = _message(stream, 0, ended, partial)
    if not isinstance(got, tuple):
        return got
    _, body, truncated = got
    return body, truncated, stream, ended


_fast_client_hello = tlsfast.COMPILED.client_hello if tlsfast.COMPILED is not None else None
"""_tlsfast.c's parse: ``client_hello(prefix, partial, MORE, ClientHello)`` gives what `_parse_client_hello` does."""
_last_client: list[tuple[object, bool, ClientHello | None | _More]] = [(object(), False, None)]
"""`parse_client_hello`'s last (input bytes object, partial, answer), one item swapped whole: a reader in another
thread sees a matching triple."""
_fast_server_hello = tlsfast.COMPILED.server_hello if tlsfast.COMPILED is not None else None
"""_tlsfast.c's parse: ``server_hello(prefix, partial, MORE, ServerHello)`` gives what `_parse_server_hello` does."""
_last_server: list[tuple[object, bool, ServerHello | None | _More]] = [(object(), False, None)]


def parse_client_hello(prefix: bytes, partial: bool = False) -> ClientHello | None | _More:
    """The ClientHello at the start of a client stream prefix."""
    last = _last_client[0]
    if last[0] is prefix and last[1] == partial:
        return last[2]
    answer: ClientHello | None | _More = (
        _fast_client_hello(prefix, partial, MORE, ClientHello)
        if _fast_client_hello is not None
        else _parse_client_hello(prefix, partial)
    )
    _last_client[0] = (prefix, partial, answer)
    return answer


def _parse_client_hello(prefix: bytes, partial: bool) -> ClientHello | None | _More:
    """The pure twin of _tlsfast.c's ``client_hello``."""
    first = _first_message(prefix, CLIENT_HELLO, partial)
    if not isinstance(first, tuple):
        return first
    body, truncated, _, _ = first
    reader = _Reader(body)
    suites: list[int] = []
    exts: list[tuple[int, bytes]] = []
    try:
        version = reader.u16()
        reader.take(32)
        reader.vec8()
        raw_suites = reader.vec16()
        suites = [int.from_bytes(raw_suites[i : i + 2]) for i in range(0, len(raw_suites) - 1, 2)]
        reader.vec8()
        if reader.left():
            exts = _extensions(reader)
    except _Short:
        if not truncated:
            return None
        if not suites:
            return None
        truncated = True
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    for kind, ext in exts:
        if kind == EXT_SERVER_NAME:
            sni = _sni(ext)
        elif kind == EXT_ALPN:
            alpn = _alpn(ext)
        elif kind == EXT_SUPPORTED_VERSIONS and ext:
            versions = tuple(int.from_bytes(ext[i : i + 2]) for i in range(1, min(len(ext), ext[0] + 1) - 1, 2))
    return ClientHello(version, versions, sni, alpn, tuple(suites), tuple(k for k, _ in exts), truncated)


def client_hello_of(view: FlowView) -> ClientHello | None | _More:
    """``parse_client_hello(view.client, partial=view.complete)``, read once per view: a whole (not truncated)
    ClientHello is the same for every longer prefix and either ``partial``, so it is kept in the view's memo and
    whoever parsed it first (the gate, one detector) spares the others the parse."""
    kept = view.memo.get(HELLO_MEMO)
    if isinstance(kept, ClientHello):
        return kept
    hello = parse_client_hello(view.client, partial=view.complete)
    if isinstance(hello, ClientHello) and not hello.truncated:
        view.memo[HELLO_MEMO] = hello
    return hello


def parse_server_hello(prefix: bytes, partial: bool = False) -> ServerHello | None | _More:
    """The ServerHello (and, below TLS 1.3, the Certificate message after it) of a server stream prefix."""
    last = _last_server[0]
    if last[0] is prefix and last[1] == partial:
        return last[2]
    answer: ServerHello | None | _More = (
        _fast_server_hello(prefix, partial, MORE, ServerHello)
        if _fast_server_hello is not None
        else _parse_server_hello(prefix, partial)
    )
    _last_server[0] = (prefix, partial, answer)
    return answer


def _parse_server_hello(prefix: bytes, partial: bool) -> ServerHello | None | _More:
    """The pure twin of _tlsfast.c's ``server_hello``."""
    first = _first_message(prefix, SERVER_HELLO, partial)
    if not isinstance(first, tuple):
        return first
    body, truncated, stream, ended = first
    reader = _Reader(body)
    try:
        version = reader.u16()
        reader.take(32)
        reader.vec8()
        suite = reader.u16()
        reader.u8()
    except _Short:
        return None
    exts = _extensions(reader) if reader.left() else []
    for kind, ext in exts:
        if kind == EXT_SUPPORTED_VERSIONS and len(ext) == 2:
            version = int.from_bytes(ext)
    kinds = tuple(k for k, _ in exts)
    if version >= TLS13 or truncated:
        return ServerHello(version, suite, kinds, ())
    certs = _certificates(stream, 4 + len(body), ended, partial)
    if certs is MORE:
        return MORE
    return ServerHello(version, suite, kinds, certs if isinstance(certs, tuple) else ())


def _certificates(stream: bytes, offset: int, ended: bool, partial: bool) -> tuple[bytes, ...] | None | _More:
    """The certificate_list of a TLS 1.2 Certificate message at ``offset`` (RFC 5246 §7.4.2)."""
    got = _message(stream, offset, ended, partial)
    if not isinstance(got, tuple):
        return got
    kind, body, _ = got
    if kind != CERTIFICATE:
        return None
    reader = _Reader(body)
    certs: list[bytes] = []
    try:
        total = int.from_bytes(reader.take(3))
        chain = _Reader(reader.data[reader.pos : reader.pos + total])
        while chain.left() >= 3:
            certs.append(chain.take(int.from_bytes(chain.take(3))))
    except _Short:
        pass
    return tuple(certs)


_OID_COMMON_NAME = b"\x06\x03\x55\x04\x03"


def _der(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """(tag, start of contents, end of contents) of the DER element at ``pos``."""
    if pos + 2 > len(data):
        return None
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            return None
        length = int.from_bytes(data[pos : pos + count])
        pos += count
    if pos + length > len(data):
        return None
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    items: list[tuple[int, int, int]] = []
    pos = start
    while pos < end:
        item = _der(data, pos)
        if item is None or item[2] > end:
            break
        items.append(item)
        pos = item[2]
    return items


def _common_name(data: bytes, start: int, end: int) -> str | None:
    """The CN of an X.501 Name: the first ``06 03 55 04 03`` OID followed by a string."""
    at = data.find(_OID_COMMON_NAME, start, end)
    if at < 0:
        return None
    value = _der(data, at + len(_OID_COMMON_NAME))
    if value is None or value[2] > end:
        return None
    return data[value[1] : value[2]].decode("latin-1")


def cert_names(der: bytes) -> tuple[str | None, str | None] | None:
    """(issuer CN, subject CN) of a DER X.509 certificate, or ``None`` when it does not parse."""
    cert = _der(der, 0)
    if cert is None or cert[0] != 0x30:
        return None
    parts = _children(der, cert[1], cert[2])
    if not parts or parts[0][0] != 0x30:
        return None
    fields = _children(der, parts[0][1], parts[0][2])
    if fields and fields[0][0] == 0xA0:
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject
    if len(fields) < 5:
        return None
    issuer, subject = fields[2], fields[4]
    return _common_name(der, issuer[1], issuer[2]), _common_name(der, subject[1], subject[2])


_OID_SUBJECT_ALT_NAME = b"\x06\x03\x55\x1d\x11"
_DNS_NAME = 0x82
"""GeneralName's ``dNSName [2] IA5String`` (RFC 5280 §4.2.1.6), implicitly tagged."""


def cert_alt_names(der: bytes) -> tuple[str, ...]:
    """The dNSName entries of a DER certificate's subjectAltName extension (empty when it has none or does not
    parse): where a CDN's shared certificate lists the domains it serves."""
    at = der.find(_OID_SUBJECT_ALT_NAME)
    if at < 0:
        return ()
    pos = at + len(_OID_SUBJECT_ALT_NAME)
    item = _der(der, pos)
    if item is not None and item[0] == 0x01:  # the optional ``critical`` BOOLEAN
        pos = item[2]
        item = _der(der, pos)
    if item is None or item[0] != 0x04:  # extnValue OCTET STRING
        return ()
    names = _der(der, item[1])
    if names is None or names[0] != 0x30 or names[2] > item[2]:
        return ()
    return tuple(
        der[start:end].decode("latin-1") for tag, start, end in _children(der, names[1], names[2]) if tag == _DNS_NAME
    )
