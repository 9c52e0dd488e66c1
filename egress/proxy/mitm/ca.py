"""The gateway's CA, in mitmproxy's files: made once, before any proxy worker starts.

``python -m egress.proxy.mitm.ca CONFDIR [--name GATEWAY] [--permit DOMAIN ...]`` is what the supervisor runs (it
imports mitmproxy's certificate store only, a fraction of a worker's start-up).

The CA is egress's, not mitmproxy's default: its subject names the gateway (``egress gateway <name>``, so a
sandbox's trust store says whom it trusts), it lives `CA_LIFETIME` (mitmproxy's default is ten years), and with
``--permit`` it carries X.509 name constraints: it can only vouch for those DNS subtrees (the sandboxes' decrypt
lists), so a stolen key cannot impersonate any other site to a client that enforces constraints (every mainstream
TLS library does). A name later put on a decrypt list outside the constraints gets a certificate the sandbox
refuses: the connection fails closed, and a new CA is needed (delete the files; sandboxes must trust the new one).
It is kept in mitmproxy's files (``mitmproxy-ca.pem`` key and certificate, 0600; ``mitmproxy-ca-cert.pem`` what
sandboxes trust), which mitmproxy's certificate store loads as they are.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mitmproxy import certs, options

BASENAME = "mitmproxy"
"""mitmproxy's file names (``<basename>-ca.pem``...): what its certificate store looks for in the confdir."""
CA_LIFETIME = datetime.timedelta(days=730)
"""Two years: long enough not to disturb sandboxes, short enough that a CA nobody rotates still ends."""
BACKDATE = datetime.timedelta(days=2)
"""Valid from two days back, as mitmproxy does, for clients whose clock is behind."""


def ensure_ca(confdir: str, name: str = "", permitted: Sequence[str] = ()) -> None:
    """Make the gateway's CA in ``confdir`` unless it is there. The supervisor has it made before it starts the
    workers: workers that start together and each find no CA would each make one, and every worker whose CA lost
    the race to the file would sign with a CA that sandboxes do not trust."""
    path = Path(confdir)
    if not (path / f"{BASENAME}-ca.pem").exists():
        # another process may make it first: theirs is the one, loaded below
        with contextlib.suppress(FileExistsError):
            write_ca(path, *make_ca(name, permitted, options.Options().key_size))
    certs.CertStore.from_store(confdir, BASENAME, options.Options().key_size)  # loads it as the workers will


def make_ca(
    name: str, permitted: Sequence[str], key_size: int, now: datetime.datetime | None = None
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A CA certificate and key for the gateway ``name``, constrained to the DNS subtrees ``permitted`` if any."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"egress gateway {name}".strip()),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "egress"),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .subject_name(subject)
        .issuer_name(subject)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
    )
    subtrees = permitted_subtrees(permitted)
    if subtrees:
        constraint = x509.NameConstraints(
            permitted_subtrees=[x509.DNSName(d) for d in subtrees], excluded_subtrees=None
        )
        builder = builder.add_extension(constraint, critical=True)
    return key, builder.sign(private_key=key, algorithm=hashes.SHA256())


def permitted_subtrees(hosts: Sequence[str]) -> list[str]:
    """Decrypt-list entries as DNS name-constraint subtrees: ``*.example.com`` and ``example.com`` both give
    ``example.com`` (a subtree covers the name and every name below it); a subtree inside another is dropped."""
    names = sorted({host.strip().lower().removeprefix("*.").rstrip(".") for host in hosts if host.strip()})
    return [n for n in names if not any(n != other and n.endswith("." + other) for other in names)]


def write_ca(path: Path, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
    """mitmproxy's files: the key with the certificate (0600, written so it is never readable by others), the
    certificate alone for sandboxes (PEM, and ``.cer`` with the same contents)."""
    path.mkdir(parents=True, exist_ok=True)
    secret = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = cert.public_bytes(serialization.Encoding.PEM)
    fd = os.open(path / f"{BASENAME}-ca.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret + public)
    (path / f"{BASENAME}-ca-cert.pem").write_bytes(public)
    (path / f"{BASENAME}-ca-cert.cer").write_bytes(public)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m egress.proxy.mitm.ca", description="make the gateway's CA in CONFDIR unless it is there"
    )
    parser.add_argument("confdir", metavar="CONFDIR")
    parser.add_argument("--name", default="", help="the gateway's name, in the CA's subject")
    parser.add_argument(
        "--permit", action="append", default=[], metavar="DOMAIN", help="constrain the CA to this DNS subtree"
    )
    args = parser.parse_args(argv)
    ensure_ca(args.confdir, args.name, args.permit)


if __name__ == "__main__":
    main()
