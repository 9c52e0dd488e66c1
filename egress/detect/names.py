"""Name lists: pool names (mining), DoH/DoT resolvers and reverse-tunnel services (tunnel), by name or address.

`NameLists` is built from the validated lists (`egress.detect.namelist`, loaded by `egress.policy.lists`) and answers
``match(name)`` and ``match_address(ip)``. `make_name_detector` turns it into a `FlowView` detector for TCP
(and DNS-over-QUIC on UDP) that reads the name a client asks for:

- TLS: the ClientHello's server_name (RFC 6066 §3), via `egress.detect.tls`.
- HTTP/1.x: the Host header (RFC 9112 §3.2) or the CONNECT target, via `egress.detect.http`.
- DoT: any TLS to port 853 (RFC 7858 §3.1); DoQ: QUIC to UDP 853 (RFC 9250 §4.1.1).
- DoH: an SNI or Host on the DoH list; TLS without SNI to a DoH resolver address on 443 (RFC 8484 §5 leaves
  the resolver's address as the only sign when the client sends no name); or HTTP asking for ``/dns-query`` or
  the ``application/dns-message`` media type (RFC 8484 §4.1, §6).

Names with an SNI are judged by the SNI only: several resolvers sit on shared CDN addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from egress.detect import http, tls
from egress.detect.base import MORE, Category, Detector, Finding, FlowView, Result, Transport, evidence
from egress.detect.namelist import NameList, Network

DETECTOR = "names"
DOT_PORT = 853
HTTPS_PORT = 443
_DOH_PATH = "/dns-query"
_DOH_TYPE = "application/dns-message"
_ADDRESS: dict[int, type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address]] = {
    4: ipaddress.IPv4Address,
    6: ipaddress.IPv6Address,
}
_NETWORK: dict[int, type[ipaddress.IPv4Network] | type[ipaddress.IPv6Network]] = {
    4: ipaddress.IPv4Network,
    6: ipaddress.IPv6Network,
}
NamesState = dict[str, Any]
"""`NameLists.state`: ``listed`` ([list name, category, protocol] each), ``names`` (the suffix, exact and
below-a-wildcard tables, name to index in ``listed``), ``hosts`` ([IP version, address, index]), ``networks``
([IP version, network address, prefix length, index])."""


@dataclass(frozen=True, slots=True)
class Listed:
    """Which list a name or address is on, and what a hit on it means."""

    list_name: str
    category: Category
    protocol: str


class NameLists:
    """Matches names (by suffix or exactly, per list) and addresses against the loaded lists. Read-only."""

    __slots__ = ("_suffix", "_exact", "_below", "_hosts", "_networks", "_doh")

    def __init__(self, lists: Iterable[NameList]) -> None:
        self._suffix: dict[str, Listed] = {}
        self._exact: dict[str, Listed] = {}
        self._below: dict[str, Listed] = {}
        self._hosts: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, Listed] = {}
        self._networks: list[tuple[Network, Listed]] = []
        for item in lists:
            listed = Listed(item.name, item.category, item.protocol)
            for name in item.names:
                if item.match == "suffix":
                    self._suffix.setdefault(name, listed)
                elif name.startswith("*."):
                    self._below.setdefault(name[2:], listed)
                else:
                    self._exact.setdefault(name, listed)
            for network in item.addresses:
                if network.prefixlen == network.max_prefixlen:  # one address (num_addresses makes 3 objects)
                    self._hosts.setdefault(network.network_address, listed)
                else:
                    self._networks.append((network, listed))

    def state(self) -> NamesState | None:
        """The index as plain data (strings, integers, lists; JSON can hold it) for `restored` to rebuild, or None
        where it cannot say it all: an address with an IPv6 zone (``fe80::1%eth0``), which the plain form drops."""
        keys = [*self._hosts, *(network.network_address for network, _ in self._networks)]
        if any(isinstance(key, ipaddress.IPv6Address) and key.scope_id is not None for key in keys):
            return None
        listed: dict[Listed, int] = {}

        def number(entry: Listed) -> int:
            return listed.setdefault(entry, len(listed))

        names = [
            {name: number(hit) for name, hit in table.items()} for table in (self._suffix, self._exact, self._below)
        ]
        hosts = [[address.version, int(address), number(hit)] for address, hit in self._hosts.items()]
        networks = [
            [network.version, int(network.network_address), network.prefixlen, number(hit)]
            for network, hit in self._networks
        ]
        table = [[entry.list_name, entry.category.value, entry.protocol] for entry in listed]
        return {"listed": table, "names": names, "hosts": hosts, "networks": networks}

    @classmethod
    def restored(cls, state: NamesState) -> NameLists:
        """The `NameLists` whose `state` is ``state``: equal tables, in the same order, with keys of the same types.
        Raises KeyError, IndexError, TypeError or ValueError on anything `state` does not make."""
        listed = [Listed(str(name), Category(category), str(protocol)) for name, category, protocol in state["listed"]]
        lists = cls(())
        suffix, exact, below = state["names"]
        lists._suffix = {str(name): listed[index] for name, index in suffix.items()}
        lists._exact = {str(name): listed[index] for name, index in exact.items()}
        lists._below = {str(name): listed[index] for name, index in below.items()}
        lists._hosts = {_ADDRESS[version](number): listed[index] for version, number, index in state["hosts"]}
        lists._networks = [
            (_NETWORK[version]((number, prefixlen)), listed[index])
            for version, number, prefixlen, index in state["networks"]
        ]
        return lists

    def match(self, name: str) -> tuple[str, Category, str] | None:
        """(list name, category, protocol) of the most specific entry covering ``name``, or ``None``."""
        name = name.lower().rstrip(".")
        hit = self._exact.get(name) or self._suffix.get(name)
        pos = name.find(".")
        while hit is None and pos >= 0:
            parent = name[pos + 1 :]
            hit = self._suffix.get(parent) or self._below.get(parent)
            pos = name.find(".", pos + 1)
        return (hit.list_name, hit.category, hit.protocol) if hit else None

    def match_address(self, ip: str) -> tuple[str, Category, str] | None:
        """(list name, category, protocol) of the entry containing address ``ip``, or ``None``."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        hit = self._hosts.get(address)
        if hit is None:
            hit = next((listed for network, listed in self._networks if address in network), None)
        return (hit.list_name, hit.category, hit.protocol) if hit else None


