"""``egress rules replay NEW.yaml [--since 24h | --capture FILE]``: what a proposed policy would change, shown on
traffic the gateway saw (its records in Redis) or on a capture. The deciding is `egress.replay`'s (the gateway's own
functions); this module reads, correlates with the agents' actions (`egress.correlate`) and prints.

Records exist only for what was blocked, would-be-blocked or recorded, so from Redis the replay finds what a new
policy would let through and what report mode let through that it would block; a capture holds every flow, so it
also shows allowed traffic the new policy would cut.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import click

from egress.cli_gateway import redis_url_callback
from egress.cli_options import duration_option, open_store
from egress.cli_render import endpoint, json_line, when
from egress.correlate import DEFAULT_SLACK, Correlator
from egress.decide import Verdict
from egress.policy.model import Policy
from egress.record import REDIS_URL
from egress.record.actions import ActionRecord
from egress.record.printable import escape
from egress.record.schema import AttemptRecord
from egress.replay import Change, Replayed, replay_question, replay_record

EXIT_SAME: Final = 0
EXIT_FLIPS: Final = 1
EXIT_TROUBLE: Final = 2
PAGE: Final = 1000
SHOWN: Final = frozenset({Change.UNBLOCKED, Change.BLOCKED, Change.CHANGED, Change.UNKNOWN})
"""What is listed without ``--all``."""


@dataclass(frozen=True, slots=True)
class Row:
    """One replayed attempt with where it happened and the agent actions it belongs to."""

    ts: float
    sandbox: str
    src: str
    sport: int
    dst: str
    dport: int
    transport: str
    host: str
    replayed: Replayed
    record_id: str = ""
    count: int = 1
    actions: tuple[ActionRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        replayed = self.replayed
        return {
            "ts": self.ts,
            "sandbox": self.sandbox,
            "src": self.src,
            "sport": self.sport,
            "dst": self.dst,
            "dport": self.dport,
            "transport": self.transport,
            "host": self.host,
            "kind": str(replayed.question.kind) if replayed.question is not None else None,
            "change": str(replayed.change),
            "before": _verdict(replayed.before),
            "after": _verdict(replayed.after),
            "condition": replayed.condition,
            "problem": replayed.problem,
            "record_id": self.record_id,
            "count": self.count,
            "actions": [{"id": a.id, "kind": a.kind, "command": a.command} for a in self.actions],
        }


def _verdict(verdict: Verdict | None) -> dict[str, Any] | None:
    if verdict is None:
        return None
    reason = str(verdict.reason) if verdict.reason is not None else None
    return {"action": str(verdict.action), "reason": reason, "rule": verdict.rule, "evidence": verdict.evidence}


def _short(verdict: Verdict | None) -> str:
    if verdict is None:
        return "-"
    return f"{verdict.action} ({verdict.reason})" if verdict.reason is not None else f"{verdict.action} {verdict.rule}"


def record_rows(records: Sequence[AttemptRecord], proposed: Policy, current: Policy | None) -> list[Row]:
    """Each record decided again (`replay_record`)."""
    return [
        Row(r.ts, r.sandbox, r.src, r.sport, r.dst, r.dport, str(r.transport), r.host,
            replay_record(r, proposed, current), r.id, r.count)
        for r in records
    ]  # fmt: skip


def _sandbox_name(policies: Sequence[Policy], src: str) -> str:
    try:
        address = ipaddress.ip_address(src.split("%", 1)[0])
    except ValueError:
        return ""
    for policy in policies:
        sandbox = policy.sandbox_for(address)
        if sandbox is not None:
            return sandbox.name
    return ""


def with_actions(rows: Sequence[Row], actions: Sequence[ActionRecord], slack: float = DEFAULT_SLACK) -> list[Row]:
    """The rows with the agent actions each belongs to (`egress.correlate`, per sandbox)."""
    by_sandbox: dict[str, list[ActionRecord]] = {}
    for action in actions:
        by_sandbox.setdefault(action.sandbox, []).append(action)
    index = {name: Correlator(found, slack) for name, found in by_sandbox.items()}
    out = []
    for row in rows:
        correlator = index.get(row.sandbox)
        links = tuple(action for action, _ in correlator.links(row.ts)) if correlator is not None else ()
        out.append(Row(**{**{f: getattr(row, f) for f in Row.__dataclass_fields__}, "actions": links}))
    return out


def print_rows(rows: Sequence[Row], fmt: str, show_all: bool) -> None:
    shown = [row for row in rows if show_all or row.replayed.change in SHOWN]
    if fmt == "json":
        click.echo(json.dumps([row.to_json() for row in shown], indent=2))
        return
    if fmt == "jsonl":
        for row in shown:
            click.echo(json_line(row.to_json()))
        return
    for row in shown:
        r = row.replayed
        host = f" {escape(row.host)}" if row.host else ""
        count = f" x{row.count}" if row.count > 1 else ""
        line = (
            f"{when(row.ts)} {row.sandbox or '-'} {endpoint(row.dst, row.dport)}/{row.transport}{host}{count}: "
            f"{str(r.change).upper()} {_short(r.before)} -> {_short(r.after)}"
        )
        notes = [note for note in (r.problem, r.condition) if note]
        notes += [f"action {a.id} {a.command!r}" for a in row.actions]
        if row.record_id:
            notes.append(f"record {row.record_id}")
        click.echo(line + "".join(f"\n    {note}" for note in notes))


def summary(rows: Sequence[Row]) -> str:
    counts = Counter(row.replayed.change for row in rows)
    parts = ", ".join(f"{counts[change]} {change}" for change in Change)
    return f"{len(rows)} replayed: {parts}"


def exit_status(rows: Sequence[Row]) -> int:
    flips = {Change.UNBLOCKED, Change.BLOCKED}
    return EXIT_FLIPS if any(row.replayed.change in flips for row in rows) else EXIT_SAME


def _load(path: str) -> Policy:
    from egress.policy.loader import RulesError, format_problems, load_policy

    try:
        return load_policy(path)
    except RulesError as error:
        click.echo(format_problems(error.problems), err=True)
        sys.exit(EXIT_TROUBLE)


def _applied(redis_url: str) -> Policy | None:
    """The fleet's applied policy in Redis (`egress rules apply`), if there is one."""
    from egress.policy.loader import RulesError, parse_policy
    from egress.record.policy_store import STORE_ERRORS, PolicyHistory

    try:
        history = PolicyHistory.from_url(redis_url)
        try:
            applied = history.applied()
            text = history.text(applied.version) if applied is not None else None
        finally:
            history.close()
    except STORE_ERRORS:
        return None
    if text is None:
        return None
    try:
        return parse_policy(text, "<applied>")
    except RulesError:
        return None


