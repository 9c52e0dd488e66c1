"""The DNS refusal names its record: the Extended DNS Error text ends with the id of the record the refusal is part
of (the id the reporter got, named at decision time), so a harness can fetch it (``GET /v1/attempts/{id}``)."""

from __future__ import annotations

from egress.decide import Enforcement, Reason, Verdict
from egress.detect import dns
from egress.dnsserver import forward
from egress.dnsserver.replies import refusal
from egress.record.naming import decision_id
from tests.dnsserver.test_deny_reasons import extended_error, with_edns
from tests.dnsserver.test_resolver import FakeUpstream, ask, flows, resolver  # noqa: F401


def test_the_refusal_names_the_record_of_the_decision(resolver: FakeUpstream) -> None:  # noqa: F811
    answer = ask(resolver, with_edns(5, "blocked.lab"))
    assert answer is not None and answer.rcode == dns.REFUSED
    found = extended_error(answer)
    assert found is not None
    (flow,) = flows(resolver)
    assert flow.record_id and flow.record_id == decision_id(flow)
    assert found[1] == f"egress: dns-refused by default-deny; record {flow.record_id}"


def test_a_long_rule_is_cut_the_record_id_never() -> None:
    query = dns.parse(with_edns(8, "blocked.lab"))
    verdict = Verdict(Enforcement.BLOCK, Reason.DNS_REFUSED, "sandboxes." + "x" * 300 + ".allow", "blocked.lab")
    found = extended_error(dns.parse(refusal(query, verdict, forward.EDE_BLOCKED, "0" * 26)))
    assert found is not None and found[1].endswith("; record " + "0" * 26)
    assert len(found[1].encode()) <= forward.EDE_TEXT_MAX
