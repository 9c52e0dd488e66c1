"""Tests for egress.detect.dns_tunnel: real tunnel queries are found, ordinary lookups are not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.detect import dns
from egress.detect.base import Category, Finding
from egress.detect.dns_tunnel import (
    DnsTunnelLimits,
    DnsTunnelTracker,
    base_domain,
    looks_encoded,
    question_key,
)
from tests.budget import examples

# tunnel/dmachard_iodine.pcap: the first six queries (NULL type, base32 and the 8-bit charset probe)
IODINE_DMACHARD = [
    bytes.fromhex("0aa90100000100000000000006797262307065027431076269696c6c706903636f6d00000a0001"),
    bytes.fromhex("28d8010000010000000000000b76616161616b61786a3275027431076269696c6c706903636f6d00000a0001"),
    bytes.fromhex(
        "470701000001000000000000206c61637a693164776d66626179776230666d3578686b72677a3068656f747a710274310762"
        "69696c6c706903636f6d00000a0001"
    ),
    bytes.fromhex(
        "65360100000100000000000106797262307068027431076269696c6c706903636f6d00000a00010000291000000080000000"
    ),
    bytes.fromhex(
        "836501000001000000000001297a30706961412d4161616868682d4472696e6b2d6d616c2d65696e2d4ae46765726d656973"
        "7465722d027431076269696c6c706903636f6d00000a00010000291000000080000000"
    ),
    bytes.fromhex(
        "a19401000001000000000001327a30706a61412d4c612d666cfb74652d6e61ef76652d6672616ee7616973652d6573742d72"
        "65746972e92de02d4372e87465027431076269696c6c706903636f6d00000a00010000291000000080000000"
    ),
]

# tunnel/ndpi_dns-tunnel-iodine.pcap: the first six queries
IODINE_NDPI = [
    bytes.fromhex("12b0010000010000000000000b76616161616b6172646c69067069726174650373656100000a0001"),
    bytes.fromhex(
        "30df01000001000000000000206c61656770756d69706c6868707a3132796e643165666c6a776c6b6a636777790670697261"
        "74650373656100000a0001"
    ),
    bytes.fromhex("4f0e0100000100000000000106797262693032067069726174650373656100000a00010000291000000080000000"),
    bytes.fromhex(
        "6d3d01000001000000000001297a69303361412d4161616868682d4472696e6b2d6d616c2d65696e2d4ae46765726d656973"
        "7465722d067069726174650373656100000a00010000291000000080000000"
    ),
    bytes.fromhex(
        "8b6c01000001000000000001327a69303461412d4c612d666cfb74652d6e61ef76652d6672616ee7616973652d6573742d72"
        "65746972e92de02d4372e87465067069726174650373656100000a00010000291000000080000000"
    ),
    bytes.fromhex(
        "a99b01000001000000000001387a6930356141624263436444654566466747684869496a4a6b4b6c4c6d4d6e4e6f4f705071"
        "51725273537454755576567757785879597a5a067069726174650373656100000a00010000291000000080000000"
    ),
]

# tunnel/dmachard_dns2tcp.pcap: the first five queries (TXT, base64 with '=')
DNS2TCP = [
    bytes.fromhex("d645010000010000000000000a41414141414837775141053d6175746807646e7332746370036873630266720000100001"),
    bytes.fromhex(
        "93e8010000010000000000003f6f6e65466741414241446330515555334e6a63794e3049344f55457a52454e46517a67334f"
        "454534517a457a515549314e6a4a424f4545774e6a5930515559053d6175746807646e733274637003687363026672000010"
        "0001"
    ),
    bytes.fromhex(
        "55ea010000010000000000000e6f6e6479364b366341484e7a6141083d636f6e6e65637407646e7332746370036873630266"
        "720000100001"
    ),
    bytes.fromhex("dd16010000010000000000000a6f6e634141414142424107646e7332746370036873630266720000100001"),
    bytes.fromhex(
        "a61b010000010000000000003f6f6e63414141414343464e54534330794c6a41745433426c626c4e54534638344c6a6c774d"
        "534256596e5675644855744d33566964573530645441754d5130014b07646e7332746370036873630266720000100001"
    ),
]

# tunnel/ndpi_dns_exfiltration.pcap: the first query (dnscat2, hex, no domain)
DNSCAT_EXFIL = [
    bytes.fromhex(
        "391d0100000100000000000006646e736361743c353436623033663530303030303030303030613630323365643464663138"
        "3464366163356332363238623437373134666465653538346665643733393c35613033623562316531616138663866646231"
        "62626538643565303439353231343166376434663832633765336230366463633862383766616437611a3139653464303938"
        "64633863363138663864383163666562303200000f0001"
    ),
]

# benign/ndpi_punycode-idn.pcap: queries and responses (IDN names)
PUNYCODE = [
    bytes.fromhex("a57b010000010000000000000169047363646e02636f0000010001"),
    bytes.fromhex(
        "a57b818000010002000000000169047363646e02636f0000010001c00c000500010000000b001f067363646e636f0773706f"
        "74696679036d617006666173746c79036e657400c027000100010000001e0004924b3ef8"
    ),
    bytes.fromhex("fb0501000001000000000000037777770d786e2d2d6d6e6963682d6b766103636f6d0000010001"),
    bytes.fromhex("fb0581830001000000000000037777770d786e2d2d6d6e6963682d6b766103636f6d0000010001"),
]

# benign/ndpi_android.pcap: DNS and mDNS messages
ANDROID = [
    bytes.fromhex("fba6010000010000000000000763617074697665056170706c6503636f6d0000010001"),
    bytes.fromhex(
        "fba6818000010005000000000763617074697665056170706c6503636f6d0000010001c00c000500010000108a002a0c6361"
        "70746976652d636964720c6f726967696e2d6170706c6503636f6d06616b61646e73036e657400c02f000500010000008200"
        "0e0b636170746976652d63646ec03cc0650005000100000154001407636170746976650167076161706c696d67c01ac07f00"
        "01000100000013000411fd35c9c07f0001000100000013000411fd35d0"
    ),
    bytes.fromhex("a0f4010000010000000000000474696d6507616e64726f696403636f6d0000010001"),
    bytes.fromhex(
        "a0f4818000010004000000000474696d6507616e64726f696403636f6d0000010001c00c00010001000001180004d8ef2308"
        "c00c00010001000001180004d8ef2300c00c00010001000001180004d8ef2304c00c00010001000001180004d8ef230c"
    ),
    bytes.fromhex("af7a0100000100000000000008636c69656e74733106676f6f676c6503636f6d0000010001"),
    bytes.fromhex(
        "af7a8180000100010000000008636c69656e74733106676f6f676c6503636f6d0000010001c00c00010001000000da0004d8ef2678"
    ),
    bytes.fromhex("b5e70100000100000000000004706c61790a676f6f676c656170697303636f6d0000010001"),
    bytes.fromhex(
        "b5e78180000100010000000004706c61790a676f6f676c656170697303636f6d0000010001c00c00010001000001180004acd9144a"
    ),
    bytes.fromhex("9c9e0100000100000000000011636f6e6e6563746976697479636865636b076773746174696303636f6d0000010001"),
    bytes.fromhex(
        "9c9e8180000100010000000011636f6e6e6563746976697479636865636b076773746174696303636f6d0000010001c00c00"
        "010001000000b10004acd91203"
    ),
    bytes.fromhex("dadb010000010000000000000f6170702d6d6561737572656d656e7403636f6d0000010001"),
    bytes.fromhex(
        "dadb818000010001000000000f6170702d6d6561737572656d656e7403636f6d0000010001c00c00010001000000410004acd9a8ce"
    ),
    bytes.fromhex("e83101000001000000000000056d74616c6b06676f6f676c6503636f6d0000010001"),
    bytes.fromhex(
        "e83181800001000100000000056d74616c6b06676f6f676c6503636f6d0000010001c00c00010001000000da0004d8ef2678"
    ),
    bytes.fromhex("e73e0100000100000000000007616e64726f696407636c69656e747306676f6f676c6503636f6d0000010001"),
    bytes.fromhex(
        "e73e8180000100010000000007616e64726f696407636c69656e747306676f6f676c6503636f6d0000010001c00c00010001"
        "000000da0004d8ef2678"
    ),
    bytes.fromhex("dc340100000100000000000005636865636b09676f6f676c657a6970036e65740000010001"),
    bytes.fromhex(
        "dc348180000100010000000005636865636b09676f6f676c657a6970036e65740000010001c00c00010001000001030004adc24f72"
    ),
    bytes.fromhex("fda801000001000000000000096461746173617665720a676f6f676c656170697303636f6d0000010001"),
    bytes.fromhex(
        "fda881800001000100000000096461746173617665720a676f6f676c656170697303636f6d0000010001c00c000100010000"
        "012b0004acd915ca"
    ),
    bytes.fromhex("843c010000010000000000000377777706676f6f676c6503636f6d0000010001"),
    bytes.fromhex("843c818000010001000000000377777706676f6f676c6503636f6d0000010001c00c00010001000000da0004d8ef2678"),
    bytes.fromhex("0dae01000001000000000000086163636f756e747306676f6f676c6503636f6d0000010001"),
    bytes.fromhex(
        "0dae81800001000100000000086163636f756e747306676f6f676c6503636f6d0000010001c00c00010001000000da0004d8ef2678"
    ),
    bytes.fromhex(
        "960c010000010000000000001373656d616e7469636c6f636174696f6e2d70610a676f6f676c656170697303636f6d0000010001"
    ),
    bytes.fromhex(
        "960c818000010001000000001373656d616e7469636c6f636174696f6e2d70610a676f6f676c656170697303636f6d000001"
        "0001c00c00010001000000b20004acd9144a"
    ),
    bytes.fromhex("d131010000010000000000000570726f787909676f6f676c657a6970036e65740000010001"),
    bytes.fromhex(
        "d131818000010001000000000570726f787909676f6f676c657a6970036e65740000010001c00c00010001000000930004acd9144c"
    ),
    bytes.fromhex("e6ee01000001000000000000086163636f756e747306676f6f676c6503636f6d0000010001"),
    bytes.fromhex(
        "e6ee81800001000100000000086163636f756e747306676f6f676c6503636f6d0000010001c00c00010001000000da0004d8ef2678"
    ),
    bytes.fromhex("23420100000100000000000005636865636b09676f6f676c657a6970036e65740000010001"),
    bytes.fromhex(
        "23428180000100010000000005636865636b09676f6f676c657a6970036e65740000010001c00c00010001000001030004adc24f72"
    ),
    bytes.fromhex("3c6401000001000000000000096461746173617665720a676f6f676c656170697303636f6d0000010001"),
    bytes.fromhex(
        "3c6481800001000100000000096461746173617665720a676f6f676c656170697303636f6d0000010001c00c000100010000"
        "012b0004acd915ca"
    ),
    bytes.fromhex("d5f9010000010000000000000570726f787909676f6f676c657a6970036e65740000010001"),
    bytes.fromhex(
        "d5f9818000010001000000000570726f787909676f6f676c657a6970036e65740000010001c00c00010001000000930004acd9144c"
    ),
    bytes.fromhex("72a3010000010000000000000377777706676f6f676c6503636f6d0000010001"),
    bytes.fromhex("72a3818000010001000000000377777706676f6f676c6503636f6d0000010001c00c00010001000000da0004d8ef2678"),
    bytes.fromhex("b8a50100000100000000000007616e64726f69640a676f6f676c656170697303636f6d0000010001"),
    bytes.fromhex(
        "b8a58180000100010000000007616e64726f69640a676f6f676c656170697303636f6d0000010001c00c0001000100000117"
        "0004acd9160a"
    ),
]


def query(name: str, qtype: int = 1, ident: int = 0x1234) -> bytes:
    """A standard query for ``name`` (RFC 1035 4.1), as a stub resolver sends it."""
    return dns.build_query(ident, name, qtype)


def run(
    messages: list[bytes], client: str = "192.0.2.1", tracker: DnsTunnelTracker | None = None
) -> list[Finding | None]:
    tracker = tracker or DnsTunnelTracker()
    return [tracker.observe(client, message) for message in messages]


@pytest.mark.parametrize(
    ("messages", "protocol", "needed"),
    [
        (IODINE_DMACHARD, "dns-tunnel", 6),
        (IODINE_NDPI, "dns-tunnel", 6),
        (DNS2TCP, "dns-tunnel", 2),  # its 63-character base64 label is enough, after the first query
        (DNSCAT_EXFIL, "dns-exfiltration", 1),
    ],
    ids=["iodine-dmachard", "iodine-ndpi", "dns2tcp", "dnscat2-exfil"],
)
def test_real_tunnels_are_found(messages: list[bytes], protocol: str, needed: int) -> None:
    results = run(messages[:needed])
    finding = results[-1]
    assert finding is not None
    assert finding.category is Category.TUNNEL
    assert finding.protocol == protocol
    assert finding.detector == "dns_tunnel"


@pytest.mark.parametrize(
    "messages", [PUNYCODE, ANDROID, PUNYCODE * 5, ANDROID * 3], ids=["idn", "android", "idn-again", "android-again"]
)
def test_real_ordinary_lookups_stay_clean(messages: list[bytes]) -> None:
    assert run(messages) == [None] * len(messages)


def test_a_finding_is_repeated_for_later_messages_of_the_same_domain() -> None:
    tracker = DnsTunnelTracker()
    results = run(IODINE_NDPI, tracker=tracker)
    first = next(index for index, result in enumerate(results) if result is not None)
    assert all(result is not None for result in results[first:])
    assert tracker.observe("192.0.2.1", query("www.example.com")) is None
    assert tracker.observe("192.0.2.99", IODINE_NDPI[0]) is None  # another client starts clean


def test_each_signal_alone() -> None:
    # NULL questions (iodine's default type) under one base domain
    assert run([query(f"p{n}x.t.example.net", 10) for n in range(3)])[-1] is not None
    # many subdomains with hex labels (dnscat2 with a domain)
    hexes = [query(f"{n:02x}7c01f5006c798b8d6e990002e3772bc8.tunnel.example.org", 16) for n in range(5)]
    assert run(hexes)[-1] is not None
    assert run(hexes[:4])[-1] is None
    # TXT-heavy mix of plain subdomains
    txt = [query(f"host{n}.example.com", 16) for n in range(20)]
    assert run(txt)[-1] is not None
    assert run(txt[:19])[-1] is None
    # long subdomains in volume
    long = [query(f"server-number-{n:04d}.region-west.example.com") for n in range(30)]
    assert run(long)[-1] is not None


@pytest.mark.parametrize(
    "names",
    [
        [f"r{n}---sn-4g5e6nsz.googlevideo.com" for n in range(40)],
        [".".join("0123456789abcdef"[n % 16] for _ in range(32)) + ".ip6.arpa" for n in range(40)],
        [f"{n}.0.168.192.in-addr.arpa" for n in range(40)],
        [f"device-{n}._googlecast._tcp.local" for n in range(40)],
        [f"www.xn--mnich-kva{n}.com" for n in range(40)],
        [f"k8s-default-ingress-{n:010d}-1234567890.us-east-1.elb.amazonaws.com" for n in range(10)],
        ["sigok.verteiltesysteme.net", "fg2-mgmt.weberlab.de", "weberlab.de", "ns2.weberdns.de"],
    ],
    ids=["googlevideo", "ip6-arpa", "in-addr-arpa", "mdns", "idn", "elb-names", "dnssec-test-names"],
)
def test_busy_but_ordinary_names_stay_clean(names: list[str]) -> None:
    assert run([query(name, qtype) for name in names for qtype in (1, 28)]) == [None] * (2 * len(names))


class Clock:
    """An injected clock: seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def iodine_like(n: int) -> bytes:
    """A NULL question with a fresh base32-looking label, as iodine sends one per packet."""
    return query(f"{n:04d}paaqbaeaj2kbqgmg{n:05d}.t.example.net", 10)


