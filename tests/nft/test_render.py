"""`egress.nft.render`: golden files (regenerate with EGRESS_UPDATE_GOLDEN=1), the shape every ruleset must have,
and, as root, nft itself checking each golden file in a throwaway namespace."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Callable

import pytest

from egress.nft import runner
from egress.nft.names import UNCOUNTED_MARK
from egress.nft.render import UDP_SET_MIN, GatewaySettings, render, render_lockdown, render_quarantine
from egress.policy.model import Mode, Policy
from egress.policy.partition import process_of
from tests.nft import make_sandbox, udp_rule
from tests.nft.netns import namespace

GOLDEN = pathlib.Path(__file__).parent / "golden"
SETTINGS = GatewaySettings(sandbox_if="sbx0", uplink_if="up0", proxy_ports=(8081,), dns_port=5353, nflog_group=7)
WORKERS = GatewaySettings(sandbox_if="sbx0", uplink_if="up0", proxy_ports=(8081, 8082, 8083), nflog_group=12)


def v4_single() -> str:
    return render(Policy(1, (make_sandbox("agents", "10.10.0.0/24"),), file="rules/v4.yaml"), SETTINGS)


def dual_stack_two() -> str:
    policy = Policy(
        1,
        (
            make_sandbox("agents", "10.10.0.0/24", "fd10::/64"),
            make_sandbox("ci-runners", "10.20.0.0/24", "10.20.1.0/24", "fd20::/64", interface="sbx1"),
        ),
        file="rules/two.yaml",
    )
    return render(policy, WORKERS)


def report_mode() -> str:
    policy = Policy(
        1, (make_sandbox("shadow", "10.30.0.0/24", "fd30::/64", mode=Mode.REPORT),), file="rules/report.yaml"
    )
    return render(policy, SETTINGS)


def udp_networks() -> str:
    networks = (
        udp_rule("agents", 0, "192.0.2.0/24", 123),
        udp_rule("agents", 1, "2001:db8::/32", 443, 4433),
        udp_rule("agents", 2, "198.51.100.7/32"),
        udp_rule("agents", 3, "203.0.113.0/24", 22, protocols=("tcp",)),
        udp_rule("agents", 4, "203.0.113.9/32", 5000, protocols=("tcp", "udp")),
    )
    policy = Policy(1, (make_sandbox("agents", "10.10.0.0/24", "fd10::/64", networks=networks),), file="rules/udp.yaml")
    settings = GatewaySettings(sandbox_if="sbx0", uplink_if="up0", masquerade=False)
    return render(policy, settings)


def udp_set() -> str:
    """Many UDP networks on one port: one interval set and one rule each way (issue 12)."""
    many = tuple(udp_rule("agents", i, f"192.0.2.{4 * i}/30", 53) for i in range(UDP_SET_MIN + 2))
    networks = (*many, udp_rule("agents", 99, "2001:db8::/32", 53))
    policy = Policy(1, (make_sandbox("agents", "10.10.0.0/24", networks=networks),), file="rules/udp-set.yaml")
    return render(policy, SETTINGS)


def dhcp() -> str:
    policy = Policy(1, (make_sandbox("agents", "10.10.0.0/24", "fd10::/64"),), file="rules/dhcp.yaml")
    return render(policy, dataclasses.replace(SETTINGS, dhcp=True))


def lockdown() -> str:
    return render_lockdown(SETTINGS)


def quarantined() -> str:
    policy = Policy(
        1,
        (make_sandbox("agents", "10.10.0.0/24", "fd10::/64"), make_sandbox("ci", "10.20.0.0/24")),
        file="rules/quarantine.yaml",
    )
    return render(policy, SETTINGS, quarantined=["agents", "gone"])


def two_resolvers() -> str:
    """Two resolver processes: each sandbox's DNS to its own process's port (`egress.policy.partition`)."""
    policy = Policy(
        1,
        (make_sandbox("agents", "10.10.0.0/24", "fd10::/64"), make_sandbox("second", "10.20.0.0/24")),
        file="rules/two-resolvers.yaml",
    )
    return render(policy, dataclasses.replace(SETTINGS, more_dns_ports=(5354,)))


CASES: dict[str, Callable[[], str]] = {
    "v4_single": v4_single,
    "dual_stack_two": dual_stack_two,
    "report_mode": report_mode,
    "udp_networks": udp_networks,
    "udp_set": udp_set,
    "lockdown": lockdown,
    "dhcp": dhcp,
    "quarantined": quarantined,
    "two_resolvers": two_resolvers,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_golden_file(name: str) -> None:
    text = CASES[name]()
    path = GOLDEN / f"{name}.nft"
    if os.environ.get("EGRESS_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"rendering changed: diff against {path} (EGRESS_UPDATE_GOLDEN=1 rewrites)"


@pytest.mark.parametrize("name", sorted(CASES))
def test_touches_only_its_own_table(name: str) -> None:
    text = CASES[name]()
    assert "flush" not in text
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert body[:3] == ["table inet egress {}", "delete table inet egress", "table inet egress {"]
    assert [line for line in body if not line.startswith("\t")] == [*body[:3], "}"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_drop_is_logged_with_a_rate_limit(name: str) -> None:
    lines = CASES[name]().splitlines()
    drops = [i for i, line in enumerate(lines) if line.rstrip().endswith(" drop") or line.strip() == "drop"]
    assert drops
    for i in drops:
        if "oifname" in lines[i] and "jump" not in lines[i]:
            continue  # lockdown's outbound drops: nothing from a sandbox to record
        prefix = r"log prefix \"egress(?:-uncounted)? \w+.*\" group \d+"
        assert re.search(rf"limit rate \d+/second burst \d+ packets {prefix}", lines[i - 1])


def test_several_workers_share_new_connections_round_robin() -> None:
    text = dual_stack_two()
    assert "redirect to :numgen inc mod 3 map { 0 : 8081, 1 : 8082, 2 : 8083 }" in text
    assert "th dport { 8081, 8082, 8083 } accept" in text


def test_each_sandbox_s_dns_goes_to_its_own_resolver_process() -> None:
    """Every source set of a sandbox, both families, UDP and TCP, to the port `partition.process_of` names; the
    rest to process 0; the gateway takes redirected DNS on every process's port and on no other."""
    text = two_resolvers()
    head = 'iifname "sbx0" '
    dns = "meta l4proto { tcp, udp } th dport 53 redirect to"
    assert process_of("agents", 2) == 0 and process_of("second", 2) == 1  # the golden file's premise
    lines = [line.strip() for line in text.splitlines() if dns in line]
    assert lines == [
        f"{head}ip saddr @src4_agents {dns} :5353",
        f"{head}ip6 saddr @src6_agents {dns} :5353",
        f"{head}ip saddr @src4_second {dns} :5354",
        f"{head}ip6 saddr @src6_second {dns} :5354",
        f"{head}{dns} :5353",
    ]
    assert "ct status dnat meta l4proto { tcp, udp } th dport { 5353, 5354 } accept" in text
    assert render(two_resolvers_policy(), SETTINGS) == render(
        two_resolvers_policy(), dataclasses.replace(SETTINGS, more_dns_ports=())
    )


