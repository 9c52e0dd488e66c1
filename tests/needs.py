"""What a test needs from the machine (root, namespaces, nft, a binary), and what happens when it is missing: a
skip that says why on a developer's machine, a failure in CI (``CI=true``), where everything must be there."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail with it in CI."""
    if in_ci():
        pytest.fail(f"CI must run this test, but it {reason}", pytrace=False)
    pytest.skip(reason)


def missing_binaries(*names: str) -> str | None:
    absent = [name for name in names if shutil.which(name) is None]
    return f"needs {', '.join(absent)} (not installed)" if absent else None


def root_missing() -> str | None:
    """Why tests marked ``root`` (network namespaces, nftables) cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables)"
    return missing_binaries("ip", "nft")


def e2e_missing() -> str | None:
    """Why tests marked ``e2e`` (the whole gateway in the lab) cannot run here, or None."""
    return root_missing() or missing_binaries("redis-server", "ss")


def redis_missing() -> str | None:
    return missing_binaries("redis-server", "redis-cli")
