"""`egress doctor`'s warning when Redis answers a client without a password (red team 10b reached the gateway's
Redis from a sandbox before the guard closed its loopback: the records and the policy are there). The probe itself
is tested against real servers in tests/deploy/test_install_redis.py."""

from __future__ import annotations

import dataclasses

import pytest

from egress.gateway.preflight import hardening_warnings, preflight
from tests.gateway.test_preflight import CONFIG, POLICY, FakeHost

SECRET = "0123abcd"


@pytest.mark.parametrize(
    ("url", "open_", "warned"),
    [
        ("redis://127.0.0.1:6379/0", True, True),
        (f"redis://:{SECRET}@127.0.0.1:6379/0", True, True),  # a password given, but Redis asks for none
        (f"redis://:{SECRET}@127.0.0.1:6379/0", False, False),
        ("redis://127.0.0.1:6379/0", False, False),  # NOAUTH, or no answer at all: nothing to say here
        ("unix:///run/redis/redis.sock?db=0", True, False),  # a socket's file mode guards it
    ],
)
def test_doctor_warns_when_redis_lets_anyone_in(url: str, open_: bool, warned: bool) -> None:
    config = dataclasses.replace(CONFIG, redis_url=url)
    host = FakeHost(redis_open=open_)
    warnings = [w for w in hardening_warnings(config, host) if w.where == "--redis-url"]
    assert bool(warnings) is warned, warnings
    if warned:
        [warning] = warnings
        assert "requirepass" in warning.what and "without a password" in warning.what
        assert SECRET not in warning.what, "the warning never quotes the password"
    assert preflight(config, POLICY, host) == preflight(config, POLICY, FakeHost()), "a warning, never a refusal"
