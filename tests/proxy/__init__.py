"""Shared by the proxy's tests."""

from __future__ import annotations

from collections.abc import Collection

from egress.decide import Verdict
from egress.thishost import Address


def ORIGIN_ON_LOOPBACK(_dst: str, _own: Collection[Address]) -> Verdict | None:  # noqa: N802  # a constant's role
    """A `egress.proxy.gate.Gate`'s ``this_host`` for tests whose origins listen on 127.0.0.1: nothing refused (the
    gateway's own refusal of loopback, red team 10b, has its tests in tests/test_thishost.py and the lab)."""
    return None
