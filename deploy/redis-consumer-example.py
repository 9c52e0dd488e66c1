#!/usr/bin/env python3
"""Stream egress attempt records from Redis to stdout as JSON lines, through a Redis consumer group, for feeding
another system (a SIEM shipper, a log pipeline, a queue). An example to copy: it needs only redis-py.

Each sandbox has its own stream ``egress:{<sandbox>}:attempts`` (docs/records.md), whose entries each carry a
batch of records: field ``n`` (how many) and field ``records`` (a JSON array of the records, each exactly the
documented JSON that ``egress events --json`` prints). This reader creates the group on every stream it finds in
the set ``egress:sandboxes`` (again every few seconds, so new sandboxes are picked up), reads new entries with
XREADGROUP, prints each record as one JSON line and acknowledges the entry only after its lines are written and
flushed. A reader that dies before that gets the entries again when it restarts (XREADGROUP with id 0 first
re-reads its pending entries), so delivery is at least once: deduplicate on the record's ``id`` downstream if it
matters.

    python deploy/redis-consumer-example.py --redis-url redis://127.0.0.1:6379/0 --group siem --consumer siem-1
    python deploy/redis-consumer-example.py --from-start --exit-when-idle 2 > records.jsonl

Several consumers with the same ``--group`` share the work; another ``--group`` gets its own copy of every record.
On a Redis Cluster (``redis+cluster://``) each stream is read on its own (one XREADGROUP per stream).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any
from urllib.parse import quote

import redis
import redis.cluster

SANDBOXES_KEY = "egress:sandboxes"


def stream_key(sandbox: str) -> str:
    """As egress.record.store.stream_key: the name escaped so that it stays inside the hash tag."""
    return f"egress:{{{quote(sandbox, safe='._-~') or '%'}}}:attempts"


def lines(fields: dict[str, str]) -> list[str]:
    """An entry's records, one JSON line each (the record's JSON as stored, re-serialised compactly)."""
    return [json.dumps(item, separators=(",", ":"), ensure_ascii=False) for item in json.loads(fields["records"])]


def connect(url: str) -> Any:
    if url.startswith(("redis+cluster://", "rediss+cluster://")):
        return redis.cluster.RedisCluster.from_url(url.replace("+cluster", "", 1), decode_responses=True)
    return redis.Redis.from_url(url, decode_responses=True)


def ensure_groups(client: Any, group: str, start: str, known: set[str]) -> None:
    for sandbox in client.smembers(SANDBOXES_KEY):
        key = stream_key(sandbox)
        if key in known:
            continue
        try:
            client.xgroup_create(key, group, id=start, mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):  # the group exists: keep its position
                raise
        known.add(key)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--group", default="egress-export", help="Consumer group name.")
    parser.add_argument("--consumer", default="consumer-1", help="This reader's name within the group.")
    parser.add_argument("--from-start", action="store_true", help="A new group starts at the oldest record kept.")
    parser.add_argument("--batch", type=int, default=500, help="Entries per read per stream.")
    parser.add_argument("--exit-when-idle", type=float, default=0, help="Stop after this many idle seconds (0: never).")
    args = parser.parse_args()

    client = connect(args.redis_url)
    cluster = isinstance(client, redis.cluster.RedisCluster)
    start = "0" if args.from_start else "$"
    known: set[str] = set()
    stop = False

    def on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A read waits for new entries at most 1 s, and never longer than the idle limit: the stop comes on time.
    block = max(1, min(1000, int(args.exit_when_idle * 1000))) if args.exit_when_idle else 1000
    pending = True  # first drain what this consumer was given but never acknowledged (id "0")
    last_refresh = 0.0
    idle_since = time.monotonic()
    while not stop:
        if time.monotonic() - last_refresh > 5:
            ensure_groups(client, args.group, start, known)
            last_refresh = time.monotonic()
        position = "0" if pending else ">"
        streams = {key: position for key in sorted(known)}
        if not streams:
            time.sleep(0.5)
            replies: list[Any] = []
        elif cluster or pending:
            replies = []
            for key in streams:
                replies += client.xreadgroup(args.group, args.consumer, {key: position}, count=args.batch) or []
        else:
            replies = client.xreadgroup(args.group, args.consumer, streams, count=args.batch, block=block) or []
        got = 0
        for key, entries in replies:
            ids = []
            for entry_id, fields in entries:
                if fields:  # None for a pending entry trimmed from the stream since
                    sys.stdout.writelines(line + "\n" for line in lines(fields))
                ids.append(entry_id)
            if ids:
                sys.stdout.flush()  # written before acknowledged: a crash here re-delivers, never loses
                client.xack(key, args.group, *ids)
                got += len(ids)
        if pending and not got:
            pending = False
            idle_since = time.monotonic()  # idle from the first wait for new entries, not from the start
        if cluster and not got and not pending:
            time.sleep(0.2)
        if got:
            idle_since = time.monotonic()
        elif args.exit_when_idle and time.monotonic() - idle_since >= args.exit_when_idle:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
