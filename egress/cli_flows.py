"""``egress flows``: what the sandboxes reached, from the flow log of allowed connections (docs/flow-log.md), as a
table, compact lines, JSON, JSON lines, CSV or a Zeek conn.log; the aggregates are `egress.record.flows`'."""

from __future__ import annotations

import csv
import datetime
import json
import sys
import time
from collections.abc import Iterable
from typing import Final

import click
from rich.console import Console
from rich.table import Table

from egress.cli_options import open_store, redis_option, time_option
from egress.cli_render import UNBOUNDED, endpoint
from egress.record import flows
from egress.record.export import zeek_header
from egress.record.flow_store import flow_sandboxes, read_flows
from egress.record.flows import FlowFilter, FlowRecord
from egress.record.printable import escape, spreadsheet_cell

FORMATS: Final = ("table", "compact", "json", "jsonl", "csv", "zeek")
COLUMNS: Final = ("sandbox", "destination", "host", "decision", "connections", "up", "down", "duration", "last")
CONN_FIELDS: Final = (
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"), ("id.resp_h", "addr"),
    ("id.resp_p", "port"), ("proto", "enum"), ("service", "string"), ("duration", "interval"),
    ("orig_bytes", "count"), ("resp_bytes", "count"), ("conn_state", "string"), ("community_id", "string"),
    ("egress_sandbox", "string"), ("egress_host", "string"), ("egress_connections", "count"),
    ("egress_decision", "string"), ("egress_rule", "string"),
)  # fmt: skip
"""Zeek's conn.log columns (the community-id package's ``community_id`` included) and egress's own after them: one
line per aggregate, its ``ts`` the first connection's start, its ``duration`` the sum of its connections'."""


def size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]  # a float from here, only printed
    raise AssertionError("unreachable")


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def row(record: FlowRecord) -> tuple[str, ...]:
    return (
        record.sandbox,
        f"{endpoint(record.dst, record.dport)}/{record.transport}" if record.dst else "-",
        escape(record.host) or "-",
        record.decision or "-",
        str(record.connections),
        size(record.bytes_up),
        size(record.bytes_down),
        f"{record.duration_s:.3f}s",
        _when(record.last_ts),
    )


def _zeek_text(value: str) -> str:
    """A string field as Zeek writes one: tab, newline, backslash and non-printables escaped; empty as ``(empty)``."""
    if not value:
        return "(empty)"
    return "".join(c if c.isprintable() and c not in "\\\t" else f"\\x{ord(c):02x}" for c in value)


def conn_line(record: FlowRecord) -> str:
    """One aggregate as a conn.log line (``id.orig_p`` unset: an aggregate spans many source ports)."""
    uid = "F" + (record.community_id.removeprefix("1:")[:17] or "0").replace("+", "A").replace("/", "B")
    values = [
        f"{record.first_ts:.6f}", uid, record.src or "-", "-", record.dst or "-",
        str(record.dport) if record.dst else "-", record.transport or "-",
        "dns" if record.dport == 53 else ("-" if not record.host else "ssl" if record.dport == 443 else "-"),
        f"{record.duration_s:.6f}", str(record.bytes_up), str(record.bytes_down), "SF",
        record.community_id or "-", _zeek_text(record.sandbox), _zeek_text(record.host),
        str(record.connections), record.decision or "-", _zeek_text(record.rule),
    ]  # fmt: skip
    return "\t".join(values)


def select(records: Iterable[FlowRecord], flt: FlowFilter, since: float, until: float, by: str) -> list[FlowRecord]:
    """The aggregates that pass, merged, summed per destination (``by == "destination"``, most bytes first) or per
    window (newest first)."""
    kept = flows.merge(r for r in flows.within(list(records), since, until) if flt.matches(r))
    return flows.by_destination(kept) if by == "destination" else kept[::-1]


@click.command("flows")
@redis_option
@click.option("--sandbox", "sandboxes", multiple=True, help="Only this sandbox (repeatable; default: every one).")
@click.option("--since", callback=time_option, default="1h", show_default=True,
              help="From this time: ISO 8601, epoch seconds, or back from now (15m).")  # fmt: skip
@click.option("--until", callback=time_option, help="Up to this time (same forms; default now).")
@click.option("--host", help="Only this name or names below it.")
@click.option("--dst", help="Only this destination address.")
@click.option("--port", "dport", type=click.IntRange(0, 65535), help="Only this destination port.")
@click.option("--decision", type=click.Choice(["allow", "record", "would-block"]), help="Only this decision.")
@click.option("--by", type=click.Choice(["destination", "window"]), default="destination", show_default=True,
              help="destination: summed over the range, most bytes first; window: per minute.")  # fmt: skip
@click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="zeek: a Zeek conn.log (tab-separated, with its header).")  # fmt: skip
@click.option("--last", "limit", type=click.IntRange(1, 1_000_000), default=1000, show_default=True,
              help="At most N aggregates.")  # fmt: skip
def flows_command(
    redis_url: str,
    sandboxes: tuple[str, ...],
    since: float,
    until: float | None,
    host: str | None,
    dst: str | None,
    dport: int | None,
    decision: str | None,
    by: str,
    fmt: str,
    limit: int,
) -> None:
    """What sandboxes reached: their allowed connections, aggregated (sandboxes with ``flow_log: true``)."""
    end = until if until is not None else time.time()
    if since > end:
        raise click.BadParameter("--since is after --until", param_hint="--since")
    flt = FlowFilter(host, dst, dport, decision)
    with open_store(redis_url) as store:
        names = list(sandboxes) or flow_sandboxes(store.redis)
        found: list[FlowRecord] = []
        for name in names:
            found += read_flows(store.redis, name, since, end)[0]
    shown = select(found, flt, since, end, by)[:limit]
    _print(shown, fmt)


def _print(records: list[FlowRecord], fmt: str) -> None:
    out = sys.stdout
    if fmt == "zeek":
        lines = [*zeek_header(time.time(), "conn", CONN_FIELDS), *(conn_line(r) for r in records)]
        out.write("\n".join(lines) + "\n#close\t" + time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime()) + "\n")
    elif fmt in ("json", "jsonl"):
        lines = [json.dumps(flows.to_json(r), separators=(",", ":")) for r in records]  # ASCII: a lone surrogate too
        out.write(
            ("[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n")
            if fmt == "json"
            else "".join(line + "\n" for line in lines)
        )
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(FlowRecord.__dataclass_fields__)
        writer.writerows([spreadsheet_cell(str(value)) for value in flows.to_json(r).values()] for r in records)
    elif fmt == "compact":
        for r in records:
            verdict = f"{(r.decision or '-').upper()} x{r.connections}"
            out.write(f"{_when(r.last_ts)} {r.sandbox} {r.src or '-'} -> {row(r)[1]} {row(r)[2]} {verdict} ")
            out.write(f"up {r.bytes_up} down {r.bytes_down}\n")
    else:
        table = Table(box=None, pad_edge=False)
        for column in COLUMNS:
            table.add_column(column.upper(), overflow="fold")
        for r in records:
            table.add_row(*row(r))
        console = Console(file=out, width=None if out.isatty() else UNBOUNDED, markup=False, highlight=False)
        console.print(table)
    out.flush()
