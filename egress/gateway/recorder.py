"""Decisions → counters and records in Redis, off the hot path: a `Reporter` whose `report` only counts and enqueues.

Every decision is counted (the API's ``egress_gateway_decisions_total``). A background thread turns each block,
would-block or record into an `AttemptRecord` (`AttemptRecord.of`), aggregates repeats (the first attempt of a key
is written at the next tick, its repeats as count updates every `UPDATE_SECONDS`: a kill loses at most that much of
the counts, never an attempt), and writes batches through `RecordStore`, which spools to local disk while Redis is
unreachable and delivers the spool, in order and without duplicates, when it answers again. `flush` and `close`
write everything held. The queue to the thread is bounded (`MAX_QUEUE`): beyond it decisions are still counted but
their records are dropped, counted as lost and logged once a minute. Allowed decisions are not records
(`egress.decisions.LogReporter` logs each).

It is also the `egress.flowlog.FlowSink` of its process: ended connections of sandboxes that keep a flow log go
through the same queue to the same thread, which aggregates them per minute (`egress.record.flows`) and writes the
aggregates of each finished minute (`egress.record.flow_store`, apart from the records and with its own
retention). A flow that finds the queue full is counted in ``flows_lost``, as are aggregates Redis did not take.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from egress.decide import Enforcement
from egress.decisions import DecidedFlow
from egress.flowlog import EndedFlow
from egress.gateway.metrics import Latency, Snapshot, snapshot
from egress.policy.model import FlowLogSettings, Retention
from egress.record.aggregate import Aggregator
from egress.record.flow_store import WINDOW_S, FlowWriter
from egress.record.flows import FlowAggregator
from egress.record.schema import AttemptRecord, new_id
from egress.record.store import STORE_ERRORS, RecordStore

log = logging.getLogger("egress.recorder")

AGGREGATE_WINDOW = 10.0
"""Seconds over which identical attempts (same sandbox, source, destination, reason) become one record."""
UPDATE_SECONDS = 1.0
"""Repeats are written as count updates at least this often: what a killed process can lose of the counts."""
MAX_QUEUE = 100_000
"""Decisions waiting for the recorder thread at most; beyond, records are dropped (counted as lost)."""
LOG_EVERY = 60.0
"""Seconds between two log lines about dropped records."""
BATCH = 1024
"""Records per store write at most: a flood fills a batch well within a tick, and a large batch costs Redis and the
recorder far less per record (bench/records.py); a trickle is written every tick whatever its size."""
TICK = 0.1
PUBLISH_SECONDS = 5.0


class Counters:
    """Thread-safe counts of decisions, taken as deltas for publishing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._totals: dict[str, int] = {}
        """Since the process started, for its own metrics endpoint (`egress.gateway.metrics`)."""

    def add(self, field: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[field] = self._counts.get(field, 0) + amount
            self._totals[field] = self._totals.get(field, 0) + amount

    def totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)

    def take(self) -> dict[str, int]:
        with self._lock:
            counts, self._counts = self._counts, {}
        return counts

    def give_back(self, counts: dict[str, int]) -> None:
        """Counts `take` gave that could not be published: taken again next time (the totals have them)."""
        with self._lock:
            for field, amount in counts.items():
                self._counts[field] = self._counts.get(field, 0) + amount


def to_record(attempt: DecidedFlow, gateway: str) -> AttemptRecord:
    """The record of a block, would-block or record decision (`AttemptRecord.of`), with the id named at decision
    time (`egress.record.naming`) or else a new one."""
    return AttemptRecord.of(attempt, gateway, attempt.record_id or new_id(attempt.ts))


class _Flush:
    """A request to the recorder thread: write everything held, then set ``done``."""

    def __init__(self) -> None:
        self.done = threading.Event()


