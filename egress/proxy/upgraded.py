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

_HANDSHAKE_RECORD: Final = b"\x16\x03"
"""A TLS handshake record's type and the major version byte (RFC 8446 §5.1): where a server's TLS starts."""


class Upgraded:
    """Feeds ``watch`` the TLS part of an inspected stream. ``hello_at``: the offset of a whole ClientHello that
    names a bound host in the client's bytes so far, or -1 (`Gate.bound_hello_at`)."""

    __slots__ = ("watch", "hello_at", "cap", "client", "server", "client_tls", "server_tls")

    def __init__(self, watch: Watch, hello_at: Callable[[bytes], int], cap: int = STREAM_CAP) -> None:
        self.watch = watch
        self.hello_at = hello_at
        self.cap = cap
        self.client = b""
        """The client's bytes while its TLS has not been found."""
        self.server = b""
        """The server's bytes after the client's hello while its TLS has not been found."""
        self.client_tls = False
        self.server_tls = False

    def passes(self, from_client: bool, data: bytes) -> bool:
        """Whether ``data`` may be forwarded; False: a blocking finding (reported by the watch's callback), close."""
        if from_client:
            if self.client_tls:
                return self.watch.passes(True, data)
            if len(self.client) >= self.cap:
                return True  # no hello within the cap: the inspection judges the stream
            self.client += data
            at = self.hello_at(self.client)
            if at < 0:
                return True
            self.client_tls, tls, self.client = True, self.client[at:], b""
            return self.watch.passes(True, tls)
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


def host_rule_watch(sandbox: Sandbox, on_finding: OnFinding) -> Watch:
    """The watch the front puts on TLS to a host rule's bound name (`egress.proxy.front.Front._watch` with
    ``suspicions=False``): SSH inside TLS, and mining told from the shape unless ``detectors.mining_shape`` is
    ``allow``."""
    shape = sandbox.detectors.mining_shape is not DetectorAction.ALLOW
    mining = MiningShape(float(sandbox.detectors.mining_shape_window)) if shape else None
    return Watch(on_finding, mining=mining, suspicions=False)
