"""``egress quarantine list|release|events``: the sandboxes repeated findings cut off, in Redis
(`egress.record.quarantine_store`); every gateway follows a release within a second (`egress.gateway.quarantine`).
"""

from __future__ import annotations

import json
import sys
from typing import Final

import click

from egress.cli_policy import _when, _who, json_option, redis_option
from egress.record.quarantine_store import STORE_ERRORS, QuarantineStore

EXIT_FAILED: Final = 1


def _store(redis_url: str) -> QuarantineStore:
    return QuarantineStore.from_url(redis_url)


def _unreachable(exc: BaseException) -> None:
    click.echo(f"egress: Redis does not answer ({exc}): the quarantines are there", err=True)
    sys.exit(EXIT_FAILED)


@click.group(cls=click.Group)
def quarantine() -> None:
    """Sandboxes cut off by their policy's quarantine rule: list, release, events."""


@quarantine.command("list")
@redis_option
@json_option
def list_command(redis_url: str, as_json: bool) -> None:
    """The sandboxes cut off now."""
    store = _store(redis_url)
    try:
        active = store.active()
    except STORE_ERRORS as exc:
        _unreachable(exc)
        return
    finally:
        store.close()
    for entry in sorted(active.values(), key=lambda e: e.since):
        if as_json:
            click.echo(json.dumps(entry.to_json()))
        else:
            click.echo(f"{entry.sandbox}  since {_when(entry.since)}  by {entry.gateway}  {entry.reason}")
    if not active and not as_json:
        click.echo("no sandbox is quarantined")


@quarantine.command("release")
@click.argument("sandbox")
@redis_option
def release_command(sandbox: str, redis_url: str) -> None:
    """Let SANDBOX's traffic pass again (on every gateway, within a second); recorded with who and when."""
    store = _store(redis_url)
    try:
        entry = store.release(sandbox, _who())
    except STORE_ERRORS as exc:
        _unreachable(exc)
        return
    finally:
        store.close()
    if entry is None:
        click.echo(f"egress: sandbox {sandbox!r} is not quarantined", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(f"{sandbox} released (quarantined since {_when(entry.since)} by {entry.gateway})")


@quarantine.command("events")
@redis_option
@json_option
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
def events_command(redis_url: str, as_json: bool, limit: int) -> None:
    """Every quarantine and release, newest first."""
    store = _store(redis_url)
    try:
        events = store.events(limit)
    except STORE_ERRORS as exc:
        _unreachable(exc)
        return
    finally:
        store.close()
    for event in events:
        if as_json:
            click.echo(json.dumps(event.to_json()))
        else:
            click.echo(f"{_when(event.time)}  {event.event:<10}  {event.sandbox}  by {event.who}  {event.reason}")
