"""The flow log in the lab (issue 14): with ``flow_log: true`` on the lab's sandbox, the allowed connections it
makes through the real gateway (a DNS query answered, plain HTTP and TLS to the address that answer gave) appear
in the flow log with the bytes the sandbox itself counted each way, and nothing else does: not a blocked request,
not a refused name, not a connection to an address no rule allows."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import pytest

from egress.lab import netns
from egress.lab.demo import GatewayRun
from egress.lab.topology import server
from egress.record.flows import FlowRecord, decode
from tests.e2e.test_gateway import LAB_POLICY, _lab
from tests.waiting import eventually, scaled

pytestmark = [pytest.mark.e2e, pytest.mark.root]

# Run in the sandbox: each exchange counts the bytes it put on and took off its own socket (what the gateway's
# client side must count), and prints them as JSON.
_SANDBOX = r"""
import json, socket, ssl, sys
from egress.detect import dns

def dns_ask(name):
    query = dns.build_query(7, name, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(query, ("10.203.1.1", 53))
        answer = sock.recv(4096)
    found = [dns.address_of(record) for record in dns.parse(answer).answers]
    return [a for a in found if a], len(query), len(answer)

def http(address, host, pad):
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nX-Pad: {'p' * pad}\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection((address, 80), timeout=10) as sock:
        sock.sendall(request)
        got = 0
        while chunk := sock.recv(65536):
            got += len(chunk)
    return len(request), got

def tls(address, name):
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = context.wrap_bio(incoming, outgoing, server_hostname=name)
    sock = socket.create_connection((address, 443), timeout=10)
    counted = {"up": 0, "down": 0}
    def flush():
        data = outgoing.read()
        if data:
            sock.sendall(data)
            counted["up"] += len(data)
    def fill():
        data = sock.recv(65536)
        if not data:
            incoming.write_eof()
            return False
        counted["down"] += len(data)
        incoming.write(data)
        return True
    while True:
        try:
            conn.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            fill()
    conn.write(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
    flush()
    while True:
        try:
            if not conn.read(65536):
                break
        except ssl.SSLWantReadError:
            flush()
            if not fill():
                break
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            break
    sock.settimeout(2)  # the server's close, if it comes: whatever follows its close_notify is counted too
    try:
        while fill():
            pass
    except OSError:
        pass
    sock.close()
    return counted["up"], counted["down"]

addresses, dns_up, dns_down = dns_ask("allowed.lab")
address = addresses[0]
out = {"address": address, "dns": [dns_up, dns_down], "http": http(address, "allowed.lab", 333),
       "tls": tls(address, "allowed.lab")}
# What must not appear: a request for a name no rule allows on an allowed address (403), a refused name, and
# a connection to an address no rule allows.
http(address, "blocked.lab", 1)
dns_ask("blocked.lab")
http(sys.argv[1], "blocked.lab", 1)
print(json.dumps(out))
"""

FRAMING = 200
"""Bytes the gateway's count of a TLS connection may differ from the sandbox's: a close_notify or alert crossing
the close (plain HTTP and DNS must match exactly)."""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayRun]:
    policy = tmp_path_factory.mktemp("flowlog") / "policy.yaml"
    policy.write_text(LAB_POLICY.read_text().replace("    mode: enforce\n", "    mode: enforce\n    flow_log: true\n"))
    with _lab("f", policy) as lab:
        yield lab


def _flows(run: GatewayRun) -> list[FlowRecord]:
    argv = [sys.executable, "-m", "egress", "flows", "--since", "0", "--by", "window", "-o", "jsonl",
            "--redis-url", run.redis_url]  # fmt: skip
    done = netns.exec_in(run.lab.gateway_ns, argv, timeout=scaled(30))
    assert done.returncode == 0, done.stderr
    return [decode(line) for line in done.stdout.splitlines() if line]


def test_allowed_connections_appear_with_their_bytes_and_nothing_else(run: GatewayRun) -> None:
    argv = [sys.executable, "-c", _SANDBOX, server("blocked").v4]
    done = netns.exec_in(run.lab.sandbox_ns, argv, timeout=scaled(120))
    assert done.returncode == 0, done.stdout + done.stderr
    sent = json.loads(done.stdout.splitlines()[-1])
    address = sent["address"]
    expected = {("udp", 53), ("tcp", 80), ("tcp", 443)}

    def logged() -> dict[tuple[str, int], FlowRecord]:
        found = {(flow.transport, flow.dport): flow for flow in _flows(run)}
        assert set(found) >= expected, found  # written once their minute is over (or the gateway stops)
        return found

    found = eventually(logged, timeout=240, interval=2.0)
    flows = _flows(run)
    assert len(flows) == 3, flows  # nothing else: no 403'd request, no refused name, no unallowed address
    dns_flow, http_flow, tls_flow = found[("udp", 53)], found[("tcp", 80)], found[("tcp", 443)]
    assert (dns_flow.host, dns_flow.connections) == ("allowed.lab", 1)
    assert [dns_flow.bytes_up, dns_flow.bytes_down] == sent["dns"]
    assert (http_flow.dst, http_flow.host, http_flow.decision, http_flow.connections) == (
        address,
        "allowed.lab",
        "allow",
        1,
    )
    assert [http_flow.bytes_up, http_flow.bytes_down] == sent["http"]
    assert (tls_flow.dst, tls_flow.host, tls_flow.connections) == (address, "allowed.lab", 1)
    tls_up, tls_down = sent["tls"]
    assert abs(tls_flow.bytes_up - tls_up) <= FRAMING and abs(tls_flow.bytes_down - tls_down) <= FRAMING, (
        tls_flow,
        sent["tls"],
    )
    for flow in flows:
        assert flow.sandbox == "agent" and flow.src.startswith("10.203.1.") and flow.rule.startswith("sandboxes.agent")
        assert flow.community_id.startswith("1:") and flow.last_ts >= flow.first_ts
