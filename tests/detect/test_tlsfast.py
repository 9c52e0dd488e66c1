"""The front's compiled TLS work (egress/detect/_tlsfast.c) gives what its pure twins give: the ClientHello's parse
(`tls._parse_client_hello`) and the shape watcher's record framing (`tlsshape._frame`), on real hellos (OpenSSL's,
the tests', the corpus's), every truncation and record split of them, mutations and random bytes; the watcher fed
through either framing ends in the same state on every recorded trace; a stale build is refused; an error in the
compiled path closes the relay."""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import random
import shutil
import ssl
import subprocess
import sys
import types
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.detect import sshopening, tls, tlsfast, tlsshape
from egress.detect.base import MORE, Finding
from egress.detect.tlsshape import TlsShape
from egress.proxy.relay import Watch
from tests.budget import examples
from tests.corpus import CORPUS, HAVE_CORPUS, HAVE_TUNNELS, TUNNELS
from tests.detect import seeds, test_tls
from tests.detect import tlsshape_traces as traces

ROOT = pathlib.Path(__file__).resolve().parents[2]
compiled_only = pytest.mark.skipif(
    tlsfast.COMPILED is None and os.environ.get("CI") != "true",
    reason="egress.detect._tlsfast is not built here (no C compiler): only the pure path runs",
)


def _compiled_hello(prefix: bytes | bytearray | memoryview, partial: bool) -> object:
    assert tlsfast.COMPILED is not None
    return tlsfast.COMPILED.client_hello(prefix, partial, MORE, tls.ClientHello)


def _same_hello(prefix: bytes) -> None:
    for partial in (False, True):
        want = tls._parse_client_hello(prefix, partial)
        got = _compiled_hello(prefix, partial)
        assert got == want and type(got) is type(want), (prefix.hex(), partial, got, want)


