"""Red team 4: Stratum in standard binary encodings whose method names are not one length-prefixed string.

`egress.detect.binrpc` (red team 3's fix) found ``mining.subscribe`` and the other pool names only where the
byte(s) just before the name give its length. Two standard encodings write a string otherwise (closed: binrpc
joins CBOR's chunks and reads a length then a type, docs/security.md "Fourth round"):

- ``cbor``: an indefinite-length CBOR text string (RFC 8949 §3.2.3), ``7f 68 "mining.s" 68 "ubscribe" ff``: the
  name is cut in chunks, each length-prefixed, that every CBOR decoder joins. No chunk holds ``mining.`` and a
  whole method name, so the anchor never matches.
- ``msgext``: msgpack ext8 (``c7 L T bytes``): the byte before the name is the ext type ``T`` (1 here), not ``L``.

The variants past the fix (redteam_binsplit_kit): ``cbor1`` (byte strings of one-byte chunks, an empty chunk
before each), ``fixext`` (msgpack fixext, NUL-padded, a printable ext type) and ``trickle`` (``cbor`` one byte a
TCP segment: every name across packets, on each route's reassembly) and ``cbor-late`` (plain CBOR, ``method`` after
a 40-byte text value: named by no detector until stop 32).

Routes as test_redteam_msgpack: the pool's address through a network rule that expects ``[tls, http]`` and
allowed.lab's plain-HTTP port by name. Ground truth: the pool's log (``share accepted``) and the internet-side
capture. Each row fails if the bypass works.
"""

from __future__ import annotations

import pytest

from tests.security.harness import Attacker, SecurityLab, report
from tests.security.redteam_http import ROUTES, attempt, judge, pool_fixtures

pytestmark = pytest.mark.security

MODES = ("cbor", "msgext", "cbor1", "fixext", "trickle", "cbor-late")
KIT = "redteam_binsplit_kit"
lab, pool = pool_fixtures("binsplit-pool", KIT)


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("mode", MODES)
def test_stratum_names_not_one_prefixed_string(lab: SecurityLab, pool: Attacker, mode: str, route: str) -> None:
    name = f"binsplit-{mode}-{route}"
    run = attempt(lab, pool, name, route, mode, kit=KIT, control=False, reason_wait=10)
    report(*run.row(f"redteam/{name}"))
    judge(run, pool)
    if mode == "cbor-late":  # named before the pool heard it (until stop 32 only the pool's chunked answer was)
        assert run.leaked == 0, run.done.stdout[-600:]
