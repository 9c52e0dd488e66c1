"""Build rules/lists/{pool-domains,doh,reverse-tunnels,vpn-services}.yaml from the public lists in the shared corpus.

Re-run after refreshing the corpus: ``python rules/tools/build_lists.py [CORPUS_DIR]`` (default
../shared/corpus relative to the repository). The output is checked with egress.policy.lists before it is written.

Choices (also written into each file's header):

- Pools: nDPI's mining_hosts.txt and NoCoin's hosts.txt are curated for mining and taken whole. CoinBlocker's
  list.txt (a 2018 snapshot) also names exchanges, wallets, coin project sites and phishing look-alikes, so only
  its entries that look like pool servers are kept (a pool word in the name, or a registrable domain of a known
  pool operator), minus CoinBlocker's own white list and minus `NOT_POOLS`. The Block List Project's crypto list
  is used only as a negative: its registrable domains that are not pools are never listed.
- DoH: dibdot/DoH-IP-blocklists, names matched exactly (the list has bare domains such as fly.io that host far
  more than a resolver), plus the per-account wildcard names of three providers; addresses as listed.
- Reverse tunnels: the services' own documentation (no corpus source); see `REVERSE_TUNNELS`.
- VPN services: nDPI's host_match table (`NDPI_HOSTS`, `VPN_SERVICES`).
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from egress.detect.dns_tunnel import base_domain  # noqa: E402
from egress.policy.lists import load_lists, valid_name  # noqa: E402

OUT = REPO / "rules" / "lists"

POOL_WORDS = re.compile(r"pool|mine|mining|miner|hash|stratum|xmr|nicehash|suprnova|ethermine|flypool|f2pool")
POOL_OPERATORS = frozenset(
    {"suprnova.cc", "bitcoin.cz", "eligius.st", "kano.is", "waterhole.io", "thecoin.pw", "zpool.ca", "monerise.com",
     "coinmine.pl", "ckpool.org", "antpool.com", "viabtc.com", "btc.com", "poolin.com", "moneroocean.stream",
     "herominers.com", "unmineable.com", "woolypooly.com", "c3pool.com", "kryptex.network", "zergpool.com"}
)  # fmt: skip
"""Registrable domains whose hosts are pool servers though no pool word is in the name."""
NOT_POOLS = frozenset(
    {"coinbase.com", "binance.com", "binanceus.com", "bittrex.com", "poloniex.com", "bitpay.com", "changelly.com",
     "bitstamp.net", "kraken.com", "bitfinex.com", "kucoin.com", "gemini.com", "bithumb.com", "yobit.net",
     "cryptopay.me", "cryptonator.com", "mycelium.com", "copay.io", "breadapp.com", "blockchain.info",
     "blockchain.com", "z.cash", "getmonero.org", "bitcoin.org", "ethereum.org", "electrum.org", "myetherwallet.com",
     "freebitco.in", "bitcore.io", "cryptokitties.co", "graft.network", "sumokoin.com", "lydian.io", "bitaccess.co",
     "pr0gramm.com", "joyreactor.cc", "reactor.cc", "rawgit.com", "duckdns.org", "ddns.net", "netlify.com",
     "000webhostapp.com", "weebly.com", "editmysite.com", "gemius.pl", "cdn77.org", "bitbucket.io", "now.sh"}
)  # fmt: skip
"""Never listed whole: exchanges, wallets, coin project sites, and platforms that host everyone."""
NEVER = frozenset(
    {"google.com", "googleapis.com", "gstatic.com", "github.com", "githubusercontent.com", "github.io", "ntop.org",
     "cloudflare.com", "amazonaws.com", "cloudfront.net", "akamai.net", "akamaiedge.net", "microsoft.com",
     "windows.net", "apple.com", "icloud.com", "facebook.com", "fbcdn.net", "netflix.com", "nflximg.net",
     "mozilla.org", "mozilla.net", "youtube.com", "googlevideo.com", "wikipedia.org", "fly.io", "fly.dev"}
)  # fmt: skip
"""Registrable domains of which no name is ever listed (guard against poisoned or over-broad sources)."""

DOH_WILDCARDS = ("*.dns.nextdns.io", "*.cloudflare-gateway.com", "*.d.adguard-dns.com")
"""Per-account DoH/DoT names: NextDNS (<id>.dns.nextdns.io), Cloudflare Zero Trust (<id>.cloudflare-gateway.com),
AdGuard DNS private servers (<id>.d.adguard-dns.com), per each provider's setup documentation."""

