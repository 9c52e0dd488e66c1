"""Red team 11: forged sources, ICMP errors, DHCP, HTTP trailers and QUIC, judged on the internet side.

The agent is root in its sandbox: it writes whole packets (raw sockets, ``IP_HDRINCL``; Ethernet frames for
DHCP) with a source that is not its own, ICMP errors quoting what it likes with its chosen bytes after the quote,
DHCP DISCOVERs whose options carry them, a chunked POST whose trailers carry a Host and a pool's login, and QUIC
to an allowed host. Every payload holds `MARK`; ground truth is the internet side's capture file, searched whole
(any frame, any direction, any source: `tests.security.capture.parse` sets aside frames from the internet's own
address, which a forged packet may carry), the attacker's servers, and the gateway's own routing state (path MTU
and redirect exceptions, ``ip route get``) for the ICMP rows. Each technique has a control that shows it works
where nothing guards it: the same packets from the gateway's own namespace reach the capture, the same request
played on the internet side is served, the same QUIC datagram is answered.

Programs: tests/security/redteam_round11_kit.py. Lab: rules/lab-policy.yaml (and the same with ``--dhcp``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from egress.lab import netns
from egress.lab.topology import GATEWAY_SBX_V4, GATEWAY_SBX_V6, GATEWAY_UP_V4, GATEWAY_UP_V6, SANDBOX_V4, server
from tests.security.capture import frames_holding
from tests.security.conftest import LabFactory
from tests.security.harness import ROOT, Attacker, SecurityLab, report
from tests.security.redteam_round11_kit import MARK
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.security

KIT = "from tests.security.redteam_round11_kit import {0}; {0}()"
ALLOWED, BLOCKED, POOL = server("allowed"), server("blocked"), server("pool")


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory()


def marked(path: pathlib.Path) -> int:
    """Bytes of the captured frames that hold `MARK`."""
    return frames_holding(path, MARK)


def _kit(lab: SecurityLab, where: str, main: str, *args: str, timeout: float = 30) -> str:
    ns = {"sandbox": lab.lab.sandbox_ns, "gateway": lab.lab.gateway_ns, "internet": lab.lab.internet_ns}[where]
    done = netns.exec_in(ns, [sys.executable, "-c", KIT.format(main), *args], timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# --- 1. Forged sources -----------------------------------------------------------------------------------------

FORGED = {
    # name: (transport, forged source, destination, port)
    "internet-side-v4": ("tcp", "10.203.2.2", BLOCKED.v4, 80),
    "gateway-uplink-v4": ("tcp", GATEWAY_UP_V4, BLOCKED.v4, 80),
    "gateway-sandbox-side-v4": ("tcp", GATEWAY_SBX_V4, BLOCKED.v4, 80),  # inside the sandbox's own /24
    "subnet-broadcast-v4": ("tcp", "10.203.1.255", BLOCKED.v4, 80),  # inside the sandbox's own /24 too
    "allowed-host-to-pool-v4": ("tcp", ALLOWED.v4, POOL.v4, 3333),
    "internet-side-udp-v4": ("udp", "10.203.2.2", BLOCKED.v4, 5000),
    "own-subnet-udp-v4": ("udp", "10.203.1.77", BLOCKED.v4, 5000),
    "internet-side-v6": ("tcp", "fd00:203:2::2", BLOCKED.v6, 80),
    "gateway-sandbox-side-v6": ("tcp", GATEWAY_SBX_V6, BLOCKED.v6, 80),
}


def test_control_forged_packets_cross_where_nothing_guards_them(lab: SecurityLab) -> None:
    """The same writer in the gateway's own namespace (its output path filters nothing but quarantines): the forged
    SYN with data and the forged datagram reach the internet side's capture, marker and all."""
    with lab.capture("rt11-forge-control") as capture:
        for kind, port in (("tcp", 80), ("udp", 5000)):
            assert "sent 3" in _kit(lab, "gateway", "forge_main", kind, "10.203.2.2", BLOCKED.v4, str(port))
    assert capture.result is not None
    assert marked(capture.path) > 0


