"""The scanner's hot path: the compiled module (egress/capture/_hot.c) and its pure twin give the same answers, on
the whole corpus and on generated input, and egress runs the pure path cleanly where the module is missing."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import types
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.capture import hot, packet
from egress.capture.reader import read_records
from egress.detect.registry import DetectorSet, build_detectors
from egress.flowtable import DONE
from egress.scanner import FileStats, Scanner
from tests.budget import examples
from tests.corpus import CORPUS, TUNNELS, needs_corpus, needs_tunnels
from tests.lists import shipped_lists

ROOT = pathlib.Path(__file__).resolve().parents[2]
compiled_only = pytest.mark.skipif(
    hot.COMPILED is None and os.environ.get("CI") != "true",
    reason="egress.capture._hot is not built here (no C compiler): only the pure path runs",
)


def _captures() -> list[pathlib.Path]:
    roots = [root for root in (CORPUS, TUNNELS) if root.exists()]
    return sorted(p for root in roots for p in root.rglob("*") if p.suffix in (".pcap", ".pcapng"))


@functools.cache
def _detectors() -> DetectorSet:
    return build_detectors(shipped_lists())


def _scan(path: str, impl: hot.Implementation) -> list[str]:
    """Every finding of ``path`` and the file's counts, as text, in the order they were made."""
    detectors = _detectors()
    stats = FileStats(path)
    found = [repr((f.finding, f.meta, f.ts)) for f in Scanner(detectors, hot=impl).scan(path, stats)]
    counts = (stats.packets, stats.skipped, stats.skipped_at, stats.flows, stats.unidentified, stats.findings)
    return [*found, repr((counts, stats.error, stats.unsupported, stats.peak_entries))]


def test_the_compiled_path_is_built_where_ci_runs() -> None:
    """CI's machine has a compiler (deploy/bootstrap.sh installs gcc): there the compiled path must be what runs."""
    if os.environ.get("CI") == "true":
        assert hot.COMPILED is not None
        assert hot.implementation().name == "compiled"


@pytest.mark.corpus
@needs_corpus
@needs_tunnels
@compiled_only
def test_compiled_and_pure_paths_give_the_same_findings_on_the_whole_corpus() -> None:
    assert hot.COMPILED is not None
    captures = _captures()
    assert len(captures) > 50
    for path in captures:
        assert _scan(str(path), hot.COMPILED) == _scan(str(path), hot.PURE), path


def _records(frames: list[tuple[int, bytes]], prefix: bytes) -> tuple[bytes, array[int], array[float]]:
    buf = prefix
    spans: array[int] = array("q")
    for linktype, frame in frames:
        spans.extend((len(buf), len(frame), linktype))
        buf += frame
    return buf, spans, array("d", [float(index) for index in range(len(frames))])


_HEAD = bytes.fromhex("020000000002020000000001") + b"\x08\x00"  # Ethernet, IPv4


def _frame(proto: int, port: int, flags: int, header_words: int, total: int, tail: bytes) -> bytes:
    """A common frame of a few flows (4 address pairs, 2 ports), with the bytes the skip test reads varied."""
    ip = bytes([0x45, 0]) + total.to_bytes(2, "big") + b"\x00\x01\x00\x00\x40" + bytes([proto]) + b"\x00\x00"
    ip += bytes([10, 0, 0, port & 3, 10, 0, 0, 9])
    tcp = (40000 + (port & 1)).to_bytes(2, "big") + b"\x01\xbb" + b"\x00" * 8
    tcp += bytes([header_words << 4, flags]) + b"\x00" * 6
    return _HEAD + ip + tcp + tail


_IPV4_TCP_FRAME = bytes.fromhex(
    "020000000002020000000001" "0800" "450000281c46400040060000" "0a000001" "0a000009"
    "9c4001bb" "00000001" "00000000" "50020200" "00000000"
) + b"\x00" * 6  # fmt: skip
_IPV4_UDP_FRAME = bytes.fromhex(
    "020000000002020000000001" "0800" "4500001c1c46000040110000" "0a000001" "0a000009" "9c4001bb" "00080000"
) + b"\x00" * 18  # fmt: skip