def _openssl_hello(name: str | None, alpn: list[str] | None, tls12: bool = False) -> bytes:
    context = ssl.create_default_context()
    if alpn:
        context.set_alpn_protocols(alpn)
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if name is None:
        context.check_hostname = False
    wire, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = context.wrap_bio(wire, out, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return out.read()


def _with_sni(hello: bytes, raw: bytes) -> bytes:
    """``hello`` (one record, one message) with a server_name extension naming the raw bytes ``raw`` at its
    extensions' end
    (the last one counts): names OpenSSL would refuse to send (non-ASCII, upper case, empty, NUL)."""
    body = hello[9:]
    at = 2 + 32
    at += 1 + body[at]
    at += 2 + int.from_bytes(body[at : at + 2])
    at += 1 + body[at]
    exts = body[at + 2 :]
    entry = b"\x00" + len(raw).to_bytes(2) + raw
    sni = b"\x00\x00" + (len(entry) + 2).to_bytes(2) + len(entry).to_bytes(2) + entry
    exts = exts + sni
    body = body[:at] + len(exts).to_bytes(2) + exts
    message = b"\x01" + len(body).to_bytes(3) + body
    return b"\x16\x03\x01" + len(message).to_bytes(2) + message


@functools.cache
def _real_hellos() -> tuple[bytes, ...]:
    """OpenSSL's hellos (names, ALPN, TLS 1.2 only, no SNI), the tests' recorded ones and hand-made SNIs."""
    made = [
        _openssl_hello("api.example.com", ["h2", "http/1.1"]),
        _openssl_hello("Mixed.Case.Example", None),
        _openssl_hello(None, ["x" * 200, "a"]),
        _openssl_hello("pool.example.net", None, tls12=True),
        test_tls.TOR_CLIENT_HELLO,
        test_tls.ANDROID_GOOGLE_HELLO,
    ]
    base = made[0]
    made += [_with_sni(base, raw) for raw in (b"UPPER.Example", "bücher.de".encode(), b"", b"a\x00b", b"\xff" * 300)]
    return tuple(made)


def _corpus_hellos() -> list[bytes]:
    """The client streams of the corpus's first flows that start like TLS (mining, crypto nodes, tunnels, benign
    captures, the second corpus's tunnels and hard negatives)."""
    streams = [seed.client for seed in seeds.corpus_seeds().streams]
    for root, have in ((CORPUS / "benign", HAVE_CORPUS), (TUNNELS, HAVE_TUNNELS)):
        if have:
            for path in sorted(p for p in root.rglob("*") if p.suffix in (".pcap", ".pcapng")):
                streams += [seed.client for seed in seeds._capture_seeds(str(path)).streams]
    return [stream for stream in streams if stream[:1] == b"\x16"]


def test_the_compiled_path_is_built_where_ci_runs() -> None:
    """CI's machine has a compiler (deploy/bootstrap.sh installs gcc): there the compiled path must be what runs,
    in the parse and the watcher alike."""
    if os.environ.get("CI") == "true":
        assert tlsfast.COMPILED is not None
    if tlsfast.COMPILED is not None:
        assert tls._fast_client_hello is tlsfast.COMPILED.client_hello
        assert tlsshape._frame_of is tlsfast.COMPILED.frame


@compiled_only
def test_real_hellos_parse_the_same_whole_truncated_and_split_into_records() -> None:
    for hello in _real_hellos():
        _same_hello(hello)
        for cut in range(len(hello)):
            _same_hello(hello[:cut])
        for size in (1, 2, 3, 4, 7, 40, 100):
            split = test_tls._split_records(hello, size)
            _same_hello(split)
            for cut in range(0, len(split), 5):
                _same_hello(split[:cut])
        _same_hello(hello + b"\x17\x03\x03\x00\x10" + bytes(16))  # the next record after the hello


@compiled_only
def test_the_hand_made_names_are_read_as_the_pure_parse_reads_them() -> None:
    """Not only equal: the cases that lower, replace and cut names are in the set (a twin could agree on None)."""
    hellos = [tls._parse_client_hello(hello, False) for hello in _real_hellos()]
    names = {hello.sni for hello in hellos if isinstance(hello, tls.ClientHello)}
    assert {"upper.example", "b\ufffd\ufffdcher.de", "", "a\x00b", "mixed.case.example", None} <= names


@compiled_only
@pytest.mark.skipif(not (HAVE_CORPUS or HAVE_TUNNELS), reason="needs the shared corpus")
def test_the_corpus_hellos_parse_the_same() -> None:
    hellos = _corpus_hellos()
    assert len(hellos) >= 20, len(hellos)
    parsed = 0
    for stream in hellos:
        _same_hello(stream)
        parsed += isinstance(tls._parse_client_hello(stream, False), tls.ClientHello)
        for cut in range(0, min(len(stream), 700), 3):
            _same_hello(stream[:cut])
    assert parsed >= 10, parsed


@compiled_only
def test_mutated_hellos_parse_the_same() -> None:
    """Bytes changed in every field's reach: lengths that overrun, extension blocks cut short, odd suite lists,
    supported_versions whose count lies, record headers of other types."""
    rng = random.Random(15)
    hellos = _real_hellos()
    for _ in range(examples(30_000)):
        hello = bytearray(rng.choice(hellos))
        for _ in range(rng.randrange(1, 5)):
            at = rng.randrange(len(hello))
            hello[at] = rng.choice((0, 1, 2, 3, 4, 0x16, 0x2B, 0x10, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        cut = rng.randrange(len(hello) + 1) if rng.random() < 0.5 else len(hello)
        _same_hello(bytes(hello[:cut]))


@compiled_only
@settings(max_examples=examples(500), deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=300))
def test_random_bytes_behind_a_record_header_parse_the_same(head: bytes, tail: bytes) -> None:
    _same_hello(head + tail)
    _same_hello(b"\x16\x03\x01" + len(tail).to_bytes(2) + tail)
    _same_hello(b"\x16\x03\x03" + (len(tail) + 4).to_bytes(2) + b"\x01" + len(tail).to_bytes(3) + tail)


@compiled_only
def test_other_buffers_and_bad_arguments() -> None:
    hello = _real_hellos()[0]
    assert _compiled_hello(bytearray(hello), False) == tls._parse_client_hello(hello, False)
    assert _compiled_hello(memoryview(hello)[:50], True) == tls._parse_client_hello(hello[:50], True)
    assert tlsfast.COMPILED is not None
    with pytest.raises(TypeError):
        tlsfast.COMPILED.client_hello("text", False, MORE, tls.ClientHello)
    with pytest.raises(TypeError):
        tlsfast.COMPILED.client_hello(hello, False)
    with pytest.raises(ValueError):
        tlsfast.COMPILED.frame(b"", -1)


def _record(kind: int, length: int, minor: int = 3) -> bytes:
    return bytes([kind, 3, minor]) + length.to_bytes(2) + bytes(length)


def _same_frame(data: bytes, skip: int) -> None:
    assert tlsfast.COMPILED is not None
    got = tlsfast.COMPILED.frame(data, skip)
    want = tlsshape._frame(data, skip)
    assert got == want and [type(x) for x in got] == [type(x) for x in want], (data.hex(), skip, got, want)


@compiled_only
def test_framing_is_the_same_on_records_cut_anywhere() -> None:
    rng = random.Random(16)
    for _ in range(examples(3_000)):
        stream = b"".join(
            _record(rng.choice((20, 21, 22, 23, 23, 23)), rng.choice((0, 1, 4, 5, 17, 300, 16401, 65535)))
            for _ in range(rng.randrange(1, 8))
        )
        if rng.random() < 0.3:  # a header no TLS record has: another type, another major version
            stream += bytes([rng.choice((0, 19, 24, 0x47, 23)), rng.choice((3, 3, 2, 0)), 3, 0, 9]) + bytes(9)
        skip = 0
        buffer = b""
        at = 0
        while at < len(stream):
            end = min(len(stream), at + rng.choice((1, 2, 4, 5, 6, 100, 20_000)))
            data = buffer + stream[at:end]
            _same_frame(data, skip)
            _lengths, skip, buffer, bad = tlsshape._frame(data, skip)
            at = end
            if bad:
                break


@compiled_only
@settings(max_examples=examples(500), deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=70_000))
def test_framing_is_the_same_on_random_bytes(data: bytes, skip: int) -> None:
    _same_frame(data, skip)
    _same_frame(data, 0)


class _Before(TlsShape):
    """`TlsShape` with `feed` and `_record` as they were before the framing moved out and the checks that cannot
    find anything yet were skipped (main at 5261bc3): the reference."""

    def feed(self, from_client: bool, data: bytes, now: float) -> Finding | None:
        if self.done:
            return None
        before = len(self.found)
        side = self.client if from_client else self.server
        if side.lost:  # red team 12b: the server's bytes that are not TLS end the reading of its side only
            return None
        if not from_client and not self.version:
            self._server_hello(data)
            if side.lost:
                return None
        chunk, data = data, side.buffer + data
        side.buffer = b""
        offset = 0
        while offset < len(data) and not self.done:
            if side.skip:
                step = min(side.skip, len(data) - offset)
                side.skip -= step
                offset += step
                continue
            if len(data) - offset < 5:
                side.buffer = data[offset:]
                break
            kind, length = data[offset], int.from_bytes(data[offset + 3 : offset + 5])
            if kind not in (20, 21, 22, 23) or data[offset + 1] != 3:
                if from_client:
                    self._not_tls(chunk)  # red team 12b: the client's are a tunnel
                else:
                    side.lost = True
                break
            side.skip = length
            offset += 5
            if kind == 23:
                self._record(from_client, side, length, now)
        return self.found[before] if len(self.found) > before else None

    def _record(self, from_client: bool, side: tlsshape._Side, length: int, now: float) -> None:
        side.encrypted += 1
        if self.version >= 0x0304:
            if from_client and side.encrypted == 1:
                self.client_finished = True  # the client's Finished
                return
            if not from_client and not self.client_finished:
                return  # the server's encrypted handshake
        size = length - (self.overhead if self.overhead is not None else 24)
        record = tlsshape.Record(from_client, max(size, 0), now)
        self.count += 1
        self.plaintext += record.size
        sshopening.add_turn(self.turns, record)
        seen = {finding.protocol for finding in self.found}
        checks: tuple[Callable[[], Finding | None], ...] = (
            lambda: sshopening.by_turns(self.turns) if self.overhead is not None else None,
            lambda: sshopening.by_record(self.records),
            self._ssh,
            lambda: tlsshape._tls_in_tls(self.records),
            lambda: tlsshape._echo(self.records),
        )
        if self.count > tlsshape.MAX_RECORDS:
            checks = checks[:1]  # only an opening cut into tiny records keeps the watch going this far
        else:
            self.records.append(record)
            checks = checks if self.suspicions else checks[:3]
        for check in checks:
            finding = check()
            if finding is not None and finding.protocol not in seen:
                self.found.append(finding)
                break
        opening = len(self.turns) <= sshopening.OPENING_BURSTS and self.plaintext <= sshopening.OPENING_BYTES
        if any(f.protocol not in tlsshape.SUSPECTED for f in self.found) or (
            self.version  # red team 12b: without a ServerHello the watch goes on
            and self.count >= tlsshape.MAX_RECORDS
            and (not opening or self.count >= tlsshape.RECORDS_CAP)
        ):
            self.done = True


def _state(shape: TlsShape) -> tuple[object, ...]:
    return (shape.found, shape.records, shape.turns, shape.count, shape.plaintext, shape.done, shape.version)


def _varied(trace: traces.Trace, rng: random.Random, exact: bool = False) -> list[tuple[bool, bytes, float]]:
    """A trace's records with sizes, times and sides moved a little (a record dropped, doubled or turned round
    now and then): shapes near each check's edges, found and not found. ``exact``: as recorded."""
    hello, records = trace
    out: list[tuple[bool, bytes, float]] = []
    first_server = True
    for ms, side, kind, length in records:
        if side == "s" and first_server:
            out.append((False, bytes.fromhex(hello), ms / 1000))
            first_server = False
            continue
        roll = 0.5 if exact else rng.random()
        if roll < 0.04:
            continue
        if roll < 0.08:
            side = "c" if side == "s" else "s"
        if kind == 23 and not exact and rng.random() < 0.3:
            length = max(17, length + rng.choice((-16, -8, -4, -1, 1, 4, 8, 16, 64, 500)))
        at = ms / 1000 if exact else max(0.0, ms / 1000 + rng.choice((0.0, 0.0, 0.005, -0.005, 0.02, 0.1)))
        out.append((side == "c", _record(kind, length), at))
        if roll > 0.97:
            out.append((side == "c", _record(kind, length), at))
    return out


@pytest.mark.parametrize("suspicions", [True, False])
def test_the_checks_skipped_early_answer_as_running_them_all(suspicions: bool) -> None:
    """Every recorded trace, and 400 varied ones of each, fed to the watcher and to `_Before` (every check at every
    record): the same answer after every chunk and the same state; among them each shape is found (so the skipped
    checks were asked where they find something) and each is missed."""
    rng = random.Random(17)
    named = [traces.SSH_EXEC, traces.SSH_SOCKS, traces.SSH_SHELL, traces.TLS_IN_TLS, traces.TLS_IN_TLS_BULK]
    named += [traces.PTY_SHELL, *traces.HTTPS]
    found: set[str] = set()
    for trace in named:
        for variant in range(examples(400) + 1):
            chunks = _varied(trace, rng) if variant else _varied(trace, rng, exact=True)
            shape, reference = TlsShape(suspicions=suspicions), _Before(suspicions=suspicions)
            got = [shape.feed(c, d, t) for c, d, t in chunks]
            want = [reference.feed(c, d, t) for c, d, t in chunks]
            assert got == want and _state(shape) == _state(reference), (variant, chunks)
            found |= {finding.protocol for finding in shape.found}
    assert found == ({"ssh-in-tls", "tls-in-tls", "interactive-shell"} if suspicions else {"ssh-in-tls"})


@pytest.mark.parametrize("split", [0, 1, 3, 7, 1000])
@pytest.mark.parametrize(
    "name", ["SSH_EXEC", "SSH_SOCKS", "SSH_SHELL", "TLS_IN_TLS", "TLS_IN_TLS_BULK", "PTY_SHELL", "HTTPS"]
)
def test_the_watcher_ends_the_same_through_either_framing(
    name: str, split: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each recorded trace through the compiled framing, the pure one and `feed` as it was before: the same answer
    after every chunk and the same records, turns, findings and end (a framing that lost the record a finding is
    completed by, or read records past a finding that ends the watch, differs here). Where the module is not built
    the first two are both the pure one."""
    chosen = getattr(traces, name)
    for hello, records in chosen if name == "HTTPS" else (chosen,):
        rng = random.Random(split)
        chunks: list[tuple[bool, bytes, float]] = []
        first_server = True
        for ms, side, kind, length in records:
            if side == "s" and first_server:
                data = bytes.fromhex(hello)
                first_server = False
            else:
                data = _record(kind, length)
            while split and len(chunks) % 3 == 0 and len(data) > split:  # some records cut, some glued
                chunks.append((side == "c", data[:split], ms / 1000))
                data = data[split:]
            if chunks and chunks[-1][0] == (side == "c") and rng.random() < 0.3:
                chunks[-1] = (chunks[-1][0], chunks[-1][1] + data, chunks[-1][2])
            else:
                chunks.append((side == "c", data, ms / 1000))
        if rng.random() < 0.5:  # bytes that are no TLS record, somewhere after the handshake
            at = rng.randrange(len(chunks) // 2, len(chunks))
            chunks.insert(at, (chunks[at][0], _record(23, 30)[:7] + b"GET / HTTP/1.1\r\n", chunks[at][2]))
        answers = []
        for framing in (tlsfast.COMPILED.frame if tlsfast.COMPILED else tlsshape._frame, tlsshape._frame):
            monkeypatch.setattr(tlsshape, "_frame_of", framing)
            shape = TlsShape()
            answers.append(([shape.feed(c, d, t) for c, d, t in chunks], _state(shape)))
        reference = _Before()
        answers.append(([reference.feed(c, d, t) for c, d, t in chunks], _state(reference)))
        assert answers[0] == answers[1] == answers[2]


def test_a_watcher_ends_at_a_header_that_is_not_tls_and_reads_no_record_after_a_blocking_finding() -> None:
    """The two ends `feed` takes from the framing: bytes that are no record end the watch (after the records before
    them are read), and once ``ssh-in-tls`` ends it the records behind it in the same chunk are not read."""
    hello, records = traces.SSH_EXEC
    shape = TlsShape()
    shape.feed(False, bytes.fromhex(hello), 0.0)
    shape.feed(True, _record(20, 1) + _record(23, 40), 0.0)  # the client's CCS and Finished (TLS 1.3 here)
    before = shape.count
    shape.feed(True, _record(23, 60) + b"GET / HTTP/1.1\r\n", 0.1)
    assert shape.done and shape.count == before + 1
    assert shape.feed(True, _record(23, 60), 0.2) is None and shape.count == before + 1

    found = None
    shape = TlsShape()
    for index, (ms, side, kind, length) in enumerate(records):
        data = bytes.fromhex(hello) if index == next(i for i, r in enumerate(records) if r[1] == "s") else None
        found = shape.feed(side == "c", data or _record(kind, length), ms / 1000)
        if found is not None:
            break
    assert found is not None and found.protocol == "ssh-in-tls" and shape.done
    count = shape.count
    assert shape.feed(True, _record(23, 44) * 5, 9.0) is None and shape.count == count


def test_a_stale_or_foreign_build_is_refused() -> None:
    digest = hashlib.sha256(b"/* one version */").hexdigest()
    assert tlsfast.stale(types.SimpleNamespace(ABI=tlsfast.ABI, SOURCE=digest), digest) is None
    assert "another version" in str(tlsfast.stale(types.SimpleNamespace(ABI=tlsfast.ABI, SOURCE="0" * 64), digest))
    assert "ABI" in str(tlsfast.stale(types.SimpleNamespace(ABI=tlsfast.ABI + 1, SOURCE=digest), digest))
    assert "ABI" in str(tlsfast.stale(types.SimpleNamespace(), None))


@compiled_only
def test_the_build_here_is_from_the_source_beside_it() -> None:
    """The pure stage reads no files, so this is where a build older than _tlsfast.c is caught (run
    deploy/bootstrap.sh or pip install -e . again): its answers would no longer be the source's."""
    source = ROOT / "egress" / "detect" / "_tlsfast.c"
    assert tlsfast.stale(tlsfast.COMPILED, hashlib.sha256(source.read_bytes()).hexdigest()) is None


def test_the_pure_path_runs_where_the_module_is_missing() -> None:
    """A tree without the module (no C compiler where egress was installed): no compiled module is loaded, and the
    parse and the watcher still answer."""
    code = (
        "import sys\n"
        "sys.modules['egress.detect._tlsfast'] = None  # an import of it fails as where it was never built\n"
        "from egress.detect import tls, tlsfast, tlsshape\n"
        "assert tlsfast.COMPILED is None and tls._fast_client_hello is None and tlsshape._frame_of is tlsshape._frame\n"
        f"print(tls.parse_client_hello(bytes.fromhex({test_tls.ANDROID_GOOGLE_HELLO.hex()!r})).sni)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "www.google.com"


def test_the_package_installs_without_a_c_compiler(tmp_path: pathlib.Path) -> None:
    """setup.py's extensions are optional: with no working compiler the build goes on and makes neither module."""
    python = shutil.which("python3")
    probe = subprocess.run([python or "python3", "-c", "import setuptools"], capture_output=True, check=False)
    if python is None or probe.returncode:
        pytest.skip("no python3 with setuptools to build with")
    shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")
    for part in ("capture/_hot.c", "detect/_tlsfast.c"):
        (tmp_path / "egress" / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "egress" / part, tmp_path / "egress" / part)
    env = {**os.environ, "CC": "false", "LDSHARED": "false"}
    command = [python, "setup.py", "-q", "build_ext", "--inplace"]
    build = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, check=False)
    assert build.returncode == 0, build.stderr
    assert not list((tmp_path / "egress").rglob("*.so"))


def test_an_error_in_the_framing_closes_the_relay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed: whatever the compiled framing raises (it raises MemoryError where Python would), the relay's
    watch refuses the chunk and stays closed."""

    def broken(data: bytes, skip: int) -> tuple[list[int], int, bytes, bool]:
        raise MemoryError

    monkeypatch.setattr(tlsshape, "_frame_of", broken)
    watch = Watch(on_finding=lambda finding: True)
    assert not watch.passes(True, _real_hellos()[0])
    assert not watch.passes(False, b"\x16\x03\x03\x00\x01\x02")
    assert watch.closed and not watch.finished


def test_random_record_runs_near_each_checks_edge_answer_as_running_them_all() -> None:
    """Runs of records made to reach a shape at its very first chance (SSH sizes, keystroke echoes, bursts) or just
    miss it: the watcher and `_Before` agree after every record (a check skipped one record too long differs)."""
    rng = random.Random(18)
    hello = bytes.fromhex(traces.SSH_EXEC[0])
    found: dict[str, int] = {}
    for _ in range(examples(4_000)):
        shape, reference = TlsShape(), _Before()
        chunks = [(False, hello, 0.0), (True, _record(23, 40), 0.001)]  # the ServerHello, the client's Finished
        at = 0.01
        typing = rng.random() < 0.3  # a keystroke and its echo, turn about, now and then one that is not
        spoilt = rng.randrange(24) if rng.random() < 0.5 else -1  # one keystroke or echo just past a bound
        for index in range(rng.randrange(14, 20) if typing else rng.randrange(4, 16)):
            if typing:
                from_client = index % 2 == 0
                size = 17 + (rng.choice((1, 3, 64)) if from_client else rng.choice((1, 40, 128)))
                at += rng.choice((0.03, 0.02)) if from_client else rng.choice((0.002, 0.1))
                if index == spoilt:
                    size, at = rng.choice(((17 + 65 + 64 * (not from_client), at), (size, at + 0.001)))
            else:
                from_client = rng.random() < 0.5 if index else True
                size = rng.choice((17 + 4 + 8 * rng.randrange(1, 8), 17 + rng.randrange(1, 128), 17 + 600, 17 + 5000))
                at += rng.choice((0.001, 0.03, 0.05, 0.2))
            chunks.append((from_client, _record(23, size), at))
        for chunk in chunks:
            assert shape.feed(*chunk) == reference.feed(*chunk)
            assert _state(shape) == _state(reference), chunks
        for finding in shape.found:
            found[finding.protocol] = found.get(finding.protocol, 0) + 1
    assert set(found) == {"ssh-in-tls", "tls-in-tls", "interactive-shell"}, found


def test_records_behind_the_one_that_ends_the_watch_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client record that completes ``ssh-in-tls`` arrives with more records in the same chunk: neither
    framing reads them (the watch ended on that record, as `_Before` ends it)."""
    hello, records = traces.SSH_EXEC
    _, at = _first_finding(hello, records)
    chunks = [(side == "c", data, ms) for side, data, ms in _chunks_of(hello, records[: at + 1])]
    chunks[-1] = (chunks[-1][0], chunks[-1][1] + _record(23, 44) * 3, chunks[-1][2])
    for framing in (tlsfast.COMPILED.frame if tlsfast.COMPILED else tlsshape._frame, tlsshape._frame):
        monkeypatch.setattr(tlsshape, "_frame_of", framing)
        shape, reference = TlsShape(), _Before()
        assert [shape.feed(*chunk) for chunk in chunks] == [reference.feed(*chunk) for chunk in chunks]
        assert shape.done and shape.found[-1].protocol == "ssh-in-tls"
        assert _state(shape) == _state(reference)


def _chunks_of(hello: str, records: tuple[tuple[float, str, int, int], ...]) -> list[tuple[str, bytes, float]]:
    first = next(index for index, record in enumerate(records) if record[1] == "s")
    return [
        (side, bytes.fromhex(hello) if index == first else _record(kind, length), ms / 1000)
        for index, (ms, side, kind, length) in enumerate(records)
    ]


def _first_finding(hello: str, records: tuple[tuple[float, str, int, int], ...]) -> tuple[object, int]:
    shape = _Before()
    for index, (side, data, ms) in enumerate(_chunks_of(hello, records)):
        if shape.feed(side == "c", data, ms) is not None:
            return shape.found[-1], index
    raise AssertionError("no finding")
