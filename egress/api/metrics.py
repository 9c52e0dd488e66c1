"""Prometheus metrics: one registry per process, scraped at ``GET /metrics``.

Families (all prefixed ``egress_``):

- ``attempts_window{reason}``, ``attempts_window_by_sandbox{sandbox}``: gauges, attempts recorded in Redis in the
  last ``metrics_window_s`` seconds (aggregated records count as their ``count``). Read from Redis at scrape
  time, so every API worker and every API process reports the same values.
- ``records_written_total``, ``records_duplicates_total``, ``records_spooled_total``, ``records_lost_total``,
  ``redis_errors_total``, ``spool_pending_batches``: the `RecordStore` counters *of this process*. The API's own
  store writes no attempt records, so here they stay near zero; the gateway process registers the same collector
  (`StoreCollector`) for its recorder's store and exports them itself.
- ``gateway_decisions_total{gateway, component, worker, action, reason}`` and the gateway components' delivery
  counters: published to Redis by each gateway process (egress/gateway/recorder.py), read at scrape time.
  ``worker`` is the publishing process (``proxy-0``, ``proxy-1``..., ``gateway``): several proxy workers decide
  with the same component, action and reason, and Prometheus refuses two series with identical labels.
- ``records_held{sandbox, kind}`` (gauge) and ``records_trimmed_total{sandbox, by, kind}``: what the store holds of
  each sandbox and what its size or age retention dropped (``kind``: ``finding`` or ``policy``), read from Redis
  at scrape time (`egress.record.retained`).
- ``redis_up``: whether Redis answered the last scrape; ``api_requests_total{method, route, status}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from egress.record import query
from egress.record.retained import retained
from egress.record.store import STORE_ERRORS, RecordStore

log = logging.getLogger(__name__)

CACHE_S: Final = 5.0
"""Redis-derived gauges are recomputed at most this often (several scrapers, one Redis)."""


class StoreCollector(Collector):
    """A `RecordStore`'s delivery counters, read at scrape time."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        return self.collect()  # reads attributes only: cheap

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        store = self.store
        for name, value, help_text in (
            ("egress_records_written", store.written, "Attempt records stored in Redis by this process."),
            ("egress_records_duplicates", store.duplicates, "Records Redis already had (replays), not stored again."),
            ("egress_records_spooled", store.spooled, "Records put in the disk spool because Redis did not take them."),
            ("egress_records_lost", store.lost, "Records refused by a full spool."),
            ("egress_redis_errors", store.redis_errors, "Failed Redis round trips of the record store."),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        yield GaugeMetricFamily("egress_spool_pending_batches", "Batches waiting in the spool.", value=_pending(store))


def _pending(store: RecordStore) -> int:
    try:
        return store.spool_pending
    except OSError:
        return 0


class _Every[T]:
    """A Redis read made at most once per ``CACHE_S`` (several scrapers, one Redis); None while Redis fails (logged:
    a scrape must answer)."""

    def __init__(self, what: str, read: Callable[[], T]) -> None:
        self.what = what
        self.read = read
        self._at: float | None = None
        self._value: T | None = None

    def __call__(self) -> T | None:
        now = time.monotonic()
        if self._at is None or now - self._at >= CACHE_S:
            try:
                self._value = self.read()
            except STORE_ERRORS as error:
                log.warning("metrics: %s unavailable (%s: %s)", self.what, type(error).__name__, error)
                self._value = None
            self._at = now
        return self._value


class AttemptsCollector(Collector):
    """Attempts in Redis over the last ``window_s`` seconds, by reason and by sandbox (cached ``CACHE_S``)."""

    def __init__(self, store: RecordStore, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.window_s = window_s
        self.clock = clock
        self._counts = _Every("attempt counts", self._read)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return self._families(None)  # no Redis query when the collector is registered

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return self._families(self._counts())

    def _families(self, counts: dict[str, dict[str, int]] | None) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("egress_redis_up", "Whether Redis answered the last metrics query (1) or not (0).")
        up.add_metric([], 1 if counts is not None else 0)
        yield up
        for by, name in (("reason", "egress_attempts_window"), ("sandbox", "egress_attempts_window_by_sandbox")):
            family = GaugeMetricFamily(
                name, f"Attempts recorded in the last {self.window_s:g} s, by {by}.", labels=[by]
            )
            for label, value in sorted((counts or {}).get(by, {}).items()):
                family.add_metric([label], value)
            yield family

    def _read(self) -> dict[str, dict[str, int]]:
        until = self.clock()
        return {by: query.counts(self.store, until - self.window_s, until, by) for by in ("reason", "sandbox")}


class RetentionCollector(Collector):
    """Each sandbox's records held, and those the retention dropped, by kind (`egress.record.retained`; cached
    ``CACHE_S``): a trimmed history is something to alert on, not to find out from a query."""

    def __init__(self, store: RecordStore) -> None:
        self._rows = _Every("retention", lambda: retained(store, store.sandboxes()))

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        return iter(())  # no Redis query when the collector is registered

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        rows = self._rows()
        if rows is None:
            return
        held = GaugeMetricFamily(
            "egress_records_held", "Records the store holds, by sandbox and kind.", labels=["sandbox", "kind"]
        )
        trimmed = CounterMetricFamily(
            "egress_records_trimmed",
            "Records the size or age retention dropped, by sandbox, trim and kind.",
            labels=["sandbox", "by", "kind"],
        )
        for name, row in rows.items():
            held.add_metric([name, "finding"], row.findings)
            held.add_metric([name, "policy"], row.records - row.findings)
            for by, dropped, findings in (
                ("size", row.trimmed_by_size, row.trimmed_findings_by_size),
                ("age", row.trimmed_by_age, row.trimmed_findings_by_age),
            ):
                trimmed.add_metric([name, by, "finding"], findings)
                trimmed.add_metric([name, by, "policy"], dropped - findings)
        yield held
        yield trimmed


class GatewayCountersCollector(Collector):
    """The gateway components' own counters, published to Redis by each component (egress/gateway/recorder.py):
    decisions by component, action and reason, and each component's record delivery counters."""

    def __init__(self, store: RecordStore) -> None:
        self.store = store

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[CounterMetricFamily]:
        try:
            published = self.store.read_counters()
        except STORE_ERRORS:
            return
        decisions = CounterMetricFamily(
            "egress_gateway_decisions",
            "Decisions made by the gateway's components (proxy, dns, firewall), by action and reason.",
            labels=["gateway", "component", "worker", "action", "reason"],
        )
        delivery = {
            name: CounterMetricFamily(f"egress_gateway_{name}", help_text, labels=["gateway", "component"])
            for name, help_text in (
                ("records_written", "Records the gateway's components stored in Redis."),
                ("records_spooled", "Records the gateway's components spooled to disk while Redis was away."),
                ("records_lost", "Records refused by a full spool."),
                ("redis_errors", "Failed Redis round trips of the gateway's components."),
                ("flows_written", "Flow log aggregates the gateway's components stored in Redis."),
                ("flows_lost", "Allowed connections the flow log dropped (its queue or its Redis backlog full)."),
                ("flows_folded", "Allowed connections folded into a minute's (other) aggregate past the cap."),
            )
        }
        for source, fields in published.items():
            gateway, _, process = source.partition("/")
            for field, value in fields.items():
                if field.startswith("decisions|"):
                    _, component, action, reason = [*field.split("|"), "", "", ""][:4]
                    decisions.add_metric([gateway, component, process, action, reason], value)
                elif field in delivery:
                    delivery[field].add_metric([gateway, process], value)
        yield decisions
        yield from delivery.values()


class Metrics:
    """The registry of one API process and the counters the API itself updates."""

    def __init__(self, store: RecordStore, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(StoreCollector(store))
        self.registry.register(AttemptsCollector(store, window_s, clock))
        self.registry.register(GatewayCountersCollector(store))
        self.registry.register(RetentionCollector(store))
        self.requests = Counter(
            "egress_api_requests",
            "API requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