@pytest.mark.parametrize("name", sorted(FORGED))
def test_forged_source_from_the_sandbox_crosses_nothing(lab: SecurityLab, name: str) -> None:
    kind, source, destination, port = FORGED[name]
    since = time.time()
    with lab.capture(f"rt11-forge-{name}") as capture:
        out = _kit(lab, "sandbox", "forge_main", kind, source, destination, str(port))
    assert capture.result is not None and "sent 3" in out, out
    leaked = marked(capture.path) + capture.result.bytes_to(destination, port, kind)
    reason = lab.reason_of(since, lambda r: r.src == source, timeout=12)
    report(f"redteam11/forged-{name}", "forged-source", leaked, leaked > 0, reason or None,
           f"3 x {kind} from {source} to {destination}:{port}")  # fmt: skip
    assert leaked == 0, capture.result.table()


# --- 2. ICMP errors to the gateway and through it ---------------------------------------------------------------


def _route(lab: SecurityLab, destination: str) -> str:
    family = "-6" if ":" in destination else "-4"
    return lab.gateway(["ip", family, "route", "get", destination]).stdout.strip()


def _flush_cache(lab: SecurityLab) -> None:
    lab.gateway(["ip", "-4", "route", "flush", "cache"])
    lab.gateway(["ip", "-6", "route", "flush", "cache"])


ICMP = {
    # name: (kind, to, quoted source, quoted destination, redirect's new gateway)
    "unreach-through-v4": ("unreach", BLOCKED.v4, BLOCKED.v4, SANDBOX_V4, ""),
    "exceeded-through-v4": ("exceeded", ALLOWED.v4, ALLOWED.v4, SANDBOX_V4, ""),
    "unreach-through-v6": ("unreach", BLOCKED.v6, BLOCKED.v6, "fd00:203:1::2", ""),
    "fragneeded-to-gateway-v4": ("fragneeded", GATEWAY_SBX_V4, GATEWAY_UP_V4, ALLOWED.v4, ""),
    "toobig-to-gateway-v6": ("toobig", GATEWAY_SBX_V6, GATEWAY_UP_V6, ALLOWED.v6, ""),
    "redirect-to-gateway-v4": ("redirect", GATEWAY_SBX_V4, GATEWAY_UP_V4, ALLOWED.v4, SANDBOX_V4),
}


@pytest.mark.parametrize("name", sorted(ICMP))
def test_icmp_errors_cross_nothing_and_change_no_route(lab: SecurityLab, name: str) -> None:
    """Errors quoting an echo reply (the quoted packet's kind the kernel trusts without a socket: ``icmp_err`` and
    ``icmpv6_err`` update the path MTU, ``ipv4_redirect`` the next hop) with MARK after the quote. Through the
    gateway: dropped (no flow of the sandbox's is quoted). To the gateway: nothing crosses, and the gateway's route
    to the quoted destination (allowed.lab, for every sandbox) keeps its MTU and next hop."""
    kind, to, qsrc, qdst, newgw = ICMP[name]
    _flush_cache(lab)
    before = _route(lab, qdst)
    since = time.time()
    with lab.capture(f"rt11-icmp-{name}") as capture:
        out = _kit(lab, "sandbox", "icmp_main", kind, to, qsrc, qdst, *([newgw] if newgw else []))
    assert capture.result is not None and "sent 3" in out, out
    after = _route(lab, qdst)
    leaked = marked(capture.path)
    changed = after != before
    reason = lab.reason_of(since, lambda r: r.transport in ("icmp", "icmp6", "ipv6-icmp"), timeout=12)
    report(f"redteam11/icmp-{name}", "icmp-error", leaked, leaked > 0 or changed, reason or None,
           f"gateway's route to {qdst}: {after!r}" if changed else "route unchanged")  # fmt: skip
    _flush_cache(lab)
    assert leaked == 0, capture.result.table()
    assert not changed, (before, after)


# --- 5. HTTP trailers; QUIC and an Alt-Svc port -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["host", "pool"])
def test_control_trailers_are_served_where_nothing_guards_them(lab: SecurityLab, kind: str) -> None:
    out = _kit(lab, "internet", "http_trailers_main", ALLOWED.v4, "80", kind)
    assert "status HTTP/1" in out, out


