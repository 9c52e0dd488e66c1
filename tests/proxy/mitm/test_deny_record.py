"""The 403 names its record: a blocked request's answer carries the id of the record its decision is part of (in
its body and ``X-Egress-Record``), the id the reporter got, so a harness can fetch it (``GET /v1/attempts/{id}``)."""

from __future__ import annotations

from mitmproxy.test import tflow

from egress.decide import Enforcement, Reason, Verdict
from egress.proxy.mitm.addon import EgressAddon
from egress.proxy.mitm.flows import answer_blocked, blocked_response
from egress.record.naming import decision_id
from tests.proxy.mitm import ALLOWED_ADDRESS, SANDBOX_HOST, Reported, make_gate

SINK = ("127.0.0.1", 9)
BLOCK = Verdict(Enforcement.BLOCK, Reason.NOT_ALLOWLISTED, "default-deny", "host evil.test to x:80")


def test_the_403_of_a_blocked_request_names_the_record_reported() -> None:
    reported = Reported()
    addon = EgressAddon(make_gate("enforce"), reported, SINK, reported.sever)
    flow = tflow.tflow()
    flow.client_conn.peername = (SANDBOX_HOST, 40001)
    flow.server_conn.address = (ALLOWED_ADDRESS, 80)
    flow.request.host, flow.request.port = "evil.test", 80
    flow.request.headers["Host"] = "evil.test"
    addon.client_connected(flow.client_conn)
    addon.requestheaders(flow)
    [decided] = reported.flows
    assert decided.record_id == decision_id(decided)
    assert flow.response is not None and flow.response.status_code == 403
    assert flow.response.headers["X-Egress-Record"] == decided.record_id
    lines = (flow.response.get_text() or "").splitlines()
    assert lines[0].startswith("egress blocked this request: not-allowlisted")
    assert lines[1] == f"record: {decided.record_id}"


def test_without_a_record_id_the_403_is_as_before() -> None:
    response = blocked_response(BLOCK)
    assert "X-Egress-Record" not in response.headers
    assert (
        response.get_text() == "egress blocked this request: not-allowlisted (default-deny): host evil.test to x:80\n"
    )
    flow = tflow.tflow()
    answer_blocked(flow, BLOCK)  # nothing reported for this flow: no id to name
    assert flow.response is not None and "record:" not in (flow.response.get_text() or "")
