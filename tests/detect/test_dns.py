"""Tests for egress.detect.dns, the one DNS codec: real messages parse, names stay exact, builders round-trip,
hostile bytes raise only DnsError (parse) or nothing (parse_partial)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.capture.packet import UDP, Defragmenter, Malformed, decode
from egress.capture.reader import read_frames
from egress.detect import dns
from egress.detect.dns import Message, Question, Record
from tests.budget import examples
from tests.corpus import CORPUS, needs_corpus

# benign/ndpi_dns.pcap: AAAA query for www.example.com
EXAMPLE_QUERY = bytes.fromhex("bc1f0100000100000000000003777777076578616d706c6503636f6d00001c0001")
# benign/ndpi_punycode-idn.pcap: response for i.scdn.co with a CNAME (compressed names) and an A record
SCDN_RESPONSE = bytes.fromhex(
    "a57b818000010002000000000169047363646e02636f0000010001c00c000500010000000b001f067363646e636f0773706f"
    "74696679036d617006666173746c79036e657400c027000100010000001e0004924b3ef8"
)
# benign/ndpi_android.pcap: captive.apple.com, three CNAMEs (compressed inside their RDATA too) then two A
CAPTIVE_RESPONSE = bytes.fromhex(
    "fba6818000010005000000000763617074697665056170706c6503636f6d0000010001c00c000500010000108a002a0c6361"
    "70746976652d636964720c6f726967696e2d6170706c6503636f6d06616b61646e73036e657400c02f000500010000008200"
    "0e0b636170746976652d63646ec03cc0650005000100000154001407636170746976650167076161706c696d67c01ac07f00"
    "01000100000013000411fd35c9c07f0001000100000013000411fd35d0"
)
# benign/ndpi_dns_fragmented.pcap: first 200 bytes of a 1472-byte DNSKEY response (the rest is in IP fragments)
DNSKEY_HEAD = bytes.fromhex(
    "d43f841000010004000000010877656265726c61620264650000300001c00c003000010000003c02080101030a03010001dd"
    "effded22ad760a3b0b58101dd53deef3f7daaf8b995ef7fcb55d7ca9969e72ff9c5aaab9bfade946f29831f06b0d5b6220be"
    "224a009e94894e391112a81fe7f3daa7f6494147156c24c1e896c8b6781191e1a30be2084c7de0fe0eb3034a5e67581dedfc"
    "ae51cf6bedceca95bd8187d1f6584228ade77823eaf3f68516c4d323b750f90da41115a208c0b26e5e163b0b01a3f4659cf3"
)
# benign/ndpi_dns_fragmented.pcap: a NODATA response cut after its SOA (NSCOUNT 1, ARCOUNT 0); SOA names compressed
SOA_NODATA = bytes.fromhex(
    "a43884100001000000010000036667320877656265726c616202646500001c0001c010000600010000003c003c036e733008"
    "7765626572646e73c019097765626d61737465720977656265726e65747a036e657400785848e900000e10000003840024ea"
    "000000003c"
)
# tunnel/dmachard_iodine.pcap: a query whose label holds 8-bit bytes (iodine's charset probe), with an OPT record
IODINE_8BIT = bytes.fromhex(
    "836501000001000000000001297a30706961412d4161616868682d4472696e6b2d6d616c2d65696e2d4ae46765726d65697374"
    "65722d027431076269696c6c706903636f6d00000a00010000291000000080000000"
)
# tunnel/dmachard_dns2tcp.pcap: a TXT answer
DNS2TCP_TXT = bytes.fromhex(
    "d645858000010001000000000a41414141414837775141053d6175746807646e7332746370036873630266720000100001c00c"
    "0010000100000003002220416f6e6341414837774146424c5744524a527a46525130673453445a5457466700"
)
REAL = [EXAMPLE_QUERY, SCDN_RESPONSE, CAPTIVE_RESPONSE, SOA_NODATA, IODINE_8BIT, DNS2TCP_TXT]


def header(qdcount: int = 1, ancount: int = 0, flags: int = 0x0100) -> bytes:
    return struct.pack("!HHHHHH", 1, flags, qdcount, ancount, 0, 0)


def labels(name: str) -> tuple[bytes, ...]:
    return tuple(label.encode() for label in name.split("."))


# --- parsing real messages


def test_query() -> None:
    assert dns.parse(EXAMPLE_QUERY) == Message(0xBC1F, 0x0100, (Question(labels("www.example.com"), dns.AAAA),))


def test_response_with_compression() -> None:
    message = dns.parse(SCDN_RESPONSE)
    assert message.is_response and message.rcode == dns.NOERROR and not message.tc
    assert [q.name for q in message.questions] == ["i.scdn.co"]
    target = "scdnco.spotify.map.fastly.net"
    assert [(r.name, r.rtype) for r in message.answers] == [("i.scdn.co", dns.CNAME), (target, dns.A)]
    assert message.answers[0].data == dns.encode_name(target)
    assert dns.addresses(message) == [("146.75.62.248", 30)]


def test_names_inside_rdata_are_expanded() -> None:
    chain = dns.parse(CAPTIVE_RESPONSE).answers
    targets = [r.data for r in chain if r.rtype == dns.CNAME]
    assert targets == [
        dns.encode_name("captive-cidr.origin-apple.com.akadns.net"),
        dns.encode_name("captive-cdn.origin-apple.com.akadns.net"),
        dns.encode_name("captive.g.aaplimg.com"),
    ]
    soa = dns.parse(SOA_NODATA).authorities[0]
    assert soa.name == "weberlab.de" and soa.rtype == dns.SOA
    names = dns.encode_name("ns0.weberdns.de") + dns.encode_name("webmaster.webernetz.net")
    assert soa.data == names + struct.pack("!5I", 2019051753, 3600, 900, 2419200, 60)


def test_addresses_follow_a_cname_chain_whatever_the_owner_name() -> None:
    assert dns.addresses(dns.parse(CAPTIVE_RESPONSE)) == [("17.253.53.201", 19), ("17.253.53.208", 19)]


def test_cut_response_keeps_what_was_complete() -> None:
    message = dns.parse_partial(DNSKEY_HEAD)
    assert message is not None
    assert message.questions == (Question(labels("weberlab.de"), 48),)
    assert message.answers == () and message.problem == "record data cut short"
    with pytest.raises(dns.DnsError, match="record data cut short"):
        dns.parse(DNSKEY_HEAD)


def test_opt_record_and_eight_bit_labels_are_kept_exactly() -> None:
    message = dns.parse(IODINE_8BIT)
    question = message.questions[0]
    assert question.labels[0] == b"z0piaA-Aaahhh-Drink-mal-ein-J\xe4germeister-"
    assert question.name == "z0piaa-aaahhh-drink-mal-ein-j\\228germeister-.t1.biillpi.com"
    assert question.hostname is None
    assert question.qtype == dns.NULL
    assert message.additionals == (Record((), dns.OPT, 0x8000, b"", rclass=4096),)


# --- names: exact labels, lossless text, hostname or None (issue 9: judge exactly the name that is forwarded)


@pytest.mark.parametrize(
    ("asked", "wire_labels", "name", "hostname"),
    [
        ("Allowed.LAB.", (b"Allowed", b"LAB"), "allowed.lab", "allowed.lab"),
        ("_dmarc.x-1.lab", (b"_dmarc", b"x-1", b"lab"), "_dmarc.x-1.lab", "_dmarc.x-1.lab"),
        (".", (), "", ""),
        ("allowed.lab:secret.evil", (b"allowed", b"lab:secret", b"evil"), "allowed.lab:secret.evil", None),
        ("[allowed.lab]", (b"[allowed", b"lab]"), "[allowed.lab]", None),
        ("data\\.allowed.lab", (b"data.allowed", b"lab"), "data\\.allowed.lab", None),
        ("a\\032b\\\\\\255.lab", (b"a b\\\xff", b"lab"), "a\\032b\\\\\\255.lab", None),
        ("a\\000.lab", (b"a\x00", b"lab"), "a\\000.lab", None),
    ],
)
def test_question_names(asked: str, wire_labels: tuple[bytes, ...], name: str, hostname: str | None) -> None:
    question = dns.parse(dns.build_query(1, asked, dns.TXT)).questions[0]
    assert question.labels == wire_labels
    assert question.name == name
    assert question.hostname == hostname


@pytest.mark.parametrize(
    "name", ["a" * 64 + ".lab", ".".join(["a" * 60] * 5), "a..lab", ".lab", "a b.lab", "caf\xe9.lab", "a\\"]
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        dns.encode_name(name)


label_bytes = st.binary(min_size=1, max_size=8) | st.sampled_from([b"A" * 63, b".\\\xff" * 20 + b"Z"])
wire_names = st.lists(label_bytes, max_size=3).map(tuple)
"""Up to 3 labels of up to 63 bytes (longer names are tested on their own)."""


@given(wire_names)
def test_name_text_is_lossless(name: tuple[bytes, ...]) -> None:
    text = dns.name_text(name)
    assert text.isascii() and text.isprintable()
    assert dns.name_labels(text) == tuple(label.lower() for label in name)


@given(st.text(max_size=40) | st.text(alphabet="ab.\\0129", max_size=40))
def test_names_in_any_text_raise_only_value_error(text: str) -> None:
    try:
        name = dns.name_labels(text)
    except ValueError:
        return
    assert dns.name_labels(dns.name_text(name)) == tuple(label.lower() for label in name)


# --- building


def test_query_round_trip() -> None:
    message = dns.parse(dns.build_query(0x1234, "Allowed.LAB.", dns.AAAA))
    assert message.id == 0x1234 and not message.is_response and message.flags & dns.RD
    assert [(q.name, q.qtype) for q in message.questions] == [("allowed.lab", dns.AAAA)]
    assert not dns.parse(dns.build_query(1, "a.lab", dns.A, recursion=False)).flags & dns.RD


def test_response_round_trip() -> None:
    query = dns.parse(dns.build_query(7, "a.lab", dns.A))
    answer = Record(labels("a.lab"), dns.A, 60, bytes([198, 18, 10, 1]))
    message = dns.parse(dns.build_response(query, dns.NOERROR, (answer,), authoritative=True))
    assert message.is_response and message.rcode == dns.NOERROR and message.id == 7
    assert message.flags & dns.AA and message.flags & dns.RD and not message.flags & dns.RA
    assert message.questions == query.questions
    assert message.answers == (answer,)
    assert dns.address_of(message.answers[0]) == "198.18.10.1"


@pytest.mark.parametrize("rcode", [dns.REFUSED, dns.NXDOMAIN, dns.SERVFAIL])
def test_refusals_echo_id_opcode_rd_and_the_question_exactly(rcode: int) -> None:
    asked = bytearray(dns.build_query(0x1234, "Blocked.example.COM", dns.A))
    asked[2] |= 0x10  # opcode 2 (STATUS): echoed, not judged here
    query = dns.parse(bytes(asked))
    for out in (dns.build_response(query, rcode, recursion_available=True), dns.reply(bytes(asked), rcode)):
        assert out is not None
        parsed = dns.parse(out)
        assert (parsed.id, parsed.rcode, parsed.opcode, parsed.is_response) == (0x1234, rcode, 2, True)
        assert parsed.questions == query.questions and parsed.questions[0].labels[0] == b"Blocked"
        assert parsed.answers == parsed.authorities == parsed.additionals == ()


def test_reply_to_bytes_that_do_not_parse() -> None:
    assert dns.reply(EXAMPLE_QUERY[:11], dns.FORMERR) is None
    bare = dns.reply(header(qdcount=5) + b"\x03ab", dns.FORMERR, recursion_available=True)
    assert bare == struct.pack("!HHHHHH", 1, 0x8181, 0, 0, 0, 0)
    echoed = dns.reply(EXAMPLE_QUERY + b"junk", dns.FORMERR)  # the question was whole: it is echoed
    assert echoed is not None and dns.parse(echoed).questions == dns.parse(EXAMPLE_QUERY).questions


def test_rdata_builders_and_tcp_framing() -> None:
    assert dns.txt_data([b"ab", b""]) == b"\x02ab\x00"
    assert dns.tcp_frame(b"abc") == b"\x00\x03abc"
    stream = dns.tcp_frame(EXAMPLE_QUERY) + dns.tcp_frame(SCDN_RESPONSE)
    assert dns.split_tcp(stream) == ([EXAMPLE_QUERY, SCDN_RESPONSE], b"")
    assert dns.split_tcp(stream[:-5]) == ([EXAMPLE_QUERY], stream[2 + len(EXAMPLE_QUERY) : -5])
    for cut in range(len(stream) + 1):
        whole, rest = dns.split_tcp(stream[:cut])
        assert b"".join(dns.tcp_frame(m) for m in whole) + rest == stream[:cut]


def _rdata(rtype: int) -> st.SearchStrategy[bytes]:
    name = wire_names.map(lambda ls: b"".join(bytes([len(label)]) + label for label in ls) + b"\0")
    if rtype in (dns.NS, dns.CNAME, dns.PTR):
        return name
    if rtype == dns.MX:
        return st.tuples(st.binary(min_size=2, max_size=2), name).map(b"".join)
    if rtype == dns.SOA:
        return st.tuples(name, name, st.binary(min_size=20, max_size=20)).map(b"".join)
    return st.binary(max_size=16)


records = st.sampled_from(
    [dns.A, dns.NS, dns.CNAME, dns.SOA, dns.MX, dns.TXT, dns.NULL, dns.OPT, 65, 0, 65535]
).flatmap(
    lambda rtype: st.builds(
        Record,
        wire_names,
        st.just(rtype),
        st.integers(0, 2**32 - 1),
        _rdata(rtype),
        st.integers(0, 0xFFFF),
    )
)
messages = st.builds(
    Message,
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.lists(st.builds(Question, wire_names, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)), max_size=2).map(tuple),
    *[st.lists(records, max_size=2).map(tuple)] * 3,
)


@settings(max_examples=examples(100), deadline=None)
@given(messages)
def test_encode_then_parse_round_trips(message: Message) -> None:
    assert dns.parse(dns.encode(message)) == message


# --- hostile and cut input


def pointer_chain(length: int) -> bytes:
    """An answer whose owner name is ``length`` compression pointers, each to the one before (ending at the root)."""
    start = 12 + 1 + 10  # after the first record's root name and fixed fields: its RDATA holds the chain
    chain = b"\xc0\x0c" + b"".join(struct.pack("!H", 0xC000 | (start + 2 * n)) for n in range(length - 1))
    first = b"\x00" + struct.pack("!HHIH", dns.NULL, 1, 0, len(chain)) + chain
    last = struct.pack("!H", 0xC000 | (start + 2 * (length - 1))) + struct.pack("!HHIH", dns.A, 1, 0, 0)
    return header(qdcount=0, ancount=2, flags=0x8000) + first + last


def test_pointer_chains_are_bounded() -> None:
    assert dns.parse(pointer_chain(dns.MAX_POINTERS - 1)).answers[1].name == ""
    with pytest.raises(dns.DnsError, match="compression pointers in a name"):
        dns.parse(pointer_chain(dns.MAX_POINTERS + 1))


@pytest.mark.parametrize(
    "data",
    [
        header() + b"\xc0\x0c\x00\x01\x00\x01",  # pointer to itself
        header() + b"\x01a\xc0\x0c\x00\x01\x00\x01",  # pointer back to its own start: a loop
        header() + b"\xc0\x20",  # pointer forwards
        header() + b"\xc0",  # pointer cut short
        header() + b"\x05ab",  # label runs past the end
        header() + b"\x41abc\x00\x00\x01\x00\x01",  # reserved label type 0x40
        header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",  # name of 257 octets
        header() + b"\x01a\x00\x00\x01",  # question cut short
        header(ancount=3) + b"\x01a\x00\x00\x01\x00\x01" + b"\xc0\x0c\x00\x01",  # record cut short
        header(qdcount=0, ancount=1) + b"\x00\x00\x05\x00\x01\x00\x00\x00\x00\x00\x02\xc0\x17",  # CNAME to itself
        header(qdcount=17) + b"\x00\x00\x01\x00\x01" * 17,  # more questions than are read
        EXAMPLE_QUERY + b"\x00",  # a byte after the last record
    ],
    ids=[
        "self-pointer",
        "loop",
        "forward-pointer",
        "cut-pointer",
        "short-label",
        "label-type",
        "long-name",
        "short-question",
        "short-record",
        "rdata-forward-pointer",
        "many-questions",
        "trailing-byte",
    ],
)
def test_hostile_or_cut_messages(data: bytes) -> None:
    partial = dns.parse_partial(data)
    assert partial is not None and partial.problem
    with pytest.raises(dns.DnsError):
        dns.parse(data)


def test_shorter_than_a_header_is_not_dns() -> None:
    assert dns.parse_partial(EXAMPLE_QUERY[:11]) is None
    with pytest.raises(dns.DnsError):
        dns.parse(b"")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real message with a few bytes set, inserted, deleted or cut; pointer-like bytes are favoured."""
    data = bytearray(draw(st.sampled_from(REAL)))
    byte = st.sampled_from([0x00, 0x01, 0x0C, 0x3F, 0x40, 0xC0, 0xFF]) | st.integers(0, 255)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(("set", "set", "insert", "delete", "cut")))
        pos = draw(st.integers(0, len(data)))
        if op == "set" and pos < len(data):
            data[pos] = draw(byte)
        elif op == "insert":
            data[pos:pos] = bytes(draw(st.lists(byte, min_size=1, max_size=4)))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 4))]
        elif op == "cut":
            del data[pos:]
    return bytes(data)


