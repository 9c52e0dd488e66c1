"""Tests for egress.detect.names: name lists, and the detector reading SNI, Host, DoT, DoQ and DoH."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.detect.base import Category, FlowMeta, Transport
from egress.detect.names import NameLists, make_name_detector
from egress.policy.lists import NameList
from tests.budget import examples
from tests.detect.feeding import feed_datagrams, feed_every_split, feed_stream
from tests.lists import shipped_lists

# tunnel/ndpi_doh.pcapng: ClientHello to 1.1.1.1:443 without SNI (h2, http/1.1)
DOH_HELLO = bytes.fromhex(
    "1603010100010000fc0303e82cea60c04db9a6c7ab705f1db604bdbab5dc1ae21758e37b86ff0c10ec71c020662b4e2403d8"
    "3398040274428ecf3e99512bd923320a009e31354db89a54470d0026cca8cca9c02fc030c02bc02cc013c009c014c00a009c"
    "009d002f0035c012000a1303130113020100008d000500050100000000000a000a0008001d001700180019000b0002010000"
    "0d001a0018080404030807080508060401050106010503060302010203ff010001000010000e000c02683208687474702f31"
    "2e3100120000002b0009080304030303020301003300260024001d0020129f452de9cb946cd5843a100b44806fb2ca978709"
    "f1e0832f5ea1efe787a06e"
)

# benign/ndpi_443-curl.pcap: curl's ClientHello, SNI www.ntop.org
CURL_HELLO = bytes.fromhex(
    "1603010200010001fc03033e3841edcc20f6d0e5f7167ab7ee91a800c8ef70c2d624c7c7943a24026d9fbc000086cc14cc13"
    "cc15c030c02cc028c024c014c00a00a3009f006b006a00390038ff8500c400c3008800870081c032c02ec02ac026c00fc005"
    "009d003d003500c00084c02fc02bc027c023c013c00900a2009e006700400033003200be00bd00450044c031c02dc029c025"
    "c00ec004009c003c002f00ba0041c012c00800160013c00dc003000a00ff0100014d00000011000f00000c7777772e6e746f"
    "702e6f7267000b000403000102000a003a0038000e000d0019001c000b000c001b00180009000a001a001600170008000600"
    "07001400150004000500120013000100020003000f00100011000d00260024060106020603efef0501050205030401040204"
    "03eeeeeded030103020303020102020203337400000010000e000c02683208687474702f312e31001500ae00000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000"
)
# mining/nesfit_pool.eth.pp.ua.pcapng: Ethereum getWork over HTTP (head of the first request)
POOL_HTTP = (
    b"POST /?miner=30@0x4b999ba68e017854ffb6b494bc2ddb9ef02bd745@OptionalRigName HTTP/1.1\r\n"
    b"Host: pool.eth.pp.ua\r\nAccept: */*\r\nContent-Type: application/json\r\ncharsets: utf-8\r\n"
    b"Content-Length: 141\r\n\r\n"
)
DOH_GET = b"GET /dns-query?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB HTTP/1.1\r\nHost: doh.example.net\r\n\r\n"
DOH_POST = (
    b"POST /resolve HTTP/1.1\r\nHost: resolver.example.net\r\nContent-Type: application/dns-message\r\n"
    b"Content-Length: 33\r\n\r\n"
)
NGROK_HTTP = b"GET / HTTP/1.1\r\nHost: 1a2b-203-0-113-9.ngrok-free.app\r\nUser-Agent: curl/8.5.0\r\n\r\n"
CONNECT_POOL = b"CONNECT eu1.nanopool.org:9999 HTTP/1.1\r\nHost: eu1.nanopool.org:9999\r\n\r\n"
ORDINARY_HTTP = b"GET / HTTP/1.1\r\nHost: www.google.com\r\nAccept: */*\r\n\r\n"


def name_list(
    name: str, category: Category, protocol: str, match: str, names: tuple[str, ...], addresses: tuple[str, ...] = ()
) -> NameList:
    networks = tuple(ipaddress.ip_network(a) for a in addresses)
    return NameList(f"{name}.yaml", name, category, protocol, match, "", (), names, networks)


LISTS = NameLists(
    [
        name_list("pools", Category.MINING, "pool-domain", "suffix", ("nanopool.org", "pool.eth.pp.ua", "ntop.org")),
        name_list(
            "doh", Category.TUNNEL, "doh", "exact", ("dns.google", "*.dns.nextdns.io"), ("1.1.1.1", "2606:4700::/32")
        ),
        name_list("tunnels", Category.TUNNEL, "reverse-tunnel", "suffix", ("ngrok-free.app",)),
    ]
)
DETECT = make_name_detector(LISTS)


def flow(dst: str = "198.51.100.7", dport: int = 443, transport: Transport = Transport.TCP) -> FlowMeta:
    return FlowMeta(transport, "192.0.2.1", 40000, dst, dport)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nanopool.org", ("pools", Category.MINING, "pool-domain")),
        ("eth-eu1.nanopool.org", ("pools", Category.MINING, "pool-domain")),
        ("ETH-EU1.Nanopool.org.", ("pools", Category.MINING, "pool-domain")),
        ("notnanopool.org", None),
        ("nanopool.org.evil.com", None),
        ("dns.google", ("doh", Category.TUNNEL, "doh")),
        ("www.dns.google", None),  # exact list
        ("abc123.dns.nextdns.io", ("doh", Category.TUNNEL, "doh")),
        ("dns.nextdns.io", None),  # *. covers subdomains only
        ("x.y.ngrok-free.app", ("tunnels", Category.TUNNEL, "reverse-tunnel")),
        ("", None),
        ("org", None),
    ],
)
def test_match(name: str, expected: tuple[str, Category, str] | None) -> None:
    assert LISTS.match(name) == expected


@pytest.mark.parametrize(
    ("address", "listed"),
    [("1.1.1.1", True), ("1.1.1.2", False), ("2606:4700::1111", True), ("2001:db8::1", False), ("nonsense", False)],
)
def test_match_address(address: str, listed: bool) -> None:
    assert (LISTS.match_address(address) is not None) is listed


@pytest.mark.parametrize(
    ("client", "meta", "protocol", "category"),
    [
        (DOH_HELLO, flow("1.1.1.1", 443), "doh", Category.TUNNEL),
        (DOH_HELLO, flow("2606:4700::1111", 443), "doh", Category.TUNNEL),
        (DOH_HELLO, flow("198.51.100.7", 853), "dot", Category.TUNNEL),
        (CURL_HELLO, flow("178.62.197.130", 443), "pool-domain", Category.MINING),  # ntop.org on the test list
        (POOL_HTTP, flow("88.198.15.41", 80), "pool-domain", Category.MINING),
        (CONNECT_POOL, flow("203.0.113.5", 3128), "pool-domain", Category.MINING),
        (NGROK_HTTP, flow("203.0.113.9", 80), "reverse-tunnel", Category.TUNNEL),
        (DOH_GET, flow("203.0.113.9", 80), "doh", Category.TUNNEL),
        (DOH_POST, flow("203.0.113.9", 80), "doh", Category.TUNNEL),
    ],
    ids=["doh-no-sni", "doh-no-sni-v6", "dot", "sni", "http-host", "connect", "reverse-tunnel", "doh-get", "doh-post"],
)
def test_found_at_every_split(client: bytes, meta: FlowMeta, protocol: str, category: Category) -> None:
    results = feed_every_split(DETECT, client, flow=meta)
    assert results[0] is not None
    assert results[0].protocol == protocol
    assert results[0].category is category
    assert all(result == results[0] for result in results)


def test_client_hello_seen_as_server_data_when_capture_starts_mid_flow() -> None:
    swapped = FlowMeta(Transport.TCP, "1.1.1.1", 443, "192.0.2.1", 40000)
    finding = feed_stream(DETECT, b"", DOH_HELLO, flow=swapped)
    assert finding is not None and finding.protocol == "doh"


@pytest.mark.parametrize(
    ("client", "meta"),
    [
        (DOH_HELLO, flow("198.51.100.7", 443)),  # no SNI, address not listed
        (DOH_HELLO, flow("1.1.1.1", 8443)),  # listed address, but not the HTTPS port
        (ORDINARY_HTTP, flow("142.250.1.1", 80)),
        (b"SSH-2.0-OpenSSH_9.6\r\n", flow("198.51.100.7", 22)),
        (b'{"id":1,"method":"mining.subscribe","params":[]}\n', flow("198.51.100.7", 3333)),
        (b"", flow()),
    ],
    ids=["no-sni-unlisted", "listed-address-other-port", "ordinary-http", "ssh", "json", "empty"],
)
def test_clean(client: bytes, meta: FlowMeta) -> None:
    assert feed_stream(DETECT, client, flow=meta) is None


def test_listed_address_with_an_unlisted_sni_is_clean() -> None:
    shipped = NameLists([])
    detect = make_name_detector(shipped)
    assert feed_stream(detect, CURL_HELLO, flow=flow("1.1.1.1", 443)) is None
    assert feed_stream(DETECT, CURL_HELLO.replace(b"www.ntop.org", b"www.ntop.xyz"), flow=flow("1.1.1.1")) is None


def test_doq() -> None:
    quic_initial = bytes.fromhex("c3000000010811223344556677880000") + bytes(1184)
    assert feed_datagrams(DETECT, [(True, quic_initial)], flow("9.9.9.9", 853, Transport.UDP)) is not None
    assert feed_datagrams(DETECT, [(True, quic_initial)], flow("9.9.9.9", 443, Transport.UDP)) is None


@pytest.fixture(scope="module")
def shipped() -> NameLists:
    return shipped_lists()


@pytest.mark.parametrize(
    ("name", "protocol"),
    [
        ("eth-eu1.nanopool.org", "pool-domain"),
        ("eu1-zcash.flypool.org", "pool-domain"),
        ("us.litecoinpool.org", "pool-domain"),
        ("pool.eth.pp.ua", "pool-domain"),
        ("coinhive.com", "pool-domain"),
        ("dns.google", "doh"),
        ("cloudflare-dns.com", "doh"),
        ("abc.trycloudflare.com", "reverse-tunnel"),
        ("x.loca.lt", "reverse-tunnel"),
        ("www.google.com", None),
        ("github.com", None),
        ("www.ntop.org", None),
        ("accounts.google.com", None),
        ("coinbase.com", None),
        ("api.binance.com", None),
        ("getmonero.org", None),
        ("fly.io", None),
        ("ngrok.com", None),
    ],
)
def test_shipped_lists(shipped: NameLists, name: str, protocol: str | None) -> None:
    hit = shipped.match(name)
    assert (hit[2] if hit else None) == protocol


def test_shipped_doh_addresses(shipped: NameLists) -> None:
    assert shipped.match_address("1.1.1.1") is not None
    assert shipped.match_address("8.8.8.8") is not None
    assert shipped.match_address("178.62.197.130") is None  # www.ntop.org


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=400), st.binary(max_size=100), st.sampled_from([80, 443, 853, 3333]))
def test_arbitrary_bytes_never_raise(client: bytes, server: bytes, port: int) -> None:
    feed_stream(DETECT, client, server, flow=flow("1.1.1.1", port))
    feed_stream(DETECT, b"\x16\x03\x01" + client, server, flow=flow("1.1.1.1", port))
    feed_stream(DETECT, b"GET / HTTP/1.1\r\nHost: " + client, server, flow=flow("1.1.1.1", port))


@settings(max_examples=examples(200), deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_names_never_raise(name: str) -> None:
    LISTS.match(name)