def two_resolvers_policy() -> Policy:
    return Policy(1, (make_sandbox("agents", "10.10.0.0/24"), make_sandbox("second", "10.20.0.0/24")))


def test_one_resolver_process_renders_the_single_redirect_as_before() -> None:
    text = render(two_resolvers_policy(), SETTINGS)
    assert [line.strip() for line in text.splitlines() if "th dport 53 redirect" in line] == [
        'iifname "sbx0" meta l4proto { tcp, udp } th dport 53 redirect to :5353'
    ]


def test_tcp_only_network_rules_add_nothing_to_forwarding() -> None:
    text = udp_networks()
    assert "networks[3]" not in text  # TCP always goes through the proxy, which applies the rule
    assert 'ip daddr 203.0.113.9/32 udp dport 5000 jump udp_gate comment "sandboxes.agents.allow.networks[4]"' in text
    assert "ip daddr 198.51.100.7/32 meta l4proto udp jump udp_gate" in text
    assert "masquerade" not in text


def test_many_udp_networks_share_one_set_and_are_judged_both_ways() -> None:
    text = udp_set()
    assert "set udp4_agents_0 { type ipv4_addr; flags interval; auto-merge; elements = { 192.0.2.0/30, " in text
    assert (
        'ip daddr @udp4_agents_0 udp dport 53 jump udp_gate comment "sandboxes.agents.allow.networks[0] and 9 more'
        in text
    )
    assert "ip saddr @udp4_agents_0 udp sport 53 ct state established accept" in text
    assert 'ip6 daddr 2001:db8::/32 udp dport 53 jump udp_gate comment "sandboxes.agents.allow.networks[99]"' in text
    # established UDP is judged by those rules, not accepted for being established (only TCP is)
    for chain in ("sandbox_forward", "to_sandbox"):
        assert f"chain {chain} {{\n\t\tmeta l4proto tcp ct state established accept\n" in text


