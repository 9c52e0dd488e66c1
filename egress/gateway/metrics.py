"""The gateway's own Prometheus endpoint, on the management side: what its processes counted themselves, so that
decisions, delivery failures and the spool are visible while Redis is down (the API's ``/metrics`` reads them
from Redis, `egress.api.metrics`).

Each process with a `RecordReporter` (the supervisor's, each proxy worker's) keeps a `Snapshot` of its counts.
A worker's travels to the supervisor in its answer to the liveness ping (`egress.gateway.control`, ``STATUS``,
every second), so a scrape never waits on a worker; the supervisor serves them all with `GatewayCollector` through
prometheus_client's HTTP server, bound to the management address only (``--metrics-listen``, loopback by default;
never the sandbox interface: `check_listen`).

Families (prefix ``egress_gateway_``, label ``worker``: ``gateway`` for the supervisor, ``proxy-N`` for a worker):
``own_decisions_total{worker, component, action, reason}``, ``own_records_written_total``,
``own_records_spooled_total``, ``own_records_lost_total``, ``own_redis_errors_total``, ``own_spool_pending_batches``,
``decision_seconds{worker}`` (a histogram: the proxy's gate deciding a connection on its first bytes, detectors and
policy), ``worker_snapshot_age_seconds{worker}``, and ``egress_build_info{version, python}``. ``own_``: these come
from the process itself, not from Redis, and must not collide with the API's families of the same meaning.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import itertools
import logging
import math
import platform
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

log = logging.getLogger("egress.gateway")

BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
"""Upper bounds (seconds) of the decision latency histogram: a decision is microseconds to milliseconds."""
_DELIVERY: Final = ("records_written", "records_spooled", "records_lost", "redis_errors")
MAX_SERIES: Final = 2048
"""A worker's snapshot is believed for at most this many decision series (it is the less trusted side)."""


class Latency:
    """A thread-safe fixed-bucket histogram of seconds (the proxy's event loop observes, the recorder reads)."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)  # the last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            return
        index = next((i for i, bound in enumerate(self.buckets) if seconds <= bound), len(self.buckets))
        with self._lock:
            self._counts[index] += 1
            self._sum += seconds

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"counts": list(self._counts), "sum": self._sum}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One process's counts since it started (cumulative: Prometheus computes the rates)."""

    decisions: Mapping[str, int] = field(default_factory=dict)
    """``component|action|reason`` → decisions."""
    delivery: Mapping[str, int] = field(default_factory=dict)
    """`_DELIVERY` → count."""
    spool_pending: int = 0
    latency_counts: tuple[int, ...] = ()
    """Per bucket of `BUCKETS`, then above them; empty: nothing observed."""
    latency_sum: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "decisions": dict(self.decisions),
            "delivery": dict(self.delivery),
            "spool_pending": self.spool_pending,
            "latency": {"counts": list(self.latency_counts), "sum": self.latency_sum},
        }

    @classmethod
    def from_json(cls, data: object) -> Snapshot:
        """A worker's snapshot, believed only in its expected shape (anything else: empty)."""
        if not isinstance(data, dict):
            return cls()
        decisions = _counts(data.get("decisions"), lambda key: key.count("|") == 2, MAX_SERIES)
        delivery = _counts(data.get("delivery"), lambda key: key in _DELIVERY, len(_DELIVERY))
        pending = data.get("spool_pending")
        latency = data.get("latency") if isinstance(data.get("latency"), dict) else {}
        assert isinstance(latency, dict)
        counts, total = latency.get("counts"), latency.get("sum")
        good_counts = isinstance(counts, list) and len(counts) == len(BUCKETS) + 1 and all(_count(c) for c in counts)
        good_sum = isinstance(total, int | float) and not isinstance(total, bool) and math.isfinite(total)
        return cls(
            decisions,
            delivery,
            pending if _count(pending) else 0,  # type: ignore[arg-type]
            tuple(counts) if good_counts and good_sum else (),  # type: ignore[arg-type]
            float(total) if good_counts and good_sum else 0.0,  # type: ignore[arg-type]
        )


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _counts(value: object, key_ok: Callable[[str], bool], limit: int) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {
        key: count
        for key, count in list(value.items())[:limit]
        if isinstance(key, str) and len(key) <= 200 and key_ok(key) and _count(count)
    }


def snapshot(
    decisions: Mapping[str, int], delivery: Mapping[str, int], spool_pending: int, latency: Latency
) -> Snapshot:
    state = latency.state()
    observed = any(state["counts"])
    return Snapshot(
        dict(decisions),
        dict(delivery),
        spool_pending,
        tuple(state["counts"]) if observed else (),
        state["sum"] if observed else 0.0,
    )


