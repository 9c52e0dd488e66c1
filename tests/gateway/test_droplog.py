"""`egress.gateway.droplog.DropJudge` without sockets: logged packets of every IP protocol in, decisions out."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from egress.capture.nflog import LoggedPacket
from egress.decide import Enforcement, Reason
from egress.detect.names import NameLists
from egress.gateway.droplog import DropJudge
from egress.nft.names import LogKind, log_prefix
from egress.policy.model import Mode, Policy
from tests.lists import shipped_lists
from tests.nft import make_sandbox

POLICY = Policy(
    1,
    (
        make_sandbox("agents", "10.0.0.0/24", "fd00::/64"),
        make_sandbox("shadow", "10.1.0.0/24", mode=Mode.REPORT),
    ),
)
INNER = bytes.fromhex("45000014000100004011000000c0000201c6336407")[:20]


def ipv4(src: str, dst: str, proto: int, body: bytes) -> bytes:
    return struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, 0, 64, proto, 0,
        ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed,
    ) + body  # fmt: skip


def ipv6(src: str, dst: str, next_header: int, body: bytes) -> bytes:
    return (
        struct.pack("!IHBB", 6 << 28, len(body), next_header, 64)
        + ipaddress.IPv6Address(src).packed
        + (ipaddress.IPv6Address(dst).packed + body)
    )


def logged(packet: bytes, prefix: str = "egress drop agents") -> LoggedPacket:
    family = socket.AF_INET if packet[0] >> 4 == 4 else socket.AF_INET6
    return LoggedPacket(prefix, family, packet, 3, 1000.0)


@pytest.fixture(scope="module")
def lists() -> NameLists:
    return shipped_lists()


@pytest.fixture
def judge(lists: NameLists) -> DropJudge:
    return DropJudge(POLICY, lists)


@pytest.mark.parametrize(
    ("packet", "transport", "protocol", "reason"),
    [
        (ipv4("10.0.0.2", "198.51.100.7", 47, b"\x00\x00\x08\x00" + INNER), "ip", "gre", Reason.TUNNEL),
        (ipv4("10.0.0.2", "198.51.100.7", 4, INNER), "ip", "ipip", Reason.TUNNEL),
        (ipv4("10.0.0.2", "198.51.100.7", 50, bytes(40)), "ip", "esp", Reason.TUNNEL),
        (
            ipv4("10.0.0.2", "198.51.100.7", 132, struct.pack("!HHII", 5, 9899, 0, 0)),
            "ip",
            "sctp",
            Reason.FIREWALL_DROP,
        ),
        (ipv4("10.0.0.2", "198.51.100.7", 253, b"x"), "ip", "ip-253", Reason.FIREWALL_DROP),
        (
            ipv6("fd00::2", "2001:db8::7", 60, bytes([47, 0, 1, 4, 0, 0, 0, 0]) + b"\0\0\x08\0"),
            "ip",
            "gre",
            Reason.TUNNEL,
        ),
        (
            ipv4("10.0.0.2", "198.51.100.7", 17, struct.pack("!HHHH", 5, 443, 9, 0) + b"q"),
            "udp",
            "",
            Reason.FIREWALL_DROP,
        ),
    ],
    ids=["gre", "ipip", "esp", "sctp", "unknown", "v6-chain-gre", "udp"],
)
def test_every_protocol_is_decided_with_its_name(
    judge: DropJudge, packet: bytes, transport: str, protocol: str, reason: Reason
) -> None:
    decided = judge.judge(logged(packet))
    assert decided is not None
    assert (decided.sandbox, decided.transport, decided.protocol) == ("agents", transport, protocol)
    assert decided.verdict.reason is reason and decided.verdict.action is Enforcement.BLOCK
    if reason is Reason.TUNNEL:
        assert decided.verdict.finding is not None and decided.verdict.finding.protocol == protocol


def test_sctp_keeps_its_ports(judge: DropJudge) -> None:
    decided = judge.judge(logged(ipv4("10.0.0.2", "198.51.100.7", 132, struct.pack("!HHII", 40000, 9899, 0, 0))))
    assert decided is not None and (decided.sport, decided.dport) == (40000, 9899)


def test_report_mode_would_block(judge: DropJudge) -> None:
    decided = judge.judge(logged(ipv4("10.1.0.2", "198.51.100.7", 47, b"\0\0\x08\0"), "egress report shadow"))
    assert decided is not None and decided.verdict.action is Enforcement.WOULD_BLOCK


def test_a_source_in_no_sandbox_is_spoofed_whatever_its_protocol(judge: DropJudge) -> None:
    decided = judge.judge(logged(ipv4("10.9.0.2", "198.51.100.7", 47, b"\0\0\x08\0"), "egress spoof"))
    assert decided is not None and decided.verdict.reason is Reason.SPOOFED_SOURCE and decided.protocol == "gre"


def test_unlogged_packets_are_reported_with_the_last_logged_verdict(judge: DropJudge) -> None:
    judge.judge(logged(ipv4("10.0.0.2", "198.51.100.7", 47, b"\0\0\x08\0" + INNER)))
    [extra] = judge.unlogged({("10.0.0.2", 47, "198.51.100.7", False): 1000})  # the log has caught up: at once
    assert (extra.count, extra.protocol, extra.verdict.reason) == (999, "gre", Reason.TUNNEL)


def test_a_key_none_of_whose_packets_was_logged_still_counts(judge: DropJudge) -> None:
    counters = {("10.0.0.2", 132, "198.51.100.9", False): 50, ("fd00::2", 58, "2001:db8::1", False): 5}
    [sctp, icmp6] = judge.unlogged(counters)
    assert (sctp.count, sctp.transport, sctp.protocol, sctp.verdict.reason) == (50, "ip", "sctp", Reason.FIREWALL_DROP)
    assert (icmp6.count, icmp6.transport, icmp6.sandbox) == (5, "icmp", "agents")
    assert judge.unlogged({("10.9.9.9", 47, "198.51.100.9", False): 5}) == []  # no sandbox: the spoof log's job


def test_a_packet_the_kernel_could_not_count_is_its_own_record_and_no_counted_one(judge: DropJudge) -> None:
    """Logged as uncounted (`UNCOUNTED_MARK`): decided as any drop, but not taken for the log of a counted packet,
    which would leave one of the key's counted packets unreported."""
    packet = ipv4("10.0.0.2", "198.51.100.7", 47, b"\0\0\x08\0" + INNER)
    decided = judge.judge(logged(packet, log_prefix(LogKind.DROP, "agents", uncounted=True)))
    assert decided is not None and (decided.count, decided.verdict.reason) == (1, Reason.TUNNEL)
    [extra] = judge.unlogged({("10.0.0.2", 47, "198.51.100.7", False): 3})  # three more, counted, none logged
    assert extra.count == 3


