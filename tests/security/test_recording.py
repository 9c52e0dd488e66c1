"""The pure parts of recording the suite for pcaps/ (tests/security/recording.py, pcaps_manifest.py): merging and
bounding the sandbox-side files, naming them, and the manifest rows made from the scanner's findings."""

from __future__ import annotations

import io
import json
import pathlib
import shutil

import dpkt
import pytest

from tests.security import pcaps_manifest, recording

PCAPS = pathlib.Path(__file__).resolve().parents[2] / "pcaps"


def _pcap(path: pathlib.Path, frames: list[bytes], wirelen_extra: int = 0) -> None:
    buffer = io.BytesIO()
    writer = dpkt.pcap.Writer(buffer, snaplen=2048)
    for index, frame in enumerate(frames):
        writer.writepkt(frame, ts=1000.0 + index)
    data = bytearray(buffer.getvalue())
    if wirelen_extra:  # a frame cut at the snap length: the wire length says how long it was
        data[24 + 12 : 24 + 16] = (len(frames[0]) + wirelen_extra).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def _records(path: pathlib.Path) -> list[tuple[float, bytes]]:
    with path.open("rb") as handle:
        return [(ts, bytes(frame)) for ts, frame in dpkt.pcap.Reader(handle)]


def test_merge_keeps_the_parts_in_order_with_their_headers(tmp_path: pathlib.Path) -> None:
    _pcap(tmp_path / "a.pcap", [b"a" * 60, b"b" * 70], wirelen_extra=900)
    _pcap(tmp_path / "b.pcap", [b"c" * 80])
    out = tmp_path / "out.pcap"
    assert recording.merge([tmp_path / "a.pcap", tmp_path / "missing.pcap", tmp_path / "b.pcap"], out) == 3
    assert [frame[:1] for _, frame in _records(out)] == [b"a", b"b", b"c"]
    assert [ts for ts, _ in _records(out)] == [1000.0, 1001.0, 1000.0]
    assert out.read_bytes()[24 + 12 : 24 + 16] == (960).to_bytes(4, "little")  # wire length kept


@pytest.mark.parametrize("budget", [24 + 16 + 60, 24 + 16 + 60 + 16 + 69, 24 + 16 + 60 + 16 + 70])
def test_merge_stops_before_the_budget(tmp_path: pathlib.Path, budget: int) -> None:
    _pcap(tmp_path / "a.pcap", [b"a" * 60, b"b" * 70])
    out = tmp_path / "out.pcap"
    written = recording.merge([tmp_path / "a.pcap"], out, budget=budget)
    assert out.stat().st_size <= budget
    assert written == len(_records(out)) == (2 if budget >= 24 + 16 + 60 + 16 + 70 else 1)


def test_merge_of_a_cut_file_keeps_its_whole_records(tmp_path: pathlib.Path) -> None:
    _pcap(tmp_path / "a.pcap", [b"a" * 60, b"b" * 70])
    cut = tmp_path / "cut.pcap"
    cut.write_bytes((tmp_path / "a.pcap").read_bytes()[:-10])  # tcpdump killed mid-record
    assert recording.merge([cut], tmp_path / "out.pcap") == 1


def test_merge_of_nothing_writes_no_file(tmp_path: pathlib.Path) -> None:
    _pcap(tmp_path / "empty.pcap", [])
    assert recording.merge([tmp_path / "empty.pcap"], tmp_path / "out.pcap") == 0
    assert not (tmp_path / "out.pcap").exists()


@pytest.mark.parametrize(
    ("technique", "name"),
    [
        ("dns/exfil-colon-udp", "dns_exfil-colon-udp.pcap"),
        ("opaque/stunnel-ssh-D-bound sni", "opaque_stunnel-ssh-D-bound_sni.pcap"),
        ("demo/stratum_3333", "demo_stratum_3333.pcap"),
    ],
)
def test_file_name(technique: str, name: str) -> None:
    assert recording.file_name(technique) == name


def test_keep_does_nothing_when_recording_is_off(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.delenv(recording.RECORD_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    recording.keep("t/x", "mining", 0, False, None, "")
    assert list(tmp_path.iterdir()) == []


def test_keep_then_the_manifest_row_comes_from_the_scanner(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    """A pending sandbox-side file of this test becomes suite/<technique>.pcap, and its row says what the real
    scanner finds in it (the demo's Stratum login: mining/stratum-v1)."""
    monkeypatch.setenv(recording.RECORD_ENV, str(tmp_path))
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/security/test_x.py::test_y[a b] (call)")
    part = tmp_path / "part.pcap"
    shutil.copy(PCAPS / "stratum_3333.pcap", part)
    monkeypatch.setattr(recording, "_PENDING", [("tests/security/test_x.py::test_y[a b]", part), ("other", part)])
    recording.keep("stratum/x", "mining", 0, False, "mining", "a note")
    recording.keep("stratum/without-capture", "mining", 0, False, None, "")
    pending = recording._PENDING
    assert pending == [("other", part)]
    entries = [json.loads(line) for line in (tmp_path / "suite" / recording.JOURNAL).read_text().splitlines()]
    assert [entry["file"] for entry in entries] == ["suite/stratum_x.pcap", ""]
    (tmp_path / "MANIFEST.tsv").write_text("# comment\nfile\tholds\tscan_must_find\tcommand\n")
    assert pcaps_manifest.main([str(tmp_path)]) == 0
    [row] = (tmp_path / "MANIFEST.tsv").read_text().splitlines()[2:]
    file, holds, found, command = row.split("\t")
    assert (file, found) == ("suite/stratum_x.pcap", "mining/stratum-v1")
    assert "stratum/x" in holds and "a note" in holds and "record mining" in holds
    assert command == "EGRESS_RECORD_PCAPS=pcaps pytest -p no:randomly 'tests/security/test_x.py::test_y[a b]'"
    assert not (tmp_path / "suite" / recording.JOURNAL).exists()
    assert pcaps_manifest.main([str(tmp_path)]) == 1  # nothing recorded since