@pytest.mark.parametrize("kind", ["host", "pool"])
def test_http_trailers_to_an_allowed_host(lab: SecurityLab, kind: str) -> None:
    """A chunked POST to allowed.lab:80 whose trailer section names blocked.lab as Host, or carries XMRig's login
    (a server application reading trailers as fields would see it)."""
    since = time.time()
    with lab.capture(f"rt11-trailers-{kind}") as capture:
        out = _kit(lab, "sandbox", "http_trailers_main", "allowed.lab", "80", kind, GATEWAY_SBX_V4)
    crossed = capture.result
    assert crossed is not None and f"address {ALLOWED.v4}" in out, out
    trailer = crossed.contains(MARK + b"-trailer")
    elsewhere = crossed.bytes_to(BLOCKED.v4) + crossed.bytes_to(POOL.v4)
    pool = crossed.contains(b"XMRig")
    reason = lab.reason_of(since, lambda r: r.dport == 80 and r.sandbox == "agent" and r.action == "block",
                           timeout=12)  # fmt: skip
    status = out.strip().splitlines()[-1]
    report(f"redteam11/http-trailers-{kind}", "http-framing", elsewhere + (len(MARK) if pool else 0),
           trailer, reason or None, f"{status}; trailer crossed: {trailer}")  # fmt: skip
    assert elsewhere == 0 and not pool and not trailer, crossed.table()


QUIC = {
    "allowed-443-v4": (ALLOWED.v4, 443),
    "allowed-443-v6": (ALLOWED.v6, 443),
    "allowed-alt-svc-8443-v4": (ALLOWED.v4, 8443),
}


def test_control_quic_is_answered_where_nothing_guards_it(lab: SecurityLab) -> None:
    out = _kit(lab, "internet", "quic_main", ALLOWED.v4, "443")
    assert "version-negotiation True" in out, out


@pytest.mark.parametrize("name", sorted(QUIC))
def test_quic_to_an_allowed_host_is_dropped(lab: SecurityLab, name: str) -> None:
    """HTTP/3 to allowed.lab (UDP 443, and the port an Alt-Svc ``h3=":8443"`` would name): no UDP rule allows it."""
    address, port = QUIC[name]
    since = time.time()
    with lab.capture(f"rt11-quic-{name}") as capture:
        out = _kit(lab, "sandbox", "quic_main", address, str(port))
    crossed = capture.result
    assert crossed is not None
    leaked = crossed.bytes_to(address, port, "udp") + marked(capture.path)
    goal = "answered" in out
    reason = lab.reason_of(since, lambda r: r.dst == address and r.dport == port)
    report(f"redteam11/quic-{name}", "udp", leaked, goal, reason or None, out.strip())
    assert leaked == 0 and not goal, crossed.table()
    assert reason, "the QUIC datagram left no record"


# --- 3. DHCP with --dhcp -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dhcp_lab(lab_factory: LabFactory) -> Iterator[SecurityLab]:
    yield lab_factory(extra_args=("--dhcp",))


def _gateway_mac(lab: SecurityLab) -> str:
    done = lab.gateway(["cat", f"/sys/class/net/{lab.lab.gateway_sandbox_if}/address"])
    return done.stdout.strip()


DHCP = {
    # name: (Ethernet destination: broadcast or the gateway, IP destination, how many client hardware addresses)
    "discover-broadcast": ("ff:ff:ff:ff:ff:ff", "255.255.255.255", 3),
    "discover-to-internet": ("gateway", BLOCKED.v4, 3),
    "discover-to-uplink": ("gateway", GATEWAY_UP_V4, 3),
    "starvation-broadcast": ("ff:ff:ff:ff:ff:ff", "255.255.255.255", 2000),
}


def test_control_dhcp_frames_are_well_formed(dhcp_lab: SecurityLab) -> None:
    """A DHCP server's view of the frames: a listener on the gateway's port 67 (no DHCP server runs in the lab)
    receives the DISCOVER with MARK in its options."""
    lab = dhcp_lab
    listener = lab.attacker("rt11-dhcp-listener", [sys.executable, "-c", _LISTEN_67], where="gateway")
    listener.wait_for("listening")
    try:
        _kit(lab, "sandbox", "dhcp_main", lab.lab.sandbox_if, "ff:ff:ff:ff:ff:ff", "255.255.255.255", "3")
        listener.wait_for("heard .* marker yes")
    finally:
        listener.stop()
        lab.processes.remove(listener)


_LISTEN_67 = """
import socket, sys
from tests.security.redteam_round11_kit import MARK
from tests.waiting import eventually, scaled
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("0.0.0.0", 67))
print("listening", flush=True)
while True:
    data, peer = sock.recvfrom(4096)
    print(f"heard {len(data)} from {peer[0]} marker {'yes' if MARK in data else 'no'}", flush=True)
"""