REVERSE_TUNNELS = (
    ("ngrok.io", "ngrok agent and legacy public endpoints (ngrok docs: Domains)"),
    ("ngrok.app", "ngrok paid-plan endpoints"),
    ("ngrok-free.app", "ngrok free-plan endpoints"),
    ("ngrok.dev", "ngrok endpoints"),
    ("ngrok-free.dev", "ngrok free-plan endpoints"),
    ("ngrok-agent.com", "ngrok agent ingress (connect.ngrok-agent.com)"),
    ("trycloudflare.com", "Cloudflare Quick Tunnels (cloudflared tunnel --url)"),
    ("cfargotunnel.com", "Cloudflare Tunnel CNAME targets (<uuid>.cfargotunnel.com)"),
    ("argotunnel.com", "cloudflared edge connections (region1.v2.argotunnel.com)"),
    ("loca.lt", "localtunnel public endpoints"),
    ("localtunnel.me", "localtunnel server"),
    ("serveo.net", "Serveo SSH reverse tunnels"),
    ("localhost.run", "localhost.run SSH reverse tunnels (ssh -R 80:localhost:... localhost.run)"),
    ("lhr.life", "localhost.run public endpoints"),
    ("lhr.rocks", "localhost.run public endpoints"),
    ("pagekite.me", "PageKite front-end names"),
    ("bore.pub", "bore public server"),
    ("tunnelto.dev", "tunnelto public endpoints"),
    ("telebit.cloud", "Telebit relay"),
    ("telebit.io", "Telebit relay"),
    ("playit.gg", "playit.gg agent and tunnels"),
    ("ply.gg", "playit.gg tunnel addresses"),
    ("pinggy.io", "Pinggy SSH reverse tunnels (a.pinggy.io)"),
    ("pinggy.link", "Pinggy public endpoints"),
    ("pinggy.online", "Pinggy public endpoints"),
    ("loclx.io", "LocalXpose public endpoints"),
    ("localxpose.io", "LocalXpose agent"),
    ("sharedwithexpose.com", "Expose (beyondcode) public endpoints"),
    ("zrok.io", "zrok public shares (share.zrok.io)"),
    ("devtunnels.ms", "Microsoft dev tunnels (<id>.<region>.devtunnels.ms)"),
    ("tunnelmole.net", "tunnelmole public endpoints"),
    ("localtonet.com", "Localtonet public endpoints"),
)

NDPI_HOSTS = (
    "ntop/nDPI",
    "src/lib/ndpi_content_match.c.inc",
    "3b1286ab03b0c9223ac208a01868d8c1f6c0ae00",
    "21 October 2024",
)
"""nDPI's host_match table: the VPN services' names below are its entries (category NDPI_PROTOCOL_CATEGORY_VPN)."""
VPN_SERVICES = (
    (
        "cloudflareclient.com",
        "Cloudflare WARP client API and endpoints (engage.cloudflareclient.com; nDPI CloudflareWarp)",
    ),
    ("tailscale.com", "Tailscale control plane and DERP relays over HTTPS (derpN.tailscale.com; nDPI Tailscale)"),
    ("tunnelbear.com", "TunnelBear VPN API (api.tunnelbear.com; nDPI TunnelBear)"),
    ("polargrizzly.com", "TunnelBear VPN API (api.polargrizzly.com; nDPI TunnelBear)"),
    ("vpn-api.proton.me", "ProtonVPN API (nDPI lists all of proton.me, which is Proton Mail too: only the VPN's host)"),
    ("protonvpn.com", "ProtonVPN (nDPI ProtonVPN)"),
    ("mullvad.net", "Mullvad VPN (nDPI Mullvad)"),
    ("nordvpn.com", "NordVPN (nDPI NordVPN)"),
    ("surfshark.com", "Surfshark VPN (nDPI SurfShark)"),
    ("windscribe.com", "Windscribe VPN (nDPI Windscribe)"),
    ("privateinternetaccess.com", "Private Internet Access VPN (nDPI PrivateInternetAccess)"),
    ("hotspotshield.com", "Hotspot Shield VPN (nDPI HotspotShield)"),
    ("psiphon3.net", "Psiphon circumvention tool (nDPI Psiphon)"),
    ("softether.org", "SoftEther VPN (nDPI Softether)"),
    ("softether-network.net", "SoftEther VPN dynamic DNS and relays (nDPI Softether)"),
)
"""VPN and circumvention services: reaching their API or relays is setting up a tunnel out of the sandbox."""


def _sources(corpus: Path) -> dict[str, tuple[str, str, str]]:
    with (corpus / "SOURCES.tsv").open(newline="") as handle:
        return {row["file"]: (row["source_repo"], row["path_in_repo"], row["commit"]) for row in
                csv.DictReader(handle, delimiter="\t")}  # fmt: skip


