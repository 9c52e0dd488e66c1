"""egress.proxy.mitm.ca: the gateway's CA is made once, before the proxy workers start (``python -m
egress.proxy.mitm.ca``), so that every worker signs with the CA that sandboxes are given."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import verification
from mitmproxy import certs

from egress.proxy.mitm import ca


def _make_ca(confdir: Path) -> None:
    """``python -m egress.proxy.mitm.ca CONFDIR``, in this process (the next test runs the module as a program)."""
    ca.main([str(confdir)])


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


def _leaf(confdir: Path, name: str) -> x509.Certificate:
    """The certificate a worker would present for ``name`` (mitmproxy's store, loading the gateway's CA)."""
    store = certs.CertStore.from_store(str(confdir), "mitmproxy", 2048)
    entry = store.get_cert(name, [x509.DNSName(name)])
    return entry.cert._cert


def _verify(confdir: Path, leaf: x509.Certificate, name: str) -> None:
    root = x509.load_pem_x509_certificate((confdir / "mitmproxy-ca-cert.pem").read_bytes())
    verifier = verification.PolicyBuilder().store(verification.Store([root])).build_server_verifier(x509.DNSName(name))
    verifier.verify(leaf, [])


def test_the_ca_names_the_gateway_lives_two_years_and_its_key_is_private(tmp_path: Path) -> None:
    confdir = tmp_path / "ca"
    subprocess.run(
        [sys.executable, "-m", "egress.proxy.mitm.ca", str(confdir), "--name", "gw1"], check=True, timeout=120
    )
    cert = x509.load_pem_x509_certificate((confdir / "mitmproxy-ca-cert.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "O=egress,CN=egress gateway gw1"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == ca.CA_LIFETIME + ca.BACKDATE
    assert (confdir / "mitmproxy-ca.pem").stat().st_mode & 0o777 == 0o600
    leaf = _leaf(confdir, "allowed.example")
    _verify(confdir, leaf, "allowed.example")  # what mitmproxy signs with it verifies


def test_a_constrained_ca_vouches_only_for_the_decrypt_list(tmp_path: Path) -> None:
    confdir = tmp_path / "ca"
    ca.ensure_ca(str(confdir), "gw1", ["*.decrypt.example", "api.other.example", "x.decrypt.example"])
    cert = x509.load_pem_x509_certificate((confdir / "mitmproxy-ca-cert.pem").read_bytes())
    constraints = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert [n.value for n in constraints.value.permitted_subtrees or []] == ["api.other.example", "decrypt.example"]
    _verify(confdir, _leaf(confdir, "deep.x.decrypt.example"), "deep.x.decrypt.example")
    with pytest.raises(verification.VerificationError):
        _verify(confdir, _leaf(confdir, "bank.example"), "bank.example")  # a stolen key cannot vouch for it


def test_subtrees_cover_names_below_them() -> None:
    assert ca.permitted_subtrees(["*.a.example", "b.a.example", "A.example.", "c.example", " "]) == [
        "a.example",
        "c.example",
    ]
