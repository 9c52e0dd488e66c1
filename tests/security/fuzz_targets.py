"""The coverage-guided fuzz targets: one function per parser of attacker bytes, run by atheris (fuzz_run.py).

Each target takes the fuzzer's bytes and checks the parser's contract on them; an exception that escapes it is a
crash (libFuzzer keeps the input as ``crash-<sha1>``; tests/security/test_fuzz_regressions.py keeps each one found).
The contracts:

- ``dns``: `egress.detect.dns.parse` returns a message or raises `DnsError`; `parse_partial` never raises; a
  message that parsed is encoded (names uncompressed) and parses back to the same questions and sections.
- ``tls``: the ClientHello/ServerHello parsers give a hello, None or MORE, whole or partial; a hello's SNI is text.
- ``websocket``: `unwrap` never raises and a prefix unwraps to a prefix of the whole (an answer does not change
  as bytes arrive); the WebSocket detector (Stratum inside) gives a result.
- ``jsonrpc``: the JSON-RPC mining detectors (Stratum, CryptoNote/XMRig, Ethereum, getwork) and the node
  detector, over a flow whose two directions the input chooses, give the same answer fed whole as fed in the
  pieces the input chooses (the per-flow incremental decoding against the whole decoding: jsonrpc.py).
- ``codings``: HTTP body decoding (`egress.detect.codings.decode`) never raises, never returns more than its
  bound, and gives back what gzip/deflate/br/zstd encoded.
- ``capture``: a capture file scans to findings and counts, or to the file's one error; and the compiled hot
  path (egress/capture/_hot.c) gives the same findings and counts as its pure-Python twin on it, as do their
  record framing and skip test on the raw bytes.
- ``policy``: the policy loader gives a `Policy` or a `RulesError` whose every problem names the file and a line.

Imports of egress happen inside `load` so that fuzz_run.py can instrument them for coverage.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Check = Callable[[bytes], None]
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: ws.lab\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
CODINGS = ("gzip", "deflate", "br", "zstd", "x-gzip", "identity", "gzip, br", "deflate,zstd", "compress", "")


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    parser: str
    """What the security table's fuzz row calls it."""
    seeds: str
    """Which seeds of fuzz_seeds.py start it (`fuzz_run.seed_inputs`)."""


TARGETS = (
    Target("dns", "dns codec (atheris)", "dns"),
    Target("tls", "tls hello parsers (atheris)", "tls"),
    Target("websocket", "websocket frames (atheris)", "websocket"),
    Target("jsonrpc", "json-rpc detectors, incremental vs whole (atheris)", "streams"),
    Target("codings", "http body codings (atheris)", "codings"),
    Target("capture", "capture reader + scanner, _hot.c vs pure (atheris)", "captures"),
    Target("policy", "policy loader (atheris)", "policies"),
)
BY_NAME = {target.name: target for target in TARGETS}


def _split(data: bytes) -> tuple[int, bytes]:
    """The input's first byte as a small choice, and the rest."""
    return (data[0], data[1:]) if data else (0, b"")


def _dns() -> Check:
    from egress.detect import dns

    def check(data: bytes) -> None:
        dns.parse_partial(data)
        try:
            message = dns.parse(data)
        except dns.DnsError:
            return
        again = dns.parse(dns.encode(message))
        assert again.questions == message.questions, (again, message)
        sections = (again.answers, again.authorities, again.additionals)
        assert sections == (message.answers, message.authorities, message.additionals), (again, message)

    return check


def _tls() -> Check:
    from egress.detect import tls
    from egress.detect.base import MORE

    def check(data: bytes) -> None:
        for partial in (False, True):
            hello = tls.parse_client_hello(data, partial)
            assert hello is None or hello is MORE or isinstance(hello, tls.ClientHello), hello
            if isinstance(hello, tls.ClientHello):
                assert hello.sni is None or isinstance(hello.sni, str)
            server = tls.parse_server_hello(data, partial)
            assert server is None or server is MORE or isinstance(server, tls.ServerHello), server
        tls.starts_with_hello(data)
        tls.cert_names(data)

    return check


