"""``egress rules apply|history|rollback|status``: the fleet's policy in Redis (`egress.policy_release`,
`egress.record.policy_store`); the ``rules`` group (egress/cli.py) loads each ``<name>_command`` when used.

``apply`` and ``rollback`` return once the version is stored; with ``--wait`` they also wait until every gateway
that reported before has said it runs the version or why it cannot, and exit 1 if one cannot.
"""

from __future__ import annotations

import datetime
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Final

import click

from egress.cli_options import redis_url_option
from egress.policy.loader import format_problems
from egress.policy.yamlnodes import RulesError
from egress.policy_release import Released, UnknownVersion, release, rollback
from egress.record.policy_store import STORE_ERRORS, GatewayReport, PolicyHistory, StoredVersion
from egress.record.urls import shown

EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

redis_option = redis_url_option("Where the fleet's policy is")
wait_option = click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Wait up to SECONDS until every known gateway runs the version or said why it cannot (exit 1 then).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")


def _who() -> str:
    try:
        return f"{getpass.getuser()}@cli"
    except (KeyError, OSError):
        return "cli"


def _when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="seconds")


def _history(redis_url: str) -> PolicyHistory:
    return PolicyHistory.from_url(redis_url)


def _fail(message: str, status: int = EXIT_USAGE) -> None:
    click.echo(f"egress: {message}", err=True)
    sys.exit(status)


def _done(history: PolicyHistory, released: Released, wait: float | None) -> None:
    stored = released.version
    what = "already applied" if released.unchanged else "applied"
    click.echo(f"version {stored.version} ({stored.label}) {what}")
    if wait is None:
        return
    deadline = time.monotonic() + wait
    while True:
        reports = history.gateways()
        pending = [r for r in reports if r.wanted != stored.version and r.version != stored.version]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    for report in reports:
        click.echo(_report_line(report))
    failed = [r for r in reports if r.state == "failed" and r.wanted == stored.version]
    if pending or failed:
        _fail(f"{len(pending)} gateway(s) did not answer, {len(failed)} could not apply it", EXIT_FAILED)


def _report_line(report: GatewayReport) -> str:
    runs = f"version {report.version}" if report.version is not None else "its own file"
    line = f"{report.gateway}: {report.state}, runs {runs} ({report.label}) since {_when(report.time)}"
    if report.state == "failed":
        line += f"; version {report.wanted} not applied: {report.error.splitlines()[0] if report.error else '?'}"
    return line


@click.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@redis_option
@wait_option
@click.option("--force", is_flag=True, help="Store the text as a new version even if it is the applied one.")
def apply_command(file: Path, redis_url: str, wait: float | None, force: bool) -> None:
    """Validate the policy FILE and make it the version every gateway runs (each applies it to every component
    at once, or keeps what it runs and says why). Exit 0 when stored, 1 when invalid, 2 on usage errors."""
    try:
        text = file.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        _fail(f"{file}: cannot read: {error}")
    history = _history(redis_url)
    try:
        _done(history, release(history, text, _who(), str(file), force=force), wait)
    except RulesError as error:
        click.echo(format_problems(error.problems), err=True)
        _fail(f"{file}: not applied: nothing changed", EXIT_FAILED)
    except STORE_ERRORS as error:
        _fail(f"Redis at {shown(redis_url)} did not answer ({error}): nothing changed")
    finally:
        history.close()


@click.command("rollback")
@click.argument("version", type=click.IntRange(min=1), required=False)
@redis_option
@wait_option
def rollback_command(version: int | None, redis_url: str, wait: float | None) -> None:
    """Apply again the text of VERSION (default: the version applied before the current one), as a new
    version."""
    history = _history(redis_url)
    try:
        _done(history, rollback(history, _who(), version), wait)
    except UnknownVersion as error:
        _fail(str(error), EXIT_FAILED)
    except RulesError as error:
        click.echo(format_problems(error.problems), err=True)
        _fail("that version does not validate any more: nothing changed", EXIT_FAILED)
    except STORE_ERRORS as error:
        _fail(f"Redis at {shown(redis_url)} did not answer ({error}): nothing changed")
    finally:
        history.close()


def _version_line(stored: StoredVersion, applied: int | None) -> str:
    mark = "*" if stored.version == applied else " "
    extra = f" (rollback to {stored.rollback_of})" if stored.rollback_of is not None else ""
    return f"{mark} {stored.version:>4}  {stored.label}  {_when(stored.time)}  {stored.who}  {stored.source}{extra}"


@click.command("history")
@redis_option
@json_option
@click.option("--show", type=click.IntRange(min=1), default=None, metavar="VERSION", help="Print that version's text.")
def history_command(redis_url: str, as_json: bool, show: int | None) -> None:
    """Every kept version, newest first (``*``: the applied one); ``--show N`` prints version N's text."""
    history = _history(redis_url)
    try:
        if show is not None:
            text = history.text(show)
            if text is None:
                _fail(f"version {show} is not in the history", EXIT_FAILED)
            click.echo(text, nl=False)
            return
        applied = history.applied()
        current = None if applied is None else applied.version
        for stored in history.history():
            click.echo(json.dumps(stored.to_json()) if as_json else _version_line(stored, current))
    except STORE_ERRORS as error:
        _fail(f"Redis at {shown(redis_url)} did not answer ({error})")
    finally:
        history.close()


@click.command("status")
@redis_option
@json_option
def status_command(redis_url: str, as_json: bool) -> None:
    """The applied version and what each gateway runs (exit 1 when a gateway runs something else)."""
    history = _history(redis_url)
    try:
        applied, reports = history.applied(), history.gateways()
    except STORE_ERRORS as error:
        _fail(f"Redis at {shown(redis_url)} did not answer ({error})")
    finally:
        history.close()
    if as_json:
        body = {"applied": applied and applied.to_json(), "gateways": [r.to_json() for r in reports]}
        click.echo(json.dumps(body))
    else:
        click.echo("applied: " + (_version_line(applied, None).strip() if applied else "none (gateways run files)"))
        for report in reports:
            click.echo(_report_line(report))
    if applied is not None and any(report.version != applied.version for report in reports):
        sys.exit(EXIT_FAILED)
