"""egress.detect.sshshape: SSH forwarding told from its encrypted traffic's shape, on real sessions recorded in
front of OpenSSH (tests/detect/sshshape_traces.py): the forwarding sessions are found, the interactive, exec, scp
and sftp ones are not."""

from __future__ import annotations

import pytest

from egress.detect import sshshape
from egress.detect.base import Category, Finding
from egress.detect.sshshape import SshShape
from tests.detect import sshshape_traces as traces

BENIGN = {
    "interactive": traces.INTERACTIVE,
    "exec": traces.EXEC,
    "scp-get": traces.SCP_GET,
    "scp-put": traces.SCP_PUT,
    "sftp": traces.SFTP,
}
FORWARDING = {"forward-L": traces.FORWARD_L, "forward-D": traces.FORWARD_D}


def _opened(clear: tuple[bytes, ...] = traces.CLEAR) -> SshShape:
    shape = SshShape()
    for chunk in clear:
        assert shape.feed(chunk[:1] == b"C", chunk[1:], 0.0) is None
    assert shape.client.done and shape.server.done and not shape.done
    return shape


def _replay(reads: traces.Reads, shape: SshShape | None = None) -> Finding | None:
    shape = shape or _opened()
    found = [shape.feed(from_client, bytes(size), at) for from_client, size, at in reads]
    hits = [finding for finding in found if finding is not None]
    assert len(hits) <= 1
    return hits[0] if hits else None


@pytest.mark.parametrize("reads", FORWARDING.values(), ids=FORWARDING.keys())
def test_port_forwarding_sessions_are_found(reads: traces.Reads) -> None:
    found = _replay(reads)
    assert found is not None
    assert (found.category, found.protocol, found.detector) == (Category.TUNNEL, "ssh-forwarding", "sshshape")
    assert "exchanges" in found.evidence and "0 keystrokes" in found.evidence
    assert found.protocol in sshshape.SUSPECTED


@pytest.mark.parametrize("reads", BENIGN.values(), ids=BENIGN.keys())
def test_shell_exec_and_copy_sessions_are_not(reads: traces.Reads) -> None:
    assert _replay(reads) is None


def test_a_session_seen_typing_is_left_alone() -> None:
    """Keystrokes (a small client read, its echo within 150 ms) first: the session is interactive, and forwarding
    that follows is not told (a documented gap)."""
    shape = _opened()
    auth, rest = traces.FORWARD_L[: sshshape.AUTH_CHUNKS], traces.FORWARD_L[sshshape.AUTH_CHUNKS :]
    start = auth[-1][2] + 0.5
    keys: list[tuple[bool, int, float]] = []
    for index in range(4):
        keys += [(True, 36, start + index * 0.2), (False, 36, start + index * 0.2 + 0.01)]
    later = tuple((from_client, size, at + 2.0) for from_client, size, at in rest)
    assert _replay(auth + tuple(keys) + later, shape) is None
    assert shape.done and shape.keystrokes == sshshape.KEYSTROKES_MAX + 1


def test_the_cleartext_is_parsed_however_it_is_split() -> None:
    client = b"".join(chunk[1:] for chunk in traces.CLEAR if chunk[:1] == b"C")
    server = b"".join(chunk[1:] for chunk in traces.CLEAR if chunk[:1] == b"S")
    for offset in range(0, len(client), 37):
        shape = SshShape()
        shape.feed(False, server[:offset], 0.0)
        shape.feed(True, client[:offset], 0.0)
        shape.feed(False, server[offset:], 0.0)
        shape.feed(True, client[offset:], 0.0)
        assert shape.client.done and shape.server.done and not shape.done, offset


@pytest.mark.parametrize(
    "opening",
    [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", bytes(300), b"SSH-2.0-x\r\n\xff\xff\xff\xff\x05" + bytes(20)],
    ids=["http", "zeros", "bad-packet-length"],
)
def test_what_is_not_ssh_ends_watching(opening: bytes) -> None:
    shape = SshShape()
    assert shape.feed(True, opening, 0.0) is None
    assert shape.done
