"""Inside intercepted TLS, every blocked attempt leaves a true record, and silent connections end (red team 3's
leftovers): the attacker's site on allowed.lab's address (tests/proxy/mitm/site.py, HTTP/2 when offered), the
policy decrypts allowed.lab (tests/security/policies/mitm.yaml), the gateway's idle timeout is 3 s, and the agent
plays each technique from the sandbox (tests/security/mitm_h2_client.py).

Ground truth: the site's log (no byte of the mining JSON arrives) and the lab's Redis (each block's record, under
the reason that says what happened; an idle connection's close recorded ``idle-timeout``).
"""

from __future__ import annotations

import sys
import time

import pytest

from egress.lab import certs
from egress.lab.topology import server
from egress.record.schema import AttemptRecord
from tests.proxy.mitm.site import parse_log
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report

pytestmark = pytest.mark.security

ALLOWED = server("allowed").v4
PLAIN, TLS = 8080, 8443
MARKER = b"mining.submit"
IDLE_TIMEOUT = 3


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "mitm.yaml", extra_args=("--idle-timeout", str(IDLE_TIMEOUT)))


@pytest.fixture(scope="module")
def site(lab: SecurityLab) -> Attacker:
    chain, key = certs.ensure(lab.lab.state_dir).servers["allowed"]
    argv = [sys.executable, "-m", "tests.proxy.mitm.site", ALLOWED, str(PLAIN), str(TLS), str(chain), str(key)]
    running = lab.attacker("mitm-site", argv)
    running.wait_for("listening")
    return running


def _play(lab: SecurityLab, site: Attacker, technique: str) -> tuple[int, str, float]:
    """Play ``technique``: (bytes of the secret that reached the site, the client's last line, since)."""
    before = len(parse_log(site.log()))
    since = time.time()
    done = lab.sandbox_python(
        "from tests.security.mitm_h2_client import main; main()", technique, str(TLS), str(lab.run.gateway_ca)
    )
    lines = done.stdout.splitlines()
    assert lines and lines[0].startswith("alpn"), done.stdout + done.stderr
    received = parse_log(site.log())[before:]
    leaked = sum(len(data) for kind, data in received if kind != "wire" and MARKER in data)
    return leaked, lines[-1], since


def _blocks(lab: SecurityLab, since: float, count: int = 1) -> list[AttemptRecord]:
    def mine(records: list[AttemptRecord]) -> list[AttemptRecord]:
        return [r for r in records if r.dport == TLS and r.action == "block"]

    found = lab.records_until(since, lambda records: sum(r.count for r in mine(records)) >= count)
    return mine(found)


@pytest.mark.parametrize("technique", ["preface-no-alpn", "preface-http11-alpn", "preface-in-pieces"])
def test_an_http2_preface_without_alpn_h2_is_refused_as_what_it_is(
    lab: SecurityLab, site: Attacker, technique: str
) -> None:
    leaked, last, since = _play(lab, site, technique)
    records = _blocks(lab, since)
    report(f"mitm/{technique}", "tunnel", leaked, leaked > 0, str(records[0].reason))
    assert leaked == 0
    assert [(r.reason, r.protocol) for r in records] == [("tunnel", "h2c-not-inspected")], records
    assert records[0].sandbox == "agent" and records[0].dst == ALLOWED and records[0].host == "allowed.lab"
    assert last.startswith("closed-after")


def test_every_blocked_http2_stream_is_recorded(lab: SecurityLab, site: Attacker) -> None:
    """Two mining streams, a fronting one and a benign one, with PRIORITY, SETTINGS and a reset stream between them:
    the benign one crosses (control), each blocked one is counted in its record (identical attempts aggregate:
    the two mining streams are one record of count 2, docs/records.md)."""
    leaked, _, since = _play(lab, site, "streams")
    records = _blocks(lab, since, count=3)
    report("mitm/h2-streams", "mining", leaked, leaked > 0, str(records[0].reason))
    assert leaked == 0
    assert b'"query":"weather"' in b"".join(data for _, data in parse_log(site.log()))  # control: it crossed
    by_reason = {r.reason.value: r for r in records}
    assert by_reason["mining"].count == 2 and by_reason["mining"].host == "allowed.lab", records
    assert by_reason["domain-fronting"].host == "blocked.lab", records
    assert all(r.sandbox == "agent" and r.dst == ALLOWED for r in records)


@pytest.mark.parametrize(
    ("technique", "reason", "protocol"),
    [
        ("continuation", "mining", "stratum-v1"),
        ("length-mismatch", "tunnel", "http-protocol-error"),
        ("data-before-headers", "tunnel", "http-protocol-error"),
    ],
)
def test_a_stream_refused_before_it_was_forwarded_is_recorded(
    lab: SecurityLab, site: Attacker, technique: str, reason: str, protocol: str
) -> None:
    leaked, _, since = _play(lab, site, technique)
    records = _blocks(lab, since)
    report(f"mitm/h2-{technique}", reason, leaked, leaked > 0, str(records[0].reason))
    assert leaked == 0
    assert (records[0].reason, records[0].protocol) == (reason, protocol), records
    assert records[0].sandbox == "agent" and records[0].dst == ALLOWED


@pytest.mark.parametrize("technique", ["silent", "silent-h2", "slowloris-head", "h2-open-stream"])
def test_a_connection_without_progress_ends_at_the_idle_timeout(
    lab: SecurityLab, site: Attacker, technique: str
) -> None:
    """Silent, or busy without progress (one byte of a request head per second, PING/SETTINGS/WINDOW_UPDATE/
    PRIORITY frames on a stream never ended): closed by the gateway, the close recorded."""
    leaked, last, since = _play(lab, site, technique)
    records = _blocks(lab, since)
    report(f"mitm/idle-{technique}", "idle", leaked, last == "still-open", str(records[0].reason))
    assert last.startswith("closed-after"), last
    assert [r.reason for r in records] == ["idle-timeout"], records
    assert records[0].sandbox == "agent" and records[0].host == "allowed.lab"
