"""The query commands of the ``egress`` command line: ``events``, ``timeline``, ``stats``, ``retention`` and
``actions record``.
They read Redis through `egress.record.query`; the main group (egress/cli.py) registers `COMMANDS`. The JSON
lines they print are the documented records (docs/records.md), unchanged, so a SIEM can take them as they are.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from typing import Any, Final

import click

from egress.cli_options import (
    LocalFilter,
    columns_option,
    duration_option,
    fail,
    latest,
    open_store,
    redis_option,
    source_option,
    time_option,
)
from egress.cli_render import (
    COLOURS,
    COLUMNS,
    DEFAULT_COLUMNS,
    FIELD_COLUMNS,
    FORMATS,
    WIDE_COLUMNS,
    RecordPrinter,
    compact_line,
    destination,
    json_line,
    when,
)
from egress.correlate import DEFAULT_SLACK, timeline
from egress.decide import Enforcement, Reason
from egress.detect.base import Transport
from egress.record import query
from egress.record.actions import ActionRecord
from egress.record.printable import escape
from egress.record.retained import retained
from egress.record.schema import AttemptRecord, RecordCategory


def _colour(text: str, category: str, colour: bool) -> str:
    return click.style(text, fg=COLOURS.get(category), bold=True) if colour and category in COLOURS else text


def event_row(record: AttemptRecord, colour: bool) -> str:
    """A record as one compact line (``-o compact``), nothing cut."""
    return compact_line(record, colour)


@click.command()
@redis_option
@click.option("--sandbox", help="Only this sandbox.")
@click.option("--category", type=click.Choice([c.value for c in RecordCategory]), help="Only this category.")
@click.option("--reason", type=click.Choice([r.value for r in Reason]), metavar="REASON", help="Only this reason "
              "(e.g. mining, not-allowlisted; docs/records.md lists them).")  # fmt: skip
@click.option("--action", type=click.Choice([a.value for a in Enforcement if a is not Enforcement.ALLOW]),
              help="Only this action.")  # fmt: skip
@click.option("--destination", help="Only this address, or this host name and the names under it.")
@click.option("--source", callback=source_option, help="Only from this address or network (CIDR).")
@click.option("--port", type=click.IntRange(0, 65535), help="Only to this destination port.")
@click.option("--transport", type=click.Choice([t.value for t in Transport]), help="Only this transport.")
@click.option("--gateway", help="Only records of this gateway.")
@click.option("--since", callback=time_option, help="From this time: ISO 8601, epoch seconds, or back from now (15m).")
@click.option("--until", callback=time_option, help="Up to this time (same forms).")
@click.option("--last", "--limit", "limit", default=100, show_default=True, type=click.IntRange(1, 1_000_000),
              help="The latest N records that pass the filters.")  # fmt: skip
@click.option("--follow", "-f", is_flag=True, help="Then print new records as they arrive, until Ctrl-C.")
@click.option("--output", "-o", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table (cells wrap, nothing cut), compact (one line each), json (one array), jsonl (one "
              "record per line: the docs/records.md JSON), csv.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Same as -o jsonl.")
@click.option("--columns", callback=columns_option, metavar="NAME,...",
              help=f"Columns of table and csv (default {','.join(DEFAULT_COLUMNS)}; csv: every field); any of "
              f"{', '.join(COLUMNS)}.")  # fmt: skip
@click.option("--wide", "-w", is_flag=True, help="Table columns with the detector, the rule and the evidence.")
def events(
    redis_url: str,
    sandbox: str | None,
    category: str | None,
    reason: str | None,
    action: str | None,
    destination: str | None,
    source: str | None,
    port: int | None,
    transport: str | None,
    gateway: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    follow: bool,
    fmt: str,
    as_json: bool,
    columns: tuple[str, ...] | None,
    wide: bool,
) -> None:
    """Blocked, would-block and recorded attempts: the latest N that pass the filters, oldest first."""
    if since is not None and until is not None and since > until:
        raise click.BadParameter("--since is after --until", param_hint="--since")
    fmt = "jsonl" if as_json else fmt
    if follow and fmt == "json":
        raise click.UsageError("-o json is one array, which a follow never closes: use -o jsonl with --follow")
    chosen = columns or (WIDE_COLUMNS if wide else FIELD_COLUMNS if fmt == "csv" else DEFAULT_COLUMNS)
    flt = query.AttemptFilter(sandbox, category, reason, destination, since, until)
    local = LocalFilter(action, source, port, transport, gateway)
    tty = sys.stdout.isatty()
    width = shutil.get_terminal_size().columns if tty else None
    printer = RecordPrinter(fmt, chosen, sys.stdout, colour=tty, width=width)
    with open_store(redis_url) as store:
        positions = query.follow(store, None, 0)[1] if follow else None
        records = latest(store, flt, local, limit)
        printer.write(reversed(records))
        if positions is None:
            printer.close()
            return
        shown = {record.id for record in records}
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                fresh, positions = query.follow(store, positions, 1000)
                printer.write(r for r in fresh if r.id not in shown and flt.matches(r) and local.matches(r))
                shown.clear()  # only the first follow can overlap the listing
        printer.close()


def _fit(text: str, size: int) -> str:
    """``text``, or its start and an ellipsis when longer than ``size``: a cut is never silent."""
    return text if len(text) <= size else text[: size - 1] + "…"


def _action_line(action: ActionRecord) -> str:
    took = "running" if action.end is None else f"{action.end - action.start:.1f} s"
    return f"{when(action.start, False)}  ▶ {action.kind} {_fit(escape(action.command), 80)}  ({took}, id {action.id})"


def _attempt_line(record: AttemptRecord, colour: bool, also: tuple[str, ...]) -> str:
    count = f" x{record.count}" if record.count > 1 else ""
    host = f" {escape(record.host)}" if record.host else ""
    text = f"{record.action} {record.category}"
    note = f"  (also during {', '.join(also)})" if also else ""
    return (
        f"{when(record.ts, False)}  ✗ {_colour(text, record.category, colour)}{host} {destination(record)} "
        f"{record.reason} [{record.protocol}]{count}{note}"
    )


@click.command("timeline")
@redis_option
@click.argument("sandbox")
@click.option("--since", callback=time_option, default="1h", show_default=True, help="From (ISO, epoch, or 15m).")
@click.option("--until", callback=time_option, help="Up to (default now).")
@click.option("--slack", default=DEFAULT_SLACK, show_default=True, type=click.FloatRange(0, 3600), help="Seconds.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 100_000), help="Most of each kind.")
@click.option("--json", "as_json", is_flag=True, help="One item per line: {type, ts, action|attempt, related}.")
def timeline_command(
    redis_url: str, sandbox: str, since: float, until: float | None, slack: float, limit: int, as_json: bool
) -> None:
    """Actions of SANDBOX and its attempts interleaved by time; each attempt under the action it happened in."""
    until = time.time() if until is None else until
    if since > until:
        raise click.BadParameter("--since is after --until", param_hint="--since")
    with open_store(redis_url) as store:
        attempts = query.attempts_for_sandbox(store, sandbox, since, until, limit)
        actions = query.read_actions(store, sandbox, since, until, limit)
    items = timeline(actions, attempts, slack)
    if as_json:
        for item in items:
            if item.action is not None:
                click.echo(json_line({"type": "action", "ts": item.ts, "action": item.action.to_json()}))
            elif item.attempt is not None:
                data = {"type": "attempt", "ts": item.ts, "attempt": item.attempt.to_json(), "related": item.related}
                click.echo(json_line(data))
        return
    colour = sys.stdout.isatty()
    click.echo(f"{sandbox}: {len(actions)} action(s), {len(attempts)} attempt(s), {when(since)} to {when(until)}")
    under: dict[str, list[str]] = {}
    for item in items:
        if item.attempt is not None and item.related:
            line = "      " + _attempt_line(item.attempt, colour, item.related[1:])
            under.setdefault(item.related[0], []).append(line)
    for item in items:
        if item.action is not None:
            click.echo(_action_line(item.action))
            for line in under.get(item.action.id, []):
                click.echo(line)
        elif item.attempt is not None and not item.related:
            click.echo(_attempt_line(item.attempt, colour, ()) + "  (no action)")


@click.command()
@redis_option
@click.option("--window", default="1h", show_default=True, callback=duration_option, help="Last (e.g. 15m, 2h, 1d).")
@click.option(
    "--by",
    "by",
    multiple=True,
    type=click.Choice(query.COUNT_BY),
    help="Count by this field (repeat it); default reason, category and sandbox.",
)
@click.option("--top", default=20, show_default=True, type=click.IntRange(1), help="Rows per table.")
@click.option(
    "--json", "as_json", is_flag=True, help='One object: {"since", "until", "window_s", "counts": {by: {...}}}.'
)
def stats(redis_url: str, window: float, by: tuple[str, ...], top: int, as_json: bool) -> None:
    """Attempts over the last WINDOW counted by reason, category, sandbox or destination (aggregates count whole)."""
    fields = by or ("reason", "category", "sandbox")
    until = time.time()
    with open_store(redis_url) as store:
        counts = {field: query.counts(store, until - window, until, field) for field in fields}
    if as_json:
        click.echo(json_line({"since": until - window, "until": until, "window_s": window, "counts": counts}))
        return
    colour = sys.stdout.isatty()
    for number, field in enumerate(fields):
        table = counts[field]
        click.echo(("\n" if number else "") + f"{field.upper():<40} SCENARIOS   (last {window:g} s)")
        for key, value in list(table.items())[:top]:
            label = _fit(escape(key) or "(none)", 40)  # a destination's name as a record stored it
            click.echo(f"{_colour(f'{label:<40}', key, colour and field == 'category')} {value:>8}")
        if len(table) > top:
            click.echo(f"{'(' + str(len(table) - top) + ' more)':<40} {sum(list(table.values())[top:]):>8}")
        click.echo(f"{'total':<40} {sum(table.values()):>8}")


@click.command("retention")
@redis_option
@click.option("--json", "as_json", is_flag=True, help='One object: {"sandboxes": {name: {"records", ...}}}.')
def retention(redis_url: str, as_json: bool) -> None:
    """Records held per sandbox, and how many the size and age retention dropped (of those, findings): a trimmed
    history told from a quiet one."""
    with open_store(redis_url) as store:
        held = retained(store, store.sandboxes())
    if as_json:
        click.echo(json_line({"sandboxes": {name: row.to_json() for name, row in held.items()}}))
        return
    click.echo(f"{'SANDBOX':<32} {'RECORDS':>9} {'FINDINGS':>9} {'TRIMMED(SIZE)':>14} {'TRIMMED(AGE)':>13}")
    for name, row in held.items():
        by_size = f"{row.trimmed_by_size} ({row.trimmed_findings_by_size}f)"
        by_age = f"{row.trimmed_by_age} ({row.trimmed_findings_by_age}f)"
        click.echo(f"{_fit(escape(name), 32):<32} {row.records:>9} {row.findings:>9} {by_size:>14} {by_age:>13}")


@click.group()
def actions() -> None:
    """Agent actions (what the sandbox harness reports the agent did)."""


@actions.command("record")
@redis_option
@click.option("--api", envvar="EGRESS_API_URL", help="Send through the egress API at this URL instead of to Redis.")
@click.option("--token", envvar="EGRESS_API_TOKEN", help="Bearer token (role report) for --api; env EGRESS_API_TOKEN.")
@click.option("--sandbox", help="Sandbox the action ran in.")
@click.option("--id", "action_id", help="The harness's action id (unique per sandbox; re-sending replaces it).")
@click.option("--kind", default="shell_command", show_default=True, help="tool_call, shell_command, http_request, ...")
@click.option("--command", "command_text", default="", help="The command line or tool call, as text.")
@click.option("--start", callback=time_option, help="When it started (ISO, epoch, 'now', or 15m back); default now.")
@click.option("--end", callback=time_option, help="When it ended; leave out while it still runs.")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read actions as JSON lines (docs/records.md) from stdin.")
@click.option("--policy", type=click.Path(exists=True, dir_okay=False), help="Take the retention from this policy.")
def actions_record(
    redis_url: str,
    api: str | None,
    token: str | None,
    sandbox: str | None,
    action_id: str | None,
    kind: str,
    command_text: str,
    start: float | None,
    end: float | None,
    from_stdin: bool,
    policy: str | None,
) -> None:
    """Report agent actions: one from the options, or many as JSON lines on stdin (all checked before any is sent).

    Exit status 0 when all were stored, 2 on bad input or when Redis (or the API) did not take them."""
    if from_stdin:
        if sandbox or action_id:
            raise click.UsageError("--stdin takes every field from the JSON lines: leave out --sandbox and --id")
        records = _read_lines(sys.stdin)
    else:
        if not sandbox or not action_id:
            raise click.UsageError("give --sandbox and --id (or --stdin)")
        try:
            records = [ActionRecord(sandbox, action_id, kind, command_text, start or time.time(), end)]
        except ValueError as error:
            raise click.BadParameter(str(error)) from None
    if api:
        _send_to_api(api, token, records)
    else:
        retention: dict[str, Any] = {}
        if policy:
            from egress.policy.lists import RulesError
            from egress.policy.loader import load_policy

            try:
                kept = load_policy(policy).retention
            except RulesError as error:
                fail(f"policy not loaded:\n{error}")
            retention = {"retention_max_len": kept.max_records, "retention_max_age_days": kept.max_age_days}
        with open_store(redis_url, **retention) as store:
            query.write_actions(store, records)
    click.echo(f"recorded {len(records)} action(s)", err=True)


def _read_lines(stream: Any) -> list[ActionRecord]:
    records, problems = [], []
    for number, text in enumerate(stream, 1):
        if not text.strip():
            continue
        try:
            records.append(ActionRecord.from_json(json.loads(text)))
        except ValueError as error:  # json.JSONDecodeError is a ValueError
            problems.append(f"stdin line {number}: {error}")
    if problems:
        fail("no action recorded:\n" + "\n".join(problems[:20]))
    return records


def _send_to_api(api: str, token: str | None, records: list[ActionRecord]) -> None:
    from egress.api_client import EgressClient, EgressError

    if not token:
        raise click.UsageError("--api needs --token (or EGRESS_API_TOKEN)")
    try:
        EgressClient(api, token, batch_size=1000).report_actions(records)
    except EgressError as error:
        fail(f"the API at {api} did not take the actions: {error}")


COMMANDS: Final[tuple[click.Command, ...]] = (events, timeline_command, stats, retention, actions)
"""What egress/cli.py adds to the main group (``events`` replaces the simple one there)."""
