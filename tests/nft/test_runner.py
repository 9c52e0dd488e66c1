"""`egress.nft.runner`, and the rendered ruleset doing its job with real traffic (root): sandbox ── gateway ──
internet namespaces, the ruleset applied in the gateway, packets sent from the sandbox, drops read back through
`NflogReader` in the gateway."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import json
import re
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from egress.capture.nflog import LoggedPacket, NflogReader
from egress.capture.packet import ICMP, ICMP6, LINK_RAW, UDP, Defragmenter, Segment, decode
from egress.gateway.allowsets import AllowSetWriter
from egress.lab.scenarios import icmp_checksum
from egress.nft import runner
from egress.nft.render import GatewaySettings, allow_set, render, render_lockdown
from egress.policy.model import Mode, Policy
from egress.proxy.front import original_destination
from tests.nft import make_sandbox, udp_rule, udpgate
from tests.nft.netns import Topology, socket_in, topology
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.root

T = Topology
GROUP = 7
PROXY_PORTS = (8081, 8082)
DNS_PORT = 5353
ALLOWED_UDP = 5000
WAIT = 5.0
"""Seconds (scaled) a test waits for something that must happen: a packet, a log, a connection."""


@dataclass(frozen=True, slots=True)
class Lab:
    topo: Topology
    settings: GatewaySettings
    ruleset: str
    reader: NflogReader


def _policy() -> Policy:
    networks = (
        udp_rule("agents", 0, f"{T.INTERNET4}/32", ALLOWED_UDP),
        udp_rule("agents", 1, f"{T.INTERNET6}/128", ALLOWED_UDP),
    )
    return Policy(
        1,
        (
            make_sandbox("agents", "10.77.0.0/26", "fd77::/120", networks=networks),
            make_sandbox("shadow", "10.77.0.64/26", "fd77::100/120", mode=Mode.REPORT),
        ),
    )


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with topology() as topo:
        settings = GatewaySettings(
            sandbox_if=topo.sandbox_if,
            uplink_if=topo.uplink_if,
            proxy_ports=PROXY_PORTS,
            dns_port=DNS_PORT,
            nflog_group=GROUP,
        )
        ruleset = render(_policy(), settings)
        runner.apply(ruleset, netns=topo.gateway)
        with NflogReader(netns=topo.gateway).open(GROUP) as reader, udpgate.gate(topo.gateway, _policy()):
            yield Lab(topo, settings, ruleset, reader)


@pytest.fixture
def fresh(lab: Lab) -> Lab:
    """The lab with the normal ruleset in force and no log messages left over."""
    runner.apply(lab.ruleset, netns=lab.topo.gateway)
    udpgate.install(lab.topo.gateway)
    lab.reader.read()
    return lab


def _family(version: int) -> socket.AddressFamily:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _addr(name: str, version: int) -> str:
    return str(getattr(T, f"{name}{version}"))


def _segment(packet: LoggedPacket) -> Segment:
    segment = decode(LINK_RAW, packet.payload, packet.ts, Defragmenter())
    assert segment is not None
    return segment


def expect_log(reader: NflogReader, prefix: str, dst: str, proto: int, timeout: float = WAIT) -> LoggedPacket:
    """The first logged packet with ``prefix`` going to ``dst`` over ``proto``, or fail."""
    wanted = ipaddress.ip_address(dst).packed
    seen: list[str] = []
    deadline = time.monotonic() + scaled(timeout)
    while (remaining := deadline - time.monotonic()) > 0:
        for packet in reader.read(timeout=remaining):
            segment = _segment(packet)
            seen.append(f"{packet.prefix}: {ipaddress.ip_address(segment.dst)} proto {segment.proto}")
            if packet.prefix == prefix and segment.dst == wanted and segment.proto == proto:
                return packet
    raise AssertionError(f"no {prefix!r} log for {dst} proto {proto}; saw {seen}")


@contextlib.contextmanager
def udp_listener(netns: str, version: int, address: str, port: int) -> Iterator[socket.socket]:
    with socket_in(netns, _family(version), socket.SOCK_DGRAM) as sock:
        sock.bind((address, port))
        yield sock


@contextlib.contextmanager
def tcp_listener(netns: str, version: int, address: str, port: int) -> Iterator[socket.socket]:
    with socket_in(netns, _family(version), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if version == 6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(16)
        yield sock


def udp_send(lab: Lab, version: int, source: str, dst: str, port: int, data: bytes = b"hello") -> socket.socket:
    sock = socket_in(lab.topo.sandbox, _family(version), socket.SOCK_DGRAM)
    sock.bind((source, 0))
    sock.sendto(data, (dst, port))
    return sock


def received(sock: socket.socket, timeout: float = WAIT) -> tuple[bytes, str] | None:
    """The next datagram on ``sock`` and its sender, waiting up to ``timeout`` (scaled) for it; None if none came."""
    if not select.select([sock], [], [], scaled(timeout))[0]:
        return None
    data, peer = sock.recvfrom(2048)
    return data, peer[0]


def pending(sock: socket.socket) -> list[bytes]:
    """Every datagram already waiting on ``sock``, without waiting."""
    out = []
    while select.select([sock], [], [], 0)[0]:
        out.append(sock.recv(2048))
    return out


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("port", [9999, 443], ids=["udp", "quic"])
def test_udp_to_the_internet_is_dropped_and_logged(fresh: Lab, version: int, port: int) -> None:
    dst, src = _addr("INTERNET", version), _addr("SANDBOX", version)
    with (
        udp_listener(fresh.topo.internet, version, dst, port) as server,
        udp_listener(fresh.topo.internet, version, dst, ALLOWED_UDP) as allowed,
    ):
        udp_send(fresh, version, src, dst, port, b"dropped").close()
        packet = expect_log(fresh.reader, "egress drop agents", dst, UDP)
        # A marker sent after it, on the same path to an allowed port, arrives: the dropped one never will.
        udp_send(fresh, version, src, dst, ALLOWED_UDP, b"marker").close()
        assert received(allowed) == (b"marker", _addr("UPLINK", version))
        assert pending(server) == []
    assert packet.family == _family(version)
    assert packet.indev is not None and packet.indev > 0


@pytest.mark.parametrize("version", [4, 6])
def test_udp_to_an_allowed_network_is_forwarded_and_masqueraded(fresh: Lab, version: int) -> None:
    dst = _addr("INTERNET", version)
    with udp_listener(fresh.topo.internet, version, dst, ALLOWED_UDP) as server:
        udp_send(fresh, version, _addr("SANDBOX", version), dst, ALLOWED_UDP).close()
        assert received(server) == (b"hello", _addr("UPLINK", version))
        udp_send(fresh, version, _addr("SANDBOX", version), dst, ALLOWED_UDP + 1).close()
    expect_log(fresh.reader, "egress drop agents", dst, UDP)


@pytest.mark.parametrize("version", [4, 6])
def test_report_mode_lets_traffic_through_and_logs_it(fresh: Lab, version: int) -> None:
    dst = _addr("INTERNET", version)
    with udp_listener(fresh.topo.internet, version, dst, 9999) as server:
        udp_send(fresh, version, _addr("SHADOW", version), dst, 9999).close()
        assert received(server) is not None
    expect_log(fresh.reader, "egress report shadow", dst, UDP)


@pytest.mark.parametrize("version", [4, 6])
def test_spoofed_sources_are_dropped_and_logged(fresh: Lab, version: int) -> None:
    dst = _addr("INTERNET", version)
    with udp_listener(fresh.topo.gateway, version, "::" if version == 6 else "0.0.0.0", DNS_PORT) as resolver:
        udp_send(fresh, version, _addr("SPOOF", version), dst, 53, b"spoofed").close()
        expect_log(fresh.reader, "egress spoof", dst, UDP)
        # The same query from the sandbox's own address, sent after it, reaches the resolver, and comes first.
        udp_send(fresh, version, _addr("SANDBOX", version), dst, 53, b"marker").close()
        assert received(resolver) == (b"marker", _addr("SANDBOX", version))
        assert pending(resolver) == []


@pytest.mark.parametrize("version", [4, 6])
def test_tcp_to_any_port_reaches_a_proxy_worker_with_its_original_destination(fresh: Lab, version: int) -> None:
    any_address = "::" if version == 6 else "0.0.0.0"
    dst = _addr("INTERNET", version)
    used: set[int] = set()
    with contextlib.ExitStack() as stack:
        listeners = [
            stack.enter_context(tcp_listener(fresh.topo.gateway, version, any_address, p)) for p in PROXY_PORTS
        ]
        for port in (80, 80, 3333, 443):
            client = stack.enter_context(socket_in(fresh.topo.sandbox, _family(version), socket.SOCK_STREAM))
            client.settimeout(scaled(WAIT))
            client.bind((_addr("SANDBOX", version), 0))
            client.connect((dst, port))
            ready = select.select(listeners, [], [], scaled(WAIT))[0]
            assert ready, "no proxy worker saw the connection"
            conn, _ = ready[0].accept()
            with conn:
                assert original_destination(conn) == (dst, port)
                used.add(ready[0].getsockname()[1])
    assert used == set(PROXY_PORTS), "new connections should be spread over every worker"


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize(("target", "port"), [("GATEWAY", PROXY_PORTS[0]), ("GATEWAY", 2222), ("UPLINK", 2222)])
def test_the_gateways_own_services_are_unreachable(fresh: Lab, version: int, target: str, port: int) -> None:
    any_address = "::" if version == 6 else "0.0.0.0"
    dst = _addr(target, version)
    with contextlib.ExitStack() as stack:
        listeners = [
            stack.enter_context(tcp_listener(fresh.topo.gateway, version, any_address, p)) for p in PROXY_PORTS
        ]
        service = stack.enter_context(tcp_listener(fresh.topo.gateway, version, any_address, 2222))  # API or SSH
        client = stack.enter_context(socket_in(fresh.topo.sandbox, _family(version), socket.SOCK_STREAM))
        client.setblocking(False)
        client.bind((_addr("SANDBOX", version), 0))
        assert client.connect_ex((dst, port)) == errno.EINPROGRESS
        expect_log(fresh.reader, "egress guard", dst, 6)  # its SYN was dropped
        # A connection made after it, to the internet, is redirected to a proxy worker: the blocked one is not.
        marker = stack.enter_context(socket_in(fresh.topo.sandbox, _family(version), socket.SOCK_STREAM))
        marker.settimeout(scaled(WAIT))
        marker.bind((_addr("SANDBOX", version), 0))
        marker.connect((_addr("INTERNET", version), 80))
        ready = select.select(listeners, [], [], scaled(WAIT))[0]
        assert ready, "the marker connection reached no proxy worker"
        conn, _ = ready[0].accept()
        with conn:
            assert original_destination(conn) == (_addr("INTERNET", version), 80)
        assert select.select([*listeners, service], [], [], 0)[0] == [], "the blocked connection got through"
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # still waiting: never answered
        assert select.select([], [client], [], 0)[1] == []


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("target", ["INTERNET", "GATEWAY"])
def test_dns_over_udp_to_any_address_reaches_the_resolver(fresh: Lab, version: int, target: str) -> None:
    dst = _addr(target, version)
    with (
        udp_listener(fresh.topo.gateway, version, "::" if version == 6 else "0.0.0.0", DNS_PORT) as resolver,
        udp_send(fresh, version, _addr("SANDBOX", version), dst, 53, b"query") as client,
    ):
        assert select.select([resolver], [], [], scaled(WAIT))[0], "the resolver saw nothing"
        query, peer = resolver.recvfrom(2048)
        assert query == b"query"
        resolver.sendto(b"answer", peer)
        answer = received(client)
    assert answer == (b"answer", dst), "the answer must seem to come from the address the sandbox asked"


@pytest.mark.parametrize("version", [4, 6])
def test_dns_over_tcp_reaches_the_resolver(fresh: Lab, version: int) -> None:
    dst = _addr("INTERNET", version)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(
            tcp_listener(fresh.topo.gateway, version, "::" if version == 6 else "0.0.0.0", DNS_PORT)
        )
        client = stack.enter_context(socket_in(fresh.topo.sandbox, _family(version), socket.SOCK_STREAM))
        client.settimeout(scaled(WAIT))
        client.bind((_addr("SANDBOX", version), 0))
        client.connect((dst, 53))
        assert select.select([server], [], [], scaled(WAIT))[0]
        conn, _ = server.accept()
        with conn:
            assert original_destination(conn) == (dst, 53)


@pytest.mark.parametrize("version", [4, 6])
def test_icmp_echo_to_the_internet_is_dropped_and_logged(fresh: Lab, version: int) -> None:
    dst = _addr("INTERNET", version)
    proto = socket.IPPROTO_ICMP if version == 4 else socket.IPPROTO_ICMPV6
    kind = 8 if version == 4 else 128
    with socket_in(fresh.topo.sandbox, _family(version), socket.SOCK_RAW, proto) as sock:
        sock.bind((_addr("SANDBOX", version), 0))
        echo = struct.pack("!BBHHH", kind, 0, 0, 0x4567, 1) + b"tunnel?"
        if version == 4:  # the kernel fills in ICMPv6 checksums, not ICMP ones
            echo = echo[:2] + struct.pack("!H", icmp_checksum(echo)) + echo[4:]
        sock.sendto(echo, (dst, 0))
        # Logged by the rule that drops it: the request never left the gateway, so no reply can come back.
        packet = expect_log(fresh.reader, "egress drop agents", dst, ICMP)  # the decoder reports ICMPv6 as ICMP
        assert not any(b"tunnel?" in reply for reply in pending(sock)), "an echo reply came back"
    assert packet.payload[9 if version == 4 else 6] == (ICMP if version == 4 else ICMP6)


def test_allow_set_elements_are_added_and_refreshed(fresh: Lab) -> None:
    gw, table = fresh.topo.gateway, fresh.settings.table
    name = allow_set("agents", 4)
    runner.add_elements(table, name, [(T.INTERNET4, 3600), ("10.78.0.3", 60)], netns=gw)
    assert sorted(runner.list_set(table, name, netns=gw)) == [T.INTERNET4, "10.78.0.3"]
    runner.add_elements(table, name, [("10.78.0.3", 600)], netns=gw)  # a later answer with a longer TTL
    assert re.search(r"10\.78\.0\.3 counter packets \d+ bytes \d+ timeout 10m", runner.list_table(table, netns=gw))
    runner.add_elements(table, allow_set("agents", 6), [(T.INTERNET6, 60)], netns=gw)
    assert runner.list_set(table, allow_set("agents", 6), netns=gw) == [T.INTERNET6]
    assert runner.list_set(table, "src4_agents", netns=gw) == ["10.77.0.0/26"]


def test_the_writer_fills_the_sets_from_answers_and_skips_what_the_kernel_holds(fresh: Lab) -> None:
    """`AllowSetWriter` as the resolver drives it: answers in, elements in the sandbox's sets; an address answered
    again while the kernel holds it long enough is not written again; a sandbox the policy lacks is ignored."""
    gw, table = fresh.topo.gateway, fresh.settings.table
    writer = AllowSetWriter(table, _policy(), netns=gw)
    try:
        writer("agents", [("10.78.0.6", 600), ("fd78::6", 600)])
        writer("agents", [("10.78.0.6", 600)])  # held: not queued again
        writer("nobody", [("10.78.0.7", 600)])

        def written() -> bool:
            assert "10.78.0.6" in runner.list_set(table, allow_set("agents", 4), netns=gw)
            assert "fd78::6" in runner.list_set(table, allow_set("agents", 6), netns=gw)
            return True

        eventually(written, timeout=10)
    finally:
        writer.close()
    assert (writer.applied, writer.errors) == (2, 0)
    assert "10.78.0.7" not in runner.list_table(table, netns=gw)


def test_an_allow_set_element_is_gone_once_its_timeout_passed(fresh: Lab) -> None:
    gw, table = fresh.topo.gateway, fresh.settings.table
    name = allow_set("agents", 4)
    runner.add_elements(table, name, [("10.78.0.4", 1), ("10.78.0.5", 3600)], netns=gw)

    def expired() -> bool:
        assert runner.list_set(table, name, netns=gw) == ["10.78.0.5"]
        return True

    eventually(expired, timeout=10, interval=0.2)


def test_the_allow_sets_count_traffic_per_address(fresh: Lab) -> None:
    gw, table = fresh.topo.gateway, fresh.settings.table
    runner.add_elements(table, allow_set("agents", 4), [(T.INTERNET4, 60)], netns=gw)
    udp_send(fresh, 4, T.SANDBOX4, T.INTERNET4, 9999).close()
    expect_log(fresh.reader, "egress drop agents", T.INTERNET4, UDP)
    assert re.search(r"10\.78\.0\.2 counter packets [1-9]", runner.list_table(table, netns=gw))


@pytest.mark.parametrize("version", [4, 6])
def test_every_dropped_packet_is_counted_per_source_protocol_and_destination(fresh: Lab, version: int) -> None:
    """More packets than the log's burst: the log stops, the count does not (read back by `drop_counters`)."""
    gw, table = fresh.topo.gateway, fresh.settings.table
    source, dst = _addr("SANDBOX", version), _addr("INTERNET", version)
    with socket_in(fresh.topo.sandbox, _family(version), socket.SOCK_RAW, 47) as sock:
        sock.bind((source, 0))
        for _ in range(300):
            sock.sendto(b"\x00\x00\x08\x00" + bytes(20), (dst, 0))
    sets = ("drops4a", "drops6a")  # generation 0: what a freshly rendered table counts into
    eventually(lambda: runner.drop_counters(table, sets, netns=gw).get((source, 47, dst)) == 300, timeout=scaled(5))
    logged = [p for p in fresh.reader.read(timeout=0.2) if p.prefix == "egress drop agents"]
    assert len(logged) < 300
    # Read inside the namespace itself (as the gateway does), through libnftables: the same counts.
    here = (
        "import json; from egress.nft import runner, libnft; assert libnft.load() is not None; "
        f"print(json.dumps(sorted(runner.drop_counters({table!r}, {sets!r}).items())))"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", gw, sys.executable, "-c", here], capture_output=True, text=True, timeout=60, check=True
    )
    assert [(tuple(key), packets) for key, packets in json.loads(done.stdout)] == sorted(
        runner.drop_counters(table, sets, netns=gw).items()
    )