def test_a_found_domain_stays_refused_for_the_hold_then_is_judged_afresh() -> None:
    clock = Clock()
    tracker = DnsTunnelTracker(DnsTunnelLimits(hold=600.0), clock=clock)
    results = [tracker.observe("agents", iodine_like(n)) for n in range(3)]
    assert results[:2] == [None, None] and results[2] is not None
    # every later question under the domain, even an ordinary one of another type, returns the same finding
    for name, qtype in [("www.example.net", 1), ("mail.example.net", 28), ("EXAMPLE.NET", 16)]:
        clock.now += 100
        assert tracker.observe("agents", query(name, qtype)) == results[2]
    assert tracker.held("agents", "example.net") == 3
    clock.now += 600
    assert tracker.observe("agents", query("www.example.net")) is None
    assert tracker.held("agents", "example.net") == 0


def test_a_slow_tunnel_one_query_every_two_seconds_still_trips() -> None:
    clock = Clock()
    tracker = DnsTunnelTracker(clock=clock)
    found = None
    for n in range(200):
        clock.now += 2.0
        found = found or tracker.observe("agents", query(f"{n:03d}abcdefghijklmnop{n:03d}.t.example.net", 1))
    assert found is not None and "encoded" in found.evidence


def test_a_very_slow_tunnel_one_query_every_ten_minutes_trips_within_hours() -> None:
    clock = Clock()
    tracker = DnsTunnelTracker(clock=clock)
    results = []
    for n in range(12):
        clock.now += 600.0
        results.append(tracker.observe("agents", query(f"{n:03d}abcdefghijklmnop{n:03d}.t.example.net", 1)))
    assert any(result is not None for result in results)


