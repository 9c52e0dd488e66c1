"""Flow log benchmark: CPU per ended connection for what the flow log costs the gateway (docs/flow-log.md).

- ``sink``: `RecordReporter.flow_ended`, what a relay or a DNS answer pays on its own loop (a queue put);
- ``aggregate``: `FlowAggregator.add` in the recorder's thread, per connection: to a few destinations (the common
  case: an agent talks to its package index) and to a new destination each time (past the cap: folded);
- ``write``: `FlowWriter.write` of one minute's aggregates to a local redis-server, per aggregate;
- ``read``: `read_flows` + `merge` + `by_destination` of a sandbox's hour, per aggregate.

CPU seconds (process time, stable on a busy machine) per unit, beside wall-clock. Starts its own redis-server on a
unix socket in a temporary directory and stops it.

    python bench/flowlog.py            # about ten seconds
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from egress.flowlog import EndedFlow
from egress.gateway.recorder import RecordReporter
from egress.record import flows
from egress.record.flow_store import FlowWriter, read_flows
from egress.record.flows import FlowAggregator


def measure(name: str, units: int, run: Callable[[], object]) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{name:<34} {units:>8} units  {cpu / units * 1e6:8.2f} us CPU/unit  {wall / units * 1e6:8.2f} us wall/unit")


def _flows(count: int, destinations: int, now: float) -> list[EndedFlow]:
    return [
        EndedFlow("agents", "10.77.0.2", 40000 + index % 20000, f"203.0.{index % destinations // 250}."
                  f"{index % destinations % 250}", 443, "tcp", "pypi.org", "r", "allow", 500, 9000, now - 1, now)
        for index in range(count)
    ]  # fmt: skip


def main() -> None:
    now = time.time()
    many = 200_000
    few = _flows(many, 5, now)
    spread = _flows(many, many, now)
    with tempfile.TemporaryDirectory(prefix="egress-bench-flows-") as tmp:
        sock = Path(tmp) / "redis.sock"
        server = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", "0", "--unixsocket", str(sock), "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        try:
            while not sock.exists():
                time.sleep(0.01)
            url = f"unix://{sock}"
            reporter = RecordReporter(url, "bench", str(Path(tmp) / "spool"), "proxy-0")
            reporter._queue = type(reporter._queue)()  # a queue the thread does not read: the put alone
            measure("sink (flow_ended: a queue put)", many, lambda: [reporter.flow_ended(flow) for flow in few])
            agg = FlowAggregator("bench", "proxy-0")
            measure("aggregate (5 destinations)", many, lambda: [agg.add(flow) for flow in few])
            agg.take(0, force=True)
            capped = FlowAggregator("bench", "proxy-0")
            measure("aggregate (new each, cap 2000)", many, lambda: [capped.add(flow) for flow in spread])
            minute = capped.take(0, force=True)
            wide = FlowAggregator("bench", "proxy-0", max_destinations=50_000)
            for flow in spread[:50_000]:
                wide.add(flow)
            records = wide.take(0, force=True)
            writer = FlowWriter(reporter.store.redis)
            measure("write (per aggregate)", len(records), lambda: writer.write(records))
            measure("read+merge+sum (per aggregate)", len(records), lambda: flows.by_destination(
                flows.merge(read_flows(reporter.store.redis, "agents", now - 3600, now)[0])))  # fmt: skip
            print(f"cap: {len(minute)} aggregates kept of {many} destinations; folded {capped.overflow}")
            reporter.store.close()
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
