"""A Monero (CryptoNote) payout address in what the sandbox sends: a pool login in any framing names its wallet.

A miner logs in to its pool with its payout address as the username, whatever the framing (XMRig's JSON
``login``, protobuf, Thrift, CBOR, a custom text or binary format, fields in any order). The pool detectors name
the protocol; this one names the address, so a login whose protocol names nothing (red team 12: XMRig's login in
protobuf, where ``pass``/``agent`` are field numbers) is still found. docs/wallets.md has the decisions.

Signature (Monero's src/cryptonote_basic/cryptonote_basic_impl.cpp ``get_account_address_as_str``, src/common/
base58.cpp, src/cryptonote_config.h; the Monero docs' "Addresses" and "Integrated address"):

- the bytes: the network tag as a varint (mainnet 18 standard, 19 integrated, 42 subaddress; testnet 53, 54, 63;
  stagenet 24, 25, 36), the public spend and view keys (64 bytes), for an integrated address an 8-byte payment
  id, then a checksum: the first 4 bytes of Keccak-256 (original padding: `egress.detect.keccak`) of the rest;
- the text: Monero's *block* base58 (Bitcoin's alphabet; each 8-byte block written as 11 characters, the last
  partial block as `_BLOCK_CHARS` of its size): 95 characters (69 bytes), 106 for an integrated address (77).

A random string passes the checksum once in 2**32, after the tag and the block bounds: what is found is an address.

Where: the client's bytes only (the server's may carry donation addresses in web pages; a pool never needs to
send the miner its own wallet), raw and as the JSON readers decode them (`egress.detect.jsonrpc.read`: escapes,
NULs, HTTP bodies, documents in strings). Registered with the pool detectors (`egress.detect.registry.MINING`), so
it runs on TCP streams, unwrapped WebSocket payloads, decrypted TLS and HTTP fields, and UDP datagrams.

Cost: the new bytes are translated to classes (base58 or not) and a run of 95 base58 characters is searched with
``bytes.find`` (C speed; rare outside base58 data); inside such a run each place an address could start (a tag's
first character) costs one block decode (its tag); only a
string whose tag, length and blocks fit, and that is not repetitive (`DISTINCT_MIN`), is hashed, each distinct
string once, at most `CHECKS_MAX` per flow. Past that bound the flow is unidentified (a finding: fail closed).
Each source is searched only past what an earlier prefix of it settled (`_Source`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from egress.detect import jsonrpc
from egress.detect.base import MORE, Category, Finding, FlowView, Result, evidence
from egress.detect.keccak import keccak256

NAME: Final = "wallet"
PROTOCOL: Final = "cryptonote-address"
ALPHABET: Final = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BLOCK_CHARS: Final = (0, 2, 3, 5, 6, 7, 9, 10, 11)
"""Characters of a block of 0..8 bytes (base58.cpp ``encoded_block_sizes``)."""
_VALUE: Final = tuple(ALPHABET.find(bytes((byte,))) for byte in range(256))
STANDARD: Final = 95
INTEGRATED: Final = 106


@dataclass(frozen=True, slots=True)
class Network:
    name: str
    kind: str

    @property
    def length(self) -> int:
        """Characters of an address with this tag."""
        return INTEGRATED if self.kind == "integrated" else STANDARD


NETWORKS: Final = {
    18: Network("mainnet", "standard"),
    19: Network("mainnet", "integrated"),
    42: Network("mainnet", "subaddress"),
    53: Network("testnet", "standard"),
    54: Network("testnet", "integrated"),
    63: Network("testnet", "subaddress"),
    24: Network("stagenet", "standard"),
    25: Network("stagenet", "integrated"),
    36: Network("stagenet", "subaddress"),
}
"""Monero's address tags (cryptonote_config.h ``CRYPTONOTE_PUBLIC_ADDRESS_BASE58_PREFIX`` and its integrated and
subaddress twins, per network)."""

CHECKS_MAX: Final = 64
"""Distinct address-shaped strings hashed per flow (each about 0.3 ms). 16 KiB of random base58 holds about 20
(tests/detect/test_wallet.py), a 16 KiB piece of a benign file at most 17 (bench/wallet_fp.py); only bytes made
to fill this bound do, and such a flow is unidentified."""
DISTINCT_MIN: Final = 30
"""Fewest different characters an address-shaped string must hold to be hashed. An address writes 64 bytes of
random keys: 47 different characters on average in 95 (the fewest in 40,000 made: 37, a standard deviation about
2.6), where long base58 runs of benign bytes are repetitive (base64 of small integers ``AAEAAAADAAAABg``, digit
padding ``7777755555``: 2 to 20). Without it such runs filled `CHECKS_MAX` in /usr/bin/node and chromium."""


def _first_characters() -> bytes:
    """Characters an address may start with: the first block's value lies in [tag << 56, (tag + 1) << 56)."""
    full = 58**10
    starts = {index for tag in NETWORKS for index in range((tag << 56) // full, (((tag + 1) << 56) - 1) // full + 1)}
    return bytes(ALPHABET[index] for index in sorted(starts))


_CLASSES: Final = bytes(0x61 if byte in ALPHABET else 0x20 for byte in range(256))
"""Each byte's class: ``a`` for a base58 character, a space for any other (``bytes.translate``)."""
_RUN: Final = b"a" * STANDARD
"""A base58 run long enough to hold an address, in the classes (one ``bytes.find``)."""
_START: Final = re.compile(rb"[%s]" % _first_characters())
"""A character an address may start with, searched only inside such runs."""
_BASE58: Final = re.compile(rb"[%s]+" % ALPHABET)


def _block(text: bytes, size: int) -> int:
    """The value of one base58 block of ``size`` bytes, or -1 when it overflows them."""
    value = 0
    for char in text:
        value = value * 58 + _VALUE[char]
    return value if value < 1 << (8 * size) else -1


def decode(text: bytes) -> bytes | None:
    """Monero's block base58 of ``text`` (only base58 characters), or ``None`` when it is not valid."""
    whole, rest = divmod(len(text), 11)
    if rest not in _BLOCK_CHARS:
        return None
    out = bytearray()
    for start, size in [(11 * i, 8) for i in range(whole)] + ([(11 * whole, _BLOCK_CHARS.index(rest))] if rest else []):
        value = _block(text[start : start + (11 if size == 8 else rest)], size)
        if value < 0:
            return None
        out += value.to_bytes(size)
    return bytes(out)


def _tag(data: bytes, at: int) -> int:
    """The tag (first byte) of the address that would start at ``at``, from its first block, or -1."""
    value = _block(data[at : at + 11], 8)
    return value >> 56 if value >= 0 else -1


def address(text: bytes) -> Network | None:
    """The network of ``text`` when it is a checksummed Monero address, else ``None``."""
    raw = decode(text) if _BASE58.fullmatch(text) else None
    network = NETWORKS.get(raw[0]) if raw else None
    if raw is None or network is None or len(text) != network.length:
        return None
    return network if keccak256(raw[:-4])[:4] == raw[-4:] else None


@dataclass(slots=True)
class _Source:
    """How far one source (the client's raw bytes, or their decoded text) was searched: a memo of its bytes."""

    data: bytes = b""
    classes: bytes = b""
    """``data[base:]`` translated to `_CLASSES` (what is before ``base`` is never searched again)."""
    base: int = 0
    standard: int = 0
    """The first start of a 95-character window not yet looked at (every earlier one was)."""
    integrated: int = 0
    """Likewise for 106 characters."""


@dataclass(slots=True)
class _Memo:
    raw: _Source = field(default_factory=_Source)
    text: _Source = field(default_factory=_Source)
    hashed: set[bytes] = field(default_factory=set)
    """Address-shaped strings hashed and found not to be addresses (at most `CHECKS_MAX`)."""
    found: Finding | None = None


def _memo(view: FlowView) -> _Memo:
    memo = view.memo.get(__name__)
    if not isinstance(memo, _Memo):
        memo = view.memo[__name__] = _Memo()
    return memo


def _check(memo: _Memo, window: bytes) -> Finding | None:
    """A finding when ``window`` (whose tag fits its length) is an address, or when the hashing bound is met."""
    if window in memo.hashed or len(set(window)) < DISTINCT_MIN or decode(window) is None:
        return None
    if len(memo.hashed) >= CHECKS_MAX:
        text = f"over {CHECKS_MAX} address-shaped strings, not all checked; at {window[:24].decode()}"
        return Finding(Category.TUNNEL, "unidentified", NAME, evidence(text))
    network = address(window)
    if network is None:
        memo.hashed.add(window)
        return None
    text = f"{network.name} {network.kind} address {window.decode()}"
    return Finding(Category.MINING, PROTOCOL, NAME, evidence(text))


def _search(memo: _Memo, source: _Source, data: bytes) -> Finding | None:
    """The first address (by start) in ``data`` from where the last search of its prefix stopped."""
    if data.startswith(source.data):
        classes, base = source.classes + data[len(source.data) :].translate(_CLASSES), source.base
    else:
        classes, base, source.standard, source.integrated = data.translate(_CLASSES), 0, 0, 0
    end = len(data)
    at = classes.find(_RUN, min(source.standard, source.integrated) - base)
    while at >= 0:  # a run of 95 base58 characters or more from ``at`` (or from before it, searched already)
        run_end = classes.find(b" ", at)
        run_end = end if run_end < 0 else run_end + base
        if found := _run(memo, source, data, at + base, run_end):
            return found
        at = classes.find(_RUN, run_end - base)
    source.standard = max(source.standard, end - STANDARD + 1)
    source.integrated = max(source.integrated, end - INTEGRATED + 1)
    keep = max(min(source.standard, source.integrated), base)
    source.data, source.classes, source.base = data, classes[keep - base :], keep
    return None


def _run(memo: _Memo, source: _Source, data: bytes, at: int, run_end: int) -> Finding | None:
    """The first address starting in ``data[at:run_end]``, all base58, not looked at before."""
    for match in _START.finditer(data, at, run_end - STANDARD + 1):
        start = match.start()
        if start < source.integrated or (start < source.standard and start + INTEGRATED > run_end):
            continue  # every window from here looked at, or the one left (106 characters) not whole yet
        network = NETWORKS.get(_tag(data, start))
        if network is None:
            continue
        length = network.length
        if start < (source.standard if length == STANDARD else source.integrated) or start + length > run_end:
            continue
        if found := _check(memo, data[start : start + length]):
            return found
    return None


def detect(view: FlowView) -> Result:
    """Find a checksummed Monero address in the client's bytes (raw, or as the JSON readers decode them)."""
    kept = view.memo.get(__name__)
    if isinstance(kept, _Memo) and kept.found is None and view.client is kept.raw.data and not view.complete:
        return MORE  # the server's side grew: the client's bytes, and so their reading, are the ones searched
    client = jsonrpc.read(view, True)
    if client.kind is jsonrpc.Kind.NOT:  # a whole TLS hello or an SSH banner: ciphertext follows
        return None
    memo = _memo(view)
    if memo.found is None:
        data = view.client[: jsonrpc.SCAN_LIMIT]
        memo.found = _search(memo, memo.raw, data)
        text = client.text
        if memo.found is None and client.kind is jsonrpc.Kind.JSON and not data.endswith(text):
            memo.found = _search(memo, memo.text, text)
    if memo.found is not None:
        return memo.found
    return None if view.complete else MORE


__all__ = [
    "ALPHABET",
    "CHECKS_MAX",
    "DISTINCT_MIN",
    "NAME",
    "NETWORKS",
    "PROTOCOL",
    "Network",
    "address",
    "decode",
    "detect",
]
