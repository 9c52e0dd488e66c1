"""Every row of the public corpora's EXPECTED.tsv holds: what must be found is found, what must not is not; and
in ``corpus-tunnels`` each tunnel finding names the protocol the capture holds (`TUNNEL_PROTOCOLS`).

These are real captures recorded by others; nothing here knows their names, addresses or times.
"""

from __future__ import annotations

import hashlib
import pathlib

import pytest

from egress.detect.registry import build_detectors
from egress.scanner import FileStats, FlowFinding, Scanner
from tests.corpus import CORPUS, TUNNELS, corpus_path, expected_rows, needs_corpus, needs_tunnels
from tests.lists import shipped_lists

SCORED = {"mining", "tunnel", "crypto-node"}

TUNNEL_PROTOCOLS = {
    "tunnel/ndpi_teredo.pcap": {"teredo"},
    "tunnel/ndpi_6in4tunnel.pcap": {"ipv6-in-ip"},
    "tunnel/ndpi_4in4tunnel.pcap": {"ipip"},
    "tunnel/ndpi_4in6tunnel.pcap": {"ipip"},
    "tunnel/ndpi_gre.pcapng": {"gre"},
    "tunnel/ndpi_vxlan.pcap": {"vxlan"},
    "tunnel/ndpi_mullvad_wireguard.pcap": {"wireguard"},
    "tunnel/ndpi_protonvpn.pcap": {"wireguard", "vpn-service"},
    "tunnel/ndpi_tunnelbear.pcap": {"wireguard", "vpn-service"},
    "tunnel/ndpi_softether.pcap": {"vpn-service"},
    "tunnel/ndpi_openvpn_nohmac_tcp.pcapng": {"openvpn"},
    "tunnel/ndpi_openvpn_obfuscated.pcapng": {"openvpn", "fully-encrypted"},
    "tunnel/ndpi_openvpn-tlscrypt.pcap": {"openvpn"},
    "tunnel/ndpi_tls_heur__shadowsocks-tcp.pcapng": {"socks5", "fully-encrypted"},
    "tunnel/ndpi_tls_heur__vmess-tcp.pcapng": {"socks5", "fully-encrypted"},
    "tunnel/ndpi_pptp.pcap": {"pptp"},
    "tunnel/ndpi_ipsec_isakmp_esp.pcap": {"ipsec-ike", "esp"},
}
"""What each tunnel capture of corpus-tunnels holds, as egress's protocol labels (its ground-truth column): every
tunnel finding in it must be one of these. The Shadowsocks and VMess captures hold the local SOCKS hop besides the
encrypted stream."""


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    # The checkout's own lists (an editable install elsewhere would otherwise map another checkout's rules/), loaded
    # once per process (tests/lists.py).
    return Scanner(build_detectors(shipped_lists()))


def _scan(scanner: Scanner, corpus: pathlib.Path, row: dict[str, str]) -> list[FlowFinding]:
    path = corpus_path(row["file"], corpus)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"], "capture differs from the listed one"
    stats = FileStats(str(path))
    findings = list(scanner.scan(str(path), stats))
    assert stats.error is None
    assert stats.packets == int(row["packets"])
    found = {item.finding.category.value for item in findings}
    described = "; ".join(f"{f.finding.category}/{f.finding.protocol}: {f.finding.evidence}" for f in findings[:8])
    for category in (part for part in row["must_find"].split(",") if part in SCORED):
        assert category in found, f"no {category} finding in {row['file']} (found: {described or 'nothing'})"
    for category in (part for part in row["must_not_find"].split(",") if part in SCORED):
        assert category not in found, f"{category} wrongly found in {row['file']}: {described}"
    return findings


@pytest.mark.corpus
@needs_corpus
@pytest.mark.parametrize("row", expected_rows(), ids=lambda row: row["file"])
def test_expected_row_holds(scanner: Scanner, row: dict[str, str]) -> None:
    _scan(scanner, CORPUS, row)


@pytest.mark.corpus
@needs_tunnels
@pytest.mark.parametrize("row", expected_rows(TUNNELS), ids=lambda row: row["file"])
def test_tunnel_row_holds_and_names_the_protocol(scanner: Scanner, row: dict[str, str]) -> None:
    findings = _scan(scanner, TUNNELS, row)
    if row["must_find"] == "tunnel":
        named = {item.finding.protocol for item in findings if item.finding.category == "tunnel"}
        assert named and named <= TUNNEL_PROTOCOLS[row["file"]], f"{row['file']}: named {sorted(named)}"


def test_every_tunnel_capture_has_its_protocols() -> None:
    tunnels = {row["file"] for row in expected_rows(TUNNELS) if row["must_find"] == "tunnel"}
    assert tunnels == (TUNNEL_PROTOCOLS.keys() if tunnels else set())