def _host_lines(path: Path) -> list[str]:
    """Names of a hosts file (``0.0.0.0 name``), a plain list, or nDPI's ``name<TAB>id`` list."""
    names = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        names.append((parts[1] if parts[0] in ("0.0.0.0", "127.0.0.1") and len(parts) > 1 else parts[0]).lower())
    return names


def _snapshot(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines()[:12]:
        found = re.match(r"#\s*(Last modified|Date):\s*(.+)", line)
        if found:
            return found.group(2).strip()
    return "not stated in the file; see the commit"


def _allowed(name: str, strict: bool) -> bool:
    """Whether a name may be listed; ``strict`` (uncurated sources) also bars every host of `NOT_POOLS`."""
    base = base_domain(name)
    if not valid_name(name) or base in NEVER or name in NOT_POOLS:
        return False
    return not (strict and base in NOT_POOLS)


def pool_names(corpus: Path) -> tuple[list[str], list[str]]:
    lists = corpus / "lists"
    curated = _host_lines(lists / "ndpi/mining_hosts.txt") + _host_lines(lists / "pool-domains/nocoin_hosts.txt")
    white = set(_host_lines(lists / "pool-domains/coinblocker_white_list.txt"))
    exchanges = {base_domain(n) for n in _host_lines(lists / "pool-domains/blocklistproject_crypto.txt")}
    exchanges = {b for b in exchanges if not POOL_WORDS.search(b) and b not in POOL_OPERATORS}
    chosen: dict[str, None] = {}
    dropped: list[str] = []
    for name in curated:
        if _allowed(name, strict=False) and name not in white:
            chosen[name] = None
        else:
            dropped.append(name)
    for name in _host_lines(lists / "pool-domains/coinblocker_list.txt"):
        base = base_domain(name)
        poolish = base in POOL_OPERATORS or bool(POOL_WORDS.search(name))
        if poolish and _allowed(name, strict=True) and name not in white and base not in exchanges:
            chosen[name] = None
    # a listed name covers its subdomains: drop names under another listed name
    names = sorted(chosen)
    kept = [n for n in names if not any(n.endswith("." + p) for p in _parents(n) if p in chosen)]
    return kept, dropped


def _parents(name: str) -> list[str]:
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels) - 1)]


DNS_WORDS = re.compile(r"dns|doh|dot|resolv|adguard|quad9|cleanbrowsing|adblock|filter|block")
"""A bare registrable domain on the DoH source is kept only with one of these words: the others (fly.io,
ahoj.email, eth.link) are web sites or platforms whose resolver is one host among many."""


def _doh_name(name: str) -> bool:
    base = base_domain(name)
    if not valid_name(name):
        return False
    if base in NEVER:  # a big platform's host: only its DNS-named hosts (dns.google.com, not mask.icloud.com)
        return bool(DNS_WORDS.search(name[: -len(base)]))
    return name != base or bool(DNS_WORDS.search(name))


def doh(corpus: Path) -> tuple[list[str], list[str]]:
    lists = corpus / "lists" / "doh"
    source = _host_lines(lists / "doh-domains.txt")
    names = sorted({n for n in source if _doh_name(n)} | set(DOH_WILDCARDS))
    print(f"DoH names dropped: {sorted(n for n in source if not _doh_name(n))}")
    addresses: dict[str, None] = {}
    for file in ("doh-ipv4.txt", "doh-ipv6.txt"):
        for address in _host_lines(lists / file):
            addresses[address] = None
    return names, list(addresses)


def _header(title: str, sources: list[tuple[str, str, str, str]], notes: str) -> list[str]:
    lines = [
        f"# {title}",
        "# Generated by rules/tools/build_lists.py from the shared corpus; edit the script, not this file.",
        "#",
    ]
    for repo, path, commit, snapshot in sources:
        lines.append(f"# source: https://github.com/{repo} {path} @ {commit} (snapshot: {snapshot})")
    lines.append("#")
    lines += [f"# {line}" if line else "#" for line in notes.splitlines()]
    return lines


def _yaml(
    header: list[str],
    fields: dict[str, str],
    sources: list[tuple[str, str, str, str]],
    names: list[tuple[str, str]],
    addresses: tuple[str, ...] = (),
) -> str:
    out = [*header, "", "version: 1"]
    out += [f"{key}: {value}" for key, value in fields.items()]
    if sources:
        out.append("sources:")
        for repo, path, commit, snapshot in sources:
            out.append(f'  - {{repository: {repo}, path: {path}, commit: "{commit}", snapshot: "{snapshot}"}}')
    out.append("names:")
    out += [f'  - "{name}"' + (f"  # {comment}" if comment else "") for name, comment in names]
    if addresses:
        out.append("addresses:")
        out += [f'  - "{address}"' for address in addresses]
    return "\n".join(out) + "\n"