def test_counters_decay_so_a_whole_day_of_ordinary_use_is_not_summed() -> None:
    clock = Clock()
    tracker = DnsTunnelTracker(clock=clock)
    for n in range(48):  # two NULL lookups of one domain a day apart each: never three close together
        clock.now += 12 * 3600.0
        assert tracker.observe("agents", query(f"probe{n}.example.net", 10)) is None


def test_volume_does_not_exhaust_the_counters() -> None:
    """Past any number of distinct subdomains (the old code stopped counting at 64), encoded ones still trip."""
    tracker = DnsTunnelTracker(clock=Clock())
    for n in range(5000):
        assert tracker.observe("agents", query(f"www{n}.example.net")) is None
    found = [tracker.observe("agents", query(f"{n:03d}abcdefghijklmnop{n:03d}.example.net")) for n in range(5)]
    assert found[-1] is not None


def test_flooding_fresh_domains_never_evicts_a_hot_or_held_domain() -> None:
    clock = Clock()
    tracker = DnsTunnelTracker(DnsTunnelLimits(max_tracked=64), clock=clock)
    held = [tracker.observe("agents", query(f"h{n}.held.example", 10)) for n in range(3)]
    assert held[2] is not None
    tracker.observe("agents", query("a1.t.example.net", 10))
    tracker.observe("agents", query("a2.t.example.net", 10))
    for n in range(10_000):
        tracker.observe("agents", query(f"www.flood{n}.com"))
    assert len(tracker) <= 64
    assert tracker.observe("agents", query("www.held.example")) == held[2]
    assert tracker.observe("agents", query("a3.t.example.net", 10)) is not None


