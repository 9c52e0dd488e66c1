"""``egress flows`` against a real redis-server: the aggregates summed per destination or per minute, filtered,
in each output form (a Zeek conn.log with its header among them)."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from egress.cli import main
from egress.flowlog import EndedFlow
from egress.record.flow_store import FlowWriter
from egress.record.flows import FlowAggregator
from egress.record.redis_facade import RedisFacade
from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def url(redis_server: RedisServer) -> str:
    redis_server.cli("flushall")
    now = time.time()
    aggregator = FlowAggregator("gw1", "proxy-0")
    for minute in (2, 1):
        for host, dst, up in (("pypi.org", "203.0.113.5", 100), ("files.pythonhosted.org", "203.0.113.6", 5000)):
            aggregator.add(EndedFlow("agents", "10.77.0.2", 40000, dst, 443, "tcp", host, "r", "allow", up, 7,
                                     now - 60 * minute - 1, now - 60 * minute))  # fmt: skip
    aggregator.add(EndedFlow("builders", "10.78.0.2", 40000, "10.78.0.1", 53, "udp", "pypi.org", "r", "allow", 30,
                             90, now - 10, now - 10))  # fmt: skip
    facade = RedisFacade.from_url(redis_server.url)
    FlowWriter(facade).write(aggregator.take(0, force=True))
    facade.close()
    return redis_server.url


def _run(url: str, *args: str) -> str:
    result = CliRunner().invoke(main, ["flows", "--redis-url", url, *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_by_destination_most_bytes_first_and_filters(url: str) -> None:
    rows = [json.loads(line) for line in _run(url, "-o", "jsonl").splitlines()]
    assert [(r["sandbox"], r["host"], r["connections"]) for r in rows] == [
        ("agents", "files.pythonhosted.org", 2), ("agents", "pypi.org", 2), ("builders", "pypi.org", 1)
    ]  # fmt: skip
    assert rows[0]["bytes_up"] == 10_000
    only = [
        json.loads(line)
        for line in _run(url, "-o", "jsonl", "--sandbox", "agents", "--host", "pythonhosted.org").splitlines()
    ]
    assert [r["host"] for r in only] == ["files.pythonhosted.org"]
    assert len(json.loads(_run(url, "-o", "json", "--by", "window"))) == 5
    assert _run(url, "-o", "jsonl", "--since", "1s") == ""
    assert _run(url, "-o", "json", "--port", "9") == "[]\n"


def test_table_compact_csv_and_zeek(url: str) -> None:
    table = _run(url)
    assert "files.pythonhosted.org" in table and "9.8 KiB" in table and "DESTINATION" in table
    assert "-> 203.0.113.6:443/tcp files.pythonhosted.org ALLOW x2" in _run(url, "-o", "compact")
    assert _run(url, "-o", "csv").splitlines()[0].startswith("sandbox,gateway,component,window_start")
    zeek = _run(url, "-o", "zeek").splitlines()
    fields = next(line for line in zeek if line.startswith("#fields")).split("\t")[1:]
    assert fields[:5] == ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h"] and "community_id" in fields
    lines = [dict(zip(fields, line.split("\t"), strict=True)) for line in zeek if not line.startswith("#")]
    dns = next(line for line in lines if line["id.resp_p"] == "53")
    assert (dns["proto"], dns["service"], dns["orig_bytes"], dns["resp_bytes"]) == ("udp", "dns", "30", "90")
    assert zeek[-1].startswith("#close")
