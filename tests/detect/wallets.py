"""Test helpers: Monero addresses made here (random keys, a tag, the Keccak checksum, block base58), never real ones."""

from __future__ import annotations

import random

from egress.detect.keccak import keccak256
from egress.detect.wallet import ALPHABET

_BLOCK_CHARS = (0, 2, 3, 5, 6, 7, 9, 10, 11)


def encode(raw: bytes) -> bytes:
    """Monero's block base58 of ``raw``: 8-byte blocks as 11 characters, the last partial block as its size says."""
    out = bytearray()
    for start in range(0, len(raw), 8):
        block = raw[start : start + 8]
        value = int.from_bytes(block)
        chars = bytearray()
        for _ in range(_BLOCK_CHARS[len(block)]):
            value, digit = divmod(value, 58)
            chars.append(ALPHABET[digit])
        out += bytes(reversed(chars))
    return bytes(out)


def make_address(rng: random.Random, tag: int = 18, payment_id: bool = False) -> bytes:
    """A checksummed address of network tag ``tag`` (with an 8-byte payment id: integrated) over random keys."""
    body = bytes((tag,)) + rng.randbytes(64) + (rng.randbytes(8) if payment_id else b"")
    return encode(body + keccak256(body)[:4])


__all__ = ["encode", "make_address"]
