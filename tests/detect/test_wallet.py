"""The wallet detector (egress/detect/wallet.py): a checksummed Monero address in the client's bytes, any framing.

Addresses are made by tests/detect/wallets.py from random keys (never a real wallet)."""

from __future__ import annotations

import random
import struct

import pytest

from egress.detect import datagrams, wallet
from egress.detect.base import MORE, Category, Finding, FlowView, Transport
from egress.detect.engine import STREAM_CAP
from egress.detect.registry import MINING
from tests.detect.feeding import META, feed_every_split, feed_stream, meta
from tests.detect.test_tls import TOR_CLIENT_HELLO
from tests.detect.wallets import encode, make_address

RNG_SEED = 20261203
TAGS = {tag: network for tag, network in wallet.NETWORKS.items()}


def _address(tag: int = 18, seed: int = 0) -> bytes:
    return make_address(random.Random(RNG_SEED + seed), tag, payment_id=wallet.NETWORKS[tag].kind == "integrated")


def _protobuf_login(address: bytes) -> bytes:
    """XMRig's login as protobuf: field 1 the wallet, 2 the password ``x``, 3 the agent (lengths as varints)."""
    agent = b"XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0"
    fields = ((1, address), (2, b"x"), (3, agent))
    return b"".join(bytes((number << 3 | 2, len(value))) + value for number, value in fields)


@pytest.mark.parametrize("tag", sorted(TAGS))
def test_every_network_tag_is_named(tag: int) -> None:
    address = _address(tag)
    network = TAGS[tag]
    assert len(address) == network.length
    assert wallet.address(address) == network
    found = feed_stream(wallet.detect, _protobuf_login(address))
    assert found is not None and found.category is Category.MINING and found.protocol == wallet.PROTOCOL
    assert f"{network.name} {network.kind} address {address.decode()}" == found.evidence


def test_the_encoder_round_trips_and_the_start_characters_cover_every_tag() -> None:
    rng = random.Random(RNG_SEED)
    for size in range(0, 80):
        raw = rng.randbytes(size)
        assert wallet.decode(encode(raw)) == raw
    for tag in TAGS:
        for seed in range(20):
            assert _address(tag, seed)[:1] in {bytes((c,)) for c in wallet._first_characters()}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(lambda rng: bytes((18,)) + rng.randbytes(64) + b"\0\0\0\0", id="checksum-zero"),
        pytest.param(lambda rng: bytes((17,)) + rng.randbytes(64), id="unknown-tag"),
        pytest.param(lambda rng: bytes((18,)) + rng.randbytes(72), id="standard-tag-integrated-length"),
        pytest.param(lambda rng: bytes((19,)) + rng.randbytes(64), id="integrated-tag-standard-length"),
        pytest.param(lambda rng: bytes((0x92, 0x01)) + rng.randbytes(63), id="two-byte-varint-tag"),
    ],
)
def test_what_is_not_a_checksummed_address_is_not_named(body: object) -> None:
    from egress.detect.keccak import keccak256

    rng = random.Random(RNG_SEED)
    for _ in range(20):
        raw = body(rng)  # type: ignore[operator]
        assert isinstance(raw, bytes)
        text = encode(raw + keccak256(raw)[:4]) if not raw.endswith(b"\0\0\0\0") else encode(raw)
        assert wallet.address(text) is None
        assert feed_stream(wallet.detect, b"login " + text + b" x") is None


def test_one_character_changed_is_never_named() -> None:
    address = _address(18)
    assert feed_stream(wallet.detect, address) is not None
    for at in range(len(address)):
        for replacement in (b"1", b"z", b"A", bytes((address[at] + 1,)) if address[at] != ord(b"z") else b"y"):
            if replacement[0] == address[at] or replacement[0] not in wallet.ALPHABET:
                continue
            mutated = address[:at] + replacement + address[at + 1 :]
            assert wallet.address(mutated) is None, (at, replacement)
    assert feed_stream(wallet.detect, address[:50] + address[51:]) is None  # one character dropped


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(lambda a: b"\x0a" + bytes((len(a),)) + a + b"\x12\x01x", id="protobuf"),
        pytest.param(
            lambda a: b"\x0b\x00\x01" + struct.pack(">i", len(a)) + a + b"\x0b\x00\x02\x00\x00\x00\x01x\x00",
            id="thrift",
        ),
        pytest.param(lambda a: b"\xa3elogin\x78" + bytes((len(a),)) + a + b"dpassax", id="cbor"),
        pytest.param(lambda a: b"USER " + a + b"\r\nPASS x\r\n", id="text"),
        pytest.param(lambda a: b"xj" + a + b"Bpassword", id="base58-both-sides"),
        pytest.param(lambda a: a, id="alone"),
        pytest.param(lambda a: b'{"params":{"user":"\\u00' + b"%x" % a[0] + b"" + a[1:] + b'"}}', id="json-escaped"),
        pytest.param(
            lambda a: b"\xff\xfe" + b'{"u":"'.decode().encode("utf-16-le") + a.decode().encode("utf-16-le"), id="utf16"
        ),
    ],
)
@pytest.mark.parametrize("tag", [18, 19, 42])
def test_any_framing_at_every_split(framing: object, tag: int) -> None:
    address = _address(tag)
    data = framing(address)  # type: ignore[operator]
    assert isinstance(data, bytes)
    results = set(feed_every_split(wallet.detect, data))
    assert len(results) == 1, results
    (found,) = results
    assert found is not None and address.decode() in found.evidence


