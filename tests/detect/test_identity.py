"""egress.detect.identity: what a stream has been shown to be when the engine's cap stops its inspection."""

from __future__ import annotations

import pytest

from egress.detect import identity
from egress.detect.base import FlowView
from tests.detect.feeding import META
from tests.detect.test_jsonrpc import HTTP_GET, HTTP_HTML, SSH_BANNER, TLS_CLIENT_HELLO
from tests.detect.test_tls import ANDROID_GOOGLE_HELLO, TOR_CLIENT_HELLO, TOR_SERVER_FLIGHT


@pytest.mark.parametrize(
    ("client", "server", "expected"),
    [
        (TOR_CLIENT_HELLO, TOR_SERVER_FLIGHT, identity.TLS),
        (ANDROID_GOOGLE_HELLO, b"", identity.TLS),
        (ANDROID_GOOGLE_HELLO, b'{"id":1,"result":true}\n', None),  # a "TLS" client answered in JSON
        (TLS_CLIENT_HELLO, b"", None),  # the first bytes of a hello: not shown yet
        (b"\x16\x03\x01\x00\x05" + b'{"id":1}', b"", None),  # a record header alone is not TLS
        (HTTP_GET, HTTP_HTML, identity.HTTP),
        (HTTP_GET, b"\x00\x01", None),
        (SSH_BANNER, SSH_BANNER, identity.SSH),
        (SSH_BANNER, b"{", None),
        (b"\x80" * 64, b"", None),
        (b'{"id":1,"method":"echo"}\n', b"", None),  # JSON-RPC is not a protocol a policy names
    ],
)
def test_identify(client: bytes, server: bytes, expected: str | None) -> None:
    assert identity.identify(FlowView(META, client, server)) == expected
