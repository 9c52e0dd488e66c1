"""Red team 12: pool messages cut over datagrams of one allowed UDP flow, opened so the gate's hold misses them.

The UDP gate holds a datagram that opens a text message (egress/detect/textframe.py) until the joined message is
whole and judged, so that no piece of a pool message reaches the server. The pool detectors read more than the
hold recognised as an opening: junk, a comment or a JSON string before the bracket, UTF-16 and UTF-32 text (NULs
dropped), msgpack. Each row sends one such message cut in pieces on one flow to an allowed UDP network (red team
10b's rule, here on ports 4100-4131) and is judged by what the attacker's server there heard: a piece heard is a
piece of a pool message let go before it was judged (the goal, as for round 10b's held rows); the capture on the
internet side counts its bytes. Controls: the same openings around a JSON-RPC line no detector names cross whole
and in order.

Then ICMP errors about the sandbox's own allowed UDP flow (related in conntrack, so forwarded without the gate):
port unreachables whose quoted "reply" carries Stratum's subscribe, judged by the attacker's raw ICMP reader on
the allowed host and by the marker anywhere in the capture. Controls: the same errors from the gateway's own
namespace are heard, marker and all; an error from the sandbox quoting headers only still reaches the peer.

Last, Stratum in an IPv6 Destination Options header before a benign UDP payload on an allowed flow (the gate
reads the UDP payload).

Programs: tests/security/redteam_round12_kit.py (the server: redteam_surfaces_kit.udp_sink_main). Lab:
tests/security/policies/redteam_round12_udp.yaml.
"""

from __future__ import annotations

import pathlib
import re
import sys
import time

import pytest

from egress.lab import netns
from egress.lab.topology import GATEWAY_UP_V4, SANDBOX_V4, SANDBOX_V6, server
from tests.security.capture import frames_holding
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.security.redteam_round12_kit import MARK, message, pieces
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
    "one-datagram-over-window-stratum": ("plain", "padded-stratum", 1, False),
    "one-datagram-over-window-xmrig": ("plain", "padded-xmrig", 1, False),
    "one-datagram-over-window-xmrig-v6": ("plain", "padded-xmrig", 1, True),
    "long-password-xmrig": ("plain", "long-pass-xmrig", 1, False),
}
OPEN: dict[str, str] = {}
"""Rows still open (strict xfail). ``msgpack-xmrig`` closed after the round: egress/detect/binframe.py holds a binary
message's pieces from XMRig's ``login`` on."""
CONTROLS = {"junk-benign": ("junk", 3), "comment-benign": ("comment", 3), "utf16-benign": ("utf16", 3)}
PORTS = {name: 4100 + index for index, name in enumerate([*ROWS, *CONTROLS])}
assert max(PORTS.values()) < 4120, "4120-4123 are the ICMP rows' ports"


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
    reasons = lab.reasons_to(since, address, port)
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


# --- ICMP errors about the sandbox's own allowed UDP flow --------------------------------------------------------

ICMP_ROWS = {
    "icmp-about-own-udp-v4": (SANDBOX_V4, NETWORK.v4, 4120),
    "icmp-about-own-udp-v6": (SANDBOX_V6, NETWORK.v6, 4121),
}
ICMP_SPORT = 41200


def marked(path: pathlib.Path) -> int:
    """Bytes of the captured frames that hold `MARK`."""
    return frames_holding(path, MARK)


def _icmp_listener(lab: SecurityLab, v6: bool) -> Attacker:
    code = KIT.format("redteam_round12_kit", "icmp_listen_main")
    running = lab.attacker(f"rt12-icmp-{6 if v6 else 4}", [sys.executable, "-c", code, "6" if v6 else "4"])
    running.wait_for("listening")
    return running


def _play_icmp(lab: SecurityLab, where: str, source: str, address: str, port: int, *more: str) -> str:
    code = KIT.format("redteam_round12_kit", "icmp_about_own_flow_main")
    ns = lab.lab.sandbox_ns if where == "sandbox" else lab.lab.gateway_ns
    argv = [sys.executable, "-c", code, source, address, str(port), str(ICMP_SPORT), *more]
    done = netns.exec_in(ns, argv, timeout=30)
    assert "sent 3" in done.stdout, done.stdout + done.stderr
    return done.stdout.strip()


def test_control_the_errors_reach_the_pool_where_nothing_guards_them(lab: SecurityLab) -> None:
    """The same datagram and errors from the gateway's own namespace (its uplink address as the flow's source):
    the attacker's raw ICMP reader hears them, the marker in each."""
    listener = _icmp_listener(lab, False)
    sink = _sink(lab, NETWORK.v4, 4122)
    try:
        _play_icmp(lab, "gateway", GATEWAY_UP_V4, NETWORK.v4, 4122)
        listener.wait_for("heard icmp .* marker yes")
    finally:
        for running in (listener, sink):
            running.stop()
            lab.processes.remove(running)