@pytest.mark.parametrize("name", sorted(DHCP))
def test_dhcp_from_the_sandbox_crosses_nothing(dhcp_lab: SecurityLab, name: str) -> None:
    """DISCOVERs whose host name, vendor class and client id carry MARK: to the broadcast address (the shape
    ``--dhcp`` lets in), to an internet address and to the uplink's address from 0.0.0.0 (not that shape), and
    2,000 of them from distinct hardware addresses (a server's pool would be starved; nothing here is a relay).
    Then the sandbox's allowed page still comes: the gateway serves on."""
    lab = dhcp_lab
    ether, destination, count = DHCP[name]
    mac = _gateway_mac(lab) if ether == "gateway" else ether
    since = time.time()
    with lab.capture(f"rt11-dhcp-{name}") as capture:
        out = _kit(lab, "sandbox", "dhcp_main", lab.lab.sandbox_if, mac, destination, str(count), timeout=60)
    assert capture.result is not None and f"sent {count}" in out, out
    leaked = marked(capture.path) + capture.result.bytes_to(None, 67, "udp")
    reason = lab.reason_of(since, lambda r: r.dport == 67, timeout=12)
    allowed = lab.attempts(["allowed_download"])[0]
    report(f"redteam11/dhcp-{name}", "dhcp", leaked, leaked > 0, reason or None,
           f"{count} DISCOVERs to {destination}; then allowed_download {allowed.outcome}")  # fmt: skip
    assert leaked == 0, capture.result.table()
    assert allowed.outcome == "ok", allowed


_LATE_DNS = """
import socket, sys
from egress.detect import dns
for index in range(3):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # closed before the answer comes back
        sock.sendto(dns.build_query(0x3000 + index, "allowed.lab", dns.A), (sys.argv[1], 53))
print("asked 3", flush=True)
"""


def _unreachables_sent(lab: SecurityLab) -> int:
    done = lab.sandbox(["nstat", "-az", "IcmpOutDestUnreachs"])
    return int(done.stdout.split("IcmpOutDestUnreachs")[1].split()[0])


def test_an_error_about_the_sandboxs_own_dns_still_reaches_the_gateway(lab: SecurityLab) -> None:
    """The other side of the ICMP fix: the sandbox's kernel answers the resolver's late answers (its socket was
    closed) with port unreachable; each is about a connection the sandbox opened, so the gateway takes it (no
    guard drop recorded), as a PMTU error about a proxied connection is."""
    before = _unreachables_sent(lab)
    since = time.time()

    def asked_and_refused() -> bool:
        """Ask again at each attempt: the sandbox's kernel sends at most one ICMP error a second to a peer after a
        burst of 6 (``net.ipv4.icmp_ratelimit``), and another row's errors to the gateway may have spent the burst,
        so the answers to one round of questions can all go without an error (seen once in a merged run)."""
        done = lab.sandbox_python(_LATE_DNS, GATEWAY_SBX_V4)
        assert "asked 3" in done.stdout, done.stdout + done.stderr
        return _unreachables_sent(lab) > before

    eventually(asked_and_refused, timeout=20, interval=0.5)
    sent = _unreachables_sent(lab) - before
    reason = lab.reason_of(since, lambda r: r.transport == "icmp" and r.src == SANDBOX_V4, timeout=12)
    report("redteam11/icmp-own-dns-late-answer", "icmp-error", 0, False, reason or None,
           f"benign: {sent} port unreachables about its own DNS, taken by the gateway")  # fmt: skip
    assert not reason, f"an error about the sandbox's own DNS was dropped: {reason}"


# --- 2. Two sandboxes on links of their own ---------------------------------------------------------------------

B_NET, B_GATEWAY, B_ADDRESS, B_PORT = "10.203.3.0/24", "10.203.3.1", "10.203.3.2", 7000
_TAG = os.getpid() % 100000
B_IF, B_PEER, B_NS = f"r11g{_TAG}", f"r11s{_TAG}", f"r11b-{_TAG}"
"""The second link (gateway end, sandbox end) and the second sandbox's namespace: this process's own names."""
B_POLICY = f"""
  other:
    sources: [{B_NET}]
    interface: {B_IF}
    mode: enforce
    allow:
      hosts:
        - {{host: blocked.lab, ports: [80]}}
    dns:
      allow_ranges: [198.18.10.0/24]
"""


@dataclasses.dataclass
class TwoLinks:
    lab: SecurityLab
    receiver: Attacker

    def b(self, main: str, *args: str) -> str:
        argv = ["ip", "netns", "exec", B_NS, sys.executable, "-c", KIT.format(main), *args]
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=scaled(30), cwd=ROOT)
        return done.stdout + done.stderr


