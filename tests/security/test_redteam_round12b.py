"""Red team 12b: Stratum in clear through the TCP front, behind a real ClientHello to a name or network the policy
allows for TLS.

The front (egress/proxy/front.py) peeks a client's first bytes; a whole ClientHello that the gate passes through
is relayed by the front itself (egress/proxy/splice.py), each chunk shown to a `egress.proxy.relay.Watch` (TLS
record shapes, the mining shape) until the watch is done, then spliced unseen. Each row opens one connection from
the sandbox (a real ClientHello naming allowed.lab, made by Python's ssl module) and then sends Stratum's subscribe
and authorize in clear, cut, paced or dressed as the row says: in one segment with the hello, after a pause, the
hello byte by byte, the hello's rest just before the front's `HELLO_WAIT`, the whole after a silence just under
and just over `PEEK_WAIT`, after 170 one-byte application records (past the watch's 160), with junk before the
hello, as TCP urgent data, then half-closed, then reset at once, behind a second ClientHello, and on 64
connections accepted before any of them spoke (the late path in the poller's callbacks). To a host rule's port
(allowed.lab:8443, the attacker's own site) and to a network rule that expects TLS with any name (the pool's
address:4450: a server in an allowed range the agent does not own, which reads Stratum in clear).

Ground truth: the plaintext pool on the internet side (``got N bytes marker yes``: the authorize's worker name is
the marker; ``answered``: it read a call) and the capture there (the marker in any payload to it). Goal: any byte
of the Stratum reaching the pool. Control: a real TLS session (40 lines echoed by a TLS server with the lab's
certificate) through the same host rule still works.

Programs: tests/security/redteam_round12b_kit.py. Lab: tests/security/policies/redteam_round12b.yaml.
"""

from __future__ import annotations

import re
import sys
import time

import pytest

from egress.lab import certs
from egress.lab.topology import server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.security.redteam_round12b_kit import MARK, VARIANTS

pytestmark = pytest.mark.security

KIT = "from tests.security.redteam_round12b_kit import {0}; {0}()"
SITE = server("allowed").v4
POOL = server("pool").v4
HOST_PORT, ECHO_PORT, OWN_PORT, NETWORK_PORT = 8443, 8444, 8445, 4450
TARGETS = {
    "host": ("allowed.lab", SITE, HOST_PORT),
    "own-tls-site": ("allowed.lab", SITE, OWN_PORT),  # the attacker's server answers a real ServerHello
    "network": (POOL, POOL, NETWORK_PORT),
}
SERVER_HELLO = "serverhello-records-then-stratum"

ROWS = [(variant, "host") for variant in [*VARIANTS, "many-late"] if variant != SERVER_HELLO]
ROWS += [("hello-stratum", "own-tls-site"), (SERVER_HELLO, "own-tls-site")]
ROWS += [
    (variant, "network")
    for variant in ("hello-stratum", "hello-bytewise-stratum", "silent-past-peek-hello-stratum", "records-then-stratum")
]
OPEN = {
    f"own-tls-site-{SERVER_HELLO}": "open: both ends the attacker's (its site under an allowed name answers a "
    "ServerHello); 170 records of 300 bytes end the shape watch (160 records, past the SSH opening's 32 KiB), the "
    "relay splices unseen after that, and Stratum in clear crosses: no more than encrypting it would give (Out of "
    "scope), but the pool's vocabulary is on the wire",
}


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam_round12b.yaml")


@pytest.fixture(scope="module")
def pools(lab: SecurityLab) -> dict[str, Attacker]:
    running = {}
    for target, (_, address, port) in TARGETS.items():
        argv = [sys.executable, "-c", KIT.format("pool_main"), address, str(port)]
        pool = lab.attacker(f"rt12b-pool-{target}", argv + (["serverhello"] if port == OWN_PORT else []))
        pool.wait_for("listening")
        running[target] = pool
    return running


def _row(variant: str, target: str) -> object:
    name = f"{target}-{variant}"
    marks = [pytest.mark.xfail(strict=True, reason=OPEN[name])] if name in OPEN else []
    return pytest.param(variant, target, marks=marks, id=name)


@pytest.mark.parametrize(("variant", "target"), [_row(*row) for row in ROWS])
def test_no_stratum_in_clear_behind_a_client_hello(
    lab: SecurityLab, pools: dict[str, Attacker], variant: str, target: str
) -> None:
    host, address, port = TARGETS[target]
    pool = pools[target]
    before = len(pool.log())
    since = time.time()
    with lab.capture(f"rt12b-{target}-{variant}") as capture:
        done = lab.sandbox_python(KIT.format("client_main"), host, str(port), variant, timeout=90)
    crossed = capture.result
    assert crossed is not None
    assert "done" in done.stdout, done.stdout + done.stderr
    heard = pool.log()[before:]
    goal = "marker yes" in heard or "answered" in heard or crossed.contains(MARK.encode(), address)
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=10)
    leaked = sum(int(n) for n in re.findall(r"got (\d+) bytes marker yes", heard))
    report(f"redteam12b/{target}-{variant}", "mining", leaked, goal, reason or None, done.stdout.strip()[-80:])
    assert not goal, f"the pool heard the Stratum: {heard[-600:]}\nclient: {done.stdout[-400:]}"
    if variant != "reset-after-stratum":  # a reset the front sees first loses the bytes unread: nothing to record
        assert reason in {"mining", "tunnel"}, (reason, done.stdout[-400:])


def test_control_real_tls_through_the_host_rule(lab: SecurityLab) -> None:
    chain, key = certs.ensure(lab.lab.state_dir).servers["allowed"]
    argv = [sys.executable, "-c", KIT.format("tls_echo_main"), SITE, str(ECHO_PORT), str(chain), str(key)]
    lab.attacker("rt12b-tls-echo", argv).wait_for("listening")
    done = lab.sandbox_python(KIT.format("tls_client_main"), "allowed.lab", str(ECHO_PORT), timeout=60)
    assert re.search(r"echoed 40 TLSv1\.[23]", done.stdout), done.stdout + done.stderr
