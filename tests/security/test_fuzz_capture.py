"""Fuzzing the capture reader and the scanner behind it (egress/capture/, egress/scanner.py) with real captures
mutated: the files of pcaps/ (every demo attempt, as the gateway's sandbox side saw it) with bytes flipped,
lengths set to extremes, records cut, duplicated or dropped. Whatever the file, a scan ends with findings and
counts, or with the file's one error (`FileStats.error`, a `CaptureError` naming the file): never another
exception. tests/capture/ fuzzes single frames and the bytes after a header; these reach flow reassembly and the
detectors through the reader.
"""

from __future__ import annotations

import pathlib
import tempfile
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.detect.registry import build_detectors
from egress.scanner import FileStats, Scanner
from tests.budget import examples
from tests.lists import shipped_lists
from tests.security.fuzzing import counted

pytestmark = [pytest.mark.fuzz, pytest.mark.usefixtures("fuzz_rows")]

PCAPS = pathlib.Path(__file__).resolve().parents[2] / "pcaps"
SEEDS = {path.name: path.read_bytes() for path in sorted(PCAPS.glob("*.pcap")) if path.stat().st_size < 8192}
_PCAP_HEADER, _RECORD_HEADER = 24, 16


@cache
def _scanner() -> Scanner:
    """Built on first use, not at import: every xdist worker imports every test module to collect it."""
    return Scanner(build_detectors(shipped_lists()))


def _records(data: bytes) -> list[bytes]:
    """The records of a little-endian microsecond pcap (what tcpdump writes), header included."""
    out, at = [], _PCAP_HEADER
    while at + _RECORD_HEADER <= len(data):
        size = int.from_bytes(data[at + 8 : at + 12], "little")
        out.append(data[at : at + _RECORD_HEADER + size])
        at += _RECORD_HEADER + size
    return out


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    seed = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    records = _records(seed)
    reorder = draw(st.booleans())
    if records and reorder:  # whole records dropped, duplicated, reordered
        records = draw(st.lists(st.sampled_from(records), max_size=len(records) + 3))
    data = bytearray(seed[:_PCAP_HEADER] + b"".join(records))
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        match draw(st.sampled_from(("flip", "extreme", "cut", "insert"))):
            case "flip" if data:
                data[at] ^= 1 << draw(st.integers(0, 7))
            case "extreme" if len(data) > at + 4:  # e.g. a caplen, an IP total length, a TCP offset
                data[at : at + 4] = draw(
                    st.sampled_from((b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x00\xff\xff"))
                )
            case "cut":
                del data[at:]
            case "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            case _:
                pass
    return bytes(data)


@settings(max_examples=examples(300), deadline=None)
@given(mutated())
@counted("capture reader + scanner (mutated pcaps/)")
def test_a_mutated_capture_scans_or_reports_its_one_error(data: bytes) -> None:
    with tempfile.NamedTemporaryFile(suffix=".pcap") as handle:
        handle.write(data)
        handle.flush()
        stats = FileStats(handle.name)
        found = list(_scanner().scan(handle.name, stats))
    assert stats.error is None or handle.name in stats.error, stats.error
    assert stats.skipped <= stats.packets
    for item in found:
        assert item.finding.protocol and item.file == handle.name


def test_the_seeds_are_there() -> None:
    assert len(SEEDS) >= 10, sorted(SEEDS)
