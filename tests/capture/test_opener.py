"""egress/capture/opener.py: captures from stdin and compressed, and the count of undecodable link types."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import struct
import sys
from pathlib import Path

import pytest

try:
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from backports import zstd  # type: ignore[no-redef,import-not-found,unused-ignore]

from egress.capture.opener import compression, open_capture, tally_unsupported
from egress.capture.reader import CaptureError, read_frames

PCAP = Path(__file__).resolve().parents[2] / "pcaps" / "stratum_3333.pcap"
COMPRESSORS = {
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": zstd.compress,
}


def pcap_of(linktype: int, frames: list[bytes]) -> bytes:
    """A classic little-endian pcap with ``frames`` at times 1, 2, ..."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for second, frame in enumerate(frames, 1):
        out += struct.pack("<IIII", second, 0, len(frame), len(frame)) + frame
    return out


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_a_compressed_capture_reads_as_the_plain_one(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "capture.bin"  # the name says nothing: the magic does
    path.write_bytes(COMPRESSORS[kind](PCAP.read_bytes()))
    assert compression(path.read_bytes()[:8]) == kind
    assert list(read_frames(str(path))) == list(read_frames(str(PCAP)))


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_a_cut_compressed_capture_is_a_capture_error(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "cut"
    data = COMPRESSORS[kind](PCAP.read_bytes())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaptureError, match=r"cut: (read error|truncated)"):
        list(read_frames(str(path)))


@pytest.mark.parametrize("compress", [None, "gzip", "zstd"])
def test_stdin_is_read_for_dash(compress: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    data = PCAP.read_bytes()
    if compress is not None:
        data = COMPRESSORS[compress](data)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(_Pipe(data))))
    assert list(read_frames("-")) == list(read_frames(str(PCAP)))


class _Pipe(io.RawIOBase):
    """Bytes that cannot seek, as a pipe."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self.data.readinto(buffer)


def test_an_unknown_plain_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello, not a capture")
    with pytest.raises(CaptureError, match="not a pcap"):
        list(read_frames(str(path)))
    with open_capture(str(path)) as handle:
        assert handle.read() == b"hello, not a capture"


def test_tally_counts_only_undecodable_link_types() -> None:
    counts: dict[int, int] = {}
    tally_unsupported([(0.0, 1, b""), (0.0, 1, b"")], counts)
    assert counts == {}
    tally_unsupported([(0.0, 147, b""), (0.0, 1, b""), (0.0, 147, b""), (0.0, 105, b"")], counts)
    assert counts == {147: 2, 105: 1}
