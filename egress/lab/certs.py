"""The lab's own certificate authority and one server certificate per lab host, made with `cryptography`.

Files live in the lab's state directory (`Lab.state_dir`): ``ca.pem`` (what sandbox clients trust),
``ca-key.pem``, and per server ``<key>.pem`` (leaf then CA) with ``<key>-key.pem``. `ensure` makes whatever is
missing and leaves the rest alone, so the CA stays the same for the life of the directory. Keys are P-256: fast
to make and to handshake with. The CA is a lab toy: it signs only ``*.lab`` names and lab addresses.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from egress.lab.topology import SERVERS, Server

CA_NAME = "egress lab CA"
VALID = datetime.timedelta(days=3650)


@dataclass(frozen=True, slots=True)
class CertFiles:
    ca: pathlib.Path
    """The CA certificate (PEM): pass it to clients as their trust anchor."""
    servers: dict[str, tuple[pathlib.Path, pathlib.Path]]
    """Server key -> (certificate chain PEM, private key PEM)."""


def _write(path: pathlib.Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _make_ca(directory: pathlib.Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(directory / "ca-key.pem", _key_pem(key), 0o600)
    _write(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _load_ca(directory: pathlib.Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), None)
    except (OSError, ValueError):
        return None
    return (cert, key) if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _make_leaf(
    directory: pathlib.Path, server: Server, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(server.name)]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in (server.v4, server.v6)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(server.name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + VALID)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / f"{server.key}-key.pem", _key_pem(key), 0o600)
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    _write(directory / f"{server.key}.pem", chain)


def ensure(directory: pathlib.Path) -> CertFiles:
    """Make the CA and server certificates under ``directory`` unless they are already there; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    loaded = _load_ca(directory)
    fresh_ca = loaded is None
    ca, ca_key = _make_ca(directory) if loaded is None else loaded
    servers: dict[str, tuple[pathlib.Path, pathlib.Path]] = {}
    for server in SERVERS:
        chain, key = directory / f"{server.key}.pem", directory / f"{server.key}-key.pem"
        if fresh_ca or not (chain.exists() and key.exists()):
            _make_leaf(directory, server, ca, ca_key)
        servers[server.key] = (chain, key)
    return CertFiles(directory / "ca.pem", servers)
