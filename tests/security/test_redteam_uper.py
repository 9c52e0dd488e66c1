"""Red team 6: Stratum in ASN.1 unaligned PER (X.691), whose IA5Strings are 7 bits a character.

`egress.detect.binrpc` reads pool method names as strings of encodings that keep a string's bytes verbatim.
Unaligned PER, a standard ASN.1 encoding (asn1tools' ``uper``, 3GPP's RRC/S1AP/NGAP, V2X, J2735), writes an
unconstrained ``IA5String`` with 7 bits per character and no octet alignment (X.691 §30.5.2-30.5.4), so
``mining.subscribe`` crosses as 14 bytes of which none is an ASCII letter of the name; the JSON, XML and binary
readers see bytes no protocol names (redteam_uper_kit says the schema and the framing).

Rows: the two routes of test_redteam_binsplit (the pool's address through a network rule that expects ``[tls,
http]``, allowed.lab's plain-HTTP port by name), each with a PDU framed by a two-byte length (``binary``) or by
five digits and ``:`` (``text``). Held (pass today): both framings through the network rule, refused there as
``tunnel`` (0 bytes to the pool). The host rule's rows fail today: allowed.lab's plain-HTTP port relays the PDUs,
no record.
Ground truth: the pool's log (``share accepted``) and the
internet-side capture. Each row fails if the bypass works.
"""

from __future__ import annotations

import sys
import time

import pytest

from egress.lab.topology import server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report

pytestmark = pytest.mark.security

POOL = server("pool").v4
ALLOWED = server("allowed").v4
ROUTES = {
    "network-rule": (POOL, 3380, POOL),
    "host-rule": ("-", 8080, "allowed.lab"),
}
_KIT = "from tests.security.redteam_uper_kit import {0}; {0}()"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    running = lab.attacker(
        "uper-pool", [sys.executable, "-c", _KIT.format("pool_main"), f"{POOL}:3380", f"{ALLOWED}:8080"]
    )
    running.wait_for("listening")
    return running


HOST_RULE_OPEN = pytest.mark.xfail(
    strict=True,
    reason="open bypass (red team 6): a short opaque stream to a host rule's port passes (docs/security.md, "
    "'Open: red team 6')",
)
"""The host rule's rows: open. The network rule's hold (its `expect` refuses an opening that is no protocol)."""


@pytest.mark.parametrize(
    "route", [pytest.param(r, marks=HOST_RULE_OPEN) if r == "host-rule" else r for r in sorted(ROUTES)]
)
@pytest.mark.parametrize("framing", ("binary", "text"))
def test_stratum_in_unaligned_per(lab: SecurityLab, pool: Attacker, framing: str, route: str) -> None:
    address, port, host = ROUTES[route]
    before = pool.log().count("share accepted")
    since = time.time()
    with lab.capture(f"uper-{framing}-{route}") as capture:
        done = lab.sandbox_python(_KIT.format("miner_main"), framing, address, str(port), host, timeout=60)
    crossed = capture.result
    assert crossed is not None
    shares = pool.log().count("share accepted") - before
    goal = shares > 0 and "share answered" in done.stdout
    dst = POOL if route == "network-rule" else ALLOWED
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=10)
    leaked = crossed.bytes_to(dst, port, "tcp") if goal else 0
    report(f"redteam/uper-{framing}-{route}", "mining", leaked, goal, reason or None)
    assert not goal, f"the pool accepted {shares} share(s): {done.stdout[-600:]}\npool: {pool.log()[-600:]}"
    assert reason in ("mining", "tunnel"), (reason, done.stdout[-600:], pool.log()[-600:])
