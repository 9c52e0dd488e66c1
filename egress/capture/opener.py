"""Where capture bytes come from: a file, or standard input for ``-``, compressed or not (gzip, bzip2, xz, zstd:
told by their magic bytes, whatever the name says); and which link types egress can decode, counted per file.
`egress.capture.reader` opens every capture through `open_capture`; the scanner counts with `tally_unsupported`.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import operator
import sys
import typing
from typing import IO, BinaryIO, Final

from egress.capture.packet import SUPPORTED_LINKTYPES

try:  # Python 3.14's standard library; before it, the backport (PEP 784) that mitmproxy already requires
    from compression import zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[no-redef,import-not-found,unused-ignore]

STDIN: Final = "-"
_MAGICS: Final = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
LINKTYPE_NAMES: Final = {
    0: "null", 1: "ethernet", 101: "raw", 105: "802.11", 113: "linux-sll", 127: "802.11-radiotap", 147: "user0",
    187: "bluetooth-hci", 195: "802.15.4", 228: "ipv4", 229: "ipv6", 276: "linux-sll2",
}  # fmt: skip
"""Names of a few link types (tcpdump.org's LINKTYPE_ list, lower-cased), for messages."""
_LINKTYPE = operator.itemgetter(1)


class _Rewindable(io.RawIOBase):
    """A stream that cannot seek (a pipe) made to go back to its start, as long as only its first bytes were read:
    the reader reads the magic number and seeks to 0 before it parses the file."""

    HEAD: Final = 64

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.head = stream.read(self.HEAD)
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        wanted = len(buffer)
        if self.position < len(self.head):
            data = self.head[self.position : self.position + wanted]
        else:
            data = self.stream.read(wanted)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET or offset > len(self.head) or self.position > len(self.head):
            raise io.UnsupportedOperation("a piped capture can only go back to its first bytes")
        self.position = offset
        return offset

    def tell(self) -> int:
        return self.position


def compression(head: bytes) -> str | None:
    """The compression whose magic starts ``head`` (``gzip``, ``bzip2``, ``xz``, ``zstd``), or None."""
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    return None


def open_capture(path: str) -> BinaryIO:
    """The capture's bytes, decompressed: ``path`` (standard input when it is ``-``). `OSError` when it cannot
    be opened; a corrupt compressed stream raises `OSError`, `EOFError` or the codec's error as it is read."""
    if path == STDIN:
        raw: IO[bytes] = io.BufferedReader(_Rewindable(sys.stdin.buffer), buffer_size=1 << 20)
    else:
        raw = open(path, "rb")  # noqa: SIM115 - the caller closes what it gets
    head = raw.read(8)
    raw.seek(0)
    kind = compression(head)
    if kind is None:
        return typing.cast(BinaryIO, raw)
    inner: object
    if kind == "gzip":
        inner = gzip.GzipFile(fileobj=raw, mode="rb")
    elif kind == "bzip2":
        inner = bz2.BZ2File(raw)
    elif kind == "xz":
        inner = lzma.LZMAFile(raw)  # noqa: SIM115 - the caller closes what it gets
    else:
        inner = zstd.ZstdFile(raw)
    return typing.cast(
        BinaryIO, inner
    )  # it seeks back to 0 by decompressing again from the start: what the reader's one seek needs


DECOMPRESS_ERRORS: Final = (OSError, EOFError, lzma.LZMAError, zstd.ZstdError)
"""What a capture raises while it is read when it cannot be (a damaged or truncated compressed stream: gzip's
`BadGzipFile` and bzip2's bad data are `OSError`s, a cut stream an `EOFError`)."""


def tally_unsupported(batch: list[tuple[float, int, bytes]], counts: dict[int, int]) -> None:
    """Count into ``counts`` the packets of ``batch`` whose link type egress cannot decode (per link type)."""
    kinds = set(map(_LINKTYPE, batch))  # one C-level pass: the common batch is all of one supported type
    if kinds <= SUPPORTED_LINKTYPES:
        return
    for _, linktype, _ in batch:
        if linktype not in SUPPORTED_LINKTYPES:
            counts[linktype] = counts.get(linktype, 0) + 1


def describe_linktype(linktype: int) -> str:
    name = LINKTYPE_NAMES.get(linktype)
    return f"{linktype} ({name})" if name else str(linktype)
