"""Each technique of the security suite kept as a small capture at the gateway's sandbox side, for pcaps/.

Off unless ``EGRESS_RECORD_PCAPS=DIR`` is set (``make pcaps`` sets it to pcaps/). Then every `SecurityLab.capture`
block also runs tcpdump on the gateway's sandbox-facing interface (`egress.lab.record.start_tcpdump`: the capture
``egress lab record`` takes of a demo attempt), and `report` (tests/security/harness.py) keeps what the current
test's blocks captured as ``DIR/suite/<technique>.pcap`` and appends one JSON line (technique, class, note, the
test's node id, the row's verdict) to ``DIR/suite/recorded.jsonl``. ``python -m tests.security.pcaps_manifest DIR``
then adds a pcaps/MANIFEST.tsv row for each new file with what ``egress scan`` finds in it (rows already there
are kept: they carry a person's judgement, e.g. a known gap) and removes the JSON lines.

Files stay small: a block keeps at most `COUNT` packets, and the merged file
stops at `BUDGET` bytes, packets in capture order (the opening of each flow: what the detectors look at).
The sandbox side is the agent's own bytes and what it got back; the internet side stays the ground truth of the
suite (tests/security/capture.py), this is only a record for the scanner's tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import struct
from collections.abc import Iterator

from egress.lab.demo import GatewayRun
from egress.lab.record import start_tcpdump, stop_tcpdump

RECORD_ENV = "EGRESS_RECORD_PCAPS"
SUBDIR = "suite"
JOURNAL = "recorded.jsonl"
SNAPLEN = 0
"""Whole frames: the sandbox's kernel hands the veth segments of up to 64 KiB (segmentation offload), so a cut at
2048 bytes as ``egress lab record`` makes would lose the Stratum that follows 12 KiB of padding. `BUDGET` bounds
the file instead."""
FILTER = "not arp and not (icmp6 and (ip6[40] == 135 or ip6[40] == 136))"
"""Leave out neighbour solicitations and advertisements (link chatter) but keep router solicitations: a technique
hides data in them (egress.lab.record.FILTER leaves out all of neighbour discovery)."""
COUNT = 400
"""Packets per capture block at most: a flood (5,000 GRE packets, 2,000 DNS queries) stops the capture early."""
BUDGET = 48 * 1024
"""Bytes per kept file at most (tests/test_pcaps.py allows 64 KiB)."""

_PENDING: list[tuple[str, pathlib.Path]] = []
"""(test node id, sandbox-side file) of this process's capture blocks not yet kept by a `report`."""

_FILE_HEADER = 24
_RECORD = struct.Struct("<IIII")


def target() -> pathlib.Path | None:
    """The folder to record into, or None when recording is off."""
    value = os.environ.get(RECORD_ENV, "")
    return pathlib.Path(value).resolve() if value else None


def _current_test() -> str:
    """The running test's node id (pytest sets PYTEST_CURRENT_TEST to ``<nodeid> (<phase>)``)."""
    return os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]


@contextlib.contextmanager
def sandbox_side[T](run: GatewayRun, path: pathlib.Path, inner: contextlib.AbstractContextManager[T]) -> Iterator[T]:
    """``inner`` (the internet-side capture) with a sandbox-side capture into ``path`` around it, the file left
    for the next `keep` of the same test."""
    process = start_tcpdump(run, path, snaplen=SNAPLEN, count=COUNT, bpf=FILTER)
    try:
        with inner as value:
            yield value
    finally:
        stop_tcpdump(process)
        path.with_suffix(".log").unlink(missing_ok=True)
        _PENDING.append((_current_test(), path))


def file_name(technique: str) -> str:
    """``dns/exfil-colon-udp`` → ``dns_exfil-colon-udp.pcap``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", technique).strip("_") + ".pcap"


def merge(parts: list[pathlib.Path], out: pathlib.Path, budget: int = BUDGET) -> int:
    """Write the records of the pcap files ``parts`` (tcpdump's, one link type) in order into ``out``, stopping
    before the file would pass ``budget`` bytes; the original record headers (times, wire lengths) are kept.
    Returns the packets written."""
    header = b""
    chunks: list[bytes] = []
    size = _FILE_HEADER
    for part in parts:
        data = part.read_bytes() if part.exists() else b""
        if len(data) < _FILE_HEADER or data[:4] != b"\xd4\xc3\xb2\xa1":  # little-endian microsecond pcap only
            continue
        header = header or data[:_FILE_HEADER]
        pos = _FILE_HEADER
        while pos + _RECORD.size <= len(data):
            caplen = _RECORD.unpack_from(data, pos)[2]
            end = pos + _RECORD.size + caplen
            if end > len(data) or size + end - pos > budget:
                break  # a record cut by tcpdump's exit, or the budget reached
            chunks.append(data[pos:end])
            size += end - pos
            pos = end
    if chunks:
        out.write_bytes(header + b"".join(chunks))
    return len(chunks)


def keep(technique: str, cls: str, leaked: int, goal: bool, reason: str | None, note: str) -> None:
    """Keep the current test's pending sandbox-side captures as the technique's file (when recording)."""
    folder = target()
    if folder is None:
        return
    test = _current_test()
    mine = [path for owner, path in _PENDING if owner == test]
    _PENDING[:] = [(owner, path) for owner, path in _PENDING if owner != test]
    (folder / SUBDIR).mkdir(parents=True, exist_ok=True)
    name = f"{SUBDIR}/{file_name(technique)}"
    packets = merge(mine, folder / name) if mine else 0
    row: dict[str, object] = {"file": name if packets else "", "technique": technique, "cls": cls, "note": note}
    row |= {"test": test, "leaked": leaked, "goal": goal, "reason": reason or "", "packets": packets}
    with (folder / SUBDIR / JOURNAL).open("a") as journal:  # one short line per write: workers do not interleave
        journal.write(json.dumps(row) + "\n")
