"""Issue 9.8 (DNS): a burst of queries overflowing the resolver's socket was neither answered nor recorded.

2,000 queries leave the sandbox at once (one socket, no pacing) towards the gateway resolver; then, once the
answers stop coming, one late query. Every query must be accounted for: answered, or counted in a ``dns-dropped``
record (the kernel's drop counter, SO_RXQ_OVFL, arrives with the next datagram: the late query carries it).
"""

from __future__ import annotations

import re
import time

import pytest

from egress.lab.topology import GATEWAY_SBX_V4
from egress.record.schema import AttemptRecord
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, SecurityLab, report

pytestmark = pytest.mark.security

SENT = 2000

BURST = r"""
import select, socket, sys, time
from egress.detect import dns
gateway, count = sys.argv[1], int(sys.argv[2])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, 33, 1 << 24)  # SO_RCVBUFFORCE: the agent's own buffer is not the question
sock.setsockopt(socket.SOL_SOCKET, 32, 1 << 24)  # SO_SNDBUFFORCE
for n in range(count):
    sock.sendto(dns.build_query(n, f"b{n}.burst.lab", dns.A), (gateway, 53))
answered = set()
while select.select([sock], [], [], 5.0)[0]:  # until the answers stop for 5 s
    answered.add(dns.parse(sock.recv(65535)).id)
sock.sendto(dns.build_query(0xFFFF, "late.burst.lab", dns.A), (gateway, 53))
late = select.select([sock], [], [], 5.0)[0] and dns.parse(sock.recv(65535)).id == 0xFFFF
print("answered", len(answered - {0xFFFF}), "late", bool(late), flush=True)
"""


@pytest.fixture(scope="module")
def dns_lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "dns.yaml")


def test_a_burst_is_answered_or_counted(dns_lab: SecurityLab) -> None:
    since = time.time()
    done = dns_lab.sandbox_python(BURST, GATEWAY_SBX_V4, str(SENT), timeout=120)
    match = re.search(r"answered (\d+) late (\w+)", done.stdout)
    assert match, done.stdout + done.stderr
    answered = int(match.group(1))

    def dropped_in_records(records: list[AttemptRecord]) -> int:
        return sum(r.count for r in records if r.reason == "dns-dropped")

    lost = SENT - answered
    records: list[AttemptRecord] = []
    if lost:
        try:
            records = dns_lab.records_until(since, lambda rs: dropped_in_records(rs) >= lost)
        except AssertionError:  # some were lost without a record: reported below, then failed on
            records = dns_lab.records(since)
    counted = dropped_in_records(records)
    silent = max(0, SENT - answered - counted)
    report("dns/burst-2000", "unrecorded", 0, silent > 0, "dns-dropped" if counted else None,
           f"{answered} answered, {counted} counted dropped, {silent} lost silently")  # fmt: skip
    assert match.group(2) == "True", done.stdout
    assert silent == 0