def test_related_is_accepted_only_for_errors_about_the_sandboxs_own_flows() -> None:
    """Red team 2: a blanket ``ct state related accept`` forwarded ICMP errors the sandbox crafted quoting the
    proxy's own upstream connections (chosen bytes to the site). Only errors quoting a connection the sandbox
    opened, of an error's types and size, pass; both directions."""
    text = dual_stack_two()
    assert "ct state related accept" not in text
    for name in ("agents", "ci-runners"):
        chain = text.split(f"chain forward_{name} {{\n")[1].split("}\n")[0]
        assert chain.startswith(f"\t\tct state related ct original ip saddr @src4_{name} icmp type {{ ")
        # from the sandbox, headers only: a longer quote carried a pool message past the UDP gate (red team 12)
        assert "} ip hdrlength 5 ip length <= 56 accept" in chain and "} ip6 length <= 56 accept" in chain
        assert "576" not in chain and "1240" not in chain
        to = text.split("chain to_sandbox {\n")[1].split("}\n")[0]
        assert f"ip daddr @src4_{name} ct state related ct original ip saddr @src4_{name} icmp type" in to
        assert "ip length <= 576 accept" in to and "ip6 length <= 1240 accept" in to
    assert text.count("ct state related") == 12  # 2 sandboxes x 2 families x (from, to, to the gateway)


def test_the_gateway_itself_takes_only_errors_about_a_sandboxs_own_connections() -> None:
    """Red team 11: ``sandbox_input`` accepted every ICMP error of an error's type, unconditioned; a fragmentation
    needed quoting an echo reply from the uplink to allowed.lab set the gateway's path MTU to it (552 bytes, every
    sandbox, 10 minutes). Only errors about a connection a sandbox opened to the gateway pass, as forwarded."""
    text = dual_stack_two()
    chain = text.split("chain sandbox_input {\n")[1].split("}\n")[0]
    assert "established,related" not in chain
    assert "\t\ticmp type" not in chain and "\t\ticmpv6 type { destination-unreachable" not in chain
    for name in ("agents", "ci-runners"):
        # and from that sandbox only: from another, it set the gateway's path MTU to the first (red team 11's last row)
        assert f"ip saddr @src4_{name} ct state related ct original ip saddr @src4_{name} icmp type {{ " in chain
        assert f"ip6 saddr @src6_{name} ct state related ct original ip6 saddr @src6_{name} icmpv6 type {{ " in chain
    assert chain.count("ct state related") == 4


@pytest.mark.root
def test_nft_takes_a_set_of_100000_udp_networks_in_one_transaction() -> None:
    many = tuple(
        udp_rule("agents", i, f"{10 + i // 65536}.{i // 256 % 256}.{i % 256}.0/24", 53) for i in range(100_000)
    )
    text = render(Policy(1, (make_sandbox("agents", "172.16.0.0/24", networks=many),)), SETTINGS)
    assert len(text) < 2_500_000 and text.count("udp4_agents_0") == 3  # the set, one rule each way
    with namespace() as ns:
        runner.apply(text, netns=ns)
        assert len(runner.list_set("egress", "udp4_agents_0", netns=ns)) > 0


def test_report_mode_logs_and_lets_through() -> None:
    text = report_mode()
    assert 'log prefix "egress report shadow" group 7\n\t\taccept' in text
    assert "egress drop shadow" not in text


def test_v4_only_sandbox_still_gets_an_ipv6_source_set_so_its_ipv6_is_spoofed() -> None:
    text = v4_single()
    assert "set src6_agents { type ipv6_addr; flags interval; auto-merge; }" in text


def test_sandbox_interface_joins_the_sandbox_side() -> None:
    text = dual_stack_two()
    assert 'iifname { "sbx0", "sbx1" } jump sandbox_sources' in text
    assert 'iifname "sbx1" ip saddr @src4_ci-runners return' in text


