"""The flow log's switches in the policy: ``sandboxes.S.flow_log`` (off by default) and the top-level
``flow_log:`` settings, checked like every other field, and shown by ``rules diff``."""

from __future__ import annotations

import pytest

from egress.policy.diff import diff
from egress.policy.loader import parse_policy
from egress.policy.model import FlowLogSettings
from egress.policy.yamlnodes import RulesError

BASE = "version: 1\nsandboxes:\n  agents:\n    sources: [10.77.0.0/24]\n"


def test_off_by_default_and_switched_on_per_sandbox() -> None:
    default = parse_policy(BASE)
    assert default.sandboxes[0].flow_log is False and default.flow_log == FlowLogSettings()
    on = parse_policy(BASE + "    flow_log: true\nflow_log: {max_age_days: 2, max_records: 500, max_destinations: 9}\n")
    assert on.sandboxes[0].flow_log is True
    assert on.flow_log == FlowLogSettings(max_age_days=2, max_records=500, max_destinations=9)
    changes = {(change.sandbox, change.field) for change in diff(default, on)}
    assert {("agents", "flow_log"), ("", "flow_log.max_age_days"), ("", "flow_log.max_destinations")} <= changes


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    flow_log: yes please\n", "sandboxes.agents.flow_log: must be true or false"),
        ("flow_log: {max_destinations: 0}\n", "flow_log.max_destinations"),
        ("flow_log: {per_connection: true}\n", "flow_log.per_connection: unknown key"),
    ],
)
def test_bad_values_are_reported_with_their_path(extra: str, message: str) -> None:
    with pytest.raises(RulesError) as raised:
        parse_policy(BASE + extra)
    assert message in str(raised.value), str(raised.value)
