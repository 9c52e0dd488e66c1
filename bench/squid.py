"""Debian's Squid as a transparent SNI peek-and-splice proxy in a lab's gateway namespace: the benchmark's yardstick.

`SquidRun` writes a squid.conf and a throwaway CA under ``/run/<prefix>squid``, loads a small nftables table
(``inet egtbench``, via `egress.nft.runner`) redirecting sandbox TCP 443 to an ``https_port ... intercept
ssl-bump`` (``peek`` at step 1 for the SNI, then ``splice``: never decrypted, like the gateway's passthrough) and
TCP 80 to an ``http_port ... intercept``, then runs ``squid --foreground`` with ``workers`` kid processes (SMP,
so it may use every core like the gateway). No disk cache, no access log. `stop` ends squid and removes table and
directory.

`unusable` says why this machine cannot run it (no squid, or a squid built without OpenSSL: Debian's ``squid``
uses GnuTLS and has no ssl-bump; ``squid-openssl`` has it).
"""

from __future__ import annotations

import contextlib
import datetime
import pathlib
import shutil
import subprocess
import time
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from egress.lab import netns, servers
from egress.lab.topology import SANDBOX_NET_V4, Lab, server
from egress.nft import runner

TABLE = "egtbench"
HTTPS_PORT = 3129
HTTP_PORT = 3130
ADMIN_PORT = 3128
START_TIMEOUT = 30.0


def squid_binary() -> str | None:
    return shutil.which("squid") or ("/usr/sbin/squid" if pathlib.Path("/usr/sbin/squid").exists() else None)


def unusable() -> str | None:
    """Why squid cannot be the yardstick here (None: it can)."""
    binary = squid_binary()
    if binary is None:
        return "squid is not installed (apt-get install squid-openssl)"
    try:
        done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{binary} -v: {error}"
    if "--with-openssl" not in done.stdout:
        return f"{binary} was built without OpenSSL: no ssl-bump (apt-get install squid-openssl)"
    return None


def version() -> str:
    binary = squid_binary()
    if binary is None:
        return "none"
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    return done.stdout.splitlines()[0].strip() if done.stdout else "unknown"


def _write_ca(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A throwaway CA: squid's ssl-bump port wants one even though splicing never signs anything with it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egress bench squid CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "ca.pem", directory / "ca-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def config(directory: pathlib.Path, cert: pathlib.Path, key: pathlib.Path, workers: int) -> str:
    lines = [
        "# egress bench: transparent SNI peek-and-splice, no cache (written by bench/squid.py)",
        f"workers {workers}",
        f"http_port 127.0.0.1:{ADMIN_PORT}",
        f"http_port {HTTP_PORT} intercept",
        f"https_port {HTTPS_PORT} intercept ssl-bump tls-cert={cert} tls-key={key} generate-host-certificates=off",
        f"acl sandbox src {SANDBOX_NET_V4}",
        "acl step1 at_step SslBump1",
        "ssl_bump peek step1",
        "ssl_bump splice all",
        "http_access allow sandbox",
        "http_access allow localhost",
        "http_access deny all",
        "cache deny all",
        "cache_mem 0 MB",
        f"dns_nameservers {server('ns').v4}",
        f"pid_filename {directory}/squid.pid",
        f"cache_log {directory}/cache.log",
        "access_log none",
        "cache_store_log none",
        "logfile_rotate 0",
        f"coredump_dir {directory}",
        "visible_hostname egress-bench-squid",
        "shutdown_lifetime 1 seconds",
        "pinger_enable off",
        "max_filedescriptors 65536",
        "client_persistent_connections on",
        "server_persistent_connections on",
    ]
    return "\n".join(lines) + "\n"


def nft_script(sandbox_if: str) -> str:
    return (
        f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n"
        "\tchain nat_prerouting {\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        f'\t\tiifname "{sandbox_if}" tcp dport 443 redirect to :{HTTPS_PORT}\n'
        f'\t\tiifname "{sandbox_if}" tcp dport 80 redirect to :{HTTP_PORT}\n'
        "\t}\n}\n"
    )


def _listening(ns: str, port: int) -> bool:
    done = netns.exec_in(ns, ["ss", "-Htln", f"sport = :{port}"], timeout=5)
    return bool(done.stdout.strip())


@dataclass
class SquidRun:
    """Squid running in ``lab``'s gateway namespace; `stop` leaves nothing behind."""

    lab: Lab
    workers: int = 1
    process: subprocess.Popen[bytes] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def directory(self) -> pathlib.Path:
        return pathlib.Path("/run") / f"{self.lab.prefix}squid"

    def start(self) -> None:
        binary = squid_binary()
        if binary is None:
            raise RuntimeError("squid is not installed")
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True)
        cert, key = _write_ca(self.directory)
        conf = self.directory / "squid.conf"
        conf.write_text(config(self.directory, cert, key, self.workers))
        shutil.chown(self.directory, "proxy", "proxy")
        for path in (cert, key, conf):
            shutil.chown(path, "proxy", "proxy")
        check = netns.exec_in(self.lab.gateway_ns, [binary, "-k", "parse", "-f", str(conf)], timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"squid -k parse: {check.stderr.strip()[-500:]}")
        runner.apply(nft_script(self.lab.gateway_sandbox_if), netns=self.lab.gateway_ns)
        log = (self.directory / "stdout.log").open("wb")
        # --foreground, not -N: -N also turns SMP (workers) off
        self.process = netns.popen_in(
            self.lab.gateway_ns, [binary, "--foreground", "-f", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"squid exited with {self.process.returncode}: {self._log_tail()}")
            if _listening(self.lab.gateway_ns, HTTPS_PORT) and _listening(self.lab.gateway_ns, HTTP_PORT):
                return
            time.sleep(0.2)
        raise RuntimeError(f"squid did not listen within {START_TIMEOUT:.0f} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        parts = []
        for name in ("cache.log", "stdout.log"):
            with contextlib.suppress(OSError):
                parts.append((self.directory / name).read_text(errors="replace")[-600:])
        return " | ".join(p.strip() for p in parts if p.strip()) or "no log"

    def stop(self) -> None:
        if self.process is not None:
            servers.stop(self.process, 10)
        with contextlib.suppress(runner.NftError):
            runner.delete_table(TABLE, netns=self.lab.gateway_ns)
        shutil.rmtree(self.directory, ignore_errors=True)