_OTHER_ETHERTYPES = [0x0806, 0x0026, 0x888E, 0x88CC, 0x86DD, 0x8100, 0x88A8, 0x9100, 0x0800, 0x0000]
"""ARP, an 802.3 length, EAPOL, LLDP (no IP: skipped where ICMP is given); IPv6 and the VLAN tags (never)."""

_frames = st.lists(
    st.tuples(
        st.sampled_from([1, 1, 1, 101]),
        st.one_of(
            st.builds(
                _frame,
                st.sampled_from([6, 6, 17, 1, 1]),
                st.integers(0, 7),
                st.sampled_from([0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x00]),
                st.sampled_from([5, 8]),
                st.sampled_from([20, 27, 28, 40, 52, 100]),
                st.binary(max_size=20),
            ),
            st.builds(
                lambda ethertype, body: _HEAD[:12] + ethertype.to_bytes(2, "big") + body,
                st.sampled_from(_OTHER_ETHERTYPES),
                st.binary(max_size=60),
            ),
            st.binary(max_size=70),
        ),
    ),
    max_size=30,
)


@compiled_only
@given(
    frames=_frames,
    decided=st.sets(st.integers(0, 7)),
    inspected=st.sets(st.integers(0, 7)),
    prefix=st.binary(),
    with_icmp=st.booleans(),
)
@settings(max_examples=examples(300), deadline=None)
def test_compiled_and_pure_sweep_agree(
    frames: list[tuple[int, bytes]], decided: set[int], inspected: set[int], prefix: bytes, with_icmp: bool
) -> None:
    assert hot.COMPILED is not None
    buf, spans, stamps = _records(frames, prefix)
    tables: dict[bytes, object] = {}
    for port in range(8):
        key = bytes([10, 0, 0, port & 3, 10, 0, 0, 9]) + (40000 + (port & 1)).to_bytes(2, "big") + b"\x01\xbb"
        if port in decided:
            tables[key] = DONE
            tables[key[:8] + b"\x00" * 4] = DONE  # the ICMP key of a generated frame: identifier 0, twice
        elif port in inspected:
            tables[key] = object()
            tables[key[:8] + b"\x00" * 4] = object()
    tcp, udp = dict(tables), dict(tables)
    icmp = dict(tables) if with_icmp else None
    for start in range(len(stamps) + 1):
        assert hot.COMPILED.sweep(buf, spans, stamps, start, tcp, udp, DONE, icmp) == hot.sweep(
            buf, spans, stamps, start, tcp, udp, DONE, icmp
        )
        if icmp is None:  # a split scan's worker calls it without the ICMP table: the same as None
            assert hot.COMPILED.sweep(buf, spans, stamps, start, tcp, udp, DONE) == hot.sweep(
                buf, spans, stamps, start, tcp, udp, DONE
            )


def _steps(
    step: hot.Step, records: tuple[bytes, array[int], array[float]], tables: tuple[dict[bytes, object], ...]
) -> list[object]:
    """`step`'s answer from every start index, with ``tables`` (tcp, udp, icmp or none)."""
    buf, spans, stamps = records
    tcp, udp, *icmp = tables
    return [
        step(buf, spans, stamps, start, tcp, udp, DONE, icmp[0] if icmp else None) for start in range(len(stamps) + 1)
    ]


def _step_checks(records: tuple[bytes, array[int], array[float]], tables: tuple[dict[bytes, object], ...]) -> None:
    """The compiled `step` answers as its twin from every start, and each answer at a common frame holds that
    frame's `segment`, its raw key (addresses and ports as on the wire) and the key the slow path makes of the
    other direction, and the key's entry."""
    assert hot.COMPILED is not None and hot.COMPILED.step is not None
    answers = _steps(hot.step, records, tables)
    assert _steps(hot.COMPILED.step, records, tables) == answers
    buf, spans, _ = records
    for answer in answers:
        if isinstance(answer, tuple):
            index, fields, key, reverse, entry = answer
            start = spans[3 * index]
            frame = buf[start : start + spans[3 * index + 1]]
            assert fields == hot.segment(frame) and fields is not None
            ports = struct.pack(">HH", fields[3], fields[4])
            assert key == fields[1] + fields[2] + ports and reverse == fields[2] + fields[1] + ports[2:] + ports[:2]
            assert entry is tables[0 if fields[0] == 6 else 1].get(key)