def _finding(hit: tuple[str, Category, str], what: str) -> Finding:
    list_name, category, protocol = hit
    return Finding(category, protocol, DETECTOR, evidence(f"{what} (on list {list_name})"))


def _is_doh(hit: tuple[str, Category, str] | None) -> bool:
    return hit is not None and hit[2] == "doh"


def _judge_tls(lists: NameLists, data: bytes, server: str, port: int, complete: bool, view: FlowView | None) -> Result:
    # ``view``: ``data`` is its client bytes, whose ClientHello the gate may have read already (`tls.client_hello_of`)
    hello = tls.parse_client_hello(data, partial=complete) if view is None else tls.client_hello_of(view)
    if hello is MORE:
        return None if complete else MORE
    if hello is None:
        return None
    sni = hello.sni
    if port == DOT_PORT:
        return Finding(Category.TUNNEL, "dot", DETECTOR, evidence(f"TLS to port 853, SNI {sni or '(none)'}"))
    if sni:
        hit = lists.match(sni)
        return _finding(hit, f"TLS SNI {sni}") if hit else None
    if port == HTTPS_PORT:
        hit = lists.match_address(server)
        if _is_doh(hit):
            assert hit is not None
            return _finding(hit, f"TLS without SNI to {server}:{port}")
    return None


def _judge_http(lists: NameLists, data: bytes, complete: bool) -> Result:
    request = http.parse_request(data)
    if request is MORE:
        return None if complete else MORE
    if request is None:
        return None
    host = request.target if request.method == "CONNECT" else request.headers.get("host", "")
    host = host.rsplit(":", 1)[0].strip("[]") if host.count(":") == 1 or host.startswith("[") else host
    hit = lists.match(host) if host else None
    if hit:
        return _finding(hit, f"HTTP {request.method} to {host}")
    media = request.headers.get("content-type", "") + request.headers.get("accept", "")
    if request.target.split("?", 1)[0].endswith(_DOH_PATH) or _DOH_TYPE in media:
        shown = f"HTTP {request.method} {request.target[:60]} Host {host}"
        return Finding(Category.TUNNEL, "doh", DETECTOR, evidence(shown))
    return None


def _judge_stream(
    lists: NameLists, data: bytes, server: str, port: int, complete: bool, view: FlowView | None = None
) -> Result:
    if not data:
        return None if complete else MORE
    if data[0] == tls.HANDSHAKE:
        return _judge_tls(lists, data, server, port, complete, view)
    if http.looks_like_http_request(data):
        return _judge_http(lists, data, complete)
    if len(data) < 8 and not complete and any(m.startswith(data) for m in http.METHODS):
        return MORE
    return None


def make_name_detector(lists: NameLists) -> Detector:
    """A `FlowView` detector flagging flows to listed names (TLS SNI, HTTP Host), DoT, DoQ and DoH."""

    def detect(view: FlowView) -> Result:
        meta = view.meta
        if meta.transport is Transport.UDP:
            if meta.dport == DOT_PORT and view.client_datagrams and view.client_datagrams[0][:1] >= b"\xc0":
                return Finding(Category.TUNNEL, "doq", DETECTOR, evidence(f"QUIC to {meta.dst}:{DOT_PORT}"))
            return None
        if meta.transport is not Transport.TCP:
            return None
        result = _judge_stream(lists, view.client, meta.dst, meta.dport, view.complete, view)
        if result is None and view.server[:1] == bytes([tls.HANDSHAKE]) and view.server[5:6] == b"\x01":
            # the capture started mid-flow and took the server for the client: the ClientHello is "server" data
            result = _judge_stream(lists, view.server, meta.src, meta.sport, view.complete)
        return result

    return detect
