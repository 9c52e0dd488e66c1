"""The lab's DNS authority: A/AAAA for lab names, data under t.lab, NXDOMAIN in the zone, REFUSED outside."""

from __future__ import annotations

import pytest

from egress.detect import dns
from egress.lab import authority
from egress.lab.topology import TTL


def _ask(name: str, qtype: int) -> dns.Message:
    raw = authority.answer(dns.build_query(99, name, qtype))
    assert raw is not None
    message = dns.parse(raw)
    assert message.id == 99 and message.is_response
    return message


@pytest.mark.parametrize(
    ("name", "qtype", "address"),
    [
        ("allowed.lab", dns.A, "198.18.10.1"),
        ("allowed.lab", dns.AAAA, "2001:db8:10::1"),
        ("pool.lab", dns.A, "198.18.10.3"),
        ("xmr.lab", dns.A, "198.18.10.4"),
        ("doh.lab", dns.A, "198.18.10.6"),
        ("ws.lab", dns.AAAA, "2001:db8:10::8"),
    ],
)
def test_addresses_with_ttl(name: str, qtype: int, address: str) -> None:
    message = _ask(name, qtype)
    assert message.rcode == dns.NOERROR
    assert [dns.address_of(r) for r in message.answers] == [address]
    assert message.answers[0].ttl == TTL


def test_the_owner_name_echoes_the_question_byte_for_byte() -> None:
    message = _ask("Allowed.LAB", dns.A)
    assert message.answers[0].labels == message.questions[0].labels == (b"Allowed", b"LAB")


@pytest.mark.parametrize("qtype", [dns.TXT, dns.NULL])
def test_tunnel_zone_carries_data(qtype: int) -> None:
    message = _ask("mzxw6ytboi.abcdef.t.lab", qtype)
    assert message.rcode == dns.NOERROR
    assert message.answers[0].rtype == qtype and len(message.answers[0].data) >= 32


@pytest.mark.parametrize(
    ("name", "qtype", "rcode", "count"),
    [
        ("missing.lab", dns.A, dns.NXDOMAIN, 0),
        ("example.com", dns.A, dns.REFUSED, 0),
        ("allowed.lab", dns.TXT, dns.NOERROR, 0),
        ("lab", dns.SOA, dns.NOERROR, 1),
        ("lab", dns.NS, dns.NOERROR, 1),
    ],
)
def test_other_answers(name: str, qtype: int, rcode: int, count: int) -> None:
    message = _ask(name, qtype)
    assert (message.rcode, len(message.answers)) == (rcode, count)


@pytest.mark.parametrize(
    ("name", "authoritative"), [("allowed.lab", True), ("missing.lab", True), ("example.com", False)]
)
def test_answers_in_the_zone_are_authoritative(name: str, authoritative: bool) -> None:
    message = _ask(name, dns.A)
    assert bool(message.flags & dns.AA) is authoritative
    assert not message.flags & dns.RA  # an authority, not a resolver


def test_responses_and_garbage_get_no_answer() -> None:
    assert authority.answer(b"\x01\x02") is None
    query = dns.parse(dns.build_query(1, "allowed.lab", dns.A))
    assert authority.answer(dns.build_response(query, dns.NOERROR)) is None


def test_other_opcodes_are_not_implemented() -> None:
    query = bytearray(dns.build_query(1, "allowed.lab", dns.A))
    query[2] |= 0x28  # opcode 5 (UPDATE)
    raw = authority.answer(bytes(query))
    assert raw is not None and dns.parse(raw).rcode == dns.NOTIMP
