"""`egress.gateway.udpgate.UdpJudge`: verdicts, records and flow-log entries for queued datagrams (sans-IO, on
built IP packets; tests/security/test_redteam_udp_*.py run the gate in the lab)."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import struct
from collections.abc import Callable
from typing import cast

import pytest

from egress.capture.nfqueue import NF_ACCEPT, NF_DROP, QueuedPacket
from egress.decide import Enforcement, Reason
from egress.decisions import DecidedFlow
from egress.flowlog import EndedFlow
from egress.gateway.udpgate import (
    FLOW_IDLE,
    HOLD_DATAGRAMS,
    HOLD_SECONDS,
    HOLD_TOTAL,
    REPORT_EVERY,
    Due,
    UdpGate,
    UdpJudge,
)
from egress.policy.lists import load_name_lists
from egress.policy.model import Expect, Mode, Policy
from tests.detect.test_binframe import LOGINS, UNNAMED
from tests.detect.test_datagrams import quic, stratum, stun, wireguard, xmrig
from tests.nft import make_sandbox, udp_rule

SANDBOX, SERVER, PORT = "10.77.0.2", "198.18.10.3", 3478
LISTS = load_name_lists()


def _policy(mode: Mode = Mode.ENFORCE, expect: frozenset[Expect] | None = None) -> Policy:
    rule = udp_rule("agents", 0, f"{SERVER}/32", PORT)
    if expect is not None:
        rule = dataclasses.replace(rule, expect=expect)
    return Policy(1, (make_sandbox("agents", "10.77.0.0/24", mode=mode, networks=(rule,)),))


def _udp4(src: str, sport: int, dst: str, dport: int, data: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src),
                       socket.inet_aton(dst))  # fmt: skip
    return head + udp


class Flows:
    def __init__(self) -> None:
        self.ended: list[EndedFlow] = []

    def flow_ended(self, flow: EndedFlow) -> None:
        self.ended.append(flow)


def _packet(
    data: bytes, sport: int = 40000, ts: float = 1000.0, dst: str = SERVER, src: str = SANDBOX, pid: int = 1
) -> QueuedPacket:
    return QueuedPacket(pid, socket.AF_INET, _udp4(src, sport, dst, PORT, data), 2, 3, ts)


def test_benign_datagrams_are_accepted_and_their_flow_logged_when_idle() -> None:
    flows = Flows()
    judge = UdpJudge(_policy(), LISTS, flows)
    for n in range(3):
        judged = judge.judge(_packet(stun(), ts=1000.0 + n))
        assert judged.accept and judged.decided is None
    assert judge.idle(1002.0 + FLOW_IDLE - 1) == [] and flows.ended == []
    judge.idle(1002.0 + FLOW_IDLE)
    [ended] = flows.ended
    assert (ended.sandbox, ended.dst, ended.dport, ended.transport, ended.action) == (
        "agents",
        SERVER,
        PORT,
        "udp",
        "allow",
    )
    assert ended.up == 60 and ended.rule == "sandboxes.agents.allow.networks[0]"


def test_a_refused_flow_stays_refused_and_counts_what_it_drops() -> None:
    judge = UdpJudge(_policy(), LISTS)
    assert judge.judge(_packet(stun())).accept
    refused = judge.judge(_packet(wireguard()))
    assert not refused.accept and refused.decided is not None
    verdict = refused.decided.verdict
    assert verdict.action is Enforcement.BLOCK and verdict.reason is Reason.TUNNEL
    assert refused.decided.verdict.finding is not None and refused.decided.verdict.finding.protocol == "wireguard"
    later = [judge.judge(_packet(stun())) for _ in range(REPORT_EVERY - 1)]
    assert not any(j.accept for j in later) and all(j.decided is None for j in later)
    summary = judge.judge(_packet(stun()))
    assert not summary.accept and summary.decided is not None and summary.decided.count == REPORT_EVERY
    other_flow = judge.judge(_packet(stun(), sport=40001))
    assert other_flow.accept  # the refusal is the flow's, not the sandbox's


def test_report_mode_lets_it_through_and_records_would_block() -> None:
    judge = UdpJudge(_policy(Mode.REPORT), LISTS)
    judged = judge.judge(_packet(stratum()))
    assert judged.accept and judged.decided is not None
    assert judged.decided.verdict.action is Enforcement.WOULD_BLOCK and judged.decided.verdict.reason is Reason.MINING


def test_expect_quic_lets_quic_through() -> None:
    assert not UdpJudge(_policy(), LISTS).judge(_packet(quic())).accept
    assert UdpJudge(_policy(expect=frozenset({Expect.QUIC})), LISTS).judge(_packet(quic())).accept


@pytest.mark.parametrize("where", ["no-rule", "no-sandbox", "not-udp", "garbage"])
def test_what_no_rule_of_the_policy_in_force_allows_is_dropped(where: str) -> None:
    judge = UdpJudge(_policy(), LISTS)
    tcp = bytearray(_udp4(SANDBOX, 1, SERVER, PORT, b"x"))
    tcp[9] = 6  # the protocol field: TCP
    packet = {
        "no-rule": _packet(stun(), dst="198.18.10.4"),
        "no-sandbox": _packet(stun(), src="10.99.0.2"),
        "not-udp": QueuedPacket(1, socket.AF_INET, bytes(tcp), None, None, 1.0),
        "garbage": QueuedPacket(1, socket.AF_INET, os.urandom(7), None, None, 1.0),
    }[where]
    judged = judge.judge(packet)
    assert not judged.accept
    if where in ("no-rule", "no-sandbox"):
        assert judged.decided is not None


def test_a_reload_keeps_refusals_and_ends_allowed_flows() -> None:
    flows = Flows()
    judge = UdpJudge(_policy(), LISTS, flows)
    judge.judge(_packet(stun(), sport=1))
    judge.judge(_packet(wireguard(), sport=2))
    judge.reload(_policy())
    assert [f.sport for f in flows.ended] == [1]
    assert not judge.judge(_packet(stun(), sport=2)).accept
    assert judge.judge(_packet(stun(), sport=1)).accept


def test_the_judge_raises_rather_than_accepting_when_inspection_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate turns any exception into a drop (UdpGate._verdict); the judge must not swallow it into accept."""
    judge = UdpJudge(_policy(), LISTS)

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a detector's bug")

    monkeypatch.setattr("egress.detect.datagrams.inspect", broken)
    with pytest.raises(RuntimeError):
        judge.judge(_packet(stun()))
    assert ipaddress.ip_address(SANDBOX)  # the policy's source, unchanged


