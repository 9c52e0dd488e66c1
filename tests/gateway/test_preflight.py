"""egress.gateway.preflight's decisions over a host whose answers the test gives: each problem is one line that
names the flag or host setting and says what to fix; a healthy host has none. (The probes themselves run against
real namespaces in test_preflight_netns.py.)"""

from __future__ import annotations

import dataclasses

import pytest

from egress.gateway.config import GatewayConfig
from egress.gateway.preflight import Problem, preflight
from egress.policy.model import Policy
from tests.nft import make_sandbox


@dataclasses.dataclass
class FakeHost:
    interfaces: dict[str, str] = dataclasses.field(default_factory=lambda: {"sbx0": "up", "up0": "up"})
    sysctls: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1"}
    )
    nft: str | None = None
    dns: str | None = None
    redis_down: str | None = None
    redis_open: bool = False
    unwritable: frozenset[str] = frozenset()
    taken: frozenset[tuple[int, bool]] = frozenset()
    asked_dns: list[str] = dataclasses.field(default_factory=list)

    def interface(self, name: str) -> str | None:
        return self.interfaces.get(name)

    def sysctl(self, path: str) -> str | None:
        return self.sysctls.get(path)

    def nft_check(self, script: str) -> str | None:
        assert "table inet egress" in script
        return self.nft

    def dns_answers(self, address: str, port: int) -> str | None:
        self.asked_dns.append(f"{address}:{port}")
        return self.dns

    def redis(self, url: str) -> str | None:
        return self.redis_down

    def redis_lets_anyone_in(self, url: str) -> bool:
        return self.redis_open

    def writable(self, directory: str) -> str | None:
        return "Read-only file system" if any(directory.startswith(d) for d in self.unwritable) else None

    def port_taken(self, port: int, udp: bool) -> bool:
        return (port, udp) in self.taken


CONFIG = GatewayConfig("policy.yaml", "sbx0", "up0", "192.0.2.53", state_dir="/run/egress-t", workers=2)
POLICY = Policy(1, (make_sandbox("agent", "10.9.0.0/24"),))


def wheres(host: FakeHost, config: GatewayConfig = CONFIG) -> list[str]:
    return [problem.where for problem in preflight(config, POLICY, host)]


def test_a_healthy_host_has_no_problem_and_the_upstream_is_asked() -> None:
    host = FakeHost()
    assert preflight(CONFIG, POLICY, host) == []
    assert host.asked_dns == ["192.0.2.53:53"]


@pytest.mark.parametrize(
    ("host", "where", "says"),
    [
        (FakeHost(interfaces={"up0": "up"}), "--sandbox-if", "no interface 'sbx0'"),
        (FakeHost(interfaces={"sbx0": "up", "up0": "down"}), "--uplink-if", "is down"),
        (FakeHost(sysctls={"net/ipv4/ip_forward": "0"}), "net.ipv4.ip_forward", "sysctl -w net.ipv4.ip_forward=1"),
        (FakeHost(dns="no answer within 2 s"), "--upstream-dns", "does not answer DNS: no answer"),
        (FakeHost(nft="Error: syntax error"), "nftables", "nft -c"),
        (FakeHost(unwritable=frozenset({"/run/egress-t"})), "--state-dir", "not writable"),
        (FakeHost(taken=frozenset({(8082, False)})), "--proxy-port", "TCP port 8082 is taken"),
        (FakeHost(taken=frozenset({(5353, True)})), "--dns-port", "UDP port 5353"),
    ],
    ids=["no-interface", "down", "forwarding-off", "upstream-silent", "nft", "state-dir", "proxy-port", "dns-port"],
)
def test_each_problem_names_its_flag_and_what_to_do(host: FakeHost, where: str, says: str) -> None:
    [problem] = [p for p in preflight(CONFIG, POLICY, host) if p.where == where]
    assert says in problem.line(), problem
    assert problem.line().startswith(f"egress: {where}: ")


def test_an_upstream_that_is_not_an_address_is_refused_without_asking_anyone() -> None:
    host = FakeHost()
    assert wheres(host, dataclasses.replace(CONFIG, upstream_dns="not-an-ip")) == ["--upstream-dns"]
    assert host.asked_dns == []


def test_the_same_interface_on_both_sides_is_refused() -> None:
    assert wheres(FakeHost(), dataclasses.replace(CONFIG, uplink_if="sbx0")) == ["--uplink-if"]


def test_redis_away_is_fine_while_the_spool_can_take_the_records() -> None:
    assert wheres(FakeHost(redis_down="Connection refused")) == []
    unwritable = frozenset({"/run/egress-t"})
    assert wheres(FakeHost(redis_down="Connection refused", unwritable=unwritable)) == ["--redis-url", "--state-dir"]


def test_every_problem_is_reported_at_once() -> None:
    host = FakeHost(interfaces={}, dns="timeout", taken=frozenset({(8081, False)}))
    assert wheres(host) == ["--sandbox-if", "--uplink-if", "--upstream-dns", "--proxy-port"]


def test_a_problem_is_one_line() -> None:
    assert Problem("--x", "what").line() == "egress: --x: what"


def test_a_sandbox_naming_the_sandbox_interface_shares_it_with_those_that_name_none() -> None:
    """Red team 2: two sandboxes on one link are told apart by source address only. The loader refuses those it
    can see (egress.policy.links); only here is ``--sandbox-if`` known, so a sandbox that names it shares the link
    with those that name no interface: refused, unless each says the link pins sources."""
    named = make_sandbox("builder", "10.9.1.0/24", interface="sbx0")
    policy = Policy(1, (make_sandbox("agent", "10.9.0.0/24"), named))
    problems = [problem for problem in preflight(CONFIG, policy, FakeHost()) if problem.where == "--sandbox-if"]
    assert [problem.what.split(":")[0] for problem in problems] == [
        "sandboxes.agent.link_pins_sources",
        "sandboxes.builder.interface",
    ]
    assert "behind interface 'sbx0' (--sandbox-if) with sandbox" in problems[0].what
    pinned = Policy(1, tuple(dataclasses.replace(s, link_pins_sources=True) for s in policy.sandboxes))
    assert [p for p in preflight(CONFIG, pinned, FakeHost()) if p.where == "--sandbox-if"] == []
    apart = Policy(1, (make_sandbox("agent", "10.9.0.0/24"), make_sandbox("builder", "10.9.1.0/24", interface="sbx1")))
    assert [p for p in preflight(CONFIG, apart, FakeHost()) if p.where == "--sandbox-if"] == []


def test_a_redis_that_may_evict_records_stops_the_start_whatever_the_spool() -> None:
    evicts = "Redis maxmemory-policy is 'allkeys-lru': a flood could evict earlier records; set ..."
    [problem] = preflight(CONFIG, POLICY, FakeHost(redis_down=evicts))
    assert problem.where == "--redis-url" and "maxmemory-policy" in problem.line()
