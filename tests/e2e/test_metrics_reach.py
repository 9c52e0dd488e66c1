"""The gateway's own metrics endpoint is out of the sandbox's reach (issue 14): with it listening on a management
address of the gateway (the uplink's, as an operator might choose), a sandbox that connects to every address the
gateway has, on the metrics port, and asks for ``/metrics`` never gets them. Judged by what each connection gave
the sandbox and by the endpoint's own count of the requests it answered, read from the management side before
and after: it grows by the one scrape of ours, never by the sandbox's."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator

import pytest

from egress.lab import netns
from egress.lab.demo import GatewayRun
from egress.lab.topology import GATEWAY_UP_V4
from tests.e2e.test_gateway import LAB_POLICY, LAB_READY, prefix
from tests.waiting import scaled

pytestmark = [pytest.mark.e2e, pytest.mark.root]

PORT = 9464
_SCRAPES = re.compile(r"(?m)^egress_gateway_metrics_scrapes_total (\d+(?:\.\d+)?)$")

# Run in the sandbox: each address connected to on the port, /metrics asked for, what came back reported.
_PROBE = r"""
import json, socket, sys
port, results = int(sys.argv[1]), {}
for address in sys.argv[2:]:
    try:
        with socket.create_connection((address, port), timeout=5) as sock:
            sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except OSError as exc:
                data += f"[{type(exc).__name__}]".encode()
        results[address] = "answered: " + data.decode("utf-8", "replace")
    except OSError as exc:
        results[address] = f"no connection: {type(exc).__name__}: {exc}"
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def run() -> Iterator[GatewayRun]:
    lab_prefix = prefix("m")
    lab = netns.up(lab_prefix)
    gateway = GatewayRun(
        lab, LAB_POLICY, ready_timeout=scaled(LAB_READY), extra_args=("--metrics-listen", f"{GATEWAY_UP_V4}:{PORT}")
    )
    try:
        gateway.start()
        yield gateway
    finally:
        gateway.stop()
        netns.down(lab_prefix)


def _scrapes(run: GatewayRun) -> float:
    """The endpoint's count of answered requests, read from the gateway's own namespace (this read included)."""
    read = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())"
    argv = [sys.executable, "-c", read, f"http://{GATEWAY_UP_V4}:{PORT}/metrics"]
    done = netns.exec_in(run.lab.gateway_ns, argv, timeout=scaled(30))
    found = _SCRAPES.search(done.stdout)
    assert found is not None, done.stdout[-2000:] + done.stderr
    return float(found.group(1))


def _addresses(ns: str) -> list[tuple[str, str]]:
    """(address, interface) of every address in ``ns`` but loopback's."""
    done = netns.exec_in(ns, ["ip", "-j", "addr", "show"])
    found = []
    for link in json.loads(done.stdout):
        for info in link.get("addr_info", []):
            if link["ifname"] != "lo":
                found.append((info["local"], link["ifname"]))
    return found


def test_no_gateway_address_gives_the_sandbox_the_metrics(run: GatewayRun) -> None:
    before = _scrapes(run)
    sandbox_if = _addresses(run.lab.sandbox_ns)[0][1]
    targets = [
        f"{address}%{sandbox_if}" if address.startswith("fe80:") else address
        for address, _ in _addresses(run.lab.gateway_ns)
    ]
    assert GATEWAY_UP_V4 in targets and len(targets) >= 4, targets  # both sides, both families
    done = netns.exec_in(run.lab.sandbox_ns, [sys.executable, "-c", _PROBE, str(PORT), *targets], timeout=scaled(120))
    assert done.returncode == 0, done.stderr
    results: dict[str, str] = json.loads(done.stdout)
    assert set(results) == set(targets)
    for address, result in results.items():
        assert "egress_" not in result and "# HELP" not in result and " 200 " not in result, (address, result)
    after = _scrapes(run)
    assert after == before + 1, (before, after, results)  # only our own second read: the sandbox's reached nothing
