"""The one loader of policy files: ``version: 1`` YAML in, the frozen runtime `Policy` (egress.policy.model) out.

Two stages, like Stripe smokescreen: the YAML is composed to nodes (every value keeps its line), then every field
is checked against the schema and built into the runtime model. Every problem is collected and reported at once,
each as ``file:line: field.path: what is wrong``; nothing is returned unless the whole file is valid.

The schema is documented, field by field, in ``rules/policy.example.yaml`` and ``docs/policy.md``. In short::

    version: 1
    sandboxes:
      NAME:                                   # [a-z][a-z0-9_-]*, at most 32 characters
        sources: [CIDR, ...]                  # required; v4 and v6; no overlap (IPv4-mapped IPv6 counts as v4)
        any_source: true                      # required beside a catch-all source (0.0.0.0/0, ::/0)
        interface: IFNAME                     # optional
        mode: enforce | report                # default enforce
        allow:
          hosts: [name | name:port | "*.domain" | {host: name, ports: [port, ...], answers: [CIDR],
                  expect: [tls, http, ssh, any]}, ...]
          networks: [{cidr: CIDR, ports: [port, ...], protocols: [tcp, udp],
                      expect: [tls, http, ssh, quic, dtls, any], tls: bound | any}, ...]
        decrypt: [host pattern, ...]          # each must also be allowed by allow.hosts
        upgrades: [token, ...]                # HTTP Upgrade protocols allowed besides websocket (default none)
        dns: {max_name_length, encoded_subdomains, ..., tunnel_hold, allow_ranges: [CIDR], deny_ranges: [CIDR]}
        detectors: {mining, tunnel, crypto_node, mining_shape: block | record | allow, mining_shape_window: 1-600}
        quarantine: {after: N, within: SECONDS, categories: [mining, tunnel, crypto-node], webhook: URL}
        flow_log: true | false                # log its allowed connections, aggregated (default false)
        max_connections: N                    # connections held at once, all sources together (default 1024)
        link_pins_sources: true               # required on each of several sandboxes behind one interface
    retention: {max_age_days, max_records}    # optional
    flow_log: {max_age_days, max_records, max_destinations}  # optional: how flow logs are kept (docs/flow-log.md)
    on_apply: keep | close_forbidden          # established connections on apply (default keep)
    x-NAME: ...                               # ignored: a place for anchored blocks that '<<: *NAME' merges in

Host names are IDNA-normalised (Python's IDNA 2003 codec, the one the resolver and the proxy use) to lowercase
punycode; a punycode label (``xn--``) must decode; ``*.`` is allowed only as the whole leftmost label and means
strictly below that domain. Networks carry no IPv6 zone id (``fe80::1%eth0``: nftables cannot take one). Messages
quote at most 80 characters of a value (`yamlnodes.quote`); a file over `max_bytes` is refused before parsing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Iterable
from pathlib import Path

from egress.policy import addresses, links, quarantine, yamlnodes
from egress.policy.addresses import Placed
from egress.policy.hostnames import host_pattern
from egress.policy.model import (
    DEFAULT_EXPECT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_RANGE,
    Address,
    DetectorAction,
    DetectorActions,
    DnsLimits,
    Expect,
    FlowLogSettings,
    HostRule,
    Mode,
    Network,
    NetworkRule,
    OnApply,
    Policy,
    Retention,
    Sandbox,
    TlsNames,
)
from egress.policy.yamlnodes import (
    BOOL,
    INT,
    MAX_BYTES,
    NodeChecker,
    Problem,
    RulesError,
    compose,
    key_name,
    kind,
    line,
    quote,
    read_text,
)

__all__ = [
    "Problem",
    "RulesError",
    "check_policy",
    "format_problems",
    "host_pattern",
    "load_policy",
    "max_bytes",
    "parse_policy",
]

VERSION = 1
_TOP = frozenset({"version", "sandboxes", "retention", "on_apply", "flow_log"})
_SANDBOX = frozenset({"sources", "any_source", "interface", "mode", "allow", "decrypt", "dns", "detectors", "upgrades"}
                     | {"quarantine", "flow_log", "max_connections", "link_pins_sources"})  # fmt: skip
_UPGRADE = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-z]+")
"""An HTTP ``Upgrade`` protocol name (an RFC 9110 §5.6.2 token, lowercased), without a ``/version``."""
_ALLOW = frozenset({"hosts", "networks"})
_HOST = frozenset({"host", "ports", "answers", "expect"})
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
FLOW_LOG_RANGES = {"max_age_days": (1, 3650), "max_records": (1, 100_000_000), "max_destinations": (1, 100_000)}
_SANDBOX_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
"""Linux interface names (IFNAMSIZ 16 with the NUL), restricted to what is safe to render into nftables."""
MAX_BYTES_VARIABLE = "EGRESS_POLICY_MAX_BYTES"
_TRUE, _FALSE = frozenset({"true", "yes", "on"}), frozenset({"false", "no", "off"})


def max_bytes() -> int:
    """The policy file size cap: ``$EGRESS_POLICY_MAX_BYTES`` when set, else `yamlnodes.MAX_BYTES` (4 MiB).

    Read from the environment on purpose: ``egress rules check``, the gateway and the API then refuse the same
    files, whoever runs them, with no flag to keep in step. A value that is not a positive integer is an error."""
    raw = os.environ.get(MAX_BYTES_VARIABLE)
    if raw is None:
        return MAX_BYTES
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{MAX_BYTES_VARIABLE}={quote(raw)} is not a positive number of bytes")
    return int(raw)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _covers(rule: str, pattern: str) -> bool:
    """Whether allow pattern ``rule`` covers every name ``pattern`` (a decrypt entry) can match."""
    if rule.startswith("*."):
        return (pattern[1:] if pattern.startswith("*.") else pattern).endswith(rule[1:])
    return rule == pattern


class _Checker(NodeChecker):
    """Validation of one policy file: problems lead with the field path."""

    def __init__(self, file: str, problems: list[Problem], gateway: tuple[Address, ...] = ()) -> None:
        super().__init__(file, problems)
        self.gateway = gateway
        self.sources: list[Placed] = []
        self._ports: dict[frozenset[int], frozenset[int]] = {}
        """One object per distinct port set: 100,000 rules on port 443 share one (memory, and pickling)."""

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

    def choice[E: (Mode, DetectorAction, OnApply)](self, node: yamlnodes.Node, path: str, enum: type[E]) -> E | None:
        value = self.text(node, path)
        if value is None:
            return None
        try:
            return enum(value)
        except ValueError:
            self.at(node, path, f"{quote(value)} is not one of: {', '.join(member.value for member in enum)}")
            return None

    def network(self, node: yamlnodes.Node, path: str) -> Network | None:
        value = self.text(node, path)
        if value is None:
            return None
        try:
            network = ipaddress.ip_network(value, strict=True)
        except ValueError as error:
            why = str(error).replace(repr(value), quote(value))  # ipaddress quotes the whole value
            self.at(node, path, f"{quote(value)} is not a network ({why[:200]})")
            return None
        zone = addresses.zone_id(network)
        if zone is not None:
            self.at(node, path, f"{quote(value)}: an IPv6 zone id ('%{quote(zone, 20)[1:-1]}') is not allowed here; "
                                "a policy's networks are the same on every interface (a sandbox names its own with "
                                "interface:)")  # fmt: skip
            return None
        return network

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
            self.at(node, path, f"bad host {quote(text)}: {error}")
            return None

    # The schema, top down.
    def build(self, root: yamlnodes.Node | None) -> Policy | None:
        if root is None:
            self.problem(None, "empty file: a policy needs at least 'version: 1' and 'sandboxes'")
            return None
        if isinstance(root, yamlnodes.MappingNode):  # x-... keys hold anchored blocks for '<<' merges, nothing else
            kept = [(k, v) for k, v in root.value if not key_name(k).startswith("x-")]
            root = yamlnodes.MappingNode(root.tag, kept, root.start_mark, root.end_mark)
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
        self.check_sources(sandboxes)
        if not self.problems:  # a check of the whole policy: on sandboxes that loaded, or it is only noise
            for found in links.shared(sandboxes):
                self.problems.append(Problem(self.file, found.sandbox.line, found.message()))
        on_apply = self.choice(top["on_apply"], "on_apply", OnApply) if "on_apply" in top else None
        flow_log = self.flow_log(top["flow_log"]) if "flow_log" in top else FlowLogSettings()
        return Policy(VERSION, tuple(sandboxes), retention, self.file, on_apply or OnApply.KEEP, flow_log)

    def retention(self, node: yamlnodes.Node) -> Retention:
        fields = self.fields(node, "retention", frozenset(RETENTION_RANGES))
        values = {key: self.ranged(fields[key], f"retention.{key}", *RETENTION_RANGES[key]) for key in fields}
        return Retention(**{key: value for key, value in values.items() if value is not None})

    def flow_log(self, node: yamlnodes.Node) -> FlowLogSettings:
        fields = self.fields(node, "flow_log", frozenset(FLOW_LOG_RANGES))
        values = {key: self.ranged(fields[key], f"flow_log.{key}", *FLOW_LOG_RANGES[key]) for key in fields}
        return FlowLogSettings(**{key: value for key, value in values.items() if value is not None})

    def sandbox(self, key: yamlnodes.Node, node: yamlnodes.Node) -> Sandbox:
        name = key_name(key)
        path = f"sandboxes.{name}"
        if not _SANDBOX_NAME.fullmatch(name):
            self.at(key, path, f"bad sandbox name {quote(name)}: a-z first, then a-z, 0-9, '-', '_' (32 at most)")
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
                    self.sources.append(Placed(name, network, line(item), f"{path}.sources[{index}]"))
        any_source = self.boolean(fields["any_source"], f"{path}.any_source") if "any_source" in fields else False
        interface = None
        if "interface" in fields:
            interface = self.text(fields["interface"], f"{path}.interface")
            if interface is not None and (not _IFNAME.fullmatch(interface) or interface in {".", ".."}):
                self.at(fields["interface"], f"{path}.interface", f"{quote(interface)} is not an interface name")
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
        cutoff = quarantine.parse(self, fields["quarantine"], f"{path}.quarantine") if "quarantine" in fields else None
        flow_log = self.boolean(fields["flow_log"], f"{path}.flow_log") if "flow_log" in fields else False
        pinned, limit = self.link(fields, path)
        return Sandbox(
            name, tuple(sources), interface, mode, hosts, networks, decrypt, dns, detectors, line(key), upgrades,
            bool(any_source), cutoff, bool(flow_log), pinned, limit,
        )  # fmt: skip

    def link(self, fields: dict[str, yamlnodes.Node], path: str) -> tuple[bool, int]:
        """``link_pins_sources`` (default false) and ``max_connections`` (default `MAX_CONNECTIONS`)."""
        pinned = "link_pins_sources" in fields
        pinned = pinned and bool(self.boolean(fields["link_pins_sources"], f"{path}.link_pins_sources"))
        limit = None
        if "max_connections" in fields:
            limit = self.ranged(fields["max_connections"], f"{path}.max_connections", *MAX_CONNECTIONS_RANGE)
        return pinned, limit or MAX_CONNECTIONS

    def boolean(self, node: yamlnodes.Node, path: str) -> bool | None:
        value = str(node.value).lower() if isinstance(node, yamlnodes.ScalarNode) and node.tag == BOOL else ""
        if value in _TRUE or value in _FALSE:
            return value in _TRUE
        self.at(node, path, f"must be true or false, not {kind(node)}")
        return None

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
        expect = DEFAULT_EXPECT
        if isinstance(node, yamlnodes.MappingNode):
            fields = self.fields(node, rule_id, _HOST, ("host",))
            if "expect" in fields:
                expect = self.expect(fields["expect"], f"{rule_id}.expect")
            if "ports" in fields:
                ports = self.ports(fields["ports"], f"{rule_id}.ports")
            if "answers" in fields:
                answers = self.answers(fields["answers"], f"{rule_id}.answers")
            if "host" not in fields:
                return None
            text = self.text(fields["host"], f"{rule_id}.host")
            if text is None:
                return None
            if ":" in text and text.count(":") == 1:
                self.at(fields["host"], f"{rule_id}.host", f"{quote(text)}: write the port under ports, not after ':'")
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
                    self.at(node, rule_id, f"{quote(port_text)} is not a port (1-65535)")
                    return None
                ports = frozenset({port})
            pattern = self.pattern(node, rule_id, text)
        if pattern is None:
            return None
        return HostRule(pattern, self._ports.setdefault(ports, ports), rule_id, line(node), answers, expect)

    def answers(self, node: yamlnodes.Node, path: str) -> tuple[Network, ...]:
        """A host rule's ``answers: [CIDR, ...]``: at least one."""
        answers = self.network_list(node, path)
        if isinstance(node, yamlnodes.SequenceNode) and not answers:
            self.at(node, path, "empty: list networks, or leave answers out")
        return answers

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
                        self.at(item, place, f"{quote(name)} is not one of: {', '.join(_PROTOCOLS)}")
                protocols = frozenset(name for _, _, name in names if name in _PROTOCOLS) or protocols
            expect = self.expect(fields["expect"], f"{rule_id}.expect") if "expect" in fields else DEFAULT_EXPECT
            tls = TlsNames.BOUND
            if "tls" in fields:
                tls = self.tls_names(fields["tls"], f"{rule_id}.tls") or tls
            if network is not None:
                rules.append(NetworkRule(network, ports, protocols, rule_id, line(item), expect, tls))
        return tuple(rules)

    def expect(self, node: yamlnodes.Node, path: str) -> frozenset[Expect]:
        """``expect: [tls, http, ssh, quic, dtls, any]`` of a network or host rule: at least one; ``any`` written
        out, never implied."""
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
                self.at(item, f"{path}[{index}]", f"{quote(value)} is not one of: {', '.join(e.value for e in Expect)}")
        return frozenset(found) or DEFAULT_EXPECT

    def tls_names(self, node: yamlnodes.Node, path: str) -> TlsNames | None:
        value = self.text(node, path)
        if value is None:
            return None
        try:
            return TlsNames(value)
        except ValueError:
            self.at(node, path, f"{quote(value)} is not one of: {', '.join(e.value for e in TlsNames)}")
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
                self.at(item, f"{path}[{index}]", f"{quote(text)} is not an HTTP Upgrade protocol name")
                continue
            names.append(text.lower())
        return tuple(names)

    def check_sources(self, sandboxes: list[Sandbox]) -> None:
        """A source address belongs to one sandbox and is not the gateway's (egress.policy.addresses)."""
        confirmed = {sandbox.name for sandbox in sandboxes if sandbox.any_source}
        for placed, message in addresses.overlaps(self.sources):
            self.problems.append(Problem(self.file, placed.line, message))
        for placed in self.sources:
            if addresses.catch_all(placed.network) and placed.sandbox not in confirmed:
                why = "makes every address on the interface this sandbox (no anti-spoofing)"
                message = f"{placed.path}: {placed.network} {why}: write any_source: true to mean it"
                self.problems.append(Problem(self.file, placed.line, message))
            for message in addresses.gateway_problems(placed, self.gateway, placed.sandbox in confirmed):
                self.problems.append(Problem(self.file, placed.line, message))