def _pieces(data: bytes, parts: int = 3) -> list[bytes]:
    size = -(-len(data) // parts)
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("make", [stratum, xmrig])
def test_the_first_pieces_of_a_split_pool_message_are_held_then_dropped_with_it(make: object) -> None:
    assert callable(make)
    judge = UdpJudge(_policy(), LISTS)
    judged = [judge.judge(_packet(piece, pid=n)) for n, piece in enumerate(_pieces(make()), 1)]
    assert judged[0].held  # the detectors cannot name a first piece: it waits
    [refused] = [j for j in judged if j.decided is not None]
    assert not refused.accept and refused.then and not any(accept for _pid, accept in refused.then)
    assert refused.decided is not None and refused.decided.verdict.reason is Reason.MINING
    assert not any(j.accept for j in judged)
    assert judge.held == 0 and judge.holding == {}
    assert (judge.accepted, judge.dropped) == (0, 3)


def test_a_benign_message_split_over_datagrams_crosses_whole_and_in_order() -> None:
    flows = Flows()
    judge = UdpJudge(_policy(), LISTS, flows)
    message = b'{"id":7,"method":"status.report","params":["' + b"x" * 300 + b'"]}\n'
    pieces = _pieces(message, 4)
    assert [judge.judge(_packet(p, pid=10 + n)).held for n, p in enumerate(pieces[:-1])] == [True] * 3
    done = judge.judge(_packet(pieces[-1], pid=13))
    assert done.accept and not done.held and done.then == ((10, True), (11, True), (12, True))
    assert done.decided is None and judge.held == 0
    judge.close()
    assert flows.ended[0].up == len(message)


def test_binary_datagrams_are_never_held() -> None:
    judge = UdpJudge(_policy(), LISTS)
    for n in range(50):
        judged = judge.judge(_packet(stun(), sport=41000 + n % 5, pid=n))
        assert judged.accept and not judged.held and judged.then == ()


def test_a_hold_that_never_completes_is_dropped_and_recorded_at_its_deadline() -> None:
    judge = UdpJudge(_policy(), LISTS)
    assert judge.judge(_packet(b'{"id":1,"method":"mini', pid=5, ts=1000.0)).held
    assert judge.judge(_packet(b"ng.subscr", pid=6, ts=1000.5)).held
    assert judge.due(1000.0 + HOLD_SECONDS - 0.01).verdicts == []
    due = judge.due(1000.0 + HOLD_SECONDS)
    assert due.verdicts == [(5, False), (6, False)]
    [decided] = due.decided
    assert decided.verdict.reason is Reason.FIREWALL_DROP and "not whole within" in decided.verdict.evidence
    assert decided.verdict.action is Enforcement.BLOCK and judge.held == 0
    assert not judge.judge(_packet(b'ibe"]}\n', pid=7, ts=1003.0)).accept  # the flow stays refused


def test_report_mode_lets_an_expired_hold_through_and_records_would_block() -> None:
    judge = UdpJudge(_policy(Mode.REPORT), LISTS)
    assert judge.judge(_packet(b'{"id":1,', pid=5)).held
    due = judge.due(1000.0 + HOLD_SECONDS)
    assert due.verdicts == [(5, True)] and due.decided[0].verdict.action is Enforcement.WOULD_BLOCK


def test_a_binary_datagram_breaking_a_held_message_drops_it_all() -> None:
    judge = UdpJudge(_policy(), LISTS)
    assert judge.judge(_packet(b'{"id":1,"method":"mi', pid=1)).held
    broken = judge.judge(_packet(stun(), pid=2))
    assert not broken.accept and broken.then == ((1, False),)
    assert broken.decided is not None and "not text" in broken.decided.verdict.evidence


def test_a_hold_larger_than_the_window_is_refused() -> None:
    judge = UdpJudge(_policy(), LISTS)
    assert judge.judge(_packet(b'{"a":"', pid=0)).held
    for n in range(1, HOLD_DATAGRAMS):
        assert judge.judge(_packet(b"x" * 10, pid=n)).held
    over = judge.judge(_packet(b"x", pid=HOLD_DATAGRAMS))
    assert not over.accept and len(over.then) == HOLD_DATAGRAMS and not any(a for _p, a in over.then)
    assert over.decided is not None and "outgrew the hold" in over.decided.verdict.evidence


def test_the_total_hold_is_bounded_across_flows() -> None:
    judge = UdpJudge(_policy(), LISTS)
    for n in range(HOLD_TOTAL):
        assert judge.judge(_packet(b"[1,", sport=1024 + n, pid=n)).held
    full = judge.judge(_packet(b"[1,", sport=1024 + HOLD_TOTAL, pid=HOLD_TOTAL))
    assert not full.accept and not full.held and full.decided is not None
    assert "hold full" in full.decided.verdict.evidence and judge.held == HOLD_TOTAL
    due = judge.due(1000.0 + HOLD_SECONDS)
    assert len(due.verdicts) == HOLD_TOTAL and len(due.decided) == HOLD_TOTAL and judge.held == 0


def test_a_reload_drops_what_forgotten_flows_held() -> None:
    judge = UdpJudge(_policy(), LISTS)
    assert judge.judge(_packet(b"[1,", pid=9)).held
    judge.reload(_policy())
    assert judge.due(1000.0).verdicts == [(9, False)] and judge.held == 0


class Verdicts:
    """The reader's side the gate writes to: the verdicts in the order given."""

    def __init__(self) -> None:
        self.given: list[tuple[int, int]] = []

    def verdict(self, packet_id: int, verdict: int) -> None:
        self.given.append((packet_id, verdict))


class Decisions:
    def __init__(self) -> None:
        self.reported: list[DecidedFlow] = []

    def report(self, attempt: DecidedFlow) -> None:
        self.reported.append(attempt)


def test_the_gate_gives_held_verdicts_in_order_and_settles_expired_holds() -> None:
    decisions, reader = Decisions(), Verdicts()
    clock = [5.0]  # the gate's own clock, whatever the packets' stamps say (1000.0)
    gate = UdpGate(7, _policy(), LISTS, decisions, clock=lambda: clock[0])
    verdict = cast(Callable[[object, QueuedPacket], None], gate._verdict)
    settle = cast(Callable[[object, Due], None], gate._settle)
    line = b'{"id":7,"method":"status.report","params":["ok"]}\n'
    for n, piece in enumerate(_pieces(line), 1):
        verdict(reader, _packet(piece, pid=n))
    assert reader.given == [(1, NF_ACCEPT), (2, NF_ACCEPT), (3, NF_ACCEPT)]
    verdict(reader, _packet(b'{"id":8,', pid=4, sport=40001))
    assert reader.given[3:] == []
    settle(reader, gate.judge.due(gate.clock()))
    assert reader.given[3:] == []
    clock[0] += HOLD_SECONDS
    settle(reader, gate.judge.due(gate.clock()))
    assert reader.given[3:] == [(4, NF_DROP)] and len(decisions.reported) == 1


def test_a_flow_forgotten_while_it_holds_has_its_packets_dropped() -> None:
    judge = UdpJudge(_policy(), LISTS)
    assert judge.judge(_packet(b"[1,", pid=3, ts=1000.0)).held
    judge.idle(1000.0 + FLOW_IDLE)  # without a `due` in between (the gate calls it every turn)
    assert judge.held == 0 and judge.due(1000.0 + FLOW_IDLE).verdicts == [(3, False)]


def _udp6(src: str, dst: str, data: bytes, options: bytes = b"") -> bytes:
    udp = struct.pack("!HHHH", 40000, PORT, 8 + len(data), 0) + data
    body = (bytes([17, len(options) // 8]) + options if options else b"") + udp  # a Destination Options header
    head = struct.pack("!IHBB", 6 << 28, len(body), 60 if options else 17, 64)
    return head + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + body


def test_a_datagram_with_bytes_before_its_udp_header_is_refused() -> None:
    """Red team 12: the gate reads the UDP payload; IPv4 options and IPv6 extension headers (Stratum's subscribe
    in Destination Options a receiver skips) went out unread. The flow is refused and recorded."""
    plain = _udp4(SANDBOX, 40000, SERVER, PORT, b"hello\n")
    options = bytes([0x94, 4, 0, 0])  # router alert: 4 bytes of options
    v4 = bytes([0x46, 0]) + (len(plain) + 4).to_bytes(2) + plain[4:20] + options + plain[20:]
    judged = UdpJudge(_policy(), LISTS).judge(QueuedPacket(1, socket.AF_INET, v4, 2, 3, 1000.0), 1000.0)
    assert not judged.accept and judged.decided is not None
    assert "IPv4 options (4 bytes)" in judged.decided.verdict.evidence
    src, dst = "fd00:203:1::2", "2001:db8:10::3"
    rule = udp_rule("agents", 0, f"{dst}/128", PORT)
    policy = Policy(1, (make_sandbox("agents", "fd00:203:1::/64", networks=(rule,)),))
    assert UdpJudge(policy, LISTS).judge(QueuedPacket(1, socket.AF_INET6, _udp6(src, dst, b"hello\n"), 2, 3, 1000.0),
                                         1000.0).accept  # fmt: skip
    hidden = _udp6(src, dst, b"hello\n", bytes([0x1E, 12]) + b'{"method":"m')  # an option a receiver skips
    judged = UdpJudge(policy, LISTS).judge(QueuedPacket(2, socket.AF_INET6, hidden, 2, 3, 1000.0), 1000.0)
    assert not judged.accept and judged.decided is not None
    assert "IPv6 extension header 60" in judged.decided.verdict.evidence


@pytest.mark.parametrize("encoding", ["msgpack", "msgpack-params-first"])
def test_the_pieces_of_a_binary_login_are_held_then_dropped_with_it(encoding: str) -> None:
    """Red team 12's msgpack row: the pieces before the one that completes XMRig's login (the wallet in the first)
    crossed: a binary message was never held (egress.detect.binframe)."""
    judge = UdpJudge(_policy(), LISTS)
    judged = [judge.judge(_packet(p, pid=n)) for n, p in enumerate(_pieces(LOGINS[encoding]), 1)]
    assert [j.held for j in judged[:-1]] == [True, True]
    refused = judged[-1]
    assert not refused.accept and refused.then == ((1, False), (2, False))
    assert refused.decided is not None and refused.decided.verdict.reason is Reason.MINING
    assert (judge.accepted, judge.dropped, judge.held) == (0, 3, 0)


def test_a_binary_login_never_named_is_dropped_at_the_deadline() -> None:
    judge = UdpJudge(_policy(), LISTS)
    pieces = _pieces(UNNAMED)  # protobuf writes no key names (binrpc never names it), and its wallet is no address
    assert all(judge.judge(_packet(p, pid=n, ts=1000.0)).held for n, p in enumerate(pieces, 1))
    due = judge.due(1000.0 + HOLD_SECONDS)
    assert due.verdicts == [(1, False), (2, False), (3, False)]
    [decided] = due.decided
    assert "XMRig's login" in decided.verdict.evidence and decided.verdict.action is Enforcement.BLOCK


def test_a_protobuf_login_is_refused_once_its_wallet_is_whole() -> None:
    judge = UdpJudge(_policy(), LISTS)
    first, second, last = _pieces(LOGINS["protobuf"])  # the wallet from the first piece into the last
    assert judge.judge(_packet(first, pid=1)).held and judge.judge(_packet(second, pid=2)).held
    judged = judge.judge(_packet(last, pid=3))  # the wallet whole: egress.detect.wallet names it
    assert not judged.accept and judged.decided is not None and judged.decided.verdict.reason is Reason.MINING
    assert judged.then == ((1, False), (2, False)) and "address" in judged.decided.verdict.evidence


def test_a_cut_name_that_does_not_become_one_is_let_go_with_the_next_datagram() -> None:
    judge = UdpJudge(_policy(), LISTS)
    assert judge.judge(_packet(b"\x93\x00\x01\xb0mining.sub", pid=1)).held
    after = judge.judge(_packet(b"\x00\x01\x02 no name", pid=2))
    assert after.accept and after.then == ((1, True),) and after.decided is None
    assert judge.judge(_packet(stun(), pid=3)).accept and judge.held == 0


def test_a_login_word_spread_over_tiny_datagrams_holds_from_the_piece_that_completes_it() -> None:
    login = LOGINS["msgpack-params-first"]
    at = login.index(b"login") + 1
    pieces = [login[:at], login[at : at + 1], login[at + 1 : at + 40], login[at + 40 :]]  # "...\xa5l", "o", "gin..."
    judge = UdpJudge(_policy(), LISTS)
    judged = [judge.judge(_packet(p, pid=n)) for n, p in enumerate(pieces, 1)]
    assert [j.accept for j in judged[:2]] == [True, True]  # "l", "o": two bytes of a word, no vocabulary
    assert judged[2].held  # the word whole across three datagrams, the wallet after it
    assert not judged[3].accept and judged[3].then == ((3, False),)
    assert judged[3].decided is not None and judged[3].decided.verdict.reason is Reason.MINING
