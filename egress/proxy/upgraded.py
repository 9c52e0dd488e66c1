"""Watching TLS that starts mid-stream, to a host rule's port: a protocol that upgrades in band (STARTTLS,
PostgreSQL's SSLRequest), or a server that speaks first and a client that answers with a ClientHello.

mitmproxy relays such a stream as bytes (`egress.proxy.mitm.layers.InspectLayer`): its opening is no hello, so
the front never takes it. A whole ClientHello naming a bound host inside it keeps the inspection's cap from
judging it unidentified (`egress.proxy.gate.Gate.bound_tls_in`), so the TLS after the opening reached a bound
name with no shape watcher (issue 9: Stratum or SSH inside TLS after a ``STARTTLS`` line, or after a server's
banner). `Upgraded` finds where TLS starts in each direction and feeds the front's `egress.proxy.relay.Watch`
from there: the client's at that bound ClientHello, the server's at its first handshake record after it (the
ServerHello, which the watcher reads for the record overhead). The bytes before are the plaintext opening, the
stream detectors' to judge. Until the client's hello is found nothing is watched; past the inspection's cap
without one the stream is judged unidentified anyway, and no more is looked for.

Pure: the layer shows it each chunk before forwarding it, as the front's relay does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from egress.detect.engine import STREAM_CAP
from egress.detect.miningshape import MiningShape
from egress.policy.model import DetectorAction, Sandbox
from egress.proxy.relay import OnFinding, Watch

_RECORD_TYPES: Final = frozenset({20, 21, 22, 23})
"""change_cipher_spec, alert, handshake, application_data (RFC 8446 §5.1)."""
_HANDSHAKE_RECORD: Final = b"\x16\x03"
"""A TLS handshake record's type and the major version byte (RFC 8446 §5.1): where a server's TLS starts."""


OnHello = Callable[[bytes], bool | None]
"""Judges the client's bytes so far for a whole ClientHello whose name is not bound (`Gate.unbound_hello`) and
records what the front would: None while there is none; True when it is refused (close); False when let on."""


class Upgraded:
    """Feeds ``watch`` the TLS part of an inspected stream. ``hello_at``: the offset of a whole ClientHello that
    names a bound host in the client's bytes so far, or -1 (`Gate.bound_hello_at`); ``unbound``: the judgement
    of one that names no bound host (`OnHello`)."""

    __slots__ = (
        "watch", "hello_at", "unbound", "judged", "cap", "client", "server", "client_tls", "server_tls", "hello",
        "_records",
    )  # fmt: skip

    def __init__(
        self, watch: Watch, hello_at: Callable[[bytes], int], cap: int = STREAM_CAP, unbound: OnHello | None = None
    ) -> None:
        self.watch = watch
        self.hello_at = hello_at
        self.unbound = unbound
        self.judged = False
        """An unbound hello was judged and let on (report mode's would-block): not judged again."""
        self.cap = cap
        self.client = b""
        """The client's bytes while its TLS has not been found."""
        self.server = b""
        """The server's bytes after the client's hello while its TLS has not been found."""
        self.client_tls = False
        self.server_tls = False
        self.hello = b""
        """The client's bytes from its ClientHello on, as far as they had come when it was found (its name)."""
        self._records = _Records()

    @property
    def client_records(self) -> bool:
        """Whether the client's bytes are TLS records from its hello up to now: its direction is TLS, which the
        layer's hold for partial JSON messages leaves alone (`egress.proxy.holdback`: a TLS direction is never
        held; a pause with an open brace in ciphertext must not be judged a message left open)."""
        return self.client_tls and self._records.intact

    def passes(self, from_client: bool, data: bytes) -> bool:
        """Whether ``data`` may be forwarded; False: a blocking finding (reported by the watch's callback), close."""
        if from_client:
            if self.client_tls:
                self._records.feed(data)
                return self.watch.passes(True, data)
            if len(self.client) >= self.cap:
                return True  # no hello within the cap: the inspection judges the stream
            self.client += data
            at = self.hello_at(self.client)
            if at < 0:
                if self.unbound is None or self.judged:
                    return True
                refused = self.unbound(self.client)
                self.judged = refused is not None
                return not refused
            self.client_tls, self.hello, self.client = True, self.client[at:], b""
            self._records.feed(self.hello)
            return self.watch.passes(True, self.hello)
        if self.server_tls:
            return self.watch.passes(False, data)
        if not self.client_tls:
            return True  # the server's plaintext opening (a banner, an answer to STARTTLS)
        self.server += data
        at = self.server.find(_HANDSHAKE_RECORD)
        if at < 0:
            self.server = self.server[-1:]  # the record's first byte may end this chunk
            return True
        self.server_tls, tls, self.server = True, self.server[at:], b""
        return self.watch.passes(False, tls)


class _Records:
    """Follows one direction's TLS record headers (RFC 8446 §5.1): ``intact`` while every record has a TLS type
    and version (the bytes after a hello may be anything; once they are no record stream, they are held again)."""

    __slots__ = ("skip", "header", "intact")

    def __init__(self) -> None:
        self.skip = 0
        self.header = b""
        self.intact = True

    def feed(self, data: bytes) -> None:
        offset = 0
        while self.intact and offset < len(data):
            if self.skip:
                step = min(self.skip, len(data) - offset)
                self.skip -= step
                offset += step
                continue
            take = data[offset : offset + 5 - len(self.header)]
            self.header += take
            offset += len(take)
            if len(self.header) < 5:
                return
            kind, major, length = self.header[0], self.header[1], int.from_bytes(self.header[3:5])
            self.intact = kind in _RECORD_TYPES and major == 3
            self.skip, self.header = length, b""


def host_rule_watch(sandbox: Sandbox, on_finding: OnFinding) -> Watch:
    """The watch the front puts on TLS to a host rule's bound name (`egress.proxy.front.Front._watch` with
    ``suspicions=False``): SSH inside TLS, and mining told from the shape unless ``detectors.mining_shape`` is
    ``allow``."""
    shape = sandbox.detectors.mining_shape is not DetectorAction.ALLOW
    mining = MiningShape(float(sandbox.detectors.mining_shape_window)) if shape else None
    return Watch(on_finding, mining=mining, suspicions=False)