def _damaged(base: bytes, edits: list[tuple[int, int]]) -> bytes:
    frame = bytearray(base)
    for at, value in edits:
        if at < len(frame):
            frame[at] = value
    return bytes(frame)


@compiled_only
@given(
    frames=_frames,
    damaged=st.lists(
        st.builds(
            _damaged,
            st.sampled_from([_IPV4_TCP_FRAME, _IPV4_UDP_FRAME]),
            st.lists(st.tuples(st.sampled_from([14, 16, 17, 20, 23, 37, 40, 46, 47]), st.integers(0, 255)), max_size=3),
        ),
        max_size=6,
    ),
    decided=st.sets(st.integers(0, 7)),
    inspected=st.sets(st.integers(0, 7)),
    prefix=st.binary(max_size=8),
    with_icmp=st.booleans(),
)
@settings(max_examples=examples(300), deadline=None)
def test_compiled_and_pure_step_agree(
    frames: list[tuple[int, bytes]],
    damaged: list[bytes],
    decided: set[int],
    inspected: set[int],
    prefix: bytes,
    with_icmp: bool,
) -> None:
    """Common frames of decided, inspected and new flows, IPv4 options, fragments, other protocols and lengths,
    other ethertypes and link types, random bytes: the same answer from every start."""
    records = _records([*frames, *((1, frame) for frame in damaged)], prefix)
    tables: dict[bytes, object] = {}
    for port in range(8):
        key = bytes([10, 0, 0, port & 3, 10, 0, 0, 9]) + (40000 + (port & 1)).to_bytes(2, "big") + b"\x01\xbb"
        for each in (key, key[:8] + b"\x00" * 4, bytes.fromhex("0a0000010a0000099c4001bb")):
            if port in decided:
                tables[each] = DONE
            elif port in inspected:
                tables[each] = object()
    udp = {key: object() for key in tables}  # not tcp's entries: a lookup in the wrong table shows
    _step_checks(records, (tables, udp, *((dict(tables),) if with_icmp else ())))


@compiled_only
@pytest.mark.parametrize("name", ["sweep", "step"])
def test_sweep_and_step_take_the_same_arguments(name: str) -> None:
    """One argument reader serves both: 7 or 8 arguments (no ICMP table, or None, keeps the rules without it),
    dicts for the tables, buffers, and an index of 0 or more (a negative one would read before the spans)."""
    assert hot.COMPILED is not None
    function = getattr(hot.COMPILED, name)
    buf, spans, stamps = _records([(1, _frame(6, 1, 0x10, 5, 40, b""))], b"")
    answer = function(buf, spans, stamps, 0, {}, {}, DONE)
    assert (
        answer
        == function(buf, spans, stamps, 0, {}, {}, DONE, None)
        == getattr(hot, name)(buf, spans, stamps, 0, {}, {}, DONE)
    )
    with pytest.raises(TypeError, match="7 or 8"):
        function(buf, spans, stamps, 0, {}, {})
    with pytest.raises(TypeError, match="dicts"):
        function(buf, spans, stamps, 0, {}, [], DONE)
    with pytest.raises(TypeError):
        function("text", spans, stamps, 0, {}, {}, DONE)
    with pytest.raises(ValueError, match="0 or more"):
        function(buf, spans, stamps, -1, {}, {}, DONE)


@compiled_only
@needs_corpus
def test_compiled_and_pure_step_agree_on_every_corpus_record() -> None:
    """Every record of both corpora, with every other flow key seen decided and the rest inspected or new."""
    for path in _captures():
        for records in read_records(str(path)):
            tables: dict[bytes, object] = {}
            for index in range(len(records)):
                frame = records.frame(index)
                if index % 3 and len(frame) >= 38:
                    tables[frame[26:38]] = DONE if index % 3 == 1 else object()
            triple = (records.buf, records.spans, records.stamps)
            _step_checks(triple, (tables, {key: object() for key in tables}, {}))
            _step_checks(triple, ({}, {}))