def test_packets_logged_by_a_chain_that_does_not_count_are_not_reconciled(judge: DropJudge) -> None:
    judge.judge(logged(ipv4("10.0.0.2", "198.51.100.7", 47, b"\0\0\x08\0"), "egress inbound"))
    assert len(judge.counts) == 0


UDP = ipv4("10.1.0.2", "198.51.100.7", 17, struct.pack("!HHHH", 5, 443, 9, 0) + b"q")
RENAMED = Policy(1, (make_sandbox("agents", "10.0.0.0/24"), make_sandbox("renamed", "10.1.0.0/24", mode=Mode.REPORT)))
ENFORCED = Policy(1, (make_sandbox("agents", "10.0.0.0/24"), make_sandbox("renamed", "10.1.0.0/24")))


@pytest.mark.parametrize(
    ("prefix", "action"),
    [
        ("egress report shadow", Enforcement.WOULD_BLOCK),
        ("egress drop shadow", Enforcement.BLOCK),  # a table applied before the logger's policy said report
        ("egress guard", Enforcement.BLOCK),  # report mode, but traffic to the gateway itself is always dropped
        ("egress lockdown", Enforcement.BLOCK),
    ],
)
def test_the_action_is_what_the_kernel_did_whatever_the_mode(
    judge: DropJudge, prefix: str, action: Enforcement
) -> None:
    decided = judge.judge(logged(UDP, prefix))
    assert decided is not None and decided.sandbox == "shadow" and decided.verdict.action is action


