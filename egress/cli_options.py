"""What the reading commands share (``events``, ``timeline``, ``stats``, ``export``, ``rules replay``): the
``--redis-url`` option, times and durations as users write them, a reading store that exits with one line when Redis
is away, and the filters the store's query does not take. Pure click plumbing; no command lives here."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import math
import pathlib
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import click

from egress.cli_gateway import redis_url_callback
from egress.cli_render import parse_columns
from egress.record import REDIS_URL, query
from egress.record.schema import AttemptRecord
from egress.record.store import STORE_ERRORS, RecordStore
from egress.record.urls import shown

EXIT_USAGE: Final = 2
FC = TypeVar("FC", bound=Callable[..., Any])
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def redis_url_option(what: str) -> Callable[[FC], FC]:
    """``--redis-url`` (env ``EGRESS_REDIS_URL``), checked by the one callback; ``what`` says what is there."""
    return click.option(
        "--redis-url",
        default=REDIS_URL,
        show_default=True,
        envvar="EGRESS_REDIS_URL",
        callback=redis_url_callback,
        help=f"{what} (redis+cluster://host:port for a Redis Cluster); env EGRESS_REDIS_URL.",
    )


redis_option = redis_url_option("The record store")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d``, ``1w`` as seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match:
        return float(match[1]) * _UNITS[match[2]]
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration (e.g. 90, 15m, 2h, 1d)") from None
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{text!r} is not a duration")
    return seconds


def parse_time(text: str, now: float | None = None) -> float:
    """Epoch seconds from ``now``, a relative time back from now (``15m``, ``2h``), an ISO 8601 time (local time
    when it has no zone) or epoch seconds."""
    now = time.time() if now is None else now
    text = text.strip()
    if text == "now":
        return now
    if _DURATION.fullmatch(text):
        return now - parse_duration(text)
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"{text!r} is not a time (epoch seconds are a finite number, 0 or more)")
        return seconds
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        return moment.timestamp()
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"{text!r} is not a time (ISO 8601, epoch seconds, 'now', or relative like 15m, 2h)") from None


def time_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param=param) from None


def duration_option(_ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param=param) from None


@contextlib.contextmanager
def open_store(redis_url: str, **options: Any) -> Iterator[RecordStore]:
    """A reading store (its spool, unused by queries, in a temporary directory); exit 2 when Redis is away."""
    with tempfile.TemporaryDirectory(prefix="egress-query-") as spool:
        store = RecordStore(redis_url, pathlib.Path(spool), "reader", **options)
        try:
            if not store.ping():
                fail(f"cannot reach Redis at {shown(redis_url)}")
            yield store
        except BrokenPipeError:  # the reader went away (``| head``): not Redis's fault; the main group ends quietly
            raise
        except STORE_ERRORS as error:
            fail(f"Redis at {shown(redis_url)} failed: {type(error).__name__}: {error}")
        finally:
            store.close()


def fail(message: str) -> None:
    click.echo(f"egress: {message}", err=True)
    sys.exit(EXIT_USAGE)


def columns_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    try:
        return parse_columns(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param=param) from None


@dataclass(frozen=True, slots=True)
class LocalFilter:
    """The filters the store's query does not take, applied to the records it returns."""

    action: str | None = None
    source: str | None = None
    """An address, or a network in CIDR form."""
    port: int | None = None
    """The destination port."""
    transport: str | None = None
    gateway: str | None = None

    def matches(self, record: AttemptRecord) -> bool:
        if self.action is not None and record.action != self.action:
            return False
        if self.port is not None and record.dport != self.port:
            return False
        if self.transport is not None and record.transport != self.transport:
            return False
        if self.gateway is not None and record.gateway != self.gateway:
            return False
        return self.source is None or in_network(record.src, self.source)


def in_network(address: str, network: str) -> bool:
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def source_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not an address or a network (CIDR)", param=param) from None
    return value


def latest(store: RecordStore, flt: query.AttemptFilter, local: LocalFilter, limit: int) -> list[AttemptRecord]:
    """The latest ``limit`` records that pass both filters, newest first (pages until enough or none left)."""
    records: list[AttemptRecord] = []
    cursor: str | None = None
    unfiltered = local == LocalFilter()
    while len(records) < limit:
        size = min(limit - len(records), 1000) if unfiltered else 1000
        page, cursor = query.list_attempts(store, flt, size, cursor)
        records += [record for record in page if local.matches(record)]
        if cursor is None:
            break
    return records[:limit]
