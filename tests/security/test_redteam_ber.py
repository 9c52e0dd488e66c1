"""Red team 6: Stratum in ASN.1 BER whose strings are in constructed form (segments), past `egress.detect.binrpc`.

binrpc joins CBOR's indefinite-length strings (red team 4) but no other encoding's segmented strings. ASN.1 BER
(X.690 §8.7.3, §8.23.6) lets any OCTET STRING or character string be sent *constructed*: ``2c 80``, then OCTET
STRING segments ``04 L bytes``, then ``00 00`` (or a definite length). Every BER decoder joins the segments;
pyasn1 writes this with ``maxChunkSize``, and CER requires it for strings over 1,000 bytes. So
``mining.subscribe`` is ``2c 80 04 08 "mining.s" 04 08 "ubscribe" 00 00``: no segment holds a whole name, and
``mining.s`` followed by ``04 08`` is no name binrpc knows (redteam_ber_kit says the schema and the modes).

Rows: ``seg8`` (8-byte segments, indefinite lengths), ``seg1`` (one-byte segments), ``definite`` (4-byte
segments, definite lengths), on two routes as test_redteam_binsplit: the pool's address through a network rule
that expects ``[tls, http]`` and allowed.lab's plain-HTTP port by name. Ground truth: the pool's log (``share
accepted``) and the internet-side capture. Each row fails if the bypass works.
"""

from __future__ import annotations

import pytest

from tests.security.harness import Attacker, SecurityLab, report
from tests.security.redteam_http import ROUTES, attempt, judge, pool_fixtures

pytestmark = pytest.mark.security

MODES = ("seg8", "seg1", "definite")
KIT = "redteam_ber_kit"
lab, pool = pool_fixtures("ber-pool", KIT)


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("mode", MODES)
def test_stratum_in_ber_constructed_strings(lab: SecurityLab, pool: Attacker, mode: str, route: str) -> None:
    name = f"ber-{mode}-{route}"
    run = attempt(lab, pool, name, route, mode, kit=KIT, control=False, reason_wait=10)
    report(*run.row(f"redteam/{name}"))
    judge(run, pool)
