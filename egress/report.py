"""How scan findings are printed: JSON lines for machines, an aligned table for people, a summary for both."""

from __future__ import annotations

import datetime
import json
from collections import Counter
from collections.abc import Iterable
from typing import Any, TextIO

import click

from egress.detect.base import Category
from egress.scanner import FileStats, FlowFinding

CATEGORY_COLOURS = {Category.MINING: "red", Category.TUNNEL: "yellow", Category.CRYPTO_NODE: "magenta"}


def iso_time(ts: float) -> str:
    """Capture time as ISO 8601 UTC with microseconds."""
    moment = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def as_record(found: FlowFinding) -> dict[str, Any]:
    """The JSON shape of one finding (documented in docs/scan-output.md)."""
    meta = found.meta
    return {
        "file": found.file,
        "category": found.finding.category.value,
        "protocol": found.finding.protocol,
        "detector": found.finding.detector,
        "transport": meta.transport.value,
        "src": meta.src,
        "sport": meta.sport,
        "dst": meta.dst,
        "dport": meta.dport,
        "ts": iso_time(found.ts),
        "ts_epoch": round(found.ts, 6),
        "evidence": found.finding.evidence,
    }


def write_json(found: FlowFinding, out: TextIO) -> None:
    out.write(json.dumps(as_record(found), separators=(",", ":")) + "\n")


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class TableWriter:
    """Prints findings as aligned rows; columns are sized for the usual case and long cells are cut."""

    HEADER = ("CATEGORY", "PROTOCOL", "TRANSPORT", "FLOW", "TIME", "EVIDENCE")

    def __init__(self, out: TextIO, colour: bool, show_file: bool) -> None:
        self.out = out
        self.colour = colour
        self.show_file = show_file
        self.rows = 0
        self.current_file: str | None = None

    def write(self, found: FlowFinding) -> None:
        if self.show_file and found.file != self.current_file:
            self.current_file = found.file
            self.out.write(("\n" if self.rows else "") + click.style(found.file, bold=self.colour) + "\n")
            self.rows = 0
        if not self.rows:
            self.out.write(self._line(self.HEADER) + "\n")
        meta = found.meta
        category = found.finding.category
        flow = f"{_endpoint(meta.src, meta.sport)} -> {_endpoint(meta.dst, meta.dport)}"
        cells = (
            category.value,
            found.finding.protocol,
            meta.transport.value,
            flow,
            iso_time(found.ts)[:19],
            found.finding.evidence,
        )
        line = self._line(cells)
        if self.colour:
            line = click.style(line[:12], fg=CATEGORY_COLOURS[category], bold=True) + line[12:]
        self.out.write(line + "\n")
        self.rows += 1

    @staticmethod
    def _line(cells: tuple[str, ...]) -> str:
        widths = (11, 24, 9, 50, 19)
        parts = [cell[:width].ljust(width) for cell, width in zip(cells, widths, strict=False)]
        evidence = cells[-1]
        return " ".join([*parts, evidence[:70]]).rstrip()


def summary(stats: Iterable[FileStats], findings: Counter[str]) -> str:
    files = list(stats)
    packets = sum(item.packets for item in files)
    skipped = sum(item.skipped for item in files)
    flows = sum(item.flows for item in files)
    unreadable = sum(1 for item in files if item.error)
    by_category = ", ".join(f"{name} {count}" for name, count in sorted(findings.items())) or "none"
    text = (
        f"scanned {len(files)} file(s): {packets} packets ({skipped} skipped as malformed), {flows} flows; "
        f"findings: {by_category}"
    )
    unidentified = sum(item.unidentified for item in files)
    if unidentified:
        text += f"; {unidentified} flow(s) unidentified at the inspection cap"
    if unreadable:
        text += f"; {unreadable} file(s) not read to the end"
    return text