def test_the_sweep_skips_only_what_the_slow_path_would_drop() -> None:
    """Where the sweep passes over a frame without IP or a decided ICMP flow's frame, the slow path (`decode`)
    makes no segment of the first and the very key of the second; an ICMP frame too short for its header, a
    fragment, an inspected flow's, and every frame when no ICMP table is given, reach the slow path."""
    icmp_frame = _frame(1, 2, 0x08, 5, 28, b"")
    segment = packet.decode(packet.LINK_ETHERNET, icmp_frame, 0.0, packet.Defragmenter())
    assert segment is not None
    key = segment.src + segment.dst + struct.pack(">HH", segment.sport, segment.dport)
    arp = _HEAD[:12] + b"\x08\x06" + bytes(28)
    assert packet.decode(packet.LINK_ETHERNET, arp, 0.0, packet.Defragmenter()) is None
    short = _frame(1, 2, 0x08, 5, 27, b"")  # the ICMP header cut: decode raises, the slow path counts it
    with pytest.raises(packet.Malformed):
        packet.decode(packet.LINK_ETHERNET, short, 0.0, packet.Defragmenter())
    vlan = _HEAD[:12] + b"\x81\x00" + bytes(40)
    fragment = icmp_frame[:20] + b"\x20" + icmp_frame[21:]
    impls = [hot.sweep] + ([hot.COMPILED.sweep] if hot.COMPILED is not None else [])
    for sweep in impls:
        for frame, table, skipped in [
            (icmp_frame, {key: DONE}, True),
            (icmp_frame, {key: object()}, False),
            (icmp_frame, {}, False),
            (short, {key: DONE}, False),
            (fragment, {key: DONE}, False),
            (arp, {}, True),
            (arp[:13], {}, True),
            (vlan, {}, False),
        ]:
            buf, spans, stamps = _records([(1, frame)], b"")
            assert sweep(buf, spans, stamps, 0, {}, {}, DONE, table) == int(skipped), (sweep, frame.hex())
            assert sweep(buf, spans, stamps, 0, {}, {}, DONE, None) == 0
            assert sweep(buf, spans, stamps, 0, {}, {}, DONE) == 0


@compiled_only
@given(
    records=st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=40))),
    cut=st.integers(0, 64),
    big=st.booleans(),
    scale=st.sampled_from([1e-6, 1e-9]),
)
@settings(max_examples=examples(150), deadline=None)
def test_compiled_and_pure_pcap_framing_agree(
    records: list[tuple[int, int, bytes]], cut: int, big: bool, scale: float
) -> None:
    assert hot.COMPILED is not None
    order = ">" if big else "<"
    buf = b"".join(struct.pack(order + "IIII", sec, frac, len(data), len(data)) + data for sec, frac, data in records)
    buf = buf[: max(0, len(buf) - cut)]  # the last record cut short, as at the end of a chunk
    for pos in (0, 3):
        assert hot.COMPILED.frame_pcap(buf, pos, big, 1, scale) == hot.frame_pcap(buf, pos, big, 1, scale)


def _decoded(frame: bytes) -> tuple[object, ...] | None:
    """What `packet.decode` makes of an Ethernet frame, as a plain tuple; the exception's type if it raises."""
    try:
        found = packet.decode(packet.LINK_ETHERNET, frame, 0.0, packet.Defragmenter(), any_protocol=True)
    except (packet.Malformed, IndexError) as exc:
        return (type(exc),)
    return None if found is None else tuple(found)


def _segment_agrees(frame: bytes) -> None:
    """The compiled `segment` answers as its pure twin, and where either reads the frame, `decode` reads the same."""
    assert hot.COMPILED is not None and hot.COMPILED.segment is not None
    fields = hot.segment(frame)
    assert hot.COMPILED.segment(frame) == fields
    if fields is not None:
        assert _decoded(frame) == fields