def build_version() -> str:
    try:
        return importlib.metadata.version("egress")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class GatewayCollector(Collector):
    """Every process's snapshot at scrape time: ``sources()`` gives (worker name, snapshot or None when it has not
    answered yet, seconds since it was taken)."""

    def __init__(self, sources: Callable[[], Iterable[tuple[str, Snapshot | None, float]]]) -> None:
        self.sources = sources
        self._scrapes = itertools.count(1)
        """Scrapes answered, this one included (``next`` is atomic: the server answers in threads)."""

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families depend on what the processes report

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("egress_build", "The gateway's version.")
        info.add_metric([], {"version": build_version(), "python": platform.python_version()})
        yield info
        yield CounterMetricFamily(
            "egress_gateway_metrics_scrapes",
            "Requests this metrics endpoint answered, this one included (who reads it: only the management side).",
            value=next(self._scrapes),
        )
        decisions = CounterMetricFamily(
            "egress_gateway_own_decisions",
            "Decisions this gateway's processes made, by component (proxy, dns, firewall), action and reason.",
            labels=["worker", "component", "action", "reason"],
        )
        delivery = {
            name: CounterMetricFamily(f"egress_gateway_own_{name}", text, labels=["worker"])
            for name, text in (
                ("records_written", "Records this process stored in Redis."),
                ("records_spooled", "Records this process put in its disk spool because Redis did not take them."),
                ("records_lost", "Records this process dropped: its spool was full or its queue overflowed."),
                ("redis_errors", "Failed Redis round trips of this process's record store."),
            )
        }
        pending = GaugeMetricFamily(
            "egress_gateway_own_spool_pending_batches", "Record batches waiting in the spool.", labels=["worker"]
        )
        latency = HistogramMetricFamily(
            "egress_gateway_decision_seconds",
            "Time the proxy's gate took to decide a connection on its first bytes (detectors and policy).",
            labels=["worker"],
        )
        age = GaugeMetricFamily(
            "egress_gateway_worker_snapshot_age_seconds",
            "Seconds since the process's counts were taken (a worker's come with its liveness ping).",
            labels=["worker"],
        )
        for worker, taken, seconds in sorted(self.sources(), key=lambda source: source[0]):
            age.add_metric([worker], seconds if taken is not None else math.inf)
            if taken is None:
                continue
            for key, value in sorted(taken.decisions.items()):
                component, action, reason = key.split("|")
                decisions.add_metric([worker, component, action, reason], value)
            for name, family in delivery.items():
                family.add_metric([worker], taken.delivery.get(name, 0))
            pending.add_metric([worker], taken.spool_pending)
            if taken.latency_counts:
                cumulative, buckets = 0, []
                for bound, count in zip((*map(str, BUCKETS), "+Inf"), taken.latency_counts, strict=True):
                    cumulative += count
                    buckets.append((bound, float(cumulative)))
                latency.add_metric([worker], buckets, taken.latency_sum)
        yield decisions
        yield from delivery.values()
        yield pending
        yield latency
        yield age


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); `ValueError` saying what is wrong, the host included: never
    a wildcard, which listens on the sandbox side too."""
    host, separator, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not separator or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} is not host:port")
    problem = check_listen(host, "")
    if problem:
        raise ValueError(problem)
    return host, int(port_text)


def check_listen(host: str, sandbox_address: str) -> str:
    """Why the metrics may not listen on ``host`` (``""``: it may): never a wildcard, which includes the sandbox
    side, nor the sandbox interface's own address."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"{host!r} is not an IP address (name the management address itself)"
    if address.is_unspecified:
        return f"{host} listens on every interface, the sandboxes' too: name the management address"
    if sandbox_address and address == ipaddress.ip_address(sandbox_address):
        return f"{host} is the sandbox interface's address: the metrics are for the management side only"
    return ""


class MetricsServer:
    """prometheus_client's HTTP server (a thread of its own) of a registry holding one `GatewayCollector`."""

    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self.httpd = httpd
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @classmethod
    def start(
        cls, listen: str, sandbox_address: str, sources: Callable[[], Iterable[tuple[str, Snapshot | None, float]]]
    ) -> MetricsServer | None:
        """Serving on ``listen``, or None (logged) when it may not or cannot: the gateway enforces without it."""
        try:
            host, port = parse_listen(listen)
        except ValueError as error:
            log.error("metrics not served: %s", error)
            return None
        problem = check_listen(host, sandbox_address)
        if problem:
            log.error("metrics not served: %s", problem)
            return None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(GatewayCollector(sources))
        try:
            httpd, thread = start_http_server(port, host, registry)
        except OSError as error:
            log.error("metrics not served on %s: %s", listen, error)
            return None
        served = cls(httpd, thread)
        log.info("metrics on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", served.port)
        return served

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