def _records(
    redis_url: str, since: float, sandbox: str | None, limit: int
) -> tuple[list[AttemptRecord], list[ActionRecord]]:
    """The newest ``limit`` attempts since ``since`` (count updates folded in) and their sandboxes' actions."""
    from egress.record import aggregate, query

    with open_store(redis_url) as store:
        flt = query.AttemptFilter(sandbox=sandbox, since=since)
        records: list[AttemptRecord] = []
        cursor: str | None = None
        while len(records) < limit:
            page, cursor = query.list_attempts(store, flt, min(PAGE, limit - len(records)), cursor)
            records += page
            if cursor is None:
                break
        records = aggregate.fold(records)
        actions: list[ActionRecord] = []
        for name in sorted({record.sandbox for record in records if record.sandbox}):
            actions += query.read_actions(store, name, since - DEFAULT_SLACK, None, limit)
    return records, actions


@click.command("replay")
@click.argument("new", type=click.Path(dir_okay=False))
@click.option("--since", default="24h", show_default=True, callback=duration_option,
              help="Replay the records of this long back from now (15m, 24h, 7d).")  # fmt: skip
@click.option("--capture", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Replay the flows of this pcap/pcapng capture instead of the records.")  # fmt: skip
@click.option("--current", type=click.Path(dir_okay=False), default=None,
              help="The policy to compare with (default: the applied one in Redis; for records without one, "
              "the verdicts they were written with).")  # fmt: skip
@click.option("--sandbox", default=None, help="Only this sandbox's records.")
@click.option("--limit", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Records replayed at most (the newest).")  # fmt: skip
@click.option("--all", "show_all", is_flag=True, help="Also list attempts whose fate does not change.")
@click.option("-o", "--output", type=click.Choice(["text", "json", "jsonl"]), default="text", show_default=True,
              help="text: one line per attempt and its notes; json: one array; jsonl: one object a line.")  # fmt: skip
@click.option("--redis-url", default=REDIS_URL, show_default=True, envvar="EGRESS_REDIS_URL",
              callback=redis_url_callback,
              help="Where the records (and the applied policy) are; env EGRESS_REDIS_URL.")  # fmt: skip
@click.option("--lists", "lists_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Name lists for the capture's detectors (default: the shipped ones).")  # fmt: skip
def rules_replay(
    new: str,
    since: float,
    capture: str | None,
    current: str | None,
    sandbox: str | None,
    limit: int,
    show_all: bool,
    output: str,
    redis_url: str,
    lists_dir: str | None,
) -> None:
    """Decide again, under policy NEW and the current one, the attempts recorded since --since (or the flows of
    --capture), and list those whose fate changes: UNBLOCKED (blocked now, passes under NEW), BLOCKED (the
    reverse), CHANGED (another action, e.g. would-block to block), with the agent actions they belong to. An
    attempt whose record lacks what the decision needs is listed as UNKNOWN with the reason.

    Exit status 0 when nothing flips, 1 when something does, 2 on errors (an invalid file: its problems).
    """
    proposed = _load(new)
    base = _load(current) if current is not None else _applied(redis_url)
    if capture is not None:
        rows = _capture_rows(capture, proposed, base, lists_dir)
    else:
        records, actions = _records(redis_url, time.time() - since, sandbox, limit)
        rows = with_actions(record_rows(records, proposed, base), actions)
        click.echo("compared with: " + ("the current policy" if base is not None else "the recorded verdicts"),
                   err=True)  # fmt: skip
    print_rows(rows, output, show_all)
    click.echo(summary(rows), err=True)
    sys.exit(exit_status(rows))


def _capture_rows(path: str, proposed: Policy, base: Policy | None, lists_dir: str | None) -> list[Row]:
    from egress.detect.registry import build_detectors
    from egress.policy.lists import RulesError, load_name_lists
    from egress.replay_capture import capture_questions

    if base is None:
        click.echo("egress: a capture has no verdicts of its own: give --current FILE (or apply one)", err=True)
        sys.exit(EXIT_TROUBLE)
    try:
        detectors = build_detectors(load_name_lists(lists_dir))
    except RulesError as error:
        click.echo(f"egress: {error}", err=True)
        sys.exit(EXIT_TROUBLE)
    questions, scanned = capture_questions(path, detectors)
    if scanned.error:
        click.echo(f"egress: {path}: {scanned.error} (replayed what was read)", err=True)
    if scanned.firewall:
        click.echo(f"{scanned.firewall} packet(s) of UDP, ICMP or other protocols: the firewall's, not replayed",
                   err=True)  # fmt: skip
    rows = []
    for item in questions:
        q = item.question
        transport = "udp" if q.dport == 53 and q.kind in {"dns", "malformed"} else "tcp"
        rows.append(Row(item.ts, _sandbox_name((base, proposed), q.src), q.src, item.sport, q.dst, q.dport,
                        transport, q.name or q.sni, replay_question(q, proposed, base, None)))  # fmt: skip
    return rows