def test_state_is_per_client_key_not_shared() -> None:
    tracker = DnsTunnelTracker(clock=Clock())
    for n in range(3):
        tracker.observe("agents", iodine_like(n))
    assert tracker.observe("other", query("www.example.net")) is None
    assert tracker.observe("agents", query("www.example.net")) is not None


def test_dns_over_tcp_length_prefix() -> None:
    stream = b"".join(len(message).to_bytes(2) + message for message in DNSCAT_EXFIL)
    finding = DnsTunnelTracker().observe("192.0.2.1", stream, tcp=True)
    assert finding is not None and finding.protocol == "dns-exfiltration"


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("www.example.com", "example.com"),
        ("a.b.example.co.uk", "example.co.uk"),
        ("x.y.example.com.au", "example.com.au"),
        ("foo.github.io", "foo.github.io"),
        ("example.com", "example.com"),
        ("localhost", "localhost"),
        ("dnscat.f97c01f5006c798b8d6e990002e3772bc8", ""),
        ("www.love.xn--55qx5d", "love.xn--55qx5d"),
    ],
)
def test_base_domain(name: str, base: str) -> None:
    assert base_domain(name) == base


@pytest.mark.parametrize(
    ("label", "encoded"),
    [
        ("laegpumiplhhpz12ynd1efljwlkjcgwy", True),  # iodine base32
        ("546b03f50000000000a6023ed4df184d6ac5c2628b47714fdee584fed739", True),  # dnscat2 hex
        ("onefgaabadc0quu3njcyn0i4ouezrenfqzg3oee4qzezquI1njjboeewnjy0quy".lower(), True),  # dns2tcp base64
        ("z0pkaabbccddeeffgghhiijjkkllmmnnooppqqrrssttuuvvwwxxyyzz", True),  # iodine charset probe
        ("semanticlocation-pa", False),
        ("connectivitycheck", False),
        ("xn--mnich-kva12345678", False),
        ("k8s-default-myingres-0a1b2c3d4e-1234567890", False),
        ("d1a2b3c4d5e6f7", False),  # too short to judge
        ("thisisaverylonghostnamewithoutdigits", False),
    ],
)
def test_looks_encoded(label: str, encoded: bool) -> None:
    assert looks_encoded(label) is encoded


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20), st.booleans())
def test_arbitrary_bytes_never_raise(messages: list[bytes], tcp: bool) -> None:
    tracker = DnsTunnelTracker()
    for message in messages:
        tracker.observe("192.0.2.1", message, tcp=tcp)


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=80), max_size=30))
def test_arbitrary_names_never_raise(names: list[str]) -> None:
    tracker = DnsTunnelTracker()
    for name in names:
        try:
            message = query(name)
        except ValueError:
            continue
        tracker.observe("192.0.2.1", message)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        # a 32-byte secret in base32 (52 characters), as DNSExfiltrator's base32 mode sends one chunk per label
        ("mfrggzdfmztwq2lknnwg23tpobyxe43uov3ho6dzpjqwey3efzrgk4rq.x.example.net", "56-character"),
        # the same secret in base64url in one label
        ("bXlzZWNyZXRfYXBpX2tleT0xMjM0NTY3ODkwYWJjZGVmZ2hpams.x.example.net", "51-character"),
        # raw bytes in a label (iodine's base128 and 8-bit tools; a control byte)
        ("a\\200\\201b.x.example.net", "non-printable"),
        ("secret\\007.x.example.net", "non-printable"),
    ],
)
def test_one_query_with_one_long_encoded_or_non_printable_label_is_exfiltration(name: str, why: str) -> None:
    found = run([query(name, 16)])[0]
    assert found is not None and found.protocol == "dns-exfiltration" and why in found.evidence


