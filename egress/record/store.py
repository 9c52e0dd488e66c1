"""The record store: one Redis (or Redis Cluster) holding attempt records, agent actions and counters, and the
parts that use it, along their seams:

- the connection: `RedisFacade` (`egress.record.redis_facade`, the only module that imports redis), typed
  commands that the other parts send;
- delivery: `Delivery` (`egress.record.delivery`), records written exactly once, through the disk spool while
  Redis is away;
- reads: `read` and `sandboxes` here, by time through `egress.record.walk`; across sandboxes in
  `egress.record.query` (and actions in `egress.record.action_store`), which take this store;
- counters: the gateway components' counters (`egress.record.counters`).

The key layout is `egress.record.layout`'s (docs/records.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from egress.record import counters, walk
from egress.record.delivery import Delivery
from egress.record.layout import SANDBOXES_KEY
from egress.record.redis_facade import STORE_ERRORS, RedisFacade
from egress.record.schema import AttemptRecord
from egress.record.spool import Spool

__all__ = ["STORE_ERRORS", "RecordStore"]  # STORE_ERRORS: what callers catch, without importing redis


class RecordStore:
    """Writes and reads attempt records; safe to share between threads (one lock serialises writes)."""

    def __init__(
        self,
        url: str,
        spool_dir: Path,
        gateway: str,
        retention_max_len: int = 1_000_000,
        retention_max_age_days: float = 30,
        *,
        cluster: bool | None = None,
        socket_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        retry_interval: float = 1.0,
        spool_max_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``url``: ``redis://host:port/db``; ``redis+cluster://host:port`` (or ``cluster=True``) for a Redis
        Cluster. ``retry_interval``: after a failure, writes go straight to the spool for this long.
        ``spool_max_bytes``: the spool's cap (None: `spool.default_max_bytes`, min(256 MiB, half the free space of
        its disk now)). ``clock``: epoch seconds (retention); ``monotonic``: the delivery's retries and log pacing."""
        self.redis = RedisFacade.from_url(
            url, cluster=cluster, socket_timeout=socket_timeout, connect_timeout=connect_timeout
        )
        """The connection: what `walk`, `query` and `action_store` send their commands through."""
        self.gateway = gateway
        self.retention_max_len = retention_max_len
        """Records (and actions) kept per sandbox at most."""
        self.retention_max_age = retention_max_age_days * 86400.0
        """Seconds records (and actions) are kept."""
        self._clock = clock
        self.delivery = Delivery(
            self.redis,
            Spool(spool_dir, spool_max_bytes),
            gateway,
            retention_max_len,
            self.retention_max_age,
            retry_interval,
            monotonic,
        )

    @property
    def url(self) -> str:
        return self.redis.url

    @property
    def cluster(self) -> bool:
        return self.redis.cluster

    @property
    def socket_timeout(self) -> float:
        """Seconds a Redis reply may take; a blocking read must wait less than this."""
        return self.redis.socket_timeout

    def write(self, records: Sequence[AttemptRecord]) -> None:
        """`Delivery.write`: store ``records``, through the spool when Redis does not take them; never raises for
        Redis."""
        self.delivery.write(records)

    def drain(self, max_batches: int | None = None, *, force: bool = False) -> int:
        """`Delivery.drain`: deliver spooled batches, oldest first; return how many were sent."""
        return self.delivery.drain(max_batches, force=force)

    @property
    def written(self) -> int:
        """Records stored in Redis."""
        return self.delivery.written

    @property
    def duplicates(self) -> int:
        """Records Redis already had (a replay of a batch whose reply was lost)."""
        return self.delivery.duplicates

    @property
    def spooled(self) -> int:
        """Records put in the disk spool because Redis did not take them."""
        return self.delivery.spooled

    @property
    def redis_errors(self) -> int:
        """Failed Redis round trips of the delivery."""
        return self.delivery.redis_errors

    @property
    def lost(self) -> int:
        """Records refused by a full spool or disk: the only way a record is not kept."""
        return self.delivery.lost

    @property
    def spool_pending(self) -> int:
        """Batches waiting in the spool."""
        return self.delivery.spool_pending

    def read(
        self,
        sandbox: str,
        start_ts: float | None = None,
        end_ts: float | None = None,
        count: int = 100,
        cursor: str | None = None,
        *,
        reverse: bool = False,
    ) -> tuple[list[AttemptRecord], str | None]:
        """Records of ``sandbox`` with ``start_ts <= ts <= end_ts`` in (ts, id) order (newest first with
        ``reverse``), at most ``count``; pass the returned cursor back to get the next page (``None``: no more).
        Redis errors propagate (queries are not spooled); a malformed cursor is a `ValueError`."""
        return walk.read_page(self.redis, sandbox, start_ts, end_ts, count, cursor, reverse=reverse)

    def sandboxes(self) -> list[str]:
        """Names of the sandboxes that have records, sorted."""
        return sorted(self.redis.smembers(SANDBOXES_KEY))

    def ping(self) -> bool:
        """Whether Redis answers now."""
        try:
            return self.redis.ping()
        except STORE_ERRORS:
            return False

    def now(self) -> float:
        """The store's clock (epoch seconds): what retention is measured against."""
        return self._clock()

    def add_counters(self, component: str, deltas: Mapping[str, int]) -> None:
        """`counters.add_counters`: add to a component's counters (raises one of `STORE_ERRORS`)."""
        counters.add_counters(self.redis, component, deltas)

    def read_counters(self) -> dict[str, dict[str, int]]:
        """`counters.read_counters`: every component's counters, {component: {field: value}}."""
        return counters.read_counters(self.redis)

    def close(self) -> None:
        """Close the connection (after a write in progress)."""
        self.delivery.close()