def test_the_server_s_bytes_are_not_read() -> None:
    page = b"HTTP/1.1 200 OK\r\n\r\n<p>Donations: " + _address(18) + b"</p>"
    assert feed_stream(wallet.detect, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", page) is None


def test_at_the_stream_cap() -> None:
    address = _address(18)
    inside = b" " * (STREAM_CAP - len(address)) + address
    assert feed_stream(wallet.detect, inside + b" more") is not None
    across = b" " * (STREAM_CAP - len(address) + 1) + address  # its last character past the cap
    assert feed_stream(wallet.detect, across) is None


def test_an_address_over_two_feeds_and_after_a_tls_hello() -> None:
    address = _address(42)
    view = FlowView(META, client=b"user=" + address[:60])
    assert wallet.detect(view) is MORE
    view.client += address[60:]
    found = wallet.detect(view)
    assert isinstance(found, Finding) and address.decode() in found.evidence
    # after a whole ClientHello the client's bytes are ciphertext (decrypted TLS is read on its own)
    assert feed_stream(wallet.detect, TOR_CLIENT_HELLO + address) is None


def test_random_base58_strings_are_never_named() -> None:
    rng = random.Random(RNG_SEED)
    starts = wallet._first_characters()
    for index in range(10_000):
        length = 95 if index % 2 else 106
        text = bytes((rng.choice(starts),)) + bytes(rng.choice(wallet.ALPHABET) for _ in range(length - 1))
        assert wallet.address(text) is None
    stream = bytes(rng.choice(wallet.ALPHABET) for _ in range(STREAM_CAP))
    view = FlowView(META, client=stream, complete=True)
    assert wallet.detect(view) is None
    memo = view.memo[wallet.__name__]
    assert len(memo.hashed) < wallet.CHECKS_MAX  # type: ignore[attr-defined]


def test_past_the_hashing_bound_the_flow_is_unidentified() -> None:
    """Address-shaped strings (a tag, valid blocks) that fail the checksum, more than `CHECKS_MAX`: fail closed."""
    rng = random.Random(RNG_SEED)
    shaped = [encode(bytes((18,)) + rng.randbytes(68)) for _ in range(wallet.CHECKS_MAX + 1)]
    found = feed_stream(wallet.detect, b" ".join(shaped))
    assert found is not None and found.category is Category.TUNNEL and found.protocol == "unidentified"
    assert feed_stream(wallet.detect, b" ".join(shaped[:-1]) + b" " + _address(18)) is not None


def test_registered_with_the_pool_detectors_and_read_in_udp_datagrams() -> None:
    assert wallet.detect in MINING
    login = _protobuf_login(_address(18))
    flow = meta(4100, Transport.UDP)
    found = datagrams.inspect(flow, [login], ())
    assert found is not None and found.detector == wallet.NAME
    found = datagrams.inspect(flow, [login[:40], login[40:]], ())  # the window joined
    assert found is not None and found.detector == wallet.NAME


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(b"AAEAAAADAAAABgAAAAQAAAAEAAAAAgAAAAYAAAAH" * 200, id="base64-of-small-integers"),
        pytest.param(b"777777" + b"5" * 4000 + b"9" * 3000, id="digit-padding"),
        pytest.param(b"4" * 16000, id="one-character"),
        pytest.param(bytes(b"123456789abcdef"[i % 15] for i in range(16000)), id="hex-without-zeros"),
    ],
)
def test_repetitive_base58_runs_are_not_hashed(run: bytes) -> None:
    """Long base58 runs of benign files (bench/wallet_fp.py found these in node and chromium) hash nothing."""
    view = FlowView(META, client=run[:STREAM_CAP], complete=True)
    assert wallet.detect(view) is None
    assert not view.memo[wallet.__name__].hashed  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", [1, 7, 64, 1460])
def test_fed_in_small_segments_as_whole(size: int) -> None:
    """The memo (classes of the new bytes, where windows were looked at) gives what one whole read gives."""
    rng = random.Random(RNG_SEED + size)
    noise = bytes(rng.choice(wallet.ALPHABET) for _ in range(3000))  # a long run the address follows
    for address in (_address(18), _address(19)):
        data = b"GET / " + noise + b"=" + address + b"&" + noise[:500] + address[:40]
        view = FlowView(META)
        found = None
        for at in range(0, len(data), size):
            view.client += data[at : at + size]
            result = wallet.detect(view)
            if isinstance(result, Finding):
                found = result
                break
        whole = wallet.detect(FlowView(META, client=data))
        assert isinstance(whole, Finding) and found == whole and address.decode() in whole.evidence