@pytest.mark.parametrize(
    "name",
    [
        "selector1-contoso-com._domainkey.contoso.onmicrosoft.com",  # Microsoft 365 DKIM CNAME
        "20230601._domainkey.gmail.com",
        "s1._domainkey.sendgrid.net",
        "_3639ac514e785e898d2646601fa951d5.example.com",  # ACM DNS validation label (_ + 32 hex)
        "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3.hash.cymru.com",  # SHA-1 in hex (40), Team Cymru hash registry
        "d3c33hcgiwev3.cloudfront.net",
        "e6858.dscx.akamaiedge.net",
        "abcdefghijklmnopqrstuvwxyz234567.lambda-url.us-east-1.on.aws",  # Lambda function URL (32-char id)
        "internal-k8s-default-myingress-0123456789-1234567890.us-east-1.elb.amazonaws.com",
        "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi.ipfs.dweb.link",  # IPFS CIDv1 (59)
        "vpce-0123456789abcdef0-abcdefgh.s3.us-east-1.vpce.amazonaws.com",
        "r4---sn-4g5ednsz.googlevideo.com",
    ],
)
def test_long_but_ordinary_names_stay_clean_one_by_one(name: str) -> None:
    assert run([query(name, qtype) for qtype in (1, 28, 16)]) == [None] * 3


