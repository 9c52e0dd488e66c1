"""The store of the query benchmark (bench/records.py), kept between runs as a Redis dump (RDB).

Filling a million records through `RecordStore.write` takes minutes of CPU; the store it makes depends only on the
fill's arguments, so it is made once, saved (``SAVE``) and kept under `DUMP_DIR`, and a later run with the same
arguments starts its redis-server from that dump instead (seconds). The dump's name holds what shaped it (records,
span, seconds of records per write, the store's layout version, `DATA_VERSION`), so a change to any makes a new one.

The records keep the times they were written with, but the API's stats and series read the last hour up to *now*:
on reuse, the counters kept at write time (`egress.record.stats`) are moved by the whole minutes that passed since
the fill (the minute hashes moved, the hour and day hashes summed again from them), as if the same records had
been written that much later. The list reads no window, and the timeline is asked for the records' own end
(`Filled.end`), so neither depends on when the dump was made.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import redis

from egress.record import stats
from egress.record.layout import LAYOUT_VERSION, counts_key, destinations_key, sandbox_tag, state_key
from tests.redis_server import REDIS_SERVER, RedisServer
from tests.waiting import eventually

DUMP_DIR: Final = Path(os.environ.get("EGRESS_BENCH_DUMPS", "/var/tmp/egress-bench"))
DATA_VERSION: Final = 1
"""Bump when `bench.records.make_records` or `fill` change what they write: old dumps are then not reused."""
LOAD_TIMEOUT: Final = 600.0
"""Seconds a dump may take to load (about ten for a million records on an idle machine)."""
_COUNTER_TTL: Final = 31 * 86400


class DumpServer(RedisServer):
    """A redis-server on a loopback port without persistence, started from the dump ``dump.rdb`` in its directory
    when there is one (`RedisServer` keeps an AOF, and a server with an AOF ignores a dump)."""

    def _start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        command = [
            REDIS_SERVER,
            "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.directory), "--dbfilename", "dump.rdb",
            "--save", "", "--appendonly", "no",
            "--logfile", str(self.directory / "redis.log"),
            "--protected-mode", "yes",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            eventually(self._ours, timeout=60, interval=0.05)
            eventually(self._loaded, timeout=LOAD_TIMEOUT, interval=0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def _loaded(self) -> bool:
        info = self.command("INFO", "persistence")
        assert "loading:0" in info.splitlines(), "still loading the dump"  # not async_loading:0
        return True


@dataclass(frozen=True, slots=True)
class Filled:
    """A server holding the benchmark's records."""

    server: DumpServer
    start: float
    """The first record's time (epoch seconds), as written."""
    span: float
    fill_s: float
    """Seconds the fill took when it was made (also when the dump was reused)."""
    reused: Path | None
    """The dump it was started from, None when filled now."""

    @property
    def end(self) -> float:
        return self.start + self.span


def dump_name(records: int, span: float, batch_s: float) -> str:
    return f"records-{records}-{span:g}s-batch{batch_s:g}s-layout{LAYOUT_VERSION}-data{DATA_VERSION}"


@contextlib.contextmanager
def filled_store(
    records: int,
    span: float,
    batch_s: float,
    fill: Callable[[str, float], float],
    *,
    refill: bool = False,
    keep: bool = True,
) -> Iterator[Filled]:
    """A redis-server holding ``records`` records over ``span`` seconds ending a minute ago: from the kept dump
    when there is one (and not ``refill``), else filled now by ``fill(url, start)`` (returns its seconds) and, with
    ``keep``, saved for the next run. Stopped and removed at the end (the kept dump stays)."""
    name = dump_name(records, span, batch_s)
    dump, meta_path = DUMP_DIR / f"{name}.rdb", DUMP_DIR / f"{name}.json"
    reuse = not refill and dump.is_file() and meta_path.is_file()
    directory = Path(tempfile.mkdtemp(prefix="egress-bench-redis-"))
    if reuse:
        _link_or_copy(dump, directory / "dump.rdb")
    server = DumpServer(directory, tcp=True)
    try:
        server.start()
        start = time.time() - span - 60  # up to a minute ago: the API's stats windows end now
        if reuse:
            meta = json.loads(meta_path.read_text())
            retime_counters(server.url, float(meta["start"]), start)
            yield Filled(server, float(meta["start"]), span, float(meta["fill_s"]), dump)
            return
        fill_s = fill(server.url, start)
        if keep:
            _save(server, dump, meta_path, {"start": start, "span": span, "records": records, "fill_s": fill_s})
        yield Filled(server, start, span, fill_s, None)
    finally:
        server.cleanup()


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link where possible: the server never writes its dump (no ``save`` points), so the kept file stays
    as it is."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _save(server: DumpServer, dump: Path, meta_path: Path, meta: dict[str, float]) -> None:
    client = redis.Redis.from_url(server.url, socket_timeout=LOAD_TIMEOUT)  # a million records take a while
    try:
        client.save()
    finally:
        client.close()
    DUMP_DIR.mkdir(parents=True, exist_ok=True)
    partial = dump.with_suffix(".rdb.partial")
    shutil.copyfile(server.directory / "dump.rdb", partial)
    partial.replace(dump)
    meta_path.write_text(json.dumps(meta) + "\n")  # written last: a dump without it is not reused


def retime_counters(url: str, written_start: float, start: float) -> None:
    """Move every sandbox's counters by the whole minutes from ``written_start`` to ``start``: each minute hash to
    its new minute, the hour and day hashes summed again from the moved minutes (what writing the same records that
    much later would have counted), and mark every sandbox's ten-minute hashes whole (`stats.TENS_FIELD`)."""
    shift = stats.minute(start) - stats.minute(written_start)
    client = redis.Redis.from_url(url)
    try:
        sandboxes = sorted(member.decode() for member in client.smembers("egress:sandboxes"))
        for sandbox in sandboxes:
            for make in (counts_key, destinations_key):
                _retime_kind(client, sandbox, make, shift)
            # Every period is summed again from the minutes here, ten-minute ones too (a dump may be older than
            # them): all are whole.
            client.hset(state_key(sandbox), stats.TENS_FIELD, "0")
    finally:
        client.close()


def _retime_kind(client: redis.Redis, sandbox: str, make: Callable[[str, int, int], str], shift: int) -> None:
    pattern = make(sandbox, 0, 0).removesuffix(":0:0") + ":*"
    assert sandbox_tag(sandbox) == sandbox, "the bench's sandbox names need no escaping in a SCAN pattern"
    keys = list(client.scan_iter(match=pattern, count=1000))
    minute_keys = [key for key in keys if key.rsplit(b":", 2)[1] == b"60"]
    pipe = client.pipeline(transaction=False)
    for key in minute_keys:
        pipe.hgetall(key)
    minutes = {int(key.rsplit(b":", 1)[1]): fields for key, fields in zip(minute_keys, pipe.execute(), strict=True)}
    totals: dict[tuple[int, int], dict[bytes, int]] = {}
    for period, fields in minutes.items():
        moved = period + shift
        for unit in stats.UNITS:
            into = totals.setdefault((unit, math.floor(moved * stats.MINUTE / unit)), {})
            for field, value in fields.items():
                into[field] = into.get(field, 0) + int(value)
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(keys), 1000):
        pipe.delete(*keys[start : start + 1000])
    for (unit, period), fields in totals.items():
        key = make(sandbox, unit, period)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(key, _COUNTER_TTL)
    pipe.execute()