@pytest.fixture(scope="module")
def two_links(lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoLinks]:
    """The lab's policy plus sandbox ``other`` (10.203.3.0/24, allowed blocked.lab:80, which ``agent`` is not)
    behind an interface of its own: a veth from the gateway's namespace to a namespace of this module's own."""
    policy = tmp_path_factory.mktemp("rt11") / "two-links.yaml"
    policy.write_text((ROOT / "rules" / "lab-policy.yaml").read_text() + B_POLICY)
    lab = lab_factory(policy)
    gw, net = lab.lab.gateway_ns, lab.lab.internet_ns
    setup = [
        ["ip", "netns", "add", B_NS],
        ["ip", "link", "add", B_IF, "netns", gw, "type", "veth", "peer", "name", B_PEER, "netns", B_NS],
        ["ip", "-n", gw, "addr", "add", f"{B_GATEWAY}/24", "dev", B_IF],
        ["ip", "-n", gw, "link", "set", B_IF, "up"],
        ["ip", "-n", B_NS, "addr", "add", f"{B_ADDRESS}/24", "dev", B_PEER],
        ["ip", "-n", B_NS, "link", "set", B_PEER, "up"],
        ["ip", "-n", B_NS, "link", "set", "lo", "up"],
        ["ip", "-n", B_NS, "route", "add", "default", "via", B_GATEWAY],
        ["ip", "-n", net, "route", "add", B_NET, "via", GATEWAY_UP_V4],
    ]
    receiver = None
    try:
        for argv in setup:
            done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, (argv, done.stderr)
        log = lab.logs / "attacker-rt11-b-receiver.log"
        lab.logs.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            argv = ["ip", "netns", "exec", B_NS, sys.executable, "-c", KIT.format("listen_main"), B_ADDRESS]
            process = subprocess.Popen([*argv, str(B_PORT)], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        receiver = Attacker("rt11-b-receiver", process, log)
        receiver.wait_for("listening")
        yield TwoLinks(lab, receiver)
    finally:
        if receiver is not None:
            receiver.stop()
        subprocess.run(["ip", "-n", net, "route", "del", B_NET], check=False, capture_output=True, timeout=30)
        # Deleting the namespace takes the veth (both ends) with it.
        subprocess.run(["ip", "netns", "del", B_NS], check=False, capture_output=True, timeout=30)


def test_control_the_second_sandbox_is_served_under_its_own_policy(two_links: TwoLinks) -> None:
    """B asks the gateway on its own link for blocked.lab and fetches its page: the second link and B's policy
    work, so what A cannot do below is A's policy holding, not a broken link."""
    out = two_links.b("ask_main", B_GATEWAY, "blocked.lab")
    assert f"answers {BLOCKED.v4}" in out, out
    argv = ["ip", "netns", "exec", B_NS, "python3", "-c", _FETCH, BLOCKED.v4]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=scaled(30))
    assert "HTTP/1.1 200" in done.stdout, done.stdout + done.stderr


_FETCH = """
import socket, sys
with socket.create_connection((sys.argv[1], 80), timeout=5) as sock:
    sock.sendall(b"GET / HTTP/1.1\\r\\nHost: blocked.lab\\r\\nConnection: close\\r\\n\\r\\n")
    print(sock.recv(4096).split(b"\\r\\n")[0].decode())
"""


def test_sandbox_a_reaches_nothing_of_sandbox_b(two_links: TwoLinks) -> None:
    """A (10.203.1.2) to B's address directly (TCP and UDP), and to the gateway's address on B's link (hairpin:
    TCP to the same port, DNS for blocked.lab, which B may ask and A may not)."""
    lab, receiver = two_links.lab, two_links.receiver
    before = len(receiver.log())
    since = time.time()
    with lab.capture("rt11-two-links-a-to-b") as capture:
        direct = _kit(lab, "sandbox", "reach_main", B_ADDRESS, str(B_PORT))
        hairpin = _kit(lab, "sandbox", "reach_main", B_GATEWAY, str(B_PORT))
        asked = _kit(lab, "sandbox", "ask_main", B_GATEWAY, "blocked.lab")
    heard = receiver.log()[before:]
    leaked = marked(capture.path)
    reason = lab.reason_of(since, lambda r: r.dst in (B_ADDRESS, B_GATEWAY), timeout=12)
    answered = f"answers {BLOCKED.v4}" in asked
    report("redteam11/two-links-a-to-b", "isolation", leaked, "marker yes" in heard or answered, reason or None,
           f"direct: {' '.join(direct.split())}; hairpin: {' '.join(hairpin.split())}; DNS via B's side: "
           f"{asked.strip()}")  # fmt: skip
    assert "heard" not in heard, heard
    assert leaked == 0 and not answered, (asked, capture.result.table() if capture.result else None)