def test_the_kernel_s_name_wins_across_a_reload(judge: DropJudge) -> None:
    """Prepared, the new policy names what the new table logs; committed, the old one names what the old table
    logged; the policy in force names everything else."""
    judge.pending = RENAMED
    early = judge.judge(logged(UDP, "egress report renamed"))  # the table committed, the logger not yet
    assert early is not None and (early.sandbox, early.verdict.action) == ("renamed", Enforcement.WOULD_BLOCK)
    judge.reload(RENAMED)
    late = judge.judge(logged(UDP, "egress report shadow"))  # logged by the old table, read after the commit
    assert late is not None and late.sandbox == "shadow"
    now = judge.judge(logged(UDP, "egress drop renamed"))
    assert now is not None and (now.sandbox, now.verdict.action) == ("renamed", Enforcement.BLOCK)
    assert judge.pending is None


def test_unlogged_counts_follow_the_policy_in_force_and_the_set_that_counted_them(judge: DropJudge) -> None:
    judge.judge(logged(UDP, "egress report shadow"))
    judge.reload(ENFORCED)  # renamed, and enforcing now: the new table counts drops in the drop set
    dropped, passed = ("10.1.0.2", 17, "198.51.100.7", False), ("10.1.0.2", 17, "198.51.100.7", True)
    found = {d.verdict.action: d for d in judge.unlogged({passed: 5, dropped: 7})}
    assert (found[Enforcement.WOULD_BLOCK].count, found[Enforcement.WOULD_BLOCK].sandbox) == (4, "renamed")
    assert (found[Enforcement.BLOCK].count, found[Enforcement.BLOCK].sandbox) == (7, "renamed")
    assert found[Enforcement.BLOCK].dport == 0  # none of the drops was logged: the key alone


def test_a_quarantined_sandbox_s_packets_are_recorded_with_exact_counts_and_the_quarantine_rule(
    judge: DropJudge,
) -> None:
    """The cut-off counts and logs what a quarantined sandbox sends like any drop (issue 12): each logged packet is
    a block by the sandbox's quarantine rule, whatever its mode; the unlogged rest of a flood joins the count."""
    udp = ipv4("10.1.0.2", "198.51.100.7", 17, struct.pack("!HHHH", 5, 53, 9, 0) + b"q")
    decided = [judge.judge(logged(udp, "egress quarantine")) for _ in range(20)]
    assert {(d.sandbox, d.verdict.rule, d.verdict.action) for d in decided if d is not None} == {
        ("shadow", "sandboxes.shadow.quarantine", Enforcement.BLOCK)  # shadow is in report mode: cut off all the same
    }
    key = ("10.1.0.2", 17, "198.51.100.7", False)
    [rest] = judge.unlogged({key: 500})
    assert (rest.count, rest.verdict.rule) == (480, "sandboxes.shadow.quarantine")
    assert len(decided) + rest.count == 500


def test_a_connection_over_the_sandboxs_bound_is_recorded_as_connection_limit(judge: DropJudge) -> None:
    syn = ipv4("10.0.0.2", "198.51.100.7", 6, struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 5 << 4, 2, 1000, 0, 0))
    decided = judge.judge(logged(syn, "egress limit agents"))
    assert decided is not None and (decided.sandbox, decided.dport) == ("agents", 443)
    assert (decided.verdict.reason, decided.verdict.action) == (Reason.CONNECTION_LIMIT, Enforcement.BLOCK)
    assert decided.verdict.rule == "sandboxes.agents.max_connections"
