"""Red team 12: pool messages cut over datagrams of one allowed UDP flow, opened so the gate's hold misses them.

The UDP gate holds a datagram that opens a text message (egress/detect/textframe.py) until the joined message is
whole and judged, so that no piece of a pool message reaches the server. The pool detectors read more than the
hold recognised as an opening: junk, a comment or a JSON string before the bracket, UTF-16 and UTF-32 text (NULs
dropped), msgpack. Each row sends one such message cut in pieces on one flow to an allowed UDP network (red team
10b's rule, here on ports 4100-4131) and is judged by what the attacker's server there heard: a piece heard is a
piece of a pool message let go before it was judged (the goal, as for round 10b's held rows); the capture on the
internet side counts its bytes. Controls: the same openings around a JSON-RPC line no detector names cross whole
and in order.

Programs: tests/security/redteam_round12_kit.py (the server: redteam_surfaces_kit.udp_sink_main). Lab:
tests/security/policies/redteam_round12_udp.yaml.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time

import pytest

from egress.lab.topology import server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.security.redteam_round12_kit import message, pieces
from tests.waiting import eventually

pytestmark = pytest.mark.security

KIT = "from tests.security.{0} import {1}; {1}()"
NETWORK = server("pool")

ROWS = {
    # name: (opening, message, pieces, IPv6)
    "junk-stratum": ("junk", "stratum", 3, False),
    "junk-xmrig": ("junk", "xmrig", 3, False),
    "comment-stratum": ("comment", "stratum", 3, False),
    "string-xmrig": ("string", "xmrig", 3, False),
    "utf16-stratum": ("utf16", "stratum", 3, False),
    "utf32-xmrig": ("utf32", "xmrig", 3, False),
    "junk-stratum-v6": ("junk", "stratum", 3, True),
    "pieces-17-stratum": ("plain", "stratum", 17, False),
    "bytes-over-hold-stratum": ("plain", "long", 3, False),
    "msgpack-xmrig": ("msgpack", "xmrig", 3, False),
}
OPEN = {
    "msgpack-xmrig": "open: a binary encoding the pool detectors read (msgpack) is never held: the first pieces of "
    "XMRig's login (the wallet among them) reach the server before the last one completes it and the flow is refused",
}
CONTROLS = {"junk-benign": ("junk", 3), "comment-benign": ("comment", 3), "utf16-benign": ("utf16", 3)}
PORTS = {name: 4100 + index for index, name in enumerate([*ROWS, *CONTROLS])}


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam_round12_udp.yaml")


def _sink(lab: SecurityLab, address: str, port: int) -> Attacker:
    code = KIT.format("redteam_surfaces_kit", "udp_sink_main")
    running = lab.attacker(f"rt12-udp-{port}", [sys.executable, "-c", code, address, str(port)])
    running.wait_for("listening")
    return running


def _heard(sink: Attacker) -> list[str]:
    """The first bytes (hex) of each datagram the server received, in order."""
    return [line.split("head ")[-1] for line in sink.log().splitlines() if line.startswith("received")]


def _send(lab: SecurityLab, opening: str, kind: str, address: str, port: int, count: int) -> str:
    code = KIT.format("redteam_round12_kit", "udp_pieces_main")
    done = lab.sandbox_python(code, opening, kind, address, str(port), str(count), timeout=60)
    assert re.search(r"sent \d+, answers \d+", done.stdout), done.stdout + done.stderr
    return done.stdout.strip()


def _reasons(lab: SecurityLab, since: float, address: str, port: int) -> list[str]:
    found: list[str] = []

    def any_record(records: list) -> bool:  # type: ignore[type-arg]
        found[:] = sorted({str(r.reason) for r in records if r.dst == address and r.dport == port})
        return bool(found)

    with contextlib.suppress(AssertionError):
        lab.records_until(since, any_record, timeout=20.0)
    return found


def _row(name: str) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=OPEN[name])] if name in OPEN else []
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_row(name) for name in ROWS])
def test_no_piece_of_a_split_pool_message_reaches_the_server(lab: SecurityLab, name: str) -> None:
    opening, kind, count, v6 = ROWS[name]
    address, port = (NETWORK.v6 if v6 else NETWORK.v4), PORTS[name]
    sink = _sink(lab, address, port)
    since = time.time()
    with lab.capture(f"rt12-udp-{name}") as capture:
        out = _send(lab, opening, kind, address, port, count)
    crossed = capture.result
    assert crossed is not None
    heard = _heard(sink)
    leaked = crossed.bytes_to(address, port, "udp")
    reasons = _reasons(lab, since, address, port)
    note = f"{out}; {len(message(opening, kind))} bytes in {count} pieces; server heard {len(heard)}: {heard}"
    report(f"redteam12/udp-{name}", "udp-hold", leaked, bool(heard), ",".join(reasons) or None, note)
    assert not heard and leaked == 0, note
    assert reasons, f"{name}: the refused flow left no record"


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_control_a_benign_message_so_opened_crosses_whole_and_in_order(lab: SecurityLab, name: str) -> None:
    """A JSON-RPC line no detector names, opened the same way and cut the same way, reaches the server whole and
    in order: what the rows above hold back is the pool's message, not every message so opened."""
    opening, count = CONTROLS[name]
    address, port = NETWORK.v4, PORTS[name]
    sink = _sink(lab, address, port)
    out = _send(lab, opening, "benign", address, port, count)
    expected = [piece[:12].hex() for piece in pieces(message(opening, "benign"), count)]

    def heard_all() -> bool:
        assert _heard(sink) == expected, f"heard {_heard(sink)}, sent {expected}; {out}"
        return True

    eventually(heard_all, timeout=10.0)
