"""A refusal a program can read: DNS REFUSED carries an Extended DNS Error (RFC 8914, EDNS option 15) whose text
names the reason and the rule, when the client sent EDNS (a client without EDNS gets the plain REFUSED)."""

from __future__ import annotations

import struct

import pytest

from egress.detect import dns
from egress.dnsserver import forward
from tests.dnsserver.test_resolver import SANDBOX, FakeUpstream, a_record, ask, resolver  # noqa: F401


def with_edns(ident: int, name: str, dnssec_ok: bool = False) -> bytes:
    opt = dns.Record((), dns.OPT, 0x8000 if dnssec_ok else 0, b"", 1232)
    return dns.encode(dns.Message(ident, dns.RD, (dns.Question(dns.name_labels(name), dns.A),), additionals=(opt,)))


def extended_error(message: dns.Message) -> tuple[int, str] | None:
    """The (info-code, extra text) of the response's EDE option, if it has one."""
    for record in message.additionals:
        data = record.data
        while record.rtype == dns.OPT and len(data) >= 4:
            code, length = struct.unpack(">HH", data[:4])
            if code == forward.EDE_OPTION:
                return struct.unpack(">H", data[4:6])[0], data[6 : 4 + length].decode("utf-8")
            data = data[4 + length :]
    return None


@pytest.mark.parametrize(
    ("name", "client", "code", "text"),
    [
        ("blocked.lab", SANDBOX, forward.EDE_BLOCKED, "egress: dns-refused by default-deny"),
        ("allowed.lab", ("192.0.2.99", 40000), forward.EDE_PROHIBITED, "egress: spoofed-source by anti-spoofing"),
    ],
)
def test_a_refusal_names_its_reason_and_rule(
    resolver: FakeUpstream,  # noqa: F811
    name: str,
    client: tuple[str, int],
    code: int,
    text: str,
) -> None:
    answer = ask(resolver, with_edns(5, name), client)
    assert answer is not None and answer.rcode == dns.REFUSED and answer.id == 5
    found = extended_error(answer)
    assert found is not None and found[0] == code and found[1].startswith(text), found
    [opt] = answer.additionals
    assert opt.rclass == forward.UDP_PAYLOAD and resolver.forwarded == []


def test_a_refused_answer_names_the_rule_that_pinned_it(resolver: FakeUpstream) -> None:  # noqa: F811
    resolver.upstream_answer = [a_record("a.pinned.lab", "93.184.216.34")]
    answer = ask(resolver, with_edns(6, "a.pinned.lab", dnssec_ok=True))
    assert answer is not None and answer.rcode == dns.REFUSED
    found = extended_error(answer)
    assert found is not None and found[0] == forward.EDE_BLOCKED
    assert "sandboxes.agent.allow.hosts[2]" in found[1], found
    assert answer.additionals[0].ttl & 0x8000  # the client's DO bit echoed


def test_without_edns_the_refusal_is_plain(resolver: FakeUpstream) -> None:  # noqa: F811
    answer = ask(resolver, dns.build_query(7, "blocked.lab", dns.A))
    assert answer is not None and answer.rcode == dns.REFUSED and answer.additionals == ()


def test_the_text_is_bounded_and_whole_utf8() -> None:
    query = dns.parse(with_edns(8, "blocked.lab"))
    out = dns.parse(forward.refusal(query, dns.REFUSED, forward.EDE_BLOCKED, "é" * 500))
    found = extended_error(out)
    assert found is not None and len(found[1].encode()) <= forward.EDE_TEXT_MAX and set(found[1]) == {"é"}
