"""Record store benchmark: write rate through `RecordStore` beside redis-benchmark's XADD rate on the same server,
and the latency of a sandbox time-range query on a store of one million records.

Starts its own redis-server (no persistence) on a free loopback port and stops it at the end. Rounds alternate
the peer and egress (the machine's speed drifts); medians are printed. Per round:

- redis-benchmark ``XADD bench * f v`` (-P 16, 50 clients): the server's limit for stream appends; and
  ``XADD bench * record <one record's JSON, about 430 bytes>``: the limit when each record is its own entry;
- records/s written by `RecordStore.write` in the recorder's batches (1024 records of ten sandboxes, made in time
  order as the gateway makes them): every record encoded, cut into entries and stored through the idempotent
  write script with its retention; the ratio to each peer (goal: at least 0.5);

then p50/p99 of ``list_attempts`` with a sandbox and a 1-minute window, limit 100, on one million records over ten
sandboxes written by `RecordStore.write` the way the gateway writes them (a batch a second; goal: p99 < 50 ms);

then the API's side (bench/api_load.py): a real ``egress api serve`` on that store (one uvicorn worker per usable
core) and 20 concurrent keep-alive clients, p50/p99 of each request shape (the attempt list, filtered too; a
sandbox's timeline; the stats and the chart's series of the last hour; goal: p99 < 200 ms each) beside the server's,
redis-server's and the clients' CPU per request, the load average and the Redis commands a request sent (calls and
server time per command, INFO commandstats); with ``--baseline <tree>`` the same load against the API of
another checkout (e.g. the main branch), side by side, on the same records.

The filled store is kept as a Redis dump under /var/tmp/egress-bench (bench/record_dump.py) and reused by the next
run with the same fill arguments: only the first run pays for the fill. On a shared machine run it with
``nice -n -5`` and read the CPU per request; the latencies measure the machine as much as the API.

    python bench/records.py                 # the first run: about fifteen minutes
    python bench/records.py --skip-writes --api-requests 1000 --api-seconds 60   # the API on the kept store
    python bench/records.py --skip-writes --baseline /path/to/main/checkout --shapes list timeline
    python bench/records.py --skip-writes --baseline /path/to/main/checkout --api-rounds 4   # alternated, medians
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.api_load import Result, load, load_lean, print_medians, print_table, serve, warm  # noqa: E402
from bench.record_dump import DUMP_DIR, DumpServer, filled_store  # noqa: E402
from egress.gateway.recorder import BATCH  # noqa: E402
from egress.record.layout import stream_key  # noqa: E402
from egress.record.query import AttemptFilter, list_attempts  # noqa: E402
from egress.record.schema import AttemptRecord, make_id  # noqa: E402
from egress.record.store import RecordStore  # noqa: E402

SANDBOXES = 10
START = 1_750_000_000.0


def api_shapes(end: float) -> dict[str, Callable[[int], str]]:
    """The request shapes, the records ending at ``end``: the timeline is asked for its last day up to there (the
    dashboard asks up to now; the same work, and a kept dump's records do not move)."""
    return {
        "list": lambda n: "/v1/attempts?limit=100",
        "list, filtered": lambda n: f"/v1/attempts?limit=100&category=tunnel&sandbox=sandbox-{n % SANDBOXES}",
        "timeline": lambda n: f"/v1/sandboxes/sandbox-{n % SANDBOXES}/timeline?until={end:.3f}",
        "stats 1 h": lambda n: "/v1/stats?window=3600&by=reason",
        "stats 1 h by destination": lambda n: "/v1/stats?window=3600&by=destination",
        "series 1 h": lambda n: "/v1/stats/series?window=3600&buckets=30&by=category",
    }


def make_records(count: int, span: float, seed: int, start: float = START) -> list[AttemptRecord]:
    """``count`` varied records over ``span`` seconds from ``start``, spread over the sandboxes, made in time order
    (as the gateway makes them)."""
    rng = random.Random(seed)
    times = sorted(start + rng.random() * span for _ in range(count))
    out = []
    for index, ts in enumerate(times):
        kind = index % 3
        out.append(
            AttemptRecord(
                id=make_id(ts, rng.randbytes(10)),
                ts=ts,
                gateway="gw1",
                sandbox=f"sandbox-{index % SANDBOXES}",
                src=f"10.77.0.{2 + index % 200}",
                sport=1024 + index % 60000,
                dst=f"203.0.113.{index % 250}",
                dport=(3333, 443, 53)[kind],
                transport=("tcp", "tcp", "udp")[kind],
                host=("pool.example.com", "", "x.t.example.net")[kind],
                category=("mining", "policy", "tunnel")[kind],
                protocol=("stratum-v1", "tcp", "dns-tunnel")[kind],
                reason=("mining", "not-allowlisted", "tunnel")[kind],
                detector=("stratum", "", "dns_tunnel")[kind],
                rule="",
                action="block",
                evidence='{"id":1,"method":"mining.subscribe","params":["xmrig/6.21"]}'[: 20 + index % 40],
            )
        )
    return out


def redis_benchmark(port: int, requests: int, fields: list[str]) -> float:
    """requests/s of redis-benchmark XADD with these field/value arguments, 16 commands per pipeline."""
    tool = shutil.which("redis-benchmark")
    if tool is None:
        return float("nan")
    command = [tool, "-h", "127.0.0.1", "-p", str(port), "-n", str(requests), "-P", "16", "--csv"]
    xadd = [*command, "XADD", "bench", "*", *fields]
    result = subprocess.run(xadd, capture_output=True, text=True, timeout=300, check=True)
    rows = [line for line in result.stdout.splitlines() if line.startswith('"XADD')]
    return float(rows[-1].split(",")[-7].strip('"')) if rows else float("nan")  # the name itself may hold commas


def store_rate(store: RecordStore, records: list[AttemptRecord], batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        store.write(records[start : start + batch])
    elapsed = time.perf_counter() - started
    assert store.written == len(records), (store.written, store.spooled, store.redis_errors)
    return len(records) / elapsed


def fill(store: RecordStore, count: int, span: float, start: float = START, batch_s: float = 1.0) -> float:
    """``count`` records over ``span`` seconds from ``start`` written as the gateway's recorder writes them: one
    batch per ``batch_s`` seconds of attempts (all sandboxes), in time order."""
    started = time.perf_counter()
    chunk = 50_000
    for offset in range(0, count, chunk):
        part_span = span * min(chunk, count - offset) / count
        records = make_records(min(chunk, count - offset), part_span, seed=offset, start=start)
        shift = span * offset / count
        records = [dataclasses.replace(record, ts=record.ts + shift, first_ts=-1.0, last_ts=-1.0) for record in records]
        second, batch = int(records[0].ts // batch_s), []
        for record in records:
            if int(record.ts // batch_s) != second and batch:
                store.write(batch)
                second, batch = int(record.ts // batch_s), []
            batch.append(record)
        store.write(batch)
    return time.perf_counter() - started


def query_latency(store: RecordStore, queries: int, span: float, start: float) -> tuple[list[float], float]:
    rng = random.Random(5)
    times, returned = [], 0
    for _ in range(queries):
        since = start + rng.random() * (span - 60)
        flt = AttemptFilter(sandbox=f"sandbox-{rng.randrange(SANDBOXES)}", since=since, until=since + 60)
        started = time.perf_counter()
        page, _ = list_attempts(store, flt, 100, None)
        times.append(time.perf_counter() - started)
        returned += len(page)
    return times, returned / queries


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=200_000, help="Records written through RecordStore per round.")
    parser.add_argument("--batch", type=int, default=BATCH, help="Records per write (default: the recorder's batch).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fill", type=int, default=1_000_000, help="Records in the store for the query test.")
    parser.add_argument("--span", type=float, default=7200.0, help="Seconds the filled records spread over.")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--json", dest="json_out", help="Also write the results to this file.")
    parser.add_argument(
        "--fill-batch-s", type=float, default=1.0, help="Seconds of records per write when filling (larger: faster)."
    )
    parser.add_argument("--skip-writes", action="store_true", help="Skip the write-rate rounds.")
    parser.add_argument("--clients", type=int, default=20, help="Concurrent API clients.")
    parser.add_argument("--api-requests", type=int, default=400, help="API requests per shape at most.")
    parser.add_argument("--api-seconds", type=float, default=60.0, help="Seconds per shape at most.")
    parser.add_argument(
        "--api-workers", type=int, default=len(os.sched_getaffinity(0)), help="uvicorn workers (default: the cores)."
    )
    parser.add_argument("--httpx", action="store_true", help="httpx clients (as before) instead of the lean ones.")
    parser.add_argument("--baseline", type=pathlib.Path, help="Another checkout whose API is measured alike.")
    parser.add_argument(
        "--api-rounds",
        type=int,
        default=1,
        help="Rounds of the API's shapes, the trees in turn, their order reversed each round (the machine drifts); "
        "with more than one, the medians over the rounds are printed last.",
    )
    parser.add_argument(
        "--refill", action="store_true", help=f"Fill the store anew even when a dump of it is kept in {DUMP_DIR}."
    )
    parser.add_argument("--shapes", nargs="+", choices=list(api_shapes(0.0)), help="Only these API request shapes.")
    return parser.parse_args()


def write_rounds(args: argparse.Namespace) -> tuple[list[float], list[float], list[float], str]:
    """Each round: redis-benchmark's two XADD rates, then `RecordStore.write`'s, on a server of their own."""
    simple: list[float] = []
    shaped: list[float] = []
    written: list[float] = []
    line = json.dumps(make_records(1, 60, seed=1)[0].to_json(), separators=(",", ":"))
    server = DumpServer(pathlib.Path(tempfile.mkdtemp(prefix="egress-bench-redis-")), tcp=True)  # redis-benchmark -p
    server.start()
    try:
        # In time order, as the recorder delivers them: a batch holds the attempts of the last moments.
        records = make_records(args.writes, args.writes / 1000, seed=99)
        with tempfile.TemporaryDirectory(prefix="egress-bench-spool-") as spool:
            for _ in range(args.rounds):
                server.cli("flushall")
                simple.append(redis_benchmark(server.port, 300_000, ["f", "v"]))
                server.cli("flushall")
                shaped.append(redis_benchmark(server.port, 300_000, ["record", line]))
                server.cli("flushall")
                store = RecordStore(server.url, pathlib.Path(spool), "gw1", socket_timeout=30.0)
                written.append(store_rate(store, records, args.batch))
                store.close()
    finally:
        server.cleanup()
    return simple, shaped, written, line


def main() -> int:
    args = _arguments()
    simple, shaped, written, line = [float("nan")], [float("nan")], [float("nan")], ""
    if not args.skip_writes:
        simple, shaped, written, line = write_rounds(args)
    rounds: list[dict[str, dict[str, Result]]] = []
    with tempfile.TemporaryDirectory(prefix="egress-bench-spool-") as spool:

        def fill_now(url: str, start: float) -> float:
            store = RecordStore(url, pathlib.Path(spool), "gw1", socket_timeout=30.0)
            try:
                return fill(store, args.fill, args.span, start, args.fill_batch_s)
            finally:
                store.close()

        with filled_store(args.fill, args.span, args.fill_batch_s, fill_now, refill=args.refill) as filled:
            server = filled.server
            fill_s = filled.fill_s
            entries = sum(int(server.cli("xlen", stream_key(f"sandbox-{index}"))) for index in range(SANDBOXES))
            store = RecordStore(server.url, pathlib.Path(spool), "gw1", socket_timeout=30.0)
            latencies, per_query = query_latency(store, args.queries, args.span, filled.start)
            store.close()
            print(f"store: {'the dump ' + str(filled.reused) if filled.reused else 'filled now'}", flush=True)
            trees = {"this tree": HERE.parent, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
            shapes = api_shapes(filled.end)
            if args.shapes:
                shapes = {name: shapes[name] for name in args.shapes}
            for number in range(max(1, args.api_rounds)):
                api: dict[str, dict[str, Result]] = {}
                for name, tree in list(trees.items())[:: -1 if number % 2 else 1]:
                    log = pathlib.Path(spool) / f"api-{number}-{len(api)}.log"
                    with serve(tree, server.url, args.api_workers, log, server.pid) as served:
                        warm(served, shapes, clients=args.clients)
                        api[name] = {
                            shape: (
                                load(served, path_of, args.clients, args.api_requests, args.api_seconds, timeout=60.0)
                                if args.httpx
                                else load_lean(served, path_of, args.clients, args.api_requests, args.api_seconds)
                            )
                            for shape, path_of in shapes.items()
                        }
                rounds.append({name: api[name] for name in trees})

    xadd_simple, xadd_shaped, rate = (statistics.median(values) for values in (simple, shaped, written))
    p50 = statistics.median(latencies) * 1000
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000
    ratio, ratio_shaped = rate / xadd_simple, rate / xadd_shaped
    results = {
        "rounds": args.rounds,
        "redis_benchmark_xadd_per_s": [round(value, 1) for value in simple],
        "redis_benchmark_xadd_record_per_s": [round(value, 1) for value in shaped],
        "recordstore_records_per_s": [round(value, 1) for value in written],
        "ratio_to_xadd": round(ratio, 3),
        "ratio_to_record_xadd": round(ratio_shaped, 3),
        "batch": args.batch,
        "fill_records": args.fill,
        "fill_entries": entries,
        "fill_s": round(fill_s, 1),
        "query_p50_ms": round(p50, 2),
        "query_p99_ms": round(p99, 2),
        "records_per_query": round(per_query, 1),
        "api": {
            name: {shape: result.summary() for shape, result in shapes.items()} for name, shapes in rounds[0].items()
        },
        "api_rounds": [
            {name: {shape: result.summary() for shape, result in shapes.items()} for name, shapes in api.items()}
            for api in rounds
        ],
        "api_clients": args.clients,
        "api_workers": args.api_workers,
    }
    if not args.skip_writes:
        print(f"medians of {args.rounds} rounds")
        print(f"redis-benchmark XADD f v (-P 16)                 {xadd_simple:>12,.0f} entries/s")
        print(f"redis-benchmark XADD record <{len(line)} B> (-P 16)     {xadd_shaped:>12,.0f} entries/s")
        print(f"RecordStore.write (batches of {args.batch})              {rate:>12,.0f} records/s")
        print(f"  ratio to XADD f v: {ratio:.2f}   to XADD of one record: {ratio_shaped:.2f}")
        print(f"  goal >= 0.50: {'met' if min(ratio, ratio_shaped) >= 0.5 else 'NOT met'} (the lower ratio)")
    print(f"query: sandbox + 1-minute window, limit 100, on {args.fill:,} records in {entries:,} entries")
    print(f"  (written in {fill_s:.1f} s)  p50 {p50:.2f} ms   p99 {p99:.2f} ms   ({per_query:.0f} records per query)")
    print(f"  goal p99 < 50 ms: {'met' if p99 < 50 else 'NOT met'}")
    for number, api in enumerate(rounds):
        if len(rounds) > 1:
            print(f"round {number + 1} of {len(rounds)}")
        print_table(api, args.clients, args.api_workers)
    if len(rounds) > 1:
        print_medians(rounds)
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