def _check_any_bytes(data: bytes) -> None:
    partial = dns.parse_partial(data)
    assert (partial is None) == (len(data) < 12)
    try:
        whole = dns.parse(data)
    except dns.DnsError as error:
        assert partial is None or str(error) == partial.problem
    else:
        assert whole == partial
        assert dns.parse(dns.encode(whole)) == whole
    if partial is not None:
        assert len(partial.questions) <= dns.MAX_QUESTIONS
        assert len(partial.answers) + len(partial.authorities) + len(partial.additionals) <= dns.MAX_RECORDS
        for question in partial.questions:
            assert question.name.isascii() and question.name.isprintable()  # safe as evidence
        out = dns.reply(data, dns.REFUSED)
        assert out is not None and dns.parse(out).questions == partial.questions


@settings(max_examples=examples(400), deadline=None)
@given(mutated())
def test_mutated_real_messages_raise_only_dns_error(data: bytes) -> None:
    _check_any_bytes(data)


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_dns_error(data: bytes) -> None:
    _check_any_bytes(data)
    _check_any_bytes(EXAMPLE_QUERY[:12] + data)
    dns.split_tcp(data)


@needs_corpus
def test_every_dns_message_of_the_corpus_parses_and_re_encodes() -> None:
    seen = 0
    for path in sorted(CORPUS.glob("*/*.pcap*")):
        defrag = Defragmenter()
        for ts, linktype, frame in read_frames(str(path)):
            try:
                segment = decode(linktype, frame, ts, defrag)
            except Malformed:
                continue
            if segment is None or segment.proto != UDP or 53 not in (segment.sport, segment.dport):
                continue
            message = dns.parse(segment.payload)
            assert dns.parse(dns.encode(message)) == message, path.name
            seen += 1
    assert seen > 900


@settings(max_examples=examples(200), deadline=None)
@given(messages, st.integers(0, 80), st.binary(max_size=8))
def test_the_questions_alone_are_read_as_the_whole_parse_reads_them(message: Message, cut: int, tail: bytes) -> None:
    """`parse_questions` (the scanner's DNS inspection) reads the header and questions of whole, cut and trailed
    messages as `parse_partial` does, whatever follows them."""
    wire = dns.encode(message)
    for data in (wire, wire[: max(0, len(wire) - cut)], wire + tail, wire[:12] + tail):
        whole, questions = dns.parse_partial(data), dns.parse_questions(data)
        if whole is None or questions is None:
            assert whole is questions is None
            continue
        assert (questions.id, questions.flags, questions.questions) == (whole.id, whole.flags, whole.questions)
        assert questions.answers == questions.authorities == questions.additionals == ()