def test_a_script_libnftables_refuses_raises_with_what_nft_said() -> None:
    with pytest.raises(runner.NftError, match="syntax error"):
        runner.apply_here("table inet egress_test_bad { chain c { type nonsense; } }\n")


@pytest.mark.parametrize(
    ("elements", "error"),
    [([("10.0.0.1; flush ruleset", 5)], "does not appear to be"), ([("10.0.0.1", 0)], "positive")],
)
def test_add_elements_refuses_what_is_not_an_address_and_a_timeout(
    fresh: Lab, elements: list[tuple[str, int]], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        runner.add_elements(fresh.settings.table, allow_set("agents", 4), elements, netns=fresh.topo.gateway)


def _stable(listing: str) -> str:
    return re.sub(r"(expires|packets|bytes) \S+", "", listing)


def test_a_broken_script_changes_nothing(fresh: Lab) -> None:
    gw, table = fresh.topo.gateway, fresh.settings.table
    before = runner.list_table(table, netns=gw)
    broken = fresh.ruleset.replace("chain to_sandbox {", "chain to_sandbox {\n\t\tip daddr frobnicate accept")
    with pytest.raises(runner.NftError) as failure:
        runner.apply(broken, netns=gw)
    assert "frobnicate" in failure.value.stderr
    assert _stable(runner.list_table(table, netns=gw)) == _stable(before)


def test_apply_leaves_other_tables_alone_and_delete_table_removes_only_ours(fresh: Lab) -> None:
    gw = fresh.topo.gateway
    runner.apply("table inet egt_nft_other {\n\tchain c { type filter hook input priority 10; }\n}\n", netns=gw)
    runner.apply(fresh.ruleset, netns=gw)
    assert "chain c" in runner.list_table("egt_nft_other", netns=gw)
    runner.delete_table("egt_nft_other", netns=gw)
    runner.delete_table("egt_nft_other", netns=gw)  # already gone: fine by default
    with pytest.raises(runner.NftError):
        runner.delete_table("egt_nft_other", netns=gw, missing_ok=False)
    assert "sandbox_forward" in runner.list_table(fresh.settings.table, netns=gw)


@pytest.mark.parametrize("version", [4, 6])
def test_lockdown_stops_everything_until_the_ruleset_is_back(fresh: Lab, version: int) -> None:
    gw, dst = fresh.topo.gateway, _addr("INTERNET", version)
    with udp_listener(gw, version, "::" if version == 6 else "0.0.0.0", DNS_PORT) as resolver:
        runner.apply(render_lockdown(fresh.settings), netns=gw)
        udp_send(fresh, version, _addr("SANDBOX", version), dst, 53, b"locked").close()
        expect_log(fresh.reader, "egress lockdown", dst, UDP)
        runner.apply(fresh.ruleset, netns=gw)
        udp_send(fresh, version, _addr("SANDBOX", version), dst, 53, b"unlocked").close()
        # The first datagram the resolver ever gets is the one sent after the ruleset came back.
        assert received(resolver) == (b"unlocked", _addr("SANDBOX", version))


def _logged_until(reader: NflogReader, marker: str) -> list[str]:
    """Destinations of the packets logged before ``marker``'s log arrived (waiting for it)."""
    seen: list[str] = []
    deadline = time.monotonic() + scaled(WAIT)
    while (remaining := deadline - time.monotonic()) > 0:
        for packet in reader.read(timeout=remaining):
            dst = str(ipaddress.ip_address(_segment(packet).dst))
            if dst == marker:
                return seen
            seen.append(dst)
    raise AssertionError(f"no log for {marker}; saw {seen}")


def test_a_flood_to_one_destination_spends_only_its_own_log_budget(fresh: Lab) -> None:
    """Fact: the per-key meter (`update @logs4 { key limit rate 10/second burst 20 packets }`) logs about its
    burst of a flood to one key, and a packet to another key right after it is logged at once."""
    src = _addr("SANDBOX", 4)
    with socket_in(fresh.topo.sandbox, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((src, 0))
        for _ in range(200):
            sock.sendto(b"flood", ("10.78.0.52", 9999))
    udp_send(fresh, 4, src, "10.78.0.53", 9999).close()
    flood = _logged_until(fresh.reader, "10.78.0.53")
    assert 20 <= flood.count("10.78.0.52") < 40, flood  # its burst (and what its rate added meanwhile)


def test_a_full_log_meter_set_still_logs_new_keys_under_the_rule_limit(fresh: Lab) -> None:
    """Fact: with the meter set full, `update` cannot add a key and its rule stops there; the next rule's lookup
    (`... != @logs4`) logs that key under the rule's own limit, so a full set hides nothing."""
    tiny = fresh.ruleset.replace("timeout 60s; size 65536;", "timeout 60s; size 1;")
    assert tiny != fresh.ruleset
    runner.apply(tiny, netns=fresh.topo.gateway)
    src = _addr("SANDBOX", 4)
    for dst in ("10.78.0.50", "10.78.0.51"):
        udp_send(fresh, 4, src, dst, 9999).close()
        expect_log(fresh.reader, "egress drop agents", dst, UDP)
    [meter] = runner.list_set(fresh.settings.table, "logs4", fresh.topo.gateway)  # only the first key has one
    assert "10.78.0.50" in meter and "10.78.0.51" not in meter


def test_a_sandbox_over_its_connection_bound_is_refused_and_logged_and_others_are_not(lab: Lab) -> None:
    """Red team 2's idle flood: ``max_connections`` counts a sandbox's connections over all its sources and both
    IP versions together (one ``ct count``); the next one is dropped before the redirect and logged ``egress limit
    <sandbox>``; another sandbox's own count is untouched; a closed connection frees its place."""
    bound = 16
    agents, shadow = _policy().sandboxes
    policy = Policy(1, (dataclasses.replace(agents, max_connections=bound), shadow))
    runner.apply(render(policy, lab.settings), netns=lab.topo.gateway)
    lab.reader.read()
    try:
        with contextlib.ExitStack() as stack:
            listeners = {
                (v, p): stack.enter_context(tcp_listener(lab.topo.gateway, v, "::" if v == 6 else "0.0.0.0", p))
                for v in (4, 6)
                for p in PROXY_PORTS
            }

            def connect(version: int, source: str) -> tuple[socket.socket, socket.socket] | None:
                client = stack.enter_context(socket_in(lab.topo.sandbox, _family(version), socket.SOCK_STREAM))
                client.settimeout(scaled(2.0))
                client.bind((source, 0))
                try:
                    client.connect((_addr("INTERNET", version), 80))
                except OSError:
                    return None
                ready = select.select([s for (v, _), s in listeners.items() if v == version], [], [], scaled(WAIT))[0]
                assert ready, "no proxy worker saw the connection"
                return client, stack.enter_context(ready[0].accept()[0])

            held = [connect(4 if n % 2 else 6, _addr("SANDBOX", 4 if n % 2 else 6)) for n in range(bound)]
            assert all(held), "connections under the bound must reach a worker"
            assert connect(4, T.SANDBOX4) is None and connect(6, T.SANDBOX6) is None
            expect_log(lab.reader, "egress limit agents", T.INTERNET4, 6)
            assert connect(4, T.SHADOW4) is not None, "another sandbox's connections are counted apart"
            for end in held[0] or ():
                end.close()  # both ends: the connection is over (conntrack's TIME_WAIT), its place free again
            eventually(lambda: connect(6, T.SANDBOX6) is not None, timeout=scaled(WAIT), interval=0.2)
    finally:
        runner.apply(lab.ruleset, netns=lab.topo.gateway)
