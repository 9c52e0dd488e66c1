"""The lab's DNS authority: A/AAAA for lab names, data under t.lab, NXDOMAIN in the zone, REFUSED outside."""

from __future__ import annotations

import pytest

from egress.lab import authority, dnswire
from egress.lab.topology import TTL


def _ask(name: str, qtype: int) -> dnswire.Message:
    raw = authority.answer(dnswire.build_query(99, name, qtype))
    assert raw is not None
    message = dnswire.parse(raw)
    assert message.id == 99 and message.is_response
    return message


@pytest.mark.parametrize(
    ("name", "qtype", "address"),
    [
        ("allowed.lab", dnswire.A, "198.18.10.1"),
        ("allowed.lab", dnswire.AAAA, "2001:db8:10::1"),
        ("pool.lab", dnswire.A, "198.18.10.3"),
        ("xmr.lab", dnswire.A, "198.18.10.4"),
        ("doh.lab", dnswire.A, "198.18.10.6"),
        ("ws.lab", dnswire.AAAA, "2001:db8:10::8"),
    ],
)
def test_addresses_with_ttl(name: str, qtype: int, address: str) -> None:
    message = _ask(name, qtype)
    assert message.rcode == dnswire.NOERROR
    assert [dnswire.address_of(r) for r in message.answers] == [address]
    assert message.answers[0].ttl == TTL


@pytest.mark.parametrize("qtype", [dnswire.TXT, dnswire.NULL])
def test_tunnel_zone_carries_data(qtype: int) -> None:
    message = _ask("mzxw6ytboi.abcdef.t.lab", qtype)
    assert message.rcode == dnswire.NOERROR
    assert message.answers[0].rtype == qtype and len(message.answers[0].data) >= 32


@pytest.mark.parametrize(
    ("name", "qtype", "rcode", "count"),
    [
        ("missing.lab", dnswire.A, dnswire.NXDOMAIN, 0),
        ("example.com", dnswire.A, dnswire.REFUSED, 0),
        ("allowed.lab", dnswire.TXT, dnswire.NOERROR, 0),
        ("lab", dnswire.SOA, dnswire.NOERROR, 1),
        ("lab", dnswire.NS, dnswire.NOERROR, 1),
    ],
)
def test_other_answers(name: str, qtype: int, rcode: int, count: int) -> None:
    message = _ask(name, qtype)
    assert (message.rcode, len(message.answers)) == (rcode, count)


def test_responses_and_garbage_get_no_answer() -> None:
    assert authority.answer(b"\x01\x02") is None
    query = dnswire.parse(dnswire.build_query(1, "allowed.lab", dnswire.A))
    assert authority.answer(dnswire.build_response(query, dnswire.NOERROR)) is None


def test_other_opcodes_are_not_implemented() -> None:
    query = bytearray(dnswire.build_query(1, "allowed.lab", dnswire.A))
    query[2] |= 0x28  # opcode 5 (UPDATE)
    raw = authority.answer(bytes(query))
    assert raw is not None and dnswire.parse(raw).rcode == dnswire.NOTIMP