def test_names_that_collide_in_nftables_are_refused() -> None:
    policy = Policy(1, (make_sandbox("a.b", "10.0.0.0/24"), make_sandbox("a_b", "10.1.0.0/24")))
    with pytest.raises(ValueError, match="same nftables name"):
        render(policy, SETTINGS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sandbox_if": "x" * 16},
        {"sandbox_if": 'a"b'},
        {"proxy_ports": ()},
        {"proxy_ports": (8081, 8081)},
        {"dns_port": 8081},
        {"dns_port": 70000},
        {"more_dns_ports": (5353,)},
        {"more_dns_ports": (8081,)},
        {"more_dns_ports": (5354, 5354)},
        {"more_dns_ports": (0,)},
        {"more_dns_ports": tuple(range(5354, 5354 + 16))},
        {"table": "bad table"},
        {"nflog_group": -1},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"sandbox_if": "sbx0", "uplink_if": "up0", **kwargs}
    with pytest.raises(ValueError):
        GatewaySettings(**fields)  # type: ignore[arg-type]


@pytest.mark.root
def test_nft_accepts_every_golden_file() -> None:
    with namespace() as ns:
        for name in sorted(CASES):
            runner.check(CASES[name](), netns=ns)
            runner.apply(CASES[name](), netns=ns)  # and applies it twice over (idempotent)
            runner.apply(CASES[name](), netns=ns)


def test_hostile_names_and_rule_ids_stay_inside_their_quotes() -> None:
    rule = udp_rule("x", 0, "192.0.2.1/32", 53)
    rule = type(rule)(rule.network, rule.ports, rule.protocols, 'sandboxes.a"b\\c.allow.networks[0]' + "x" * 200, 1)
    text = render(Policy(1, (make_sandbox('a"b c', "10.0.0.0/24", networks=(rule,)),)), SETTINGS)
    assert 'comment "sandboxes.a_b_c.allow.networks[0]xxx' in text
    assert 'log prefix "egress drop a_b_c" group 7' in text
    with pytest.raises(ValueError, match="1 to 100 characters"):
        render(Policy(1, (make_sandbox("n" * 101, "10.0.0.0/24"),)), SETTINGS)


@pytest.mark.root
def test_nft_accepts_hostile_names_and_an_empty_policy() -> None:
    rule = udp_rule("x", 0, "192.0.2.1/32", 53)
    rule = type(rule)(rule.network, rule.ports, rule.protocols, 'sandboxes.a"b\\c.allow.networks[0]' + "x" * 200, 1)
    hostile = Policy(1, (make_sandbox('a"b c' + "n" * 95, "10.0.0.0/24", networks=(rule,)),))
    with namespace() as ns:
        runner.check(render(hostile, SETTINGS), netns=ns)
        runner.check(render(Policy(1, ()), SETTINGS), netns=ns)
        runner.check(render_lockdown(SETTINGS, Policy(1, (make_sandbox("b", "10.0.0.0/24", interface="sbx9"),))), ns)


def test_lockdown_covers_the_sandboxes_own_interfaces_too() -> None:
    text = render_lockdown(SETTINGS, Policy(1, (make_sandbox("b", "10.0.0.0/24", interface="sbx9"),)))
    assert 'iifname { "sbx0", "sbx9" } drop' in text
    assert 'oifname { "sbx0", "sbx9" } drop' in text