def main(corpus: Path) -> None:
    src = _sources(corpus)

    def source(key: str) -> tuple[str, str, str, str]:
        return (*src[key], _snapshot(corpus / key))

    pool_sources = [source("lists/ndpi/mining_hosts.txt"), source("lists/pool-domains/nocoin_hosts.txt"),
                    source("lists/pool-domains/coinblocker_list.txt"),
                    source("lists/pool-domains/coinblocker_white_list.txt"),
                    source("lists/pool-domains/blocklistproject_crypto.txt")]  # fmt: skip
    pools, dropped = pool_names(corpus)
    print(f"pool names dropped from curated sources: {dropped}")
    notes = (
        "False positives: CoinBlocker is a 2018 snapshot; some domains have since lapsed and may be re-registered\n"
        "for anything. Browser-miner script hosts (NoCoin) are listed too: a page that loads one is mining in the\n"
        "browser. Exchanges, wallets and coin project sites are deliberately absent (build_lists.NOT_POOLS and the\n"
        "Block List Project's non-pool domains): reaching them is not mining. A name covers its subdomains."
    )
    fields = {"name": "pool-domains", "category": "mining", "protocol": "pool-domain", "match": "suffix",
              "description": "Mining pool servers and browser-miner script hosts."}  # fmt: skip
    header = _header("Mining pool and browser-miner names.", pool_sources, notes)
    (OUT / "pool-domains.yaml").write_text(_yaml(header, fields, pool_sources, [(n, "") for n in pools]))

    doh_sources = [source(f"lists/doh/{f}") for f in ("doh-domains.txt", "doh-ipv4.txt", "doh-ipv6.txt")]
    doh_names, doh_addresses = doh(corpus)
    notes = (
        "Names match exactly, and bare domains without a DNS word are left out (build_lists.DNS_WORDS): the source\n"
        "lists web sites such as fly.io. *.name entries cover per-account resolver names. Addresses are only\n"
        "used for TLS without SNI to port 443 (any TLS to 853 is DoT anyway): with an SNI the name decides,\n"
        "because some resolvers sit on shared CDN addresses. False positives: a browser's built-in DoH (Firefox,\n"
        "Chrome) is DoH too; allow it by policy. Hosts of big platforms are kept only when DNS-named."
    )
    fields = {"name": "doh", "category": "tunnel", "protocol": "doh", "match": "exact",
              "description": "DNS-over-HTTPS and DNS-over-TLS resolvers (names and addresses)."}  # fmt: skip
    header = _header("Public DoH/DoT resolvers.", doh_sources, notes)
    (OUT / "doh.yaml").write_text(
        _yaml(header, fields, doh_sources, [(n, "") for n in doh_names], tuple(doh_addresses))
    )

    notes = (
        "Curated by hand from each service's documentation (the comment on each name says what it is).\n"
        "A name covers its subdomains. False positives: the services' own web sites and docs (ngrok.com is not\n"
        "listed for that reason); a developer previewing a site shared by someone else through such a tunnel."
    )
    fields = {"name": "reverse-tunnels", "category": "tunnel", "protocol": "reverse-tunnel", "match": "suffix",
              "description": "Reverse-tunnel and expose-localhost services."}  # fmt: skip
    header = _header("Reverse-tunnel services.", [], notes)
    (OUT / "reverse-tunnels.yaml").write_text(_yaml(header, fields, [], list(REVERSE_TUNNELS)))

    notes = (
        "From nDPI's host_match table (VPN category); a name covers its subdomains. False positives: the services'\n"
        "own web sites (a user reading about a VPN); ProtonVPN is listed by its API host only, since proton.me is\n"
        "Proton Mail too. WireGuard itself is recognised by its handshake on any port (egress.detect.vpn)."
    )
    fields = {"name": "vpn-services", "category": "tunnel", "protocol": "vpn-service", "match": "suffix",
              "description": "VPN and circumvention services (WARP, Tailscale, TunnelBear, ProtonVPN...)."}  # fmt: skip
    header = _header("VPN and circumvention services.", [NDPI_HOSTS], notes)
    (OUT / "vpn-services.yaml").write_text(_yaml(header, fields, [NDPI_HOSTS], list(VPN_SERVICES)))

    built = load_lists(sorted(OUT.glob("*.yaml")))
    for item in built:
        print(f"{item.file}: {len(item.names)} names, {len(item.addresses)} addresses")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "corpus")