def _websocket() -> Check:
    from egress.detect import stratum, websocket
    from egress.detect.base import MORE, Finding, FlowMeta, FlowView, Transport

    meta = FlowMeta(Transport.TCP, "10.203.1.2", 40000, "198.18.10.8", 80)
    detect = websocket.make_websocket_detector((stratum.detect,))

    def check(data: bytes) -> None:
        cut, frames = _split(data)
        whole = websocket.unwrap(frames, 0)
        prefix = websocket.unwrap(frames[: len(frames) * cut // 255], 0)
        assert whole.payload.startswith(prefix.payload), (prefix, whole)
        for complete in (False, True):
            result = detect(FlowView(meta, UPGRADE + frames, SWITCHED + frames[:cut], complete=complete))
            assert result is None or result is MORE or isinstance(result, Finding), result

    return check


def pieces(data: bytes) -> tuple[bytes, bytes, list[tuple[bool, bytes]]]:
    """A flow out of fuzzer bytes: (client, server, the two cut into pieces and interleaved as the bytes say)."""
    head, rest = data[:3], data[3:]
    head += bytes(3 - len(head))
    at = len(rest) * head[0] // 255
    client, server = rest[:at], rest[at:]
    cuts = random.Random(head[1:]).sample(range(1, max(len(rest), 2)), min(head[1] % 12, max(len(rest) - 1, 0)))
    events: list[tuple[bool, bytes]] = []
    start = 0
    for cut in [*sorted(cuts), len(rest)]:
        for side_start, side_end, from_client in ((0, at, True), (at, len(rest), False)):
            low, high = max(start, side_start), min(cut, side_end)
            if low < high:
                events.append((from_client, rest[low:high]))
        start = cut
    if head[2] & 1:  # the server's pieces first (a pool may speak first)
        events.sort(key=lambda event: event[0])
    return client, server, events


def feed_pieces(detectors: tuple[Any, ...], meta: Any, events: list[tuple[bool, bytes]]) -> list[list[Any]]:
    """Each detector's answer at each step of the events, on one view that grows (what the engine does, and where
    incremental detectors keep their state) and on a fresh view of the same bytes (decoded whole)."""
    from egress.detect.base import FlowView

    grown = FlowView(meta)
    steps: list[list[Any]] = []
    for index, (from_client, data) in enumerate(events):
        if from_client:
            grown.client += data
        else:
            grown.server += data
        grown.complete = index == len(events) - 1
        fresh = FlowView(meta, grown.client, grown.server, complete=grown.complete)
        steps.append([(detect(grown), detect(fresh)) for detect in detectors])
    return steps


def _jsonrpc() -> Check:
    from egress.detect import binfast, binrpc, cryptonode
    from egress.detect.base import FlowMeta, Transport
    from egress.detect.registry import MINING

    detectors = (*MINING, cryptonode.detect)
    meta = FlowMeta(Transport.TCP, "10.203.1.2", 40000, "198.18.10.3", 3333)
    searches = (
        ("ber_heads", binrpc.pure_ber_heads),
        ("breaks", binrpc.pure_breaks),
        ("anchored", binrpc.pure_anchored),
    )

    def check(data: bytes) -> None:
        client, server, events = pieces(data)
        for step, answers in enumerate(feed_pieces(detectors, meta, events)):
            for grown, fresh in answers:
                assert grown == fresh, (step, grown, fresh)
        if binfast.COMPILED is not None:  # binrpc's compiled searches answer as their twins (_binfast.c)
            for side in (client, server):
                for start in (0, len(side) // 3, len(side) - 9, -5):
                    for name, pure in searches:
                        assert getattr(binfast.COMPILED, name)(side, start) == pure(side, start), (name, start)

    return check


def _codings() -> Check:
    import zlib

    from egress.detect import codings

    def check(data: bytes) -> None:
        choice, body = _split(data)
        coding = CODINGS[choice % len(CODINGS)]
        limit = (1 << (choice % 20)) + choice
        for partial in (False, True):
            decoded = codings.decode(body, coding, limit, partial)
            assert len(decoded.data) <= limit, (len(decoded.data), limit)
        packed = {
            "gzip": lambda b: zlib.compress(b, wbits=31),
            "deflate": zlib.compress,
            "br": codings.brotli.compress if codings.brotli else None,
            "zstd": codings.zstd.compress if codings.zstd else None,
        }.get(coding)
        if packed is not None:
            back = codings.decode(packed(body), coding, len(body) + 1)
            assert back == codings.Decoded(body), (coding, back)

    return check


def _capture() -> Check:
    from egress.capture import hot
    from egress.detect.registry import build_detectors
    from egress.flowtable import DONE
    from egress.policy.lists import load_name_lists
    from egress.scanner import FileStats, Scanner

    detectors = build_detectors(load_name_lists(None))
    folder = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    handle = tempfile.NamedTemporaryFile(suffix=".pcap", dir=folder)  # noqa: SIM115 (lives as long as the check)
    compiled = hot.COMPILED

    def scan(impl: hot.Implementation) -> list[str]:
        stats = FileStats(handle.name)
        found = [repr((f.finding, f.meta, f.ts)) for f in Scanner(detectors, hot=impl).scan(handle.name, stats)]
        assert stats.error is None or handle.name in stats.error, stats.error
        counts = (stats.packets, stats.skipped, stats.flows, stats.unidentified, stats.findings, stats.error)
        return [*found, repr(counts)]

    def check(data: bytes) -> None:
        handle.seek(0)
        handle.truncate()
        handle.write(data)
        handle.flush()
        pure = scan(hot.PURE)
        if compiled is None:
            return
        assert scan(compiled) == pure
        choice, raw = _split(data)
        big, scale = bool(choice & 1), (1e-6, 1e-9)[choice >> 1 & 1]
        pos = choice >> 2 & 7
        assert compiled.frame_pcap(raw, pos, big, 1, scale) == hot.frame_pcap(raw, pos, big, 1, scale)
        _, spans, stamps = hot.frame_pcap(raw, 0, big, 1, scale)
        table: dict[bytes, object] = {}
        for at in range(0, len(raw) - 12, 97):  # some flows decided, some inspected, keyed from the input
            table[raw[at : at + 12]] = DONE if raw[at] & 1 else object()
        spans_a, stamps_a = array("q", spans), array("d", stamps)
        assert compiled.sweep(raw, spans_a, stamps_a, 0, table, table, DONE) == hot.sweep(
            raw, spans_a, stamps_a, 0, table, table, DONE
        )
        assert compiled.sweep(raw, spans_a, stamps_a, 0, table, table, DONE, table) == hot.sweep(
            raw, spans_a, stamps_a, 0, table, table, DONE, table
        )
        _steps_agree(compiled, (raw, spans_a, stamps_a), table)

    return check


def _steps_agree(compiled: Any, records: tuple[bytes, array[int], array[float]], table: dict[bytes, object]) -> None:
    """The compiled `step` answers as its twin at every record it stops at: the flows of some records' keys decided,
    of others inspected, the UDP table with entries of its own."""
    from egress.capture import hot
    from egress.flowtable import DONE

    raw, spans, stamps = records
    table = dict(table)
    for at in range(min(len(stamps), len(spans) // 3)):
        start = spans[3 * at]
        if at % 3 and start >= 0 and start + 38 <= len(raw):
            table[raw[start + 26 : start + 38]] = DONE if at % 3 == 1 else object()
    udp = {key: object() for key in table}
    index = 0
    while index <= len(stamps):
        answer = hot.step(raw, spans, stamps, index, table, udp, DONE, table)
        assert compiled.step(raw, spans, stamps, index, table, udp, DONE, table) == answer
        index = (answer if isinstance(answer, int) else answer[0]) + 1


_YAML_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
"""Line breaks as YAML counts them (YAML 1.1 §4.1.4; PyYAML's reader): a bare CR is one (found by this target)."""


def check_policy_text(text: str) -> None:
    """The loader's contract on any text: a Policy, or RulesError with problems in the file, each on a real line."""
    from egress.policy.loader import RulesError, parse_policy
    from egress.policy.model import Policy

    try:
        policy = parse_policy(text, "fuzzed.yaml")
    except RulesError as error:
        assert error.problems, "a RulesError without problems"
        lines = len(_YAML_BREAK.findall(text)) + 2
        for problem in error.problems:
            assert problem.file == "fuzzed.yaml" and 1 <= problem.line <= lines and problem.message, problem
        return
    assert isinstance(policy, Policy)


def _policy() -> Check:
    from egress.policy import loader  # noqa: F401 (imported here, under the fuzzer's instrumentation)

    def check(data: bytes) -> None:
        check_policy_text(data.decode("utf-8", "replace"))

    return check


_MAKERS: dict[str, Callable[[], Check]] = {
    "dns": _dns,
    "tls": _tls,
    "websocket": _websocket,
    "jsonrpc": _jsonrpc,
    "codings": _codings,
    "capture": _capture,
    "policy": _policy,
}


def load(name: str) -> Check:
    """The check of target ``name`` (its egress modules imported now, under whatever instrumentation is active)."""
    return _MAKERS[name]()


def describe(target: str, data: bytes) -> dict[str, Any]:
    """What a regression test needs to replay an input: the target and the bytes, as hex."""
    return {"target": target, "input": data.hex()}