@pytest.mark.parametrize("name", ["v4_single", "dual_stack_two", "report_mode", "udp_networks", "udp_set"])
def test_every_sandbox_drop_is_counted_before_its_rate_limited_log(name: str) -> None:
    """Each logged drop or report of sandbox traffic is preceded by the per-key count (in the set that says what
    the kernel did with it), in a chain of its own (a full set must not skip the verdict); its log is metered per
    (source, protocol, destination) under the rule's ceiling, with the rule's plain limit for keys a full meter set
    could not take; ICMP gets a budget of its own before the shared one. A packet the count chain could not count
    (`UNCOUNTED_MARK`) is logged at once under a budget of its own and given the verdict, before any meter."""
    lines = [line.strip() for line in CASES[name]().splitlines()]
    key4, key6 = "ip saddr . meta l4proto . ip daddr", "ip6 saddr . meta l4proto . ip6 daddr"
    for index, line in enumerate(lines):
        if line in ("drop", "accept") and index and "egress" in lines[index - 1]:
            kind = re.search(r'log prefix "egress (\w+)', lines[index - 1])
            assert kind is not None
            if kind[1] not in ("drop", "report", "guard"):
                continue
            counted = "pass" if kind[1] == "report" else "drop"
            block = lines[index - 14 : index]
            assert block[0] == f"jump count_{counted}", block
            uncounted = f"meta mark & {UNCOUNTED_MARK:#010x} != 0"
            budget = "limit rate 2000/second burst 10000 packets"
            for offset, only in ((1, "meta l4proto { icmp, ipv6-icmp } "), (3, "")):
                log = f'{only}{uncounted} {budget} log prefix "egress-uncounted {kind[1]}'
                assert block[offset].startswith(log), block
                assert block[offset + 1] == f"{only}{uncounted} {line}", block
            for offset, only in ((5, "meta l4proto { icmp, ipv6-icmp } "), (10, "")):
                meter = "limit rate 10/second burst 20 packets } limit rate 1000/second burst 2000 packets log"
                assert block[offset].startswith(f"{only}update @logs4 {{ {key4} {meter}"), block
                assert block[offset + 1].startswith(f"{only}update @logs6 {{ {key6} {meter}"), block
                plain = "limit rate 50/second burst 100 packets log"
                assert block[offset + 2].startswith(f"{only}{key4} != @logs4 {plain}"), block
                assert block[offset + 3].startswith(f"{only}{key6} != @logs6 {plain}"), block
            assert block[9] == f"meta l4proto {{ icmp, ipv6-icmp }} {line}", block
    text = CASES[name]()
    clear, mark = (
        f"meta mark set meta mark & {~UNCOUNTED_MARK & 0xFFFFFFFF:#010x}",
        f"meta mark set meta mark | {UNCOUNTED_MARK:#010x}",
    )
    for counted, sets in (("drop", "drops"), ("pass", "passes")):  # nothing but the counts: a full set ends it
        at = lines.index(f"chain count_{counted} {{")
        assert lines[at + 1 : at + 7] == [
            clear,
            f"update @{sets}4a {{ {key4} }}",
            f"update @{sets}6a {{ {key6} }}",
            f"{key4} != @{sets}4a {mark}",  # what the update could not add is marked uncounted
            f"{key6} != @{sets}6a {mark}",
            "}",
        ]
    for counting in ("drops4a", "drops4b", "passes4a", "passes4b"):  # no timeout: emptied by the reader only
        assert f"set {counting} {{ type ipv4_addr . inet_proto . ipv4_addr; flags dynamic; size 65536;" in text
    assert (
        "set logs6 { type ipv6_addr . inet_proto . ipv6_addr; flags dynamic,timeout; timeout 60s; size 65536;" in text
    )


def test_a_quarantine_replaces_the_sets_contents_in_one_script() -> None:
    policy = Policy(1, (make_sandbox("agents", "10.10.0.0/24", "fd10::/64"), make_sandbox("ci", "10.20.0.0/24")))
    assert render_quarantine(policy, SETTINGS, {"agents", "ci"}) == (
        "flush set inet egress quarantine4\n"
        "add element inet egress quarantine4 { 10.10.0.0/24, 10.20.0.0/24 }\n"
        "flush set inet egress quarantine6\n"
        "add element inet egress quarantine6 { fd10::/64 }\n"
    )
    assert (
        render_quarantine(policy, SETTINGS, ())
        == "flush set inet egress quarantine4\nflush set inet egress quarantine6\n"
    )


def test_each_sandbox_has_one_connection_bound_for_both_families() -> None:
    """Red team 2's idle flood: ``max_connections`` per sandbox, all its sources and both families together (one
    ``ct count`` rule per sandbox, in a chain both families jump to), on new connections, before the redirect."""
    agents = dataclasses.replace(make_sandbox("agents", "10.10.0.0/24", "fd10::/64"), max_connections=300)
    ci = make_sandbox("ci-runners", "10.20.0.0/24", interface="sbx1")
    text = render(Policy(1, (agents, ci), file="rules/two.yaml"), SETTINGS)
    assert "type filter hook prerouting priority mangle; policy accept;" in text
    assert 'iifname { "sbx0", "sbx1" } meta l4proto tcp ct state new jump sandbox_limits' in text
    assert "ip saddr @src4_agents jump limit_agents\n\t\tip6 saddr @src6_agents jump limit_agents" in text
    assert text.count("ct count") == 2
    assert "chain limit_agents {\n\t\tct count 300 return\n" in text
    assert "chain limit_ci-runners {\n\t\tct count 1024 return\n" in text
    assert 'log prefix "egress limit agents"' in text