def _limit(file: str, max_size: int | None) -> int:
    """``max_size``, else `max_bytes`; a bad ``$EGRESS_POLICY_MAX_BYTES`` is a problem of the load, not a crash."""
    if max_size is not None:
        return max_size
    try:
        return max_bytes()
    except ValueError as error:
        raise RulesError([Problem(file, 1, str(error))]) from None


def parse_policy(
    text: str, file: str = "<memory>", gateway: Iterable[Address] = (), max_size: int | None = None
) -> Policy:
    """Validate a policy's text; raise `RulesError` with every problem, in line order.

    ``gateway``: addresses of the gateway that no source may contain (`egress.policy.addresses`). ``max_size``:
    the size cap in bytes (default `max_bytes`), checked before the text is parsed."""
    limit = _limit(file, max_size)
    if len(text) > limit and len(text.encode("utf-8")) > limit:  # characters <= bytes: encode only if it may be over
        message = f"file too large: over the limit of {limit} bytes (checked before parsing)"
        raise RulesError([Problem(file, 1, message)])
    problems: list[Problem] = []
    root = compose(text, file, problems)
    policy = _Checker(file, problems, tuple(gateway)).build(root) if not problems else None
    if problems or policy is None:
        raise RulesError(sorted(problems, key=lambda problem: problem.line))
    return policy


def load_policy(path: str | Path, gateway: Iterable[Address] = (), max_size: int | None = None) -> Policy:
    """Read and validate a policy file; raise `RulesError` with every problem (an unreadable file, one over the
    size cap or not UTF-8 is one)."""
    limit = _limit(str(path), max_size)
    return parse_policy(read_text(path, limit), str(path), gateway, limit)


def check_policy(path: str | Path, gateway: Iterable[Address] = (), max_size: int | None = None) -> list[Problem]:
    """Every problem of a policy file (empty when it is valid); touches nothing."""
    try:
        load_policy(path, gateway, max_size)
    except RulesError as error:
        return list(error.problems)
    return []


def format_problems(problems: Iterable[Problem]) -> str:
    """One ``file:line: field: problem`` line each, then a count (``""`` when there are none)."""
    listed = [str(problem) for problem in problems]
    if not listed:
        return ""
    return "\n".join([*listed, f"{len(listed)} problem{'s' if len(listed) != 1 else ''}"])