REPEATABLE = (
    "a.x.lab",
    "b.x.lab",
    "d41d8cd98f00b204e9.x.lab",
    "9e107d9d372bb6826b.x.lab",
    "c.y.lab",
    "1.0.in-addr.arpa",
)


@settings(max_examples=examples(200), deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(REPEATABLE), st.sampled_from((dns.A, dns.TXT, dns.NULL)), st.floats(0.0, 900.0)),
        max_size=60,
    ),
    st.integers(1, 4),
)
def test_repeat_accounts_a_question_exactly_as_observing_it_would(
    questions: list[tuple[str, int, float]], recent: int
) -> None:
    """The resolver's fast path asks `repeat` first and observes only when it says no: the findings and every
    counter must be those of a tracker that observed each question (`recent` small: remembered keys fall out)."""
    limits = DnsTunnelLimits(hold=600.0, recent_keys=recent, rare_type_subdomains=2, encoded_subdomains=2)
    now = [0.0]
    observed, repeated = (DnsTunnelTracker(limits, clock=lambda: now[0]) for _ in range(2))
    for name, qtype, later in questions:
        now[0] += later
        question = dns.Question(dns.name_labels(name), qtype)
        message = dns.Message(1, dns.RD, (question,))
        expected = observed.observe_message("sbx", message)
        if repeated.repeat("sbx", question_key(question.name, qtype)):
            got = None
        else:
            got = repeated.observe_message("sbx", message)
        assert got == expected
        assert repr(sorted(repeated._states.items())) == repr(sorted(observed._states.items()))
