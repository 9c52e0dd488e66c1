"""Keccak-256 as Monero and Ethereum use it (the original Keccak submission's padding), in pure Python.

Not ``hashlib.sha3_256``: FIPS 202 changed the padding's domain bits (SHA-3 pads with ``0x06``, original Keccak
with ``0x01``), so the two digests differ for every input. Neither the standard library, nor OpenSSL 3.0 (the
build here), nor any package in the environment provides the original; the permutation is Keccak-f[1600]
(keccak.team, "The Keccak reference", 3.0, §1.2-1.3: theta, rho, pi, chi, iota over 24 rounds), rate 1,088 bits.
Test vectors: ``keccak256(b"")`` is ``c5d24601...5d85a470`` (tests/detect/test_keccak.py).

Slow (about 0.3 ms a block): `egress.detect.wallet` calls it only on the rare string shaped like an address, and
bounds how many it checks per flow.
"""

from __future__ import annotations

from typing import Final

_RC: Final = (
    0x0000000000000001, 0x0000000000008082, 0x800000000000808A, 0x8000000080008000,
    0x000000000000808B, 0x0000000080000001, 0x8000000080008081, 0x8000000000008009,
    0x000000000000008A, 0x0000000000000088, 0x0000000080008009, 0x000000008000000A,
    0x000000008000808B, 0x800000000000008B, 0x8000000000008089, 0x8000000000008003,
    0x8000000000008002, 0x8000000000000080, 0x000000000000800A, 0x800000008000000A,
    0x8000000080008081, 0x8000000000008080, 0x0000000080000001, 0x8000000080008008,
)  # fmt: skip
"""Iota's round constants."""
_ROTATION: Final = (0, 1, 62, 28, 27, 36, 44, 6, 55, 20, 3, 10, 43, 25, 39, 41, 45, 15, 21, 8, 18, 2, 61, 56, 14)
"""Rho's offsets, lane ``x + 5y``."""
_MASK: Final = (1 << 64) - 1
_RATE: Final = 136


def _pi(x: int, y: int) -> int:
    return y + 5 * ((2 * x + 3 * y) % 5)


_STEPS: Final = tuple((x + 5 * y, _pi(x, y), _ROTATION[x + 5 * y]) for y in range(5) for x in range(5))
"""(lane, where rho and pi move it, by how many bits it turns)."""
_CHI: Final = tuple((i, i - i % 5 + (i % 5 + 1) % 5, i - i % 5 + (i % 5 + 2) % 5) for i in range(25))


def _permute(lanes: list[int]) -> list[int]:
    """Keccak-f[1600] on 25 lanes of 64 bits."""
    a = lanes
    for constant in _RC:
        c = [a[x] ^ a[x + 5] ^ a[x + 10] ^ a[x + 15] ^ a[x + 20] for x in range(5)]
        d = [c[(x - 1) % 5] ^ (((c[(x + 1) % 5] << 1) | (c[(x + 1) % 5] >> 63)) & _MASK) for x in range(5)]
        b = [0] * 25
        for lane, to, turn in _STEPS:
            value = a[lane] ^ d[lane % 5]
            b[to] = ((value << turn) | (value >> (64 - turn))) & _MASK if turn else value
        a = [b[i] ^ (~b[j] & b[k]) for i, j, k in _CHI]
        a[0] ^= constant
    return a


def keccak256(data: bytes) -> bytes:
    """The 32-byte original-Keccak digest of ``data``."""
    padded = bytearray(data)
    padded += b"\x01" + bytes(-(len(data) + 1) % _RATE)
    padded[-1] |= 0x80
    lanes = [0] * 25
    for offset in range(0, len(padded), _RATE):
        for index in range(_RATE // 8):
            start = offset + 8 * index
            lanes[index] ^= int.from_bytes(padded[start : start + 8], "little")
        lanes = _permute(lanes)
    return b"".join(lane.to_bytes(8, "little") for lane in lanes[:4])


__all__ = ["keccak256"]
