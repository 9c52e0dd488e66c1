"""The TLS record-shape watcher (egress.detect.tlsshape) on record traces the lab recorded: SSH, TLS and a pty
shell inside stunnel are found before the tunnel is of use (before user authentication completes, before the
inner request, before a command is typed whole); HTTPS is not."""

from __future__ import annotations

import random

import pytest

from egress.detect.base import Finding
from egress.detect.tlsshape import MAX_RECORDS, TlsShape, mahalanobis
from tests.budget import examples
from tests.detect import tlsshape_traces as traces


def _replay(trace: traces.Trace, split: int = 0, want: str = "", suspicions: bool = True) -> tuple[Finding | None, int]:
    """Feed a trace's records (headers, zero bodies; the real ServerHello) to a watcher; ``split`` > 0 cuts each
    record into pieces of that many bytes. Returns the first finding (of protocol ``want``, if given) and the index
    of the record that completed it."""
    hello, records = trace
    shape = TlsShape(suspicions=suspicions)
    first_server = True
    for index, (ms, side, kind, length) in enumerate(records):
        if side == "s" and first_server:
            data = bytes.fromhex(hello)
            first_server = False
        else:
            data = bytes([kind, 3, 3]) + length.to_bytes(2) + bytes(length)
        pieces = [data[i : i + split] for i in range(0, len(data), split)] if split else [data]
        for piece in pieces:
            found = shape.feed(side == "c", piece, ms / 1000)
            if found is not None and want in ("", found.protocol):
                return found, index
    return None, len(records)


@pytest.mark.parametrize("split", [0, 1, 7, 1000])
@pytest.mark.parametrize(
    ("name", "protocol", "before"),
    [
        # found on the client's first encrypted packet (SERVICE_REQUEST, 44 bytes), which is not forwarded: the
        # server never gets an encrypted byte (before: its USERAUTH_SUCCESS, after the authentication request)
        ("SSH_EXEC", "ssh-in-tls", 18),
        ("SSH_SOCKS", "ssh-in-tls", 15),
        ("SSH_SHELL", "ssh-in-tls", 15),
        # found when the outer records of the inner handshake are complete, before the inner request's answer
        ("TLS_IN_TLS", "tls-in-tls", 17),
        ("TLS_IN_TLS_BULK", "tls-in-tls", 14),
        # found on the 8th echoed key: "echo hel", before the first command is entered
        ("PTY_SHELL", "interactive-shell", 30),
    ],
)
def test_tunnels_in_tls_are_found_early(name: str, protocol: str, before: int, split: int) -> None:
    found, at = _replay(getattr(traces, name), split)
    assert found is not None and found.protocol == protocol, found
    assert at <= before, (at, found)


@pytest.mark.parametrize("index", range(len(traces.HTTPS)))
def test_https_is_not_a_tunnel(index: int) -> None:
    found, _ = _replay(traces.HTTPS[index])
    assert found is None, found


def test_keep_alive_https_with_large_repeated_requests_is_not_tls_in_tls() -> None:
    """The shape nDPI's Chrome model alone would match: 1.5 KB requests, 5 KB answers, again and again."""
    hello, _ = traces.HTTPS[0]
    records: list[tuple[float, str, int, int]] = [(0.0, "c", 22, 517), (2.0, "s", 22, 0)]
    records += [(3.0, "s", 23, 50), (4.0, "c", 23, 69)]  # the server's handshake, the client's Finished
    ms = 5.0
    for _ in range(6):
        records += [(ms, "c", 23, 1595), (ms + 3, "s", 23, 250), (ms + 4, "s", 23, 5424)]
        ms += 50
    assert _replay((hello, tuple(records)))[0] is None


def test_random_small_records_rarely_look_like_ssh() -> None:
    """Records of random sizes under 1 KiB: the 4-mod-8 window (the one shape that blocks) must not fire (odds
    about 2e-6 per window); the shapes that are only recorded may."""
    hello, _ = traces.HTTPS[0]
    rng = random.Random(9)
    fired = 0
    for _ in range(examples(200)):
        records = [(0.0, "c", 22, 517), (2.0, "s", 22, 0), (3.0, "s", 23, 50), (4.0, "c", 23, 69)]
        records += [(5.0 + i, "cs"[i % 2], 23, rng.randrange(40, 1000)) for i in range(150)]
        fired += _replay((hello, tuple(records)), want="ssh-in-tls")[0] is not None
    assert fired == 0


HELLO = bytes([22, 3, 1]) + (512).to_bytes(2) + bytes(512)
"""A ClientHello's record (its body is not read)."""
STRATUM = b'\n{"id": 1, "method": "mining.subscribe", "params": []}\n'


@pytest.mark.parametrize("split", [0, 1, 7])
def test_client_bytes_that_are_no_record_after_the_hello_are_a_tunnel(split: int) -> None:
    """Red team 12b: Stratum in clear behind a real ClientHello ended the watch and was relayed unseen."""
    shape = TlsShape()
    data = HELLO + STRATUM
    pieces = [data[i : i + split] for i in range(0, len(data), split)] if split else [data]
    found = [shape.feed(True, piece, 0.0) for piece in pieces]
    assert [f.protocol for f in found if f is not None] == ["not-tls"]
    assert shape.done


def test_a_server_that_is_not_tls_leaves_the_client_watched() -> None:
    shape = TlsShape()
    assert shape.feed(True, HELLO, 0.0) is None
    assert shape.feed(False, b'{"id": 1, "result": true}\n', 0.1) is None
    assert not shape.done
    found = shape.feed(True, STRATUM, 0.2)
    assert found is not None and found.protocol == "not-tls"


