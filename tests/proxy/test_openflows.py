"""egress.proxy.openflows: open connections decided again under an applied policy, closed when it blocks them."""

from __future__ import annotations

import pytest

from egress.policy.loader import parse_policy
from egress.policy.model import OnApply
from egress.policy.yamlnodes import RulesError
from egress.proxy.openflows import OpenFlows, forbidden
from egress.replay import Kind, Question

POLICY = """version: 1
sandboxes:
  agents:
    sources: [10.1.0.0/24]
    mode: {mode}
    allow:
      hosts: [{hosts}]
      networks: [{{cidr: 192.0.2.0/28, ports: [5432]}}]
"""
BOTH = parse_policy(POLICY.format(mode="enforce", hosts="kept.example:443, gone.example:443"))
KEPT = parse_policy(POLICY.format(mode="enforce", hosts="kept.example:443") + "on_apply: close_forbidden\n")
REPORTED = parse_policy(POLICY.format(mode="report", hosts="kept.example:443"))


def _names(sandbox: str, dst: str) -> frozenset[str]:
    return {"203.0.113.1": frozenset({"kept.example"}), "203.0.113.2": frozenset({"gone.example"})}.get(
        dst, frozenset()
    )


KEPT_TLS = Question(Kind.TLS, "10.1.0.5", "203.0.113.1", 443, "kept.example")
GONE_TLS = Question(Kind.TLS, "10.1.0.5", "203.0.113.2", 443, "gone.example")
GONE_HTTP = Question(Kind.HTTP, "10.1.0.5", "203.0.113.2", 443, "gone.example")
DATABASE = Question(Kind.RAW, "10.1.0.5", "192.0.2.3", 5432)
STRANGER = Question(Kind.TLS, "10.9.0.5", "203.0.113.1", 443, "kept.example")


@pytest.mark.parametrize(
    ("question", "before", "after"),
    [(KEPT_TLS, False, False), (GONE_TLS, False, True), (GONE_HTTP, False, True), (DATABASE, False, False),
     (STRANGER, True, True)],
)  # fmt: skip
def test_forbidden_under_the_new_policy(question: Question, before: bool, after: bool) -> None:
    assert forbidden(BOTH, question, _names) is before
    assert forbidden(KEPT, question, _names) is after
    assert forbidden(REPORTED, question, _names) is (question is STRANGER)  # report mode closes nothing it knows


def test_cut_closes_exactly_the_forbidden_and_forgets_them() -> None:
    flows, closed = OpenFlows(), []
    for question in (KEPT_TLS, GONE_TLS, DATABASE):
        flows.add(question, lambda q=question: closed.append(q))  # type: ignore[misc]
    gone = flows.add(GONE_HTTP, lambda: closed.append(GONE_HTTP))
    flows.discard(gone)  # it closed by itself
    assert flows.cut(KEPT, _names) == [GONE_TLS] and closed == [GONE_TLS]
    assert len(flows) == 2
    assert flows.cut(KEPT, _names) == [] and closed == [GONE_TLS]


def test_a_connection_that_cannot_be_judged_is_closed() -> None:
    flows, closed = OpenFlows(), []
    flows.add(Question(Kind.TLS, "not an address", "203.0.113.1", 443, "kept.example"), lambda: closed.append(1))
    assert len(flows.cut(KEPT, _names)) == 1 and closed == [1]


def test_on_apply_defaults_to_keep_and_is_checked() -> None:
    assert BOTH.on_apply is OnApply.KEEP and KEPT.on_apply is OnApply.CLOSE_FORBIDDEN
    with pytest.raises(RulesError, match="on_apply"):
        parse_policy(POLICY.format(mode="enforce", hosts="kept.example:443") + "on_apply: close_all\n")


def test_cut_all_closes_every_open_connection_whatever_the_policy_and_logs_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The lockdown's cut (egress.gateway.control's CUT): allowed or not, every open connection is aborted."""
    flows, closed = OpenFlows(), []
    for question in (KEPT_TLS, GONE_TLS, DATABASE):
        flows.add(question, lambda q=question: closed.append(q))  # type: ignore[misc]
    gone = flows.add(GONE_HTTP, lambda: closed.append(GONE_HTTP))
    flows.discard(gone)
    with caplog.at_level("INFO", logger="egress.proxy"):
        assert flows.cut_all("lockdown") == [KEPT_TLS, GONE_TLS, DATABASE]
    assert closed == [KEPT_TLS, GONE_TLS, DATABASE] and len(flows) == 0
    assert "lockdown: 3 open connection(s) closed" in caplog.text
    assert "lockdown: closed tls 10.1.0.5 -> 203.0.113.1:443 kept.example" in caplog.text
    assert flows.cut_all("lockdown") == []


def test_cut_all_goes_on_past_a_close_that_fails() -> None:
    flows, closed = OpenFlows(), []

    def broken() -> None:
        raise OSError("gone")

    flows.add(KEPT_TLS, broken)
    flows.add(GONE_TLS, lambda: closed.append(GONE_TLS))
    assert flows.cut_all("lockdown") == [KEPT_TLS, GONE_TLS] and closed == [GONE_TLS] and len(flows) == 0
