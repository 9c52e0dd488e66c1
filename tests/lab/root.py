"""Shared skip marker: the lab's namespace tests need root and iproute2 (CI has both)."""

from __future__ import annotations

import os
import shutil

import pytest

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 (ip) to build network namespaces"
)
