"""/metrics as Prometheus takes it: a real scrape (uvicorn, a real redis-server) checked by ``promtool check metrics``
(Debian's ``prometheus`` package), and no two samples with the same name and labels, which a Prometheus scrape
refuses ("duplicate sample") though promtool's linter lets them pass."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from egress.api.app import create_app
from egress.record.store import RecordStore
from tests.api import READ, ApiServer, auth, seed_attempts, settings
from tests.needs import unavailable
from tests.record import record
from tests.redis_server import RedisServer
from tests.waiting import scaled


def _duplicates(text: str) -> list[str]:
    seen = Counter(
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    )
    return [f"{name}{dict(labels)} x{count}" for (name, labels), count in seen.items() if count > 1]


def test_duplicates_are_found() -> None:
    text = '# TYPE x_total counter\nx_total{a="1"} 1\nx_total{a="1"} 2\nx_total{a="2"} 2\n'
    assert _duplicates(text) == ["x_total{'a': '1'} x2"]


def test_a_real_scrape_passes_promtool_with_several_proxy_workers(redis_server: RedisServer) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("needs promtool (apt prometheus)")
    redis_server.flush()
    with tempfile.TemporaryDirectory(prefix="egt-api-metrics-") as spool:
        writer = RecordStore(redis_server.url, Path(spool), "gw1", retry_interval=0.0)
        writer.write(seed_attempts(time.time()))
        # What the gateway's processes publish (egress/gateway/recorder.py): two proxy workers decide alike.
        for worker in ("proxy-0", "proxy-1"):
            writer.add_counters(
                f"gw1/{worker}",
                {"decisions|proxy|block|mining": 2, "decisions|proxy|allow|": 7, "records_written": 2},
            )
        writer.add_counters("gw1/gateway", {"decisions|dns|block|dns-refused": 1, "decisions|firewall|block|": 3})
        writer.close()
        small = RecordStore(redis_server.url, Path(spool), "gw1", retry_interval=0.0, retention_max_len=1)
        for _ in range(3):  # one record each: the two older findings of sandbox "spill" go by size
            small.write([record(ts=time.time(), sandbox="spill")])
        small.close()
    api = ApiServer(create_app(settings(redis_server.url))).start()
    try:
        with httpx.Client(base_url=api.url, timeout=scaled(10), headers=auth(READ)) as http:
            assert http.get("/v1/attempts").status_code == 200
            response = http.get("/metrics")
    finally:
        api.stop()
    assert response.status_code == 200
    text = response.text
    assert 'worker="proxy-0"' in text and 'worker="proxy-1"' in text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    spill = (("by", "size"), ("kind", "finding"), ("sandbox", "spill"))
    assert samples[("egress_records_trimmed_total", spill)] == 2
    assert samples[("egress_records_held", (("kind", "finding"), ("sandbox", "spill")))] == 1
    checked = subprocess.run(
        [promtool, "check", "metrics"], check=False, input=text, capture_output=True, text=True, timeout=scaled(30)
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert _duplicates(text) == []
