"""The capture reader: formats, link types, timestamps, and clear errors on bad files."""

from __future__ import annotations

import pathlib
import struct

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.capture.reader import CaptureError, pcap_linktype, read_frames
from tests.budget import examples
from tests.corpus import CORPUS, corpus_path, expected_rows, needs_corpus

FRAME_A = bytes(range(60))
FRAME_B = b"\xff" * 42


def _pcap(order: str, magic: int, linktype: int, records: list[tuple[int, int, bytes]]) -> bytes:
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for sec, frac, data in records:
        out += struct.pack(order + "IIII", sec, frac, len(data), len(data)) + data
    return out


@pytest.mark.parametrize(
    ("order", "magic", "scale"),
    [("<", 0xA1B2C3D4, 1e-6), (">", 0xA1B2C3D4, 1e-6), ("<", 0xA1B23C4D, 1e-9), (">", 0xA1B23C4D, 1e-9)],
    ids=["le-micro", "be-micro", "le-nano", "be-nano"],
)
def test_classic_pcap_in_both_byte_orders_and_resolutions(
    tmp_path: pathlib.Path, order: str, magic: int, scale: float
) -> None:
    path = tmp_path / "capture.anything"
    path.write_bytes(_pcap(order, magic, 113, [(100, 250, FRAME_A), (101, 0, FRAME_B)]))
    frames = list(read_frames(str(path)))
    assert [(linktype, data) for _, linktype, data in frames] == [(113, FRAME_A), (113, FRAME_B)]
    assert frames[0][0] == pytest.approx(100 + 250 * scale)


def test_pcapng_with_two_interfaces_of_different_link_types(tmp_path: pathlib.Path) -> None:
    blocks = [
        dpkt.pcapng.SectionHeaderBlockLE(),
        dpkt.pcapng.InterfaceDescriptionBlockLE(linktype=1, snaplen=65535),
        dpkt.pcapng.InterfaceDescriptionBlockLE(linktype=276, snaplen=65535),
        dpkt.pcapng.EnhancedPacketBlockLE(pkt_data=FRAME_A, iface_id=0, ts_high=0, ts_low=1_500_000, caplen=60),
        dpkt.pcapng.EnhancedPacketBlockLE(pkt_data=FRAME_B, iface_id=1, ts_high=0, ts_low=3_000_000, caplen=42),
    ]
    path = tmp_path / "two.pcap"  # pcapng content under a .pcap name, as in the corpus
    path.write_bytes(b"".join(bytes(block) for block in blocks))
    frames = list(read_frames(str(path)))
    assert [(linktype, data) for _, linktype, data in frames] == [(1, FRAME_A), (276, FRAME_B)]
    assert frames[0][0] == pytest.approx(1.5)
    assert frames[1][0] == pytest.approx(3.0)


def test_truncated_pcap_yields_good_packets_then_names_file_and_packet(tmp_path: pathlib.Path) -> None:
    whole = _pcap("<", 0xA1B2C3D4, 1, [(1, 0, FRAME_A), (2, 0, FRAME_A), (3, 0, FRAME_A)])
    path = tmp_path / "cut.pcap"
    path.write_bytes(whole[:-10])
    got: list[bytes] = []
    with pytest.raises(CaptureError, match=r"cut\.pcap: truncated packet 3"):
        for _, _, data in read_frames(str(path)):
            got.append(data)
    assert got == [FRAME_A, FRAME_A]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty or truncated file header"),
        (b"GET / HTTP/1.1\r\n", "not a pcap or pcapng file"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated pcap file header"),
        (b"\x0a\x0d\x0d\x0a\x08\x00\x00\x00\x4d\x3c\x2b\x1a", "corrupt pcapng block"),
    ],
    ids=["empty", "not-a-capture", "short-header", "bad-pcapng-length"],
)
def test_unreadable_files_give_one_clear_error(tmp_path: pathlib.Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=message) as caught:
        list(read_frames(str(path)))
    assert str(path) in str(caught.value)


def test_missing_file_is_a_capture_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(CaptureError, match="cannot open"):
        list(read_frames(str(tmp_path / "nope.pcap")))


@settings(max_examples=examples(300), deadline=None)
@given(tail=st.binary(max_size=400), pcapng=st.booleans())
def test_arbitrary_bytes_after_a_header_never_raise_anything_else(tail: bytes, pcapng: bool) -> None:
    if pcapng:
        head = bytes(dpkt.pcapng.SectionHeaderBlockLE()) + bytes(dpkt.pcapng.InterfaceDescriptionBlockLE())
    else:
        head = _pcap("<", 0xA1B2C3D4, 1, [])
    path = pathlib.Path("/tmp/egress-hypothesis-reader.pcap")
    path.write_bytes(head + tail)
    try:
        for _ts, _linktype, data in read_frames(str(path)):
            assert isinstance(data, bytes)
    except CaptureError as exc:
        assert str(path) in str(exc)


LINKTYPES = {"Ethernet": 1, "Linux cooked-mode capture v1": 113}


@pytest.mark.corpus
@needs_corpus
@pytest.mark.parametrize("row", expected_rows(), ids=lambda r: r["file"])
def test_every_corpus_capture_reads_completely(row: dict[str, str]) -> None:
    frames = list(read_frames(str(corpus_path(row["file"]))))
    assert len(frames) == int(row["packets"])
    assert {linktype for _, linktype, _ in frames} == {LINKTYPES[row["linktype"]]}


@settings(max_examples=examples(300))
@given(head=st.binary(min_size=20, max_size=20), linktype=st.integers(0, 0xFFFFFFFF), big=st.booleans())
def test_the_pcap_header_link_type_is_dpkts(head: bytes, linktype: int, big: bool) -> None:
    """`pcap_linktype` reads the classic header without dpkt (whose import costs the scan ~190 M instructions): the
    link type dpkt's `FileHdr` reads, upper (FCS) bits dropped as before, for any header bytes in either order."""
    import dpkt.pcap

    order = ">" if big else "<"
    header = head + struct.pack(order + "I", linktype)
    parsed = dpkt.pcap.FileHdr(header) if big else dpkt.pcap.LEFileHdr(header)
    assert pcap_linktype(header, order) == int(parsed.linktype) & 0x0FFFFFFF


@needs_corpus
def test_every_corpus_pcap_header_link_type_is_dpkts() -> None:
    """The same over every classic pcap file of the corpus, as the reader opens it."""
    import dpkt.pcap

    seen = 0
    for path in sorted(CORPUS.rglob("*.pcap")):
        head = path.read_bytes()[:24]
        if head[:4] not in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
            continue
        big = head[0] == 0xA1
        parsed = dpkt.pcap.FileHdr(head) if big else dpkt.pcap.LEFileHdr(head)
        assert pcap_linktype(head, ">" if big else "<") == int(parsed.linktype) & 0x0FFFFFFF, path
        seen += 1
    assert seen > 20
