"""``egress export``: attempt records streamed as eve.json alerts (Suricata) or a Zeek log, for the tools an
operator already feeds (Elastic, Splunk, EveBox, zeek-cut); the forms are `egress.record.export`'s."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable

import click

from egress.cli_options import LocalFilter, latest, open_store, redis_option, time_option
from egress.cli_render import json_line
from egress.record import query
from egress.record.export import FORMATS, eve, zeek_footer, zeek_header, zeek_json, zeek_line
from egress.record.schema import AttemptRecord, RecordCategory


@click.command()
@redis_option
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="eve", show_default=True,
              help="eve: one eve.json alert per line; zeek: a Zeek ASCII log (path egress) with its header; "
              "zeek-json: the same log as Zeek's JSON writer prints it.")  # fmt: skip
@click.option("--sandbox", help="Only this sandbox.")
@click.option("--category", type=click.Choice([c.value for c in RecordCategory]), help="Only this category.")
@click.option("--since", callback=time_option, help="From this time: ISO 8601, epoch seconds, or back from now (15m).")
@click.option("--until", callback=time_option, help="Up to this time (same forms).")
@click.option("--last", "limit", default=10_000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="The latest N records that pass the filters, oldest first.")  # fmt: skip
@click.option("--follow", "-f", is_flag=True, help="Then stream new records as they arrive, until Ctrl-C.")
def export(
    redis_url: str,
    fmt: str,
    sandbox: str | None,
    category: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    follow: bool,
) -> None:
    """Attempt records in eve.json or Zeek form on stdout (docs/records.md, "Export")."""
    if since is not None and until is not None and since > until:
        raise click.BadParameter("--since is after --until", param_hint="--since")
    line: Callable[[AttemptRecord], str] = {
        "eve": lambda record: json_line(eve(record)),
        "zeek": zeek_line,
        "zeek-json": zeek_json,
    }[fmt]
    flt = query.AttemptFilter(sandbox, category, None, None, since, until)

    def emit(records: Iterable[AttemptRecord]) -> None:
        for record in records:
            click.echo(line(record))
        sys.stdout.flush()

    with open_store(redis_url) as store:
        positions = query.follow(store, None, 0)[1] if follow else None
        records = latest(store, flt, LocalFilter(), limit)
        if fmt == "zeek":
            emit_header = "\n".join(zeek_header())
            click.echo(emit_header)
        emit(reversed(records))
        if positions is not None:
            shown = {record.id for record in records}
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    fresh, positions = query.follow(store, positions, 1000)
                    emit(r for r in fresh if r.id not in shown and flt.matches(r))
                    shown.clear()
    if fmt == "zeek":
        click.echo(zeek_footer())