class RecordReporter:
    def __init__(
        self,
        redis_url: str,
        gateway: str,
        spool_dir: str,
        component: str,
        retention: Retention | None = None,
        *,
        spool_max_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        flow_log: FlowLogSettings | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``spool_max_bytes``: the spool's cap (None: `spool.default_max_bytes`, below the disk's free space).
        ``clock``: monotonic seconds, for the aggregation windows and updates (tests pass their own).
        ``flow_log``: how the flow log is kept; ``wall``: epoch seconds, when a flow log minute is over."""
        self.gateway = gateway
        spool = Path(spool_dir)
        spool.mkdir(parents=True, exist_ok=True)
        keep = retention or Retention()
        self.store = RecordStore(
            redis_url,
            spool,
            gateway=gateway,
            retention_max_len=keep.max_records,
            retention_max_age_days=keep.max_age_days,
            spool_max_bytes=spool_max_bytes,
        )
        self.aggregator = Aggregator(window=AGGREGATE_WINDOW, max_keys=10_000, update_interval=UPDATE_SECONDS)
        flow_settings = flow_log or FlowLogSettings()
        self.flows = FlowAggregator(gateway, component, WINDOW_S, flow_settings.max_destinations)
        self.flow_writer = FlowWriter(self.store.redis, flow_settings.max_records, flow_settings.max_age_days * 86400.0)
        self.flows_dropped = 0
        """Ended flows dropped because the queue to the recorder thread was full (part of ``flows_lost``)."""
        self._wall = wall
        self.component = component
        self.component_kind = "proxy" if component.startswith("proxy") else "firewall"
        self.counters = Counters()
        self.latency = Latency()
        """How long decisions took where a component measures it (`DecidedFlow.decide_s`)."""
        self.dropped = 0
        """Records dropped because the queue to the recorder thread was full (part of ``records_lost``)."""
        self._clock = clock
        self._drop_logged_at: float | None = None
        self._published: dict[str, int] = {}
        self._publish_at = 0.0
        self._queue: queue.SimpleQueue[DecidedFlow | EndedFlow | _Flush | None] = queue.SimpleQueue()
        self._pending: list[AttemptRecord] = []
        """Records taken from the queue, not yet written: kept here, not in the thread, so that a thread started
        after one died (`restart`) writes them."""
        self._flushes: list[_Flush] = []
        self._fault = threading.Event()
        self._thread = self._start()

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name=f"recorder-{self.component}", daemon=True)
        thread.start()
        return thread

    @property
    def alive(self) -> bool:
        """Whether the writing thread runs."""
        return self._thread.is_alive()

    @property
    def backlog(self) -> int:
        """Decisions waiting for the writing thread."""
        return self._queue.qsize()

    def restart(self) -> bool:
        """Start a new writing thread if the last one died (never a second one beside it: the spool has one
        writer); it goes on with the queue and what the dead one held. Whether one was started."""
        if self._thread.is_alive():
            return False
        self._fault.clear()
        self._thread = self._start()
        log.warning("recorder thread started again")
        return True

    def die(self) -> None:
        """Test-only fault (``EGRESS_FAULT_HOOKS=recorder``, then SIGUSR1 to the gateway): the writing thread raises
        at its next turn (within a tick), as a bug in it would."""
        self._fault.set()

    def report(self, attempt: DecidedFlow) -> None:
        verdict = attempt.verdict
        component = "dns" if attempt.dport == 53 and self.component == "gateway" else self.component_kind
        reason = verdict.reason.value if verdict.reason is not None else ""
        self.counters.add(f"decisions|{component}|{verdict.action.value}|{reason}", attempt.count)
        if attempt.decide_s is not None:
            self.latency.observe(attempt.decide_s)
        if verdict.action is Enforcement.ALLOW:
            return
        if self._queue.qsize() >= MAX_QUEUE:  # the thread is stuck (e.g. on Redis): memory stays bounded
            self._drop(attempt)
            return
        self._queue.put(attempt)

    def flow_ended(self, flow: EndedFlow) -> None:
        """`egress.flowlog.FlowSink`: queue an ended flow for aggregation (counted as lost when the queue is full)."""
        if self._queue.qsize() >= MAX_QUEUE:
            self.flows_dropped += 1
            return
        self._queue.put(flow)

    def snapshot(self) -> Snapshot:
        """This process's counts for the gateway's metrics endpoint; read from any thread, Redis or not."""
        decisions = {
            field.removeprefix("decisions|"): count
            for field, count in self.counters.totals().items()
            if field.startswith("decisions|")
        }
        store = self.store
        delivery = {
            "records_written": store.written,
            "records_spooled": store.spooled,
            "records_lost": store.lost + self.dropped,
            "redis_errors": store.redis_errors,
        }
        try:
            pending = store.spool_pending
        except OSError:  # the spool's directory is unreadable: the scrape still answers
            pending = 0
        return snapshot(decisions, delivery, pending, self.latency)

    def flush(self, timeout: float = 5.0) -> bool:
        """Write (to Redis or the spool) everything reported so far, repeats included; False if that took longer
        than ``timeout`` or the thread has stopped."""
        if not self._thread.is_alive():
            return False
        request = _Flush()
        self._queue.put(request)
        return request.done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write everything held (`flush`) and stop the thread (started again first if it had died); waits at most
        ``timeout`` seconds."""
        self.restart()
        self._queue.put(None)
        self._thread.join(timeout)

    def _drop(self, attempt: DecidedFlow) -> None:
        self.dropped += attempt.count
        now = self._clock()
        if self._drop_logged_at is None or now - self._drop_logged_at >= LOG_EVERY:
            self._drop_logged_at = now
            log.error("recorder queue full (%d decisions): records dropped, %d so far", MAX_QUEUE, self.dropped)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # noticed by the supervisor (egress.gateway.components.RecorderPart), which restarts it
            log.exception("recorder thread died")

    def _loop(self) -> None:
        pending = self._pending
        closing = False
        flushes = self._flushes
        while True:
            if self._fault.is_set():
                raise RuntimeError("fault hook: the recorder's thread dies (EGRESS_FAULT_HOOKS=recorder)")
            deadline = self._clock() + TICK
            while len(pending) < BATCH and not closing:
                try:
                    item = self._queue.get(timeout=max(deadline - self._clock(), 0.001))
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                if isinstance(item, _Flush):
                    flushes.append(item)
                    break
                pending += self._take(item)
            pending += self.aggregator.flush(self._clock(), force=closing or bool(flushes))
            try:
                self.store.drain()
                if pending:
                    self.store.write(list(pending))  # a copy: the list is cleared for the next batch
                pending.clear()
                self.flow_writer.write(self.flows.take(self._wall(), force=closing or bool(flushes)))
                self._publish(force=closing or bool(flushes))
            except Exception:  # the store spools on Redis errors; anything else must not lose the batch
                log.exception("record batch kept for the next attempt")
                time.sleep(TICK)
                continue
            for request in flushes:
                request.done.set()
            flushes.clear()
            if closing:
                return

    def _take(self, item: DecidedFlow | EndedFlow) -> list[AttemptRecord]:
        """An item of the queue aggregated: the records due now (an ended flow goes to the flow log's minutes)."""
        if isinstance(item, EndedFlow):
            self.flows.add(item)
            return []
        try:
            record = to_record(item, self.gateway)
        except ValueError:  # a decision the record schema refuses: a bug, which must not stop the thread
            log.exception("decision not recordable, dropped: %r", item)
            return []
        return self.aggregator.add(record, self._clock(), named=bool(item.record_id))

    def _publish(self, force: bool = False) -> None:
        """Every `PUBLISH_SECONDS`, add this component's new counts to its Redis hash (the API's /metrics)."""
        now = self._clock()
        if now < self._publish_at and not force:
            return
        self._publish_at = now + PUBLISH_SECONDS
        deltas = self.counters.take()
        store = self.store
        totals = {
            "records_written": store.written,
            "records_spooled": store.spooled,
            "redis_errors": store.redis_errors,
            "records_lost": store.lost + self.dropped,
            "flows_written": self.flow_writer.written,
            "flows_lost": self.flow_writer.lost_connections + self.flows_dropped,
            "flows_folded": self.flows.overflow,
        }
        for field, total in totals.items():
            delta = total - self._published.get(field, 0)
            if delta:
                deltas[field] = delta
        if not deltas:
            return
        try:
            store.add_counters(f"{self.gateway}/{self.component}", deltas)
        except STORE_ERRORS:
            for field in totals:
                deltas.pop(field, None)
            self.counters.give_back(deltas)  # Redis is away: keep the counts for the next try
            return
        self._published.update(totals)
