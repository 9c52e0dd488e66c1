"""The real host's answers to pre-flight (`egress.gateway.preflight.Host`): sysfs and procfs, ``nft -c``, a probe
query to the upstream resolver, a Redis PING, a file in the state directory, a bind on each port. Run in the
network namespace the gateway runs in."""

from __future__ import annotations

import errno
import secrets
import socket
import tempfile
from pathlib import Path

from egress.detect import dns
from egress.nft import runner
from egress.record.redis_facade import STORE_ERRORS, RedisFacade
from egress.record.urls import without_credentials

PROBE_NAME = "egress-preflight.invalid."
"""What the upstream resolver is asked: any well-formed answer (NXDOMAIN included) shows it answers."""
PROBE_TIMEOUT = 2.0
IFF_UP = 0x1


class SystemHost:
    """The real host (or the network namespace the process runs in)."""

    def interface(self, name: str) -> str | None:
        if not name or "/" in name or name in {".", ".."}:
            return None
        flags = _read(Path("/sys/class/net") / name / "flags")
        if flags is None:
            return None
        return "up" if int(flags, 16) & IFF_UP else "down"

    def sysctl(self, path: str) -> str | None:
        return _read(Path("/proc/sys") / path)

    def nft_check(self, script: str) -> str | None:
        try:
            runner.check(script)
        except runner.NftError as exc:
            return str(exc).splitlines()[0] if str(exc) else repr(exc)
        return None

    def dns_answers(self, address: str, port: int) -> str | None:
        ident = secrets.randbelow(0x10000)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(PROBE_TIMEOUT)
            try:
                sock.connect((address, port))
                sock.send(dns.build_query(ident, PROBE_NAME, 1))
                while True:
                    reply = dns.parse(sock.recv(4096))
                    if reply.id == ident:
                        return None
            except TimeoutError:
                return f"no answer within {PROBE_TIMEOUT:g} s"
            except (OSError, dns.DnsError) as exc:
                return str(exc) or repr(exc)

    def redis(self, url: str) -> str | None:
        facade = RedisFacade.from_url(url)
        try:
            facade.ping()
        except STORE_ERRORS as exc:
            return str(exc) or repr(exc)
        finally:
            facade.close()
        return None

    def redis_lets_anyone_in(self, url: str) -> bool:
        facade = RedisFacade.from_url(without_credentials(url))
        try:
            facade.ping()
        except STORE_ERRORS:  # NOAUTH is an error too: it asks for a password
            return False
        finally:
            facade.close()
        return True

    def writable(self, directory: str) -> str | None:
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".preflight-"):
                pass
        except OSError as exc:
            return exc.strerror or repr(exc)
        return None

    def port_taken(self, port: int, udp: bool) -> bool:
        kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
        for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            with socket.socket(family, kind) as sock:
                if not udp:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((address, port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        return True  # other errors (no IPv6 on this host) say nothing about the port
        return False


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
