"""egress.proxy.mitm.ca: the gateway's CA is made once, before the proxy workers start (``python -m
egress.proxy.mitm.ca``), so that every worker signs with the CA that sandboxes are given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _make_ca(confdir: Path) -> None:
    subprocess.run([sys.executable, "-m", "egress.proxy.mitm.ca", str(confdir)], check=True, timeout=120)


def test_make_ca_creates_the_ca_once_and_then_keeps_it(tmp_path: Path) -> None:
    confdir = tmp_path / "ca"
    confdir.mkdir()
    _make_ca(confdir)
    cert = confdir / "mitmproxy-ca-cert.pem"
    first = cert.read_bytes()
    assert first.startswith(b"-----BEGIN CERTIFICATE-----")
    assert (confdir / "mitmproxy-ca.pem").exists()  # the key the workers sign with
    _make_ca(confdir)
    assert cert.read_bytes() == first  # an existing CA is loaded, never replaced
