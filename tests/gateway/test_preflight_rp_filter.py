"""`egress doctor`'s warning when IPv4 reverse-path filtering is not strict (red team 10b: a sandbox's address
forged on the uplink; the table drops it, strict ``rp_filter`` is the layer below)."""

from __future__ import annotations

import pytest

from egress.gateway.preflight import hardening_warnings, preflight
from tests.gateway.test_preflight import CONFIG, POLICY, FakeHost

ALL = "net/ipv4/conf/all/rp_filter"
UPLINK = "net/ipv4/conf/up0/rp_filter"


@pytest.mark.parametrize(
    ("values", "warned"),
    [
        ({ALL: "1", UPLINK: "0"}, False),
        ({ALL: "0", UPLINK: "1"}, False),  # the kernel takes the larger of the two
        ({ALL: "0", UPLINK: "0"}, True),
        ({ALL: "2", UPLINK: "0"}, True),  # loose: a route back to the forged sandbox source exists
        ({ALL: "0"}, True),
        ({}, False),  # not a Linux host's /proc: nothing to say
    ],
)
def test_doctor_warns_unless_rp_filter_is_strict(values: dict[str, str], warned: bool) -> None:
    host = FakeHost()
    host.sysctls.update(values)
    warnings = hardening_warnings(CONFIG, host)
    assert bool(warnings) is warned, warnings
    if warned:
        [warning] = warnings
        assert (
            warning.where == "net.ipv4.conf.all.rp_filter" and "sysctl -w net.ipv4.conf.all.rp_filter=1" in warning.what
        )
    assert preflight(CONFIG, POLICY, host) == preflight(CONFIG, POLICY, FakeHost())  # a warning, never a refusal
