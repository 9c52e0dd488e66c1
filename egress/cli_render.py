"""How the query commands print attempt records: a table (rich: a cell too wide for the terminal wraps, nothing is
cut), compact lines (as ``hubble observe`` prints flows), one JSON array, JSON lines (the documented records,
docs/records.md) or CSV; and the columns an operator can ask for. `egress.cli_query` chooses, this module prints.
"""

from __future__ import annotations

import csv
import datetime
import json
from collections.abc import Callable, Iterable
from typing import IO, Any, Final

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from egress.record.printable import escape, spreadsheet_cell
from egress.record.schema import AttemptRecord
from egress.report import CATEGORY_COLOURS

FORMATS: Final = ("table", "compact", "json", "jsonl", "csv")
COLOURS: Final = {category.value: colour for category, colour in CATEGORY_COLOURS.items()} | {"policy": "blue"}
UNBOUNDED: Final = 1_000_000
"""The console width when stdout is no terminal: rows never wrap in a file or a pipe."""


def when(ts: float, with_date: bool = True) -> str:
    """Local time to the millisecond, as the tables show it."""
    moment = datetime.datetime.fromtimestamp(ts)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f" if with_date else "%H:%M:%S.%f")[:-3]


def endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def destination(record: AttemptRecord) -> str:
    return f"{endpoint(record.dst, record.dport)}/{record.transport}"


def _action(record: AttemptRecord) -> str:
    return f"{record.action} x{record.count}" if record.count > 1 else str(record.action)


COMPUTED: Final[dict[str, Callable[[AttemptRecord], str]]] = {
    "time": lambda record: when(record.ts),
    "source": lambda record: endpoint(record.src, record.sport),
    "destination": destination,
    "action": _action,
}
"""Columns made from several fields (``action`` with the count of repeats); any record field is a column too."""
FIELD_COLUMNS: Final = tuple(AttemptRecord.__dataclass_fields__)
"""The record's fields: CSV's columns by default, with their values as the JSON has them."""
COLUMNS: Final = (*COMPUTED, *(name for name in FIELD_COLUMNS if name not in COMPUTED))
DEFAULT_COLUMNS: Final = ("time", "sandbox", "category", "destination", "host", "reason", "action")
WIDE_COLUMNS: Final = (*DEFAULT_COLUMNS, "detector", "rule", "evidence")
"""``--wide``: also what decided and what matched."""


def cell(record: AttemptRecord, column: str, raw: bool = False) -> str:
    """One column of a record as text; ``raw``: a record field as it is (CSV), not the column made for reading.
    Never a control character (`egress.record.printable`: a record read from an older gateway or another writer
    is shown escaped too)."""
    render = COMPUTED.get(column)
    if render is not None and not (raw and column in FIELD_COLUMNS):
        return escape(render(record))
    return escape(str(getattr(record, column)))


def parse_columns(text: str) -> tuple[str, ...]:
    """``time,host,evidence`` as column names; `ValueError` naming an unknown one and the known ones."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in COLUMNS]
    if unknown or not names:
        raise ValueError(f"unknown column(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(COLUMNS)}")
    return names


def json_line(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def compact_line(record: AttemptRecord, colour: bool) -> str:
    """One untruncated line, as ``hubble observe -o compact``: when, sandbox, flow, name, verdict."""
    count = f" x{record.count}" if record.count > 1 else ""
    verdict = f"{record.category} {record.reason}"
    if colour and record.category in COLOURS:
        verdict = click.style(verdict, fg=COLOURS[record.category], bold=True)
    host = f" {escape(record.host)}" if record.host else ""
    return (
        f"{when(record.ts)} {record.sandbox or '-'} {endpoint(record.src, record.sport)} -> "
        f"{destination(record)}{host} {verdict} {str(record.action).upper()}{count}"
    )


class RecordPrinter:
    """Prints batches of records in one format; `close` ends the output (the JSON array's bracket)."""

    def __init__(self, fmt: str, columns: tuple[str, ...], out: IO[str], colour: bool, width: int | None) -> None:
        self.fmt, self.columns, self.out, self.colour = fmt, columns, out, colour
        self.console = Console(
            file=out,
            width=width or UNBOUNDED,
            color_system="standard" if colour else None,
            force_terminal=colour,
            highlight=False,
            markup=False,
            emoji=False,
        )
        self.csv = csv.writer(out, lineterminator="\n")
        self.started = False
        self.first = True

    def write(self, records: Iterable[AttemptRecord]) -> None:
        """One batch: a table with its header the first time, without it later (a follow's new records)."""
        batch = list(records)
        if self.fmt == "table":
            if batch or not self.started:
                self._table(batch, header=not self.started)
        elif self.fmt == "csv":
            if not self.started:
                self.csv.writerow(self.columns)
            rows = ([spreadsheet_cell(cell(record, column, raw=True)) for column in self.columns] for record in batch)
            self.csv.writerows(rows)
        elif self.fmt == "json":
            for record in batch:
                self.out.write(("[\n" if self.first else ",\n") + json_line(record.to_json()))
                self.first = False
        else:
            show = json_line if self.fmt == "jsonl" else None
            for record in batch:
                self.out.write((show(record.to_json()) if show else compact_line(record, self.colour)) + "\n")
        self.started = True
        self.out.flush()

    def close(self) -> None:
        if self.fmt == "json":
            self.out.write("[]\n" if self.first else "\n]\n")
            self.out.flush()

    def _table(self, batch: list[AttemptRecord], header: bool) -> None:
        table = Table(box=None, show_header=header, pad_edge=False, header_style="bold" if self.colour else "")
        for column in self.columns:
            table.add_column(column.upper(), overflow="fold")
        where = self.columns.index("category") if self.colour and "category" in self.columns else -1
        for record in batch:
            cells: list[str | Text] = [cell(record, column) for column in self.columns]
            if where >= 0 and record.category in COLOURS:
                cells[where] = Text(str(record.category), style=f"bold {COLOURS[record.category]}")
            table.add_row(*cells)
        with self.console.capture() as captured:
            self.console.print(table)
        for line in captured.get().splitlines():  # rich pads the last column: no trailing blanks in a file
            self.out.write(line.rstrip() + "\n")