def test_sandbox_a_forging_bs_source_is_not_judged_under_bs_policy(two_links: TwoLinks) -> None:
    """A writes SYNs with data and datagrams from B's address to blocked.lab:80 (B may reach it, A may not): B's
    source arrives on A's interface, dropped as spoofed; the record does not name B."""
    lab = two_links.lab
    since = time.time()
    with lab.capture("rt11-two-links-forge-b") as capture:
        for kind in ("tcp", "udp"):
            out = _kit(lab, "sandbox", "forge_main", kind, B_ADDRESS, BLOCKED.v4, "80")
            assert "sent 3" in out, out
    leaked = marked(capture.path)
    named = sorted({r.sandbox for r in lab.records_until(since, lambda rs: [r for r in rs if r.src == B_ADDRESS])
                    if r.src == B_ADDRESS})  # fmt: skip
    reason = lab.reason_of(since, lambda r: r.src == B_ADDRESS)
    report("redteam11/two-links-a-forges-b", "forged-source", leaked, leaked > 0, reason or None,
           f"records name {named}")  # fmt: skip
    assert leaked == 0, capture.result.table() if capture.result else None
    assert "other" not in named, named


_B_SPORT = 35353
"""The source port of B's DNS question in the rows below: the quoted answer's destination."""


def _b_asks_and_is_answered(two_links: TwoLinks) -> None:
    """B asks its gateway address for blocked.lab from `_B_SPORT`: the gateway then tracks B's DNS flow, whose
    answer (B_GATEWAY:53 → B:35353) the errors below quote."""
    out = two_links.b("ask_main", B_GATEWAY, "blocked.lab", str(_B_SPORT))
    assert f"answers {BLOCKED.v4}" in out, out


def test_control_bs_own_error_about_its_dns_sets_the_gateways_path_mtu(two_links: TwoLinks) -> None:
    """B itself sends a fragmentation needed (MTU 552) quoting the gateway's answer to its DNS question: an error
    about B's own flow from B, which the gateway takes, and the gateway's path MTU to B drops. This is what the
    next row tries from A, so a route left unchanged there is the rule, not an error the kernel ignores."""
    lab = two_links.lab
    _flush_cache(lab)
    _b_asks_and_is_answered(two_links)
    out = two_links.b("icmp_udp_main", "fragneeded", B_GATEWAY, B_GATEWAY, "53", B_ADDRESS, str(_B_SPORT))
    assert "sent 3" in out, out
    try:
        eventually(lambda: "mtu 552" in _route(lab, B_ADDRESS), timeout=10, interval=0.2)
    finally:
        _flush_cache(lab)


def test_sandbox_a_cannot_set_the_gateways_path_mtu_to_b(two_links: TwoLinks) -> None:
    """A sends the same error from its own address to the gateway's address on B's link (the quoted answer's
    source: conntrack takes an error only when sent to the quoted packet's sender) quoting the gateway's answer to
    B's DNS question: conntrack calls it related to B's flow, but it does not come from B's sources, so it is a
    guard drop (recorded) and the gateway's route to B keeps its MTU. Before the fix it was taken and the gateway
    sent to B in 552-byte packets for 10 minutes."""
    lab = two_links.lab
    _flush_cache(lab)
    before = _route(lab, B_ADDRESS)
    _b_asks_and_is_answered(two_links)
    since = time.time()
    out = _kit(lab, "sandbox", "icmp_udp_main", "fragneeded", B_GATEWAY, B_GATEWAY, "53", B_ADDRESS,
               str(_B_SPORT))  # fmt: skip
    assert "sent 3" in out, out
    reason = lab.reason_of(since, lambda r: r.transport == "icmp" and r.src == SANDBOX_V4, timeout=12)
    after = _route(lab, B_ADDRESS)
    changed = after != before
    report("redteam11/two-links-a-sets-bs-mtu", "icmp-error", 0, changed, reason or None,
           f"gateway's route to B: {after!r}" if changed else "route unchanged")  # fmt: skip
    _flush_cache(lab)
    assert reason, "A's error about B's flow was not dropped and recorded"
    assert not changed, (before, after)
