"""The one loader of policy files: ``version: 1`` YAML in, the frozen runtime `Policy` (egress.policy.model) out.

Two stages, like Stripe smokescreen: the YAML is composed to nodes (every value keeps its line), then every field
is checked against the schema and built into the runtime model. Every problem is collected and reported at once,
each as ``file:line: field.path: what is wrong``; nothing is returned unless the whole file is valid.

The schema is documented, field by field, in ``rules/policy.example.yaml`` and ``docs/policy.md``. In short::

    version: 1
    sandboxes:
      NAME:                                   # [a-z][a-z0-9_-]*, at most 32 characters
        sources: [CIDR, ...]                  # required; v4 and v6; no overlap with another sandbox's
        interface: IFNAME                     # optional
        mode: enforce | report                # default enforce
        allow:
          hosts: [name | name:port | "*.domain" | {host: name, ports: [port, ...], answers: [CIDR]}, ...]
          networks: [{cidr: CIDR, ports: [port, ...], protocols: [tcp, udp],
                      expect: [tls, http, ssh, any], tls: bound | any}, ...]
        decrypt: [host pattern, ...]          # each must also be allowed by allow.hosts
        upgrades: [token, ...]                # HTTP Upgrade protocols allowed besides websocket (default none)
        dns: {max_name_length, encoded_subdomains, ..., tunnel_hold, allow_ranges: [CIDR], deny_ranges: [CIDR]}
        detectors: {mining, tunnel, crypto_node, mining_shape: block | record | allow, mining_shape_window: 1-600}
    retention: {max_age_days, max_records}    # optional

Host names are IDNA-normalised (Python's IDNA 2003 codec: the ``idna`` package is not installed) to lowercase
punycode; ``*.`` is allowed only as the whole leftmost label and means strictly below that domain.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path

from egress.policy import yamlnodes
from egress.policy.lists import valid_name
from egress.policy.model import (
    DEFAULT_EXPECT,
    DetectorAction,
    DetectorActions,
    DnsLimits,
    Expect,
    HostRule,
    Mode,
    Network,
    NetworkRule,
    Policy,
    Retention,
    Sandbox,
    TlsNames,
)
from egress.policy.yamlnodes import INT, NodeChecker, Problem, RulesError, compose, key_name, kind, line

__all__ = ["Problem", "RulesError", "check_policy", "format_problems", "host_pattern", "load_policy", "parse_policy"]

VERSION = 1
_TOP = frozenset({"version", "sandboxes", "retention"})
_SANDBOX = frozenset({"sources", "interface", "mode", "allow", "decrypt", "dns", "detectors", "upgrades"})
_UPGRADE = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
"""An HTTP ``Upgrade`` protocol name (an RFC 9110 §5.6.2 token, lowercased), without a ``/version``."""
_ALLOW = frozenset({"hosts", "networks"})
_HOST = frozenset({"host", "ports", "answers"})
_NETWORK = frozenset({"cidr", "ports", "protocols", "expect", "tls"})
_PROTOCOLS = ("tcp", "udp")
_DETECTORS = frozenset(field.name for field in dataclasses.fields(DetectorActions))
DNS_RANGES = {
    "max_name_length": (16, 253),
    "encoded_subdomains": (1, 1000),
    "volume_subdomains": (1, 100_000),
    "rare_type_subdomains": (1, 1000),
    "exfil_chars": (16, 253),
    "odd_subdomains": (1, 1000),
    "tunnel_hold": (1, 7 * 24 * 3600),
}
"""Accepted range of each integer `DnsLimits` field (names longer than 253 characters do not exist in DNS)."""
DNS_NETWORK_FIELDS = frozenset({"allow_ranges", "deny_ranges"})
RETENTION_RANGES = {"max_age_days": (1, 3650), "max_records": (1, 1_000_000_000)}
_SANDBOX_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
"""Linux interface names (IFNAMSIZ 16 with the NUL), restricted to what is safe to render into nftables."""


def host_pattern(text: str) -> str:
    """Normalise a host name or ``*.domain`` pattern (IDNA, punycode, lowercase, no trailing dot).

    Raises `ValueError` saying what is wrong.
    """
    wildcard = text.startswith("*.")
    base = text[2:] if wildcard else text
    if "*" in base:
        raise ValueError("'*' is allowed only as the whole leftmost label, as in '*.example.com'")
    base = base.removesuffix(".")
    try:
        ipaddress.ip_address(base.strip("[]"))
    except ValueError:
        pass
    else:
        raise ValueError("an IP address is not a host name: allow it under allow.networks")
    try:
        normal = base.encode("idna").decode("ascii").lower()
    except UnicodeError as error:
        raise ValueError(f"not a valid host name ({error})") from None
    if not valid_name(normal):
        raise ValueError("not a DNS name (labels of 1-63 letters, digits, '-' or '_'; at least two labels)")
    return "*." + normal if wildcard else normal


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _covers(rule: str, pattern: str) -> bool:
    """Whether allow pattern ``rule`` covers every name ``pattern`` (a decrypt entry) can match."""
    if rule.startswith("*."):
        return (pattern[1:] if pattern.startswith("*.") else pattern).endswith(rule[1:])
    return rule == pattern


class _Checker(NodeChecker):
    """Validation of one policy file: problems lead with the field path."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        super().__init__(file, problems)
        self._source_lines: dict[tuple[Network, str], tuple[int, str]] = {}

    def type_message(self, what: str, expected: str, node: yamlnodes.Node) -> str:
        return f"{what or 'the file'}: must be {expected}, not {kind(node)}"

    def unknown_key_message(self, what: str, key: str, allowed: frozenset[str]) -> str:
        return f"{_join(what, key)}: unknown key (allowed here: {', '.join(sorted(allowed))})"

    def duplicate_key_message(self, what: str, key: str, first: int) -> str:
        return f"{_join(what, key)}: duplicate key (first on line {first})"

    def at(self, node: yamlnodes.Node | None, path: str, message: str) -> None:
        self.problem(node, f"{path}: {message}")

    def fields(
        self, node: yamlnodes.Node, path: str, allowed: frozenset[str], required: Iterable[str] = ()
    ) -> dict[str, yamlnodes.Node]:
        fields = self.mapping(node, path, allowed)
        if isinstance(node, yamlnodes.MappingNode):
            for key in required:
                if key not in fields:
                    self.at(node, _join(path, key), "required, missing")
        return fields

    def ranged(self, node: yamlnodes.Node, path: str, low: int, high: int, what: str = "") -> int | None:
        value = self.integer(node, path)
        if value is not None and not low <= value <= high:
            self.at(node, path, f"{value} is not {what} ({low}-{high})" if what else f"{value} is not in {low}-{high}")
            return None
        return value

    def choice[E: (Mode, DetectorAction)](self, node: yamlnodes.Node, path: str, enum: type[E]) -> E | None:
        value = self.text(node, path)
        if value is None:
            return None
        try:
            return enum(value)
        except ValueError:
            self.at(node, path, f"{value!r} is not one of: {', '.join(member.value for member in enum)}")
            return None

    def network(self, node: yamlnodes.Node, path: str) -> Network | None:
        value = self.text(node, path)
        if value is None:
            return None
        try:
            return ipaddress.ip_network(value, strict=True)
        except ValueError as error:
            self.at(node, path, f"{value!r} is not a network ({error})")
            return None

    def ports(self, node: yamlnodes.Node, path: str) -> frozenset[int]:
        items = self.sequence(node, path)
        if isinstance(node, yamlnodes.SequenceNode) and not items:
            self.at(node, path, "empty: list at least one port, or leave ports out for any port")
        ports = (self.ranged(item, f"{path}[{index}]", 1, 65535, "a port") for index, item in enumerate(items))
        return frozenset(port for port in ports if port is not None)

    def pattern(self, node: yamlnodes.Node, path: str, text: str) -> str | None:
        try:
            return host_pattern(text)
        except ValueError as error:
            self.at(node, path, f"bad host {text!r}: {error}")
            return None

    # The schema, top down.
    def build(self, root: yamlnodes.Node | None) -> Policy | None:
        if root is None:
            self.problem(None, "empty file: a policy needs at least 'version: 1' and 'sandboxes'")
            return None
        top = self.fields(root, "", _TOP, ("version", "sandboxes"))
        if "version" in top:
            node = top["version"]
            if node.tag == INT and node.value != str(VERSION):
                self.at(node, "version", f"{node.value} is not supported: this egress reads version {VERSION}")
                return None  # another version's schema: its other fields would only add noise
            if node.tag != INT:
                self.at(node, "version", f"must be the integer {VERSION}, not {kind(node)}")
        retention = self.retention(top["retention"]) if "retention" in top else Retention()
        sandboxes: list[Sandbox] = []
        if "sandboxes" in top:
            pairs = self.pairs(top["sandboxes"], "sandboxes", None)
            if isinstance(top["sandboxes"], yamlnodes.MappingNode) and not pairs:
                self.at(top["sandboxes"], "sandboxes", "empty: name at least one sandbox")
            sandboxes = [self.sandbox(key, value) for key, value in pairs]
        self.check_overlaps(sandboxes)
        return Policy(VERSION, tuple(sandboxes), retention, self.file)

    def retention(self, node: yamlnodes.Node) -> Retention:
        fields = self.fields(node, "retention", frozenset(RETENTION_RANGES))
        values = {key: self.ranged(fields[key], f"retention.{key}", *RETENTION_RANGES[key]) for key in fields}
        return Retention(**{key: value for key, value in values.items() if value is not None})

    def sandbox(self, key: yamlnodes.Node, node: yamlnodes.Node) -> Sandbox:
        name = key_name(key)
        path = f"sandboxes.{name}"
        if not _SANDBOX_NAME.fullmatch(name):
            self.at(key, path, f"bad sandbox name {name!r}: a-z first, then a-z, 0-9, '-', '_' (32 at most)")
        fields = self.fields(node, path, _SANDBOX, ("sources",))
        sources: list[Network] = []
        if "sources" in fields:
            items = self.sequence(fields["sources"], f"{path}.sources")
            if isinstance(fields["sources"], yamlnodes.SequenceNode) and not items:
                self.at(fields["sources"], f"{path}.sources", "empty: list the sandbox's source networks")
            for index, item in enumerate(items):
                network = self.network(item, f"{path}.sources[{index}]")
                if network is not None:
                    sources.append(network)
                    self._source_lines[network, name] = (line(item), f"{path}.sources[{index}]")
        interface = None
        if "interface" in fields:
            interface = self.text(fields["interface"], f"{path}.interface")
            if interface is not None and (not _IFNAME.fullmatch(interface) or interface in {".", ".."}):
                self.at(fields["interface"], f"{path}.interface", f"{interface!r} is not an interface name")
        mode = Mode.ENFORCE
        if "mode" in fields:
            mode = self.choice(fields["mode"], f"{path}.mode", Mode) or mode
        hosts: tuple[HostRule, ...] = ()
        networks: tuple[NetworkRule, ...] = ()
        if "allow" in fields:
            allow = self.fields(fields["allow"], f"{path}.allow", _ALLOW)
            hosts = self.hosts(allow["hosts"], f"{path}.allow.hosts") if "hosts" in allow else ()
            networks = self.networks(allow["networks"], f"{path}.allow.networks") if "networks" in allow else ()
        decrypt = self.decrypt(fields["decrypt"], f"{path}.decrypt", hosts) if "decrypt" in fields else ()
        dns = DnsLimits()
        if "dns" in fields:
            dns = self.dns(fields["dns"], f"{path}.dns")
        detectors = DetectorActions()
        if "detectors" in fields:
            acts = self.fields(fields["detectors"], f"{path}.detectors", _DETECTORS)
            chosen = {  # mining_shape_window is seconds (1-600), every other field an action
                key: self.ranged(item, f"{path}.detectors.{key}", 1, 600)
                if key == "mining_shape_window"
                else self.choice(item, f"{path}.detectors.{key}", DetectorAction)
                for key, item in acts.items()
            }
            detectors = DetectorActions(**{k: v for k, v in chosen.items() if v is not None})  # type: ignore[arg-type]
        upgrades = self.upgrades(fields["upgrades"], f"{path}.upgrades") if "upgrades" in fields else ()
        return Sandbox(
            name, tuple(sources), interface, mode, hosts, networks, decrypt, dns, detectors, line(key), upgrades
        )

    def dns(self, node: yamlnodes.Node, path: str) -> DnsLimits:
        limits = self.fields(node, path, frozenset(DNS_RANGES) | DNS_NETWORK_FIELDS)
        values: dict[str, object] = {}
        for key, value in limits.items():
            if key in DNS_NETWORK_FIELDS:
                values[key] = self.network_list(value, f"{path}.{key}")
            else:
                values[key] = self.ranged(value, f"{path}.{key}", *DNS_RANGES[key])
        return DnsLimits(**{key: value for key, value in values.items() if value is not None})  # type: ignore[arg-type]

    def network_list(self, node: yamlnodes.Node, path: str) -> tuple[Network, ...]:
        items = self.sequence(node, path)
        networks = (self.network(item, f"{path}[{index}]") for index, item in enumerate(items))
        return tuple(network for network in networks if network is not None)

    def hosts(self, node: yamlnodes.Node, path: str) -> tuple[HostRule, ...]:
        rules: list[HostRule] = []
        seen: dict[tuple[str, frozenset[int]], str] = {}
        for index, item in enumerate(self.sequence(node, path)):
            rule_id = f"{path}[{index}]"
            rule = self.host(item, rule_id)
            if rule is None:
                continue
            first = seen.setdefault((rule.pattern, rule.ports), rule_id)
            if first != rule_id:
                self.at(item, rule_id, f"{rule.pattern!r} repeats {first}")
            rules.append(rule)
        return tuple(rules)

    def host(self, node: yamlnodes.Node, rule_id: str) -> HostRule | None:
        ports: frozenset[int] = frozenset()
        answers: tuple[Network, ...] = ()
        if isinstance(node, yamlnodes.MappingNode):
            fields = self.fields(node, rule_id, _HOST, ("host",))
            if "ports" in fields:
                ports = self.ports(fields["ports"], f"{rule_id}.ports")
            if "answers" in fields:
                answers = self.network_list(fields["answers"], f"{rule_id}.answers")
                if isinstance(fields["answers"], yamlnodes.SequenceNode) and not answers:
                    self.at(fields["answers"], f"{rule_id}.answers", "empty: list networks, or leave answers out")
            if "host" not in fields:
                return None
            text = self.text(fields["host"], f"{rule_id}.host")
            if text is None:
                return None
            if ":" in text and text.count(":") == 1:
                self.at(fields["host"], f"{rule_id}.host", f"{text!r}: write the port under ports, not after ':'")
                return None
            pattern = self.pattern(fields["host"], f"{rule_id}.host", text)
        else:
            text = self.text(node, rule_id)
            if text is None:
                return None
            if text.count(":") == 1:
                text, _, port_text = text.partition(":")
                port = int(port_text) if port_text.isdigit() and port_text.isascii() else None
                if port is None or not 1 <= port <= 65535:
                    self.at(node, rule_id, f"{port_text!r} is not a port (1-65535)")
                    return None
                ports = frozenset({port})
            pattern = self.pattern(node, rule_id, text)
        return HostRule(pattern, ports, rule_id, line(node), answers) if pattern is not None else None

    def networks(self, node: yamlnodes.Node, path: str) -> tuple[NetworkRule, ...]:
        rules: list[NetworkRule] = []
        for index, item in enumerate(self.sequence(node, path)):
            rule_id = f"{path}[{index}]"
            fields = self.fields(item, rule_id, _NETWORK, ("cidr",))
            network = self.network(fields["cidr"], f"{rule_id}.cidr") if "cidr" in fields else None
            ports = self.ports(fields["ports"], f"{rule_id}.ports") if "ports" in fields else frozenset()
            protocols = frozenset({"tcp"})
            if "protocols" in fields:
                where = f"{rule_id}.protocols"
                items = self.sequence(fields["protocols"], where)
                if isinstance(fields["protocols"], yamlnodes.SequenceNode) and not items:
                    self.at(fields["protocols"], where, "empty: list tcp, udp or both, or leave it out for tcp")
                names = [(item, f"{where}[{i}]", self.text(item, f"{where}[{i}]")) for i, item in enumerate(items)]
                for item, place, name in names:
                    if name is not None and name not in _PROTOCOLS:
                        self.at(item, place, f"{name!r} is not one of: {', '.join(_PROTOCOLS)}")
                protocols = frozenset(name for _, _, name in names if name in _PROTOCOLS) or protocols
            expect = self.expect(fields["expect"], f"{rule_id}.expect") if "expect" in fields else DEFAULT_EXPECT
            tls = TlsNames.BOUND
            if "tls" in fields:
                tls = self.tls_names(fields["tls"], f"{rule_id}.tls") or tls
            if network is not None:
                rules.append(NetworkRule(network, ports, protocols, rule_id, line(item), expect, tls))
        return tuple(rules)

    def expect(self, node: yamlnodes.Node, path: str) -> frozenset[Expect]:
        """``expect: [tls, http, ssh, any]``: at least one; ``any`` written out, never implied."""
        items = self.sequence(node, path)
        if isinstance(node, yamlnodes.SequenceNode) and not items:
            self.at(node, path, "empty: list what the destination speaks (tls, http, ssh), or any")
        found: set[Expect] = set()
        for index, item in enumerate(items):
            value = self.text(item, f"{path}[{index}]")
            if value is None:
                continue
            try:
                found.add(Expect(value))
            except ValueError:
                self.at(item, f"{path}[{index}]", f"{value!r} is not one of: {', '.join(e.value for e in Expect)}")
        return frozenset(found) or DEFAULT_EXPECT

    def tls_names(self, node: yamlnodes.Node, path: str) -> TlsNames | None:
        value = self.text(node, path)
        if value is None:
            return None
        try:
            return TlsNames(value)
        except ValueError:
            self.at(node, path, f"{value!r} is not one of: {', '.join(e.value for e in TlsNames)}")
            return None

    def decrypt(self, node: yamlnodes.Node, path: str, hosts: tuple[HostRule, ...]) -> tuple[str, ...]:
        patterns: list[str] = []
        for index, item in enumerate(self.sequence(node, path)):
            where = f"{path}[{index}]"
            text = self.text(item, where)
            pattern = self.pattern(item, where, text) if text is not None else None
            if pattern is None:
                continue
            if not any(_covers(rule.pattern, pattern) for rule in hosts):
                self.at(item, where, f"{pattern!r} is not allowed by allow.hosts: only allowed hosts are decrypted")
            patterns.append(pattern)
        return tuple(patterns)

    def upgrades(self, node: yamlnodes.Node, path: str) -> tuple[str, ...]:
        names: list[str] = []
        for index, item in enumerate(self.sequence(node, path)):
            text = self.text(item, f"{path}[{index}]")
            if text is None:
                continue
            if not _UPGRADE.fullmatch(text.lower()):
                self.at(item, f"{path}[{index}]", f"{text!r} is not an HTTP Upgrade protocol name")
                continue
            names.append(text.lower())
        return tuple(names)

    def check_overlaps(self, sandboxes: list[Sandbox]) -> None:
        """A source address belongs to one sandbox: no network may overlap another sandbox's."""
        for later_index, later in enumerate(sandboxes):
            for earlier in sandboxes[:later_index]:
                for network in later.sources:
                    for other in earlier.sources:
                        if network.version == other.version and network.overlaps(other):
                            at, path = self._source_lines[network, later.name]
                            first, other_path = self._source_lines[other, earlier.name]
                            self.problems.append(Problem(self.file, at, f"{path}: {network} overlaps {other} "
                                                         f"({other_path}, line {first})"))  # fmt: skip


def parse_policy(text: str, file: str = "<memory>") -> Policy:
    """Validate a policy's text; raise `RulesError` with every problem, in line order."""
    problems: list[Problem] = []
    root = compose(text, file, problems)
    policy = _Checker(file, problems).build(root) if not problems else None
    if problems or policy is None:
        raise RulesError(sorted(problems, key=lambda problem: problem.line))
    return policy


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raise `RulesError` with every problem (an unreadable file is one)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RulesError([Problem(str(path), 1, f"cannot read: {error}")]) from None
    return parse_policy(text, str(path))


def check_policy(path: str | Path) -> list[Problem]:
    """Every problem of a policy file (empty when it is valid); touches nothing."""
    try:
        load_policy(path)
    except RulesError as error:
        return list(error.problems)
    return []


def format_problems(problems: Iterable[Problem]) -> str:
    """One ``file:line: field: problem`` line each, then a count (``""`` when there are none)."""
    listed = [str(problem) for problem in problems]
    if not listed:
        return ""
    return "\n".join([*listed, f"{len(listed)} problem{'s' if len(listed) != 1 else ''}"])