_IPV4_TCP = bytes.fromhex(
    "020000000002020000000001" "0800" "4500003c1c46400040060000" "0a000001" "0a000009"
    "9c4001bb" "00000001" "00000000" "50180200" "00000000"
) + b"GET / HTTP/1.1\r\n\r\n"  # fmt: skip
_IPV4_UDP = bytes.fromhex(
    "020000000002020000000001" "0800" "4500002a1c46000040110000" "0a000001" "0a000009" "d4310035" "00160000"
) + b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00"  # fmt: skip


@compiled_only
@needs_corpus
def test_compiled_and_pure_segment_agree_on_every_corpus_frame() -> None:
    """Every frame of both corpora, rewritten to Ethernet where it is not (as bench/build_capture.py does)."""
    for path in _captures():
        for records in read_records(str(path)):
            for index in range(len(records)):
                frame = records.frame(index)
                if records.spans[3 * index + 2] == packet.LINK_ETHERNET:
                    _segment_agrees(frame)


@compiled_only
@given(
    base=st.sampled_from([_IPV4_TCP, _IPV4_UDP]),
    edits=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 80),
)
@settings(max_examples=examples(400), deadline=None)
def test_compiled_and_pure_segment_agree_on_damaged_frames(base: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    """Headers with other lengths, versions, fragment bits, protocols, offsets, and frames cut short anywhere."""
    frame = bytearray(base)
    for at, value in edits:
        if at < len(frame):
            frame[at] = value
    _segment_agrees(bytes(frame[: len(frame) - cut] if cut < len(frame) else b""))


def test_a_stale_build_is_refused() -> None:
    fresh = hot.COMPILED
    assert hot._stale(types.SimpleNamespace(ABI=hot.ABI + 1)) is not None
    assert hot._stale(types.SimpleNamespace(ABI=hot.ABI, SOURCE="0" * 64)) is not None
    if fresh is not None:
        from egress.capture import _hot  # type: ignore[attr-defined]

        assert hot._stale(_hot) is None


def test_a_stale_build_is_told_at_the_first_choice_not_at_import(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """At import the command has not set up its logging yet (``--log-format json``): the warning waits for the
    first `implementation` call, and is given once."""
    monkeypatch.setattr(hot, "COMPILED", None)
    monkeypatch.setattr(hot, "STALE", "built for ABI 0, this egress wants 4")
    monkeypatch.setattr(hot, "_warned", [False])
    monkeypatch.delenv(hot.PURE_ENV, raising=False)
    with caplog.at_level("WARNING", logger=hot.log.name):
        assert hot.implementation() is hot.PURE
        assert hot.implementation() is hot.PURE
    stale = [record for record in caplog.records if "is stale" in record.getMessage()]
    assert len(stale) == 1 and "built for ABI 0" in stale[0].getMessage()


def test_the_pure_path_is_asked_for_by_argument_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert hot.implementation(compiled=False) is hot.PURE
    monkeypatch.setenv(hot.PURE_ENV, "1")
    assert hot.implementation() is hot.PURE


_WITHOUT_MODULE = """
import json, sys
sys.modules["egress.capture._hot"] = None  # what a machine without a C compiler has: no module to import
from egress.capture import hot, packet
from egress.capture.reader import read_records
from egress.detect.registry import DetectorSet, build_detectors
from egress.policy.lists import load_name_lists
from egress.scanner import FileStats, Scanner
path = sys.argv[1]
stats = FileStats(path)
found = [repr((f.finding, f.meta, f.ts)) for f in Scanner(build_detectors(load_name_lists(None))).scan(path, stats)]
print(json.dumps({"path": hot.implementation().name, "found": found, "packets": stats.packets}))
"""


@pytest.mark.corpus
@needs_corpus
def test_without_the_compiled_module_egress_runs_the_pure_path_with_the_same_findings() -> None:
    path = CORPUS / "mining" / "ndpi_mining.pcapng"
    if not path.exists():
        path = _captures()[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _WITHOUT_MODULE, str(path)], capture_output=True, text=True, env=env, check=True
    )
    result = json.loads(out.stdout)
    assert result["path"] == "pure"
    detectors = _detectors()
    stats = FileStats(str(path))
    expected = [repr((f.finding, f.meta, f.ts)) for f in Scanner(detectors).scan(str(path), stats)]
    assert result["found"] == expected and expected
    assert result["packets"] == stats.packets


def test_the_package_installs_without_a_c_compiler(tmp_path: pathlib.Path) -> None:
    """setup.py's extension is optional: with no working compiler the build goes on and makes no module."""
    python = shutil.which("python3")
    probe = subprocess.run([python or "python3", "-c", "import setuptools"], capture_output=True, check=False)
    if python is None or probe.returncode:
        pytest.skip("no python3 with setuptools to build with")
    shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")
    (tmp_path / "egress" / "capture").mkdir(parents=True)
    shutil.copy(ROOT / "egress" / "capture" / "_hot.c", tmp_path / "egress" / "capture" / "_hot.c")
    env = {**os.environ, "CC": "false", "LDSHARED": "false"}
    command = [python, "setup.py", "-q", "build_ext", "--inplace"]
    build = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, check=False)
    assert build.returncode == 0, build.stderr
    assert not list((tmp_path / "egress" / "capture").glob("_hot*.so"))


