"""Tests for egress.policy.loader: one fixture per failure mode of a policy file, the example policy, the model built.

Each fixture in fixtures/policy/ starts with ``# expect: LINE: MESSAGE`` lines, every problem it must produce in
order (a prefix of each message).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from egress.policy.loader import (
    DNS_RANGES,
    RulesError,
    check_policy,
    format_problems,
    host_pattern,
    load_policy,
    parse_policy,
)
from egress.policy.model import MAX_CONNECTIONS, DetectorAction, DetectorActions, DnsLimits, Mode, Retention

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "policy"
EXAMPLE = ROOT / "rules" / "policy.example.yaml"

MINIMAL = """\
version: 1
sandboxes:
  agents:
    sources: [10.20.0.0/24]
"""


def expectations(path: Path) -> list[str]:
    return [line.removeprefix("# expect: ") for line in path.read_text().splitlines() if line.startswith("# expect: ")]


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.yaml")), ids=lambda path: path.stem)
def test_each_failure_mode(path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path.name} must say what it expects"
    found = check_policy(path)
    got = [f"{problem.line}: {problem.message}" for problem in found]
    assert len(got) == len(expected), got
    for have, want in zip(got, expected, strict=True):
        assert have.startswith(want), got
    assert all(problem.file == str(path) for problem in found)
    with pytest.raises(RulesError):
        load_policy(path)


def test_fixtures_cover_the_failure_modes() -> None:
    names = {path.stem for path in FIXTURES.glob("*.yaml")}
    assert {
        "missing-version", "wrong-version", "unknown-key-top", "unknown-key-sandbox", "unknown-key-rule", "bad-cidr",
        "overlapping-sources", "bad-port", "bad-host-name", "bad-glob", "decrypt-not-allowed", "bad-mode",
        "bad-detector-action", "wrong-types", "several-errors",
    } <= names  # fmt: skip


def test_several_errors_all_reported_in_line_order_with_file_and_field() -> None:
    path = FIXTURES / "several-errors.yaml"
    with pytest.raises(RulesError) as caught:
        load_policy(path)
    problems = caught.value.problems
    assert len(problems) == 9
    assert [p.line for p in problems] == sorted(p.line for p in problems)
    assert f"{path}:22: sandboxes.agents.allow.hosts[1].ports[0]: 70000 is not a port (1-65535)" in str(caught.value)


def test_message_format_names_file_line_and_field_path() -> None:
    text = (
        MINIMAL
        + "    allow:\n      hosts:\n        - a.example\n        - b.example\n"
        + "        - {host: c.example, ports: [70000]}\n"
    )
    with pytest.raises(RulesError) as caught:
        parse_policy(text, "policy.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "policy.yaml:9: sandboxes.agents.allow.hosts[2].ports[0]: 70000 is not a port (1-65535)"
    ]


def test_example_loads() -> None:
    policy = load_policy(EXAMPLE)
    assert policy.version == 1
    assert policy.file == str(EXAMPLE)
    agents, evaluation = policy.sandboxes
    assert (agents.name, agents.mode, agents.interface) == ("agents", Mode.ENFORCE, "sbx-agents")
    assert (evaluation.name, evaluation.mode, evaluation.interface) == ("evaluation", Mode.REPORT, None)
    assert agents.sources == (ipaddress.ip_network("10.20.0.0/24"), ipaddress.ip_network("fd00:20::/64"))
    patterns = {rule.pattern: rule.ports for rule in agents.hosts}
    assert patterns["pypi.org"] == frozenset()
    assert patterns["files.pythonhosted.org"] == {443}
    assert patterns["*.githubusercontent.com"] == frozenset()
    assert patterns["github.com"] == {22, 443}
    assert "xn--bcher-kva.example" in patterns
    assert agents.hosts[2].rule_id == "sandboxes.agents.allow.hosts[2]"
    assert agents.networks[0].protocols == {"tcp"} and agents.networks[0].ports == {5432}
    assert agents.decrypt == ("api.github.com",)
    assert agents.detectors.crypto_node is DetectorAction.RECORD
    assert evaluation.detectors == DetectorActions() and evaluation.dns == DnsLimits() and evaluation.decrypt == ()
    assert policy.retention == Retention(30, 1_000_000)
    assert check_policy(EXAMPLE) == []


@pytest.mark.parametrize("path", sorted((ROOT / "rules").glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_policy_loads(path: Path) -> None:
    assert check_policy(path) == [], format_problems(check_policy(path))


def test_defaults_and_lines() -> None:
    policy = parse_policy(
        MINIMAL + "    allow:\n      hosts: [pypi.org]\n      networks:\n        - cidr: 192.0.2.0/24\n"
    )
    (sandbox,) = policy.sandboxes
    assert sandbox.mode is Mode.ENFORCE and sandbox.interface is None and sandbox.line == 3
    assert sandbox.dns == DnsLimits() and sandbox.detectors == DetectorActions()
    assert policy.retention == Retention()
    (host,) = sandbox.hosts
    assert (host.pattern, host.ports, host.rule_id, host.line) == (
        "pypi.org",
        frozenset(),
        "sandboxes.agents.allow.hosts[0]",
        6,
    )
    (network,) = sandbox.networks
    assert network.protocols == {"tcp"} and network.ports == frozenset() and network.line == 8
    assert network.rule_id == "sandboxes.agents.allow.networks[0]"
    with pytest.raises(dataclasses.FrozenInstanceError):
        sandbox.mode = Mode.REPORT  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pypi.org", "pypi.org"),
        ("PyPI.Org.", "pypi.org"),
        ("*.Example.COM", "*.example.com"),
        ("Bücher.example", "xn--bcher-kva.example"),
        ("*.bücher.example", "*.xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("_acme.example.com", "_acme.example.com"),
    ],
)
def test_host_pattern_normalises(text: str, expected: str) -> None:
    assert host_pattern(text) == expected


@pytest.mark.parametrize("text", ["*", "*.com", "a.*.com", "*a.example.com", "com", "", "1.2.3.4", "::1", "a b.com",
                                  "-a.example.com", "a" * 64 + ".com", "example.com:443"])  # fmt: skip
def test_host_pattern_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        host_pattern(text)


def test_string_host_with_port_and_udp_network() -> None:
    policy = parse_policy(
        MINIMAL + "    allow:\n      hosts: ['*.pythonhosted.org:443']\n"
        "      networks: [{cidr: '2001:db8::/32', ports: [53, 123], protocols: [udp, tcp]}]\n"
    )
    (sandbox,) = policy.sandboxes
    assert sandbox.hosts[0].pattern == "*.pythonhosted.org" and sandbox.hosts[0].ports == {443}
    assert sandbox.networks[0].protocols == {"tcp", "udp"} and sandbox.networks[0].ports == {53, 123}


@pytest.mark.parametrize(
    ("allowed", "decrypt", "ok"),
    [
        ("api.github.com", "api.github.com", True),
        ("'*.github.com'", "api.github.com", True),
        ("'*.github.com'", "'*.api.github.com'", True),
        ("'*.github.com'", "'*.github.com'", True),
        ("'*.github.com'", "github.com", False),
        ("api.github.com", "'*.github.com'", False),
        ("api.github.com:443", "API.GitHub.com", True),
    ],
)
def test_decrypt_must_be_allowed(allowed: str, decrypt: str, ok: bool) -> None:
    text = MINIMAL + f"    allow:\n      hosts: [{allowed}]\n    decrypt: [{decrypt}]\n"
    assert (parse_policy(text).sandboxes[0].decrypt != ()) if ok else bool(check_text(text))


def check_text(text: str) -> list[str]:
    try:
        parse_policy(text)
    except RulesError as error:
        return [problem.message for problem in error.problems]
    return []


def test_sources_of_different_families_never_overlap() -> None:
    text = MINIMAL + "  other:\n    sources: ['fd00:20::/64', 10.21.0.0/24]\n    interface: sbx1\n"
    policy = parse_policy(text)
    assert policy.sandbox_for(ipaddress.ip_address("10.21.0.9")) is policy.sandboxes[1]
    assert policy.sandbox_for(ipaddress.ip_address("10.20.0.9")) is policy.sandboxes[0]


def test_schema_ranges_follow_the_model() -> None:
    assert set(DNS_RANGES) == {field.name for field in dataclasses.fields(DnsLimits) if field.type == "int"}
    for name, (low, high) in DNS_RANGES.items():
        assert low <= getattr(DnsLimits(), name) <= high, name


def test_format_problems(tmp_path: Path) -> None:
    assert format_problems([]) == ""
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nsandboxes: {}\nextra: 1\n")
    text = format_problems(check_policy(path))
    assert text.splitlines() == [
        f"{path}:2: sandboxes: empty: name at least one sandbox",
        f"{path}:3: extra: unknown key (allowed here: flow_log, on_apply, retention, sandboxes, version)",
        "2 problems",
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    problems = check_policy(tmp_path / "missing.yaml")
    assert len(problems) == 1 and "cannot read" in problems[0].message
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00")
    assert check_policy(tmp_path / "binary.yaml")[0].message.startswith("not UTF-8: byte 0xff at column 1")


HUGE = "x" * 100_000
S = "version: 1\nsandboxes:\n  a:\n    sources: [10.0.0.0/8]\n"


@pytest.mark.parametrize(
    "text",
    [
        f"version: 1\n{HUGE}: 1\nsandboxes: {{a: {{sources: [10.0.0.0/8]}}}}\n",
        f"version: 1\nsandboxes:\n  {HUGE}:\n    sources: [10.0.0.0/8]\n",
        f"version: 1\nsandboxes:\n  a:\n    sources: [{HUGE}]\n",
        S + f"    interface: {HUGE}\n",
        S + f"    mode: {HUGE}\n",
        S + f"    allow: {{hosts: [{HUGE}.example]}}\n",
        S + f"    allow: {{hosts: [{'a.' * 50_000}example]}}\n",
        S + f"    allow: {{hosts: ['pypi.org:{HUGE}']}}\n",
        S + f"    allow: {{hosts: [{{host: 'a.b:{HUGE}'}}]}}\n",
        S + f"    allow: {{networks: [{{cidr: {HUGE}}}]}}\n",
        S + f"    upgrades: ['{HUGE}/']\n",
        S + f"    detectors: {{mining: {HUGE}}}\n",
        S + f"    allow: {{networks: [{{cidr: 10.0.0.0/8, expect: [{HUGE}]}}]}}\n",
        S + f"    allow: {{networks: [{{cidr: 10.0.0.0/8, tls: {HUGE}}}]}}\n",
        S + f"    dns: {{{HUGE}: 1}}\n",
        S + f"    allow: {{hosts: [a.example]}}\n    decrypt: [{HUGE}.b]\n",
        f'version: 1\nsandboxes: ["{HUGE}\n',
    ],
)
def test_messages_quote_at_most_80_characters_of_a_value(text: str) -> None:
    found = check_text(text)
    assert found, "the value must be refused"
    for message in found:
        assert "x" * 81 not in message and "a." * 41 not in message, message[:300]
        assert len(message) < 600, message[:300]


def test_the_size_cap_is_checked_before_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(MINIMAL + "#" * 200 + "\n")
    assert check_policy(path) == []
    monkeypatch.setenv("EGRESS_POLICY_MAX_BYTES", "100")
    (problem,) = check_policy(path)
    assert problem.line == 1 and problem.message.startswith(f"file too large: {path.stat().st_size} bytes, over the")
    with pytest.raises(RulesError, match="file too large"):
        parse_policy(path.read_text())
    assert check_policy(path, max_size=10_000) == []
    monkeypatch.setenv("EGRESS_POLICY_MAX_BYTES", "lots")
    (problem,) = check_policy(path)
    assert (problem.line, problem.message) == (1, "EGRESS_POLICY_MAX_BYTES='lots' is not a positive number of bytes")


def test_a_byte_that_is_not_utf8_is_reported_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(MINIMAL.encode() + b"    allow:\n      hosts: [caf\xe9.example]\n")
    (problem,) = check_policy(path)
    assert (problem.line, problem.message) == (6, "not UTF-8: byte 0xe9 at column 18 (invalid continuation byte)")


def test_merge_keys_share_a_block_between_sandboxes() -> None:
    policy = parse_policy(
        "version: 1\nx-common: &common\n  hosts: [pypi.org]\n  networks: [{cidr: 192.0.2.0/24, ports: [443]}]\n"
        "sandboxes:\n  a:\n    sources: [10.0.0.0/24]\n    allow: {<<: *common}\n"
        "  b:\n    sources: [10.0.1.0/24]\n    interface: sbx1\n"
        "    allow:\n      <<: *common\n      hosts: [files.pythonhosted.org]\n"
    )
    a, b = policy.sandboxes
    assert [rule.pattern for rule in a.hosts] == ["pypi.org"] and [r.pattern for r in b.hosts] == [
        "files.pythonhosted.org"
    ]
    assert a.networks[0].network == b.networks[0].network == ipaddress.ip_network("192.0.2.0/24")
    assert (a.hosts[0].rule_id, a.hosts[0].line) == ("sandboxes.a.allow.hosts[0]", 3)
    assert check_text("version: 1\nx-a: 1\nsandboxes: {a: {sources: [10.0.0.0/8], allow: {<<: 1}}}\n") == [
        "sandboxes.a.allow: '<<' (YAML merge key) must name an anchored mapping (not a mapping or a list of them)"
    ]


def test_mining_shape_action_and_window() -> None:
    """``detectors.mining_shape`` (an action, default record) and ``mining_shape_window`` (seconds, 1-600)."""
    (sandbox,) = parse_policy(MINIMAL + "    detectors: {mining_shape: block, mining_shape_window: 3}\n").sandboxes
    assert (sandbox.detectors.mining_shape, sandbox.detectors.mining_shape_window) == (DetectorAction.BLOCK, 3)
    assert (DetectorActions().mining_shape, DetectorActions().mining_shape_window) == (DetectorAction.RECORD, 60)
    with pytest.raises(RulesError) as raised:
        parse_policy(MINIMAL + "    detectors: {mining_shape: 3, mining_shape_window: 0}\n")
    messages = [problem.message for problem in raised.value.problems]
    assert any("must be a string" in message for message in messages), messages
    assert any("0 is not in 1-600" in message for message in messages), messages


def test_max_connections_has_a_default_and_a_range() -> None:
    """``max_connections``: the sandbox's bound on connections held at once (red team 2's idle flood)."""
    (sandbox,) = parse_policy(MINIMAL).sandboxes
    assert sandbox.max_connections == MAX_CONNECTIONS
    (sandbox,) = parse_policy(MINIMAL + "    max_connections: 300\n").sandboxes
    assert sandbox.max_connections == 300
    for bad in ("0", "15", "1000001", "many"):
        with pytest.raises(RulesError) as raised:
            parse_policy(MINIMAL + f"    max_connections: {bad}\n", "p.yaml")
        assert str(raised.value).startswith("p.yaml:5: sandboxes.agents.max_connections: "), str(raised.value)


def test_two_sandboxes_on_one_link_are_refused_unless_each_says_the_link_pins_sources() -> None:
    """Red team 2: on a shared link an agent with root takes another sandbox's address (and its allowlist)."""
    two = MINIMAL + "  builder:\n    sources: [10.21.0.0/24]\n"
    with pytest.raises(RulesError) as raised:
        parse_policy(two, "p.yaml")
    lines = str(raised.value).splitlines()
    assert [line.split(" behind ")[0] for line in lines] == [
        "p.yaml:3: sandboxes.agents.link_pins_sources:",
        "p.yaml:5: sandboxes.builder.link_pins_sources:",
    ]
    assert "--sandbox-if (no interface named) with sandbox 'builder' (line 5)" in lines[0]
    named = MINIMAL + "    interface: sbx1\n  builder:\n    sources: [10.21.0.0/24]\n    interface: sbx1\n"
    with pytest.raises(RulesError) as raised:
        parse_policy(named, "p.yaml")
    assert "p.yaml:6: sandboxes.builder.interface: behind interface 'sbx1' with sandbox 'agents'" in str(raised.value)
    pinned = two.replace("/24]\n", "/24]\n    link_pins_sources: true\n")
    assert [s.link_pins_sources for s in parse_policy(pinned).sandboxes] == [True, True]
    one_pinned = two.replace("sources: [10.21.0.0/24]\n", "sources: [10.21.0.0/24]\n    link_pins_sources: true\n")
    with pytest.raises(RulesError):
        parse_policy(one_pinned)  # the other one's agent could still take its address
    assert len(parse_policy(named.replace("    interface: sbx1\n  builder", "  builder")).sandboxes) == 2