@pytest.mark.parametrize("name", sorted(ICMP_ROWS))
def test_an_icmp_error_about_the_sandboxs_own_udp_flow_carries_no_pool_message_out(lab: SecurityLab, name: str) -> None:
    """The sandbox opens a flow to an allowed UDP network (a benign datagram, answered), then sends its peer port
    unreachables quoting a "reply" of that flow whose payload is Stratum's subscribe: conntrack calls each related
    to the sandbox's own flow, and the forward chain's `_related` accept took it past the UDP gate, which judges
    UDP only."""
    source, address, port = ICMP_ROWS[name]
    v6 = ":" in address
    listener = _icmp_listener(lab, v6)
    sink = _sink(lab, address, port)
    since = time.time()
    try:
        with lab.capture(f"rt12-{name}") as capture:
            out = _play_icmp(lab, "sandbox", source, address, port)
        assert capture.result is not None
        leaked = marked(capture.path)
        heard = [line for line in listener.log().splitlines() if "marker yes" in line]
        reason = lab.reason_of(since, lambda r: r.transport in ("icmp", "icmp6", "ipv6-icmp"), timeout=12)
        report(f"redteam12/{name}", "icmp-error", leaked, bool(heard), reason or None,
               f"{out}; the pool's raw socket heard {len(heard)} errors with Stratum's subscribe")  # fmt: skip
        assert "answered 1" in out, out  # the flow itself is allowed and works
        assert not heard and leaked == 0, heard
        assert reason, "the refused errors left no record"
    finally:
        for running in (listener, sink):
            running.stop()
            lab.processes.remove(running)


def test_control_an_error_that_quotes_headers_only_still_reaches_the_peer(lab: SecurityLab) -> None:
    """What the fix leaves: a port unreachable from the sandbox about its own allowed flow, quoting the reply's IP
    and UDP headers only (all an error needs to say), still reaches the peer."""
    listener = _icmp_listener(lab, False)
    sink = _sink(lab, NETWORK.v4, 4123)
    try:
        out = _play_icmp(lab, "sandbox", SANDBOX_V4, NETWORK.v4, 4123, "headers")
        assert "answered 1" in out, out
        listener.wait_for("heard icmp 56 bytes .* marker no")
    finally:
        for running in (listener, sink):
            running.stop()
            lab.processes.remove(running)


def test_an_ipv6_extension_header_carries_no_pool_message_to_an_allowed_network(lab: SecurityLab) -> None:
    """Three datagrams on an allowed IPv6 flow, each a benign payload behind a Destination Options header whose
    options (a type a receiver skips) hold Stratum's subscribe: the gate reads the UDP payload, not the headers
    before it. Judged by the marker anywhere in the internet side's capture, and the server."""
    address, port = NETWORK.v6, 4124
    sink = _sink(lab, address, port)
    since = time.time()
    with lab.capture("rt12-udp-destination-options-v6") as capture:
        done = lab.sandbox_python(KIT.format("redteam_round12_kit", "udp_options_main"), SANDBOX_V6, address,
                                  str(port))  # fmt: skip
    assert "sent 3" in done.stdout, done.stdout + done.stderr
    assert capture.result is not None
    leaked = marked(capture.path)
    heard = _heard(sink)
    reasons = lab.reasons_to(since, address, port)
    note = f"server heard {len(heard)} datagrams; {leaked} captured bytes in frames with the marker"
    report("redteam12/udp-destination-options-v6", "udp-hold", leaked, leaked > 0, ",".join(reasons) or None, note)
    assert leaked == 0, note
    assert reasons, "the refused datagrams left no record"


# --- The long password on TCP (lab-policy.yaml: xmr.lab's 3334 is a network rule) --------------------------------

XMR = server("xmr")


@pytest.fixture(scope="module")
def tcp_lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory()


def test_control_the_xmrig_pool_answers_a_long_password_where_nothing_guards_it(tcp_lab: SecurityLab) -> None:
    code = KIT.format("redteam_round12_kit", "tcp_login_main")
    done = netns.exec_in(tcp_lab.lab.internet_ns, [sys.executable, "-c", code, "long-pass-xmrig", XMR.v4, "3334"])
    assert "job yes" in done.stdout, done.stdout + done.stderr


def test_a_long_password_login_on_tcp_reaches_no_pool(tcp_lab: SecurityLab) -> None:
    """XMRig's login with a 2,100-byte password to xmr.lab:3334 (a network rule of the lab's policy) over TCP,
    through the proxy: the same detectors read the stream. The goal: the login's bytes at the pool."""
    since = time.time()
    with tcp_lab.capture("rt12-tcp-long-password") as capture:
        done = tcp_lab.sandbox_python(KIT.format("redteam_round12_kit", "tcp_login_main"), "long-pass-xmrig", XMR.v4,
                                      "3334")  # fmt: skip
    assert capture.result is not None and "sent" in done.stdout, done.stdout + done.stderr
    leaked = marked(capture.path)
    answered = "job yes" in done.stdout
    reason = tcp_lab.reason_of(since, lambda r: r.dport == 3334, timeout=12)
    report("redteam12/tcp-long-password-xmrig", "stream-framing", leaked, leaked > 0, reason or None,
           f"{done.stdout.strip()}; {leaked} captured bytes in frames with the marker")  # fmt: skip
    assert leaked == 0 and not answered, done.stdout