def test_records_without_a_server_hello_do_not_end_the_watch() -> None:
    """Past MAX_RECORDS one-byte records from the client alone, the watch still reads: the bytes after them are
    judged too."""
    shape = TlsShape()
    record = bytes([23, 3, 3, 0, 1, 0])
    assert shape.feed(True, HELLO + record * (MAX_RECORDS + 10), 0.0) is None
    assert not shape.done
    found = shape.feed(True, STRATUM, 0.1)
    assert found is not None and found.protocol == "not-tls"


def test_records_after_a_server_hello_end_the_watch_at_max_records() -> None:
    hello, _ = traces.HTTPS[0]
    shape = TlsShape()
    shape.feed(True, HELLO, 0.0)
    shape.feed(False, bytes.fromhex(hello), 0.1)
    record = bytes([23, 3, 3, 0, 40]) + bytes(40)
    for index in range(MAX_RECORDS + 1):  # TLS 1.3: the client's first is its Finished, not counted
        assert not shape.done
        shape.feed(index % 2 == 0, record, 0.2 + index)
    assert shape.done


def test_mahalanobis_matches_ndpi_at_the_mean() -> None:
    identity = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    assert mahalanobis((3, 4, 0, 0), (0.0, 0.0, 0.0, 0.0), identity) == pytest.approx(5.0)


def _with_sizes(trace: traces.Trace, change: dict[int, int | None]) -> traces.Trace:
    """``trace`` with some records' lengths changed (None drops the record)."""
    hello, records = trace
    out = []
    for index, (ms, side, kind, length) in enumerate(records):
        if index in change:
            if change[index] is None:
                continue
            length = change[index] or length
        out.append((ms, side, kind, length))
    return hello, tuple(out)


def test_ssh_with_a_legacy_cipher_is_found_at_its_opening() -> None:
    """MAC-then-encrypt (aes128-ctr with hmac-sha2-256) makes packets 0 mod 16, which the 4-mod-8 window does not
    see; the clear opening shows it all the same, on the first encrypted packet."""
    legacy = _with_sizes(traces.SSH_EXEC, {18: 64 + 17})
    found, at = _replay(legacy)
    assert found is not None and found.protocol == "ssh-in-tls" and at == 18, found


@pytest.mark.parametrize("encrypted", [44, 64, 68], ids=["chacha20-poly1305", "aes-ctr+hmac-sha2-256", "etm"])
def test_ssh_whose_newkeys_rides_with_the_next_packet_is_found_on_that_record(encrypted: int) -> None:
    """A wrapper may read NEWKEYS and the first encrypted packet together (one record of 16 + that packet):
    found on that record, which is not forwarded."""
    coalesced = _with_sizes(traces.SSH_EXEC, {17: 16 + encrypted + 17, 18: None})
    found, at = _replay(coalesced)
    assert found is not None and found.protocol == "ssh-in-tls" and at == 17, found


def test_ssh_that_hides_its_opening_is_still_found_by_the_window() -> None:
    """A KEXINIT read together with the identification hides the one-packet-per-record opening: the turns still
    show it (at the server's SERVICE_ACCEPT, egress.detect.sshopening); where they do not either (here an
    accept that differs from the request, as with ciphers that differ per direction), the 4-mod-8 window finds
    SSH at the server's USERAUTH_SUCCESS."""
    hidden = _with_sizes(traces.SSH_EXEC, {9: 58 + 1560, 13: None})
    found, at = _replay(hidden)
    assert found is not None and found.protocol == "ssh-in-tls", found
    assert "SERVICE_ACCEPT" in found.evidence and at == 18, (at, found)  # the accept (one record shorter)
    found, at = _replay(_with_sizes(hidden, {18: 61 + 8}))
    assert found is not None and found.protocol == "ssh-in-tls", found
    assert "small records" in found.evidence and at == 24  # the SUCCESS


def test_random_openings_do_not_look_like_ssh() -> None:
    """The opening rule blocks, so random first records (many small ones, as HTTP/2 control frames are) must not
    meet it: an identification-sized record, two clear packets, exactly 16 bytes, then 0 mod 4."""
    hello, _ = traces.HTTPS[0]
    rng = random.Random(5)
    fired = 0
    for _ in range(examples(4000)):
        records = [(0.0, "c", 22, 517), (2.0, "s", 22, 0), (3.0, "s", 23, 50), (4.0, "c", 23, 69)]
        for i in range(12):
            size = rng.randrange(8, 64) if rng.random() < 0.25 else rng.randrange(8, 4096)
            records.append((5.0 + i, "cs"[rng.random() < 0.5], 23, size + 17))
        fired += _replay((hello, tuple(records)), want="ssh-in-tls")[0] is not None
    assert fired == 0


def test_without_suspicions_only_the_blocking_shape_is_looked_for() -> None:
    """The front's watch of a host rule's bound name does not report TLS in TLS or keystroke echo, so it does not
    look for them (their checks were two thirds of the watcher's cost per record of a bulk transfer); SSH still."""
    for name in ("TLS_IN_TLS", "TLS_IN_TLS_BULK", "PTY_SHELL"):
        assert _replay(getattr(traces, name))[0] is not None, name
        assert _replay(getattr(traces, name), suspicions=False)[0] is None, name
    for name in ("SSH_EXEC", "SSH_SOCKS", "SSH_SHELL"):
        assert _replay(getattr(traces, name), suspicions=False) == _replay(getattr(traces, name)), name
