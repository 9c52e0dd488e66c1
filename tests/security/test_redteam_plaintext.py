"""Red team: an interactive shell, and bulk data, as a plain text line protocol to an address a network rule
allows for TLS only (``expect: [tls]``, ``tls: bound``, and no name bound there: nothing should pass at all).

A stream to a network rule's destination that is neither TLS, HTTP nor SSH and does not open fully encrypted is
relayed through the detectors (`egress.proxy.gate.Gate._raw`: ``INSPECT``); only the inspection cap (16 KiB per
direction) ends it as ``tunnel``/``unidentified`` (`egress.proxy.mitm.layers.InspectLayer`, ``strict``). Below the
cap nothing stops a protocol the rule does not name (docs/policy.md's table says such a stream must be "shown to
be something within the inspection cap"; one that stays below the cap is never asked): a reverse shell (``sh`` on
the socket, the attacker types ``echo``/``id``) runs, and bulk data leaves 12 KiB per connection on as many
connections as the agent opens, while the same secret in an HTTP POST is refused (the control: the rule bites on
HTTP).

Ground truth: the listener's log on the internet side and the capture (bytes of the secret to the address).
"""

from __future__ import annotations

import re
import sys
import time

import pytest

from egress.lab.topology import server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.security.redteam_kit import OPENINGS

pytestmark = pytest.mark.security

DST = server("pool").v4
PORT = 3381
KIT = "from tests.security.redteam_kit import {0}; {0}()"
SECRET = "5ec7e75ec7e7da7a"
CONNECTIONS, PER_CONNECTION = 8, 12 * 1024


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def listener(lab: SecurityLab) -> Attacker:
    running = lab.attacker("plaintext-listener", [sys.executable, "-c", KIT.format("listener_main"), f"{DST}:{PORT}"])
    running.wait_for("listening")
    return running


def test_reverse_shell_in_plain_text_to_a_network_rule_expecting_tls(lab: SecurityLab, listener: Attacker) -> None:
    since = time.time()
    with lab.capture("plaintext-shell") as capture:
        lab.sandbox_python(KIT.format("shell_main"), DST, str(PORT), timeout=60)
    crossed = capture.result
    assert crossed is not None
    log = listener.log()
    goal = "SHELL-42" in log and "shell said b'0\\n'" in log
    reason = lab.reason_of(since, lambda r: r.dport == PORT and r.action == "block", timeout=5)
    said = sum(len(line) for line in re.findall(r"shell said (b'.*')", log))  # the shell's answers, as received
    report(
        "redteam/plaintext-reverse-shell", "tunnel", max(said, crossed.bytes_to(DST, PORT, "tcp")), goal, reason or None
    )
    assert not goal, f"the shell answered the attacker: {log[-300:]}"
    assert reason == "tunnel"


def test_bulk_lines_under_the_cap_on_many_connections(lab: SecurityLab, listener: Attacker) -> None:
    control = lab.sandbox_python(KIT.format("post_main"), DST, str(PORT), SECRET)
    assert "200 OK" not in control.stdout, control.stdout  # HTTP is not what the rule expects
    since = time.time()
    with lab.capture("plaintext-bulk") as capture:
        done = lab.sandbox_python(
            KIT.format("bulk_main"), DST, str(PORT), str(CONNECTIONS), str(PER_CONNECTION), SECRET, timeout=120
        )
    crossed = capture.result
    assert crossed is not None
    leaked = crossed.bytes_to(DST, PORT, "tcp")
    received = sum(int(n) for n in re.findall(r"got (\d+) bytes", listener.log()))
    goal = received > 16 * 1024 and crossed.contains(SECRET.encode(), DST)
    reason = lab.reason_of(since, lambda r: r.dport == PORT and r.action == "block", timeout=5)
    report("redteam/plaintext-bulk", "exfiltration", leaked, goal, reason or None, done.stdout.strip()[-60:])
    assert not goal, f"{received} bytes of lines reached the listener ({leaked} bytes crossed)"
    assert reason == "tunnel"


@pytest.mark.parametrize("variant", sorted(OPENINGS))
def test_an_opening_dressed_as_something_else_is_refused_too(
    lab: SecurityLab, listener: Attacker, variant: str
) -> None:
    """Variants that try past the refusal at the opening (`egress.proxy.gate.not_expected`): a TLS record header,
    an SSH banner, JSON-RPC, blank lines, or a first byte alone before the lines."""
    before = len(listener.log())
    since = time.time()
    with lab.capture(f"plaintext-opening-{variant}") as capture:
        lab.sandbox_python(KIT.format("opening_main"), DST, str(PORT), variant, SECRET, timeout=60)
    crossed = capture.result
    assert crossed is not None
    received = sum(int(n) for n in re.findall(r"got (\d+) bytes", listener.log()[before:]))
    goal = received > 0 or crossed.contains(SECRET.encode(), DST)
    reason = lab.reason_of(since, lambda r: r.dport == PORT and r.action == "block", timeout=5)
    report(f"redteam/plaintext-opening-{variant}", "exfiltration", crossed.bytes_to(DST, PORT, "tcp"), goal, reason)
    assert not goal, f"{received} bytes reached the listener"
    assert reason == "tunnel"
