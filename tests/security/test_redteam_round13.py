"""Red team 13: a pool call cut across an HTTP message's header or trailer fields, to a site that joins them.

The gateway read each field value alone (values shorter than `egress.proxy.mitm.inspect.PIECE_MIN` skipped) and
the canonical head, where no piece is a whole call. The attacker runs a site on allowed.lab's own address
(tests/security/redteam_round13_kit.py: HTTP/1.1 on 8080; TLS on 8443 with ALPN ``h2`` and ``http/1.1``,
decrypted under tests/security/policies/mitm.yaml) that joins fields as sites do (a repeated name's values with
``", "`` or ``""``, its own ``x-`` fields in order, a name's values across the requests of a connection) and
answers as a pool when a joined reading is a pool call. Each row sends its requests from the sandbox on one
connection: plain HTTP/1.1 (the front's own fast path, or mitmproxy when it hands a request over: trailers need
chunked bodies), HTTP/1.1 in TLS and HTTP/2 in TLS (both decrypted by mitmproxy).

Ground truth: the site's log (``pool got METHOD via READING``: the call reached the site whole) and the record in
Redis. Rows that leaked when the round was played (2026-12-03, on main at b79acc3: every attack row but HTTP/1.1
trailers, which mitmproxy refuses) are closed by `egress.detect.httpfields` and, for the pieces sent one per
request, by `egress.proxy.mitm.inspect.BodyStreams.fields`; see docs/security.md, "Thirteenth round". Controls: ordinary
repeated fields (cookies, Accept, Via, X-Forwarded-For, JSON trace fields) and a response's 40 ``Set-Cookie``
fields pass.

Round 13b's ``bypass-*`` rows try to slip past the joined reading: the ``x-`` pieces sent shuffled to a site that
sorts its fields by name, the pieces as cookie values (one ``Cookie`` field, a field per pair, percent-encoded, one
per request) to a site that concatenates them, base64 pieces (open: a private encoding), more than 32 JSON-opening
names before the pieces, the pieces after a 17,000-byte field (HTTP/2: the header block in CONTINUATION frames),
pieces whose requests repeat byte for byte (the front's memo answers them). docs/security.md, "Round 13b".
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
from tests.security.redteam_round13_kit import COOKIES, VARIANTS

pytestmark = pytest.mark.security

KIT = "from tests.security.redteam_round13_kit import {0}; {0}()"
ALLOWED = server("allowed").v4
PLAIN, TLS = 8080, 8443
MODES = {"plain": PLAIN, "tls": TLS, "h2": TLS}
CONTROLS = ("benign-repeats", "benign-set-cookies")
ATTACKS = [variant for variant in VARIANTS if variant not in CONTROLS]
OPEN: dict[str, str] = {
    f"{mode}-bypass-base64": "a private encoding (the site base64-decodes x-a joined): out of reach, as encryption"
    for mode in ("plain", "tls", "h2")
}
"""Rows still open (strict xfail), by ``MODE-VARIANT``."""
REASONS = {
    "plain-trailers": ("mining", "tunnel"),
    "tls-trailers": ("mining", "tunnel"),
    **{f"{mode}-bypass-many-names-first": ("tunnel",) for mode in ("plain", "tls", "h2")},
    "plain-bypass-continuation": ("tunnel",),
}
"""Rows refused otherwise: mitmproxy's HTTP/1 reader does not take a request's trailers (it raises; the connection
is closed and recorded as an inspection error, `egress.proxy.mitm.crashes`). They leaked nothing on main either.
Round 13b's ``bypass-many-names-first``: more than `egress.proxy.mitm.inspect.FIELD_STREAMS` names opening JSON on
one connection fail closed, unidentified (a tunnel), before the call's pieces come; ``plain-bypass-continuation``: a
plain HTTP head over 16 KiB is refused at the gate (``http-protocol-error``, a tunnel)."""


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "mitm.yaml")


@pytest.fixture(scope="module")
def site(lab: SecurityLab) -> Attacker:
    chain, key = certs.ensure(lab.lab.state_dir).servers["allowed"]
    argv = [sys.executable, "-c", KIT.format("site_main"), ALLOWED, str(PLAIN), str(TLS), str(chain), str(key)]
    running = lab.attacker("rt13-site", argv)
    running.wait_for("listening")
    return running


def _play(lab: SecurityLab, mode: str, variant: str) -> list[str]:
    """The client's answers (``STATUS BODY set-cookies N`` each, the control ``GET /`` first)."""
    code = KIT.format("client_main")
    done = lab.sandbox_python(code, str(MODES[mode]), mode, variant, str(lab.run.gateway_ca), timeout=60)
    assert "done" in done.stdout, done.stdout + done.stderr
    return [line.removeprefix("answer ") for line in done.stdout.splitlines() if line.startswith("answer ")]


def _row(mode: str, variant: str) -> object:
    name = f"{mode}-{variant}"
    marks = [pytest.mark.xfail(strict=True, reason=OPEN[name])] if name in OPEN else []
    return pytest.param(mode, variant, marks=marks, id=name)


@pytest.mark.parametrize(("mode", "variant"), [_row(mode, variant) for variant in ATTACKS for mode in MODES])
def test_no_pool_call_cut_across_fields_reaches_a_site_that_joins_them(
    lab: SecurityLab, site: Attacker, mode: str, variant: str
) -> None:
    before = len(site.log())
    since = time.time()
    with lab.capture(f"rt13-{mode}-{variant}") as capture:
        answers = _play(lab, mode, variant)
    assert capture.result is not None
    assert answers and answers[0].startswith("200 b'hello'"), answers  # the control: allowed HTTP passes
    got = re.findall(r"pool got (\S+) via (\S+)", site.log()[before:])
    port = MODES[mode]
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=10)
    leaked = sum(len(line) for line in answers if "job1" in line)
    note = f"site read {got}; answers {[line[:40] for line in answers]}"
    report(f"redteam13/{mode}-{variant}", "mining", leaked, bool(got), reason or None, note)
    assert not got, note
    assert reason in REASONS.get(f"{mode}-{variant}", ("mining",)), (reason, note)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_control_ordinary_repeated_fields_pass(lab: SecurityLab, site: Attacker, mode: str) -> None:
    """Cookies, Accept, Via and X-Forwarded-For chains and JSON trace fields, repeated as clients and proxies
    repeat them, with a long User-Agent: answered by the site, nothing read as a call."""
    before = len(site.log())
    answers = _play(lab, mode, "benign-repeats")
    assert [line.split(" ")[0] for line in answers] == ["200", "200"], answers
    assert "pool got" not in site.log()[before:]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_control_a_long_set_cookie_list_passes(lab: SecurityLab, site: Attacker, mode: str) -> None:
    answers = _play(lab, mode, "benign-set-cookies")
    assert len(answers) == 2 and answers[1].startswith("200 b'cookies'"), answers
    assert answers[1].endswith(f"set-cookies {COOKIES}"), answers