def _block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    return struct.pack(order + "II", btype, len(body) + 12) + body + struct.pack(order + "I", len(body) + 12)


def _pcapng(order: str, packets: list[tuple[int, int, int, bytes]], resolution: int, cut: int) -> bytes:
    magic = struct.pack(order + "I", 0x1A2B3C4D)
    out = _block(order, 0x0A0D0D0A, magic + struct.pack(order + "HHq", 1, 0, -1))
    option = struct.pack(order + "HH", 9, 1) + bytes([resolution]) + b"\x00" * 3 + b"\x00" * 4
    out += _block(order, 1, struct.pack(order + "HHI", 1, 0, 65535) + option)
    out += _block(order, 1, struct.pack(order + "HHI", 113, 0, 65535))
    for kind, iface, stamp, data in packets:
        if kind == 3:
            out += _block(order, 3, struct.pack(order + "I", len(data)) + data)
        else:
            caplen = len(data) + (40 if kind == 1 else 0)  # kind 1: a caplen past the block (corrupt)
            head = struct.pack(order + "IIIII", iface, stamp >> 32, stamp & 0xFFFFFFFF, caplen, len(data))
            out += _block(order, 6, head + data)
    return out[: len(out) - cut]


def _read(path: str, impl: hot.Implementation) -> tuple[list[tuple[float, int, bytes]], str | None]:
    from egress.capture.reader import CaptureError, read_records

    frames: list[tuple[float, int, bytes]] = []
    try:
        for records in read_records(path, impl):
            frames += [(records.stamps[i], records.spans[3 * i + 2], records.frame(i)) for i in range(len(records))]
    except CaptureError as exc:
        return frames, str(exc)
    return frames, None


@compiled_only
@given(
    packets=st.lists(
        st.tuples(
            st.sampled_from([6, 6, 6, 3, 1]),
            st.sampled_from([0, 1, 1, 2]),
            st.integers(0, 2**64 - 1),
            st.binary(max_size=30),
        ),
        max_size=20,
    ),
    order=st.sampled_from(["<", ">"]),
    resolution=st.sampled_from([6, 9, 0x8A]),
    cut=st.sampled_from([0, 0, 3, 17]),
)
@settings(max_examples=examples(100), deadline=None)
def test_compiled_and_pure_pcapng_framing_agree(
    tmp_path_factory: pytest.TempPathFactory,
    packets: list[tuple[int, int, int, bytes]],
    order: str,
    resolution: int,
    cut: int,
) -> None:
    assert hot.COMPILED is not None
    path = tmp_path_factory.mktemp("pcapng") / "c.pcapng"
    path.write_bytes(_pcapng(order, packets, resolution, cut))
    assert _read(str(path), hot.COMPILED) == _read(str(path), hot.PURE)
