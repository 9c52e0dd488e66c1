"""Keccak-256 with the original padding (egress/detect/keccak.py), against published vectors and its own blocks."""

from __future__ import annotations

import hashlib

import pytest

from egress.detect.keccak import keccak256

VECTORS = {
    # Ethereum's and Monero's Keccak-256 of the empty string and of "abc" (the Keccak team's KeccakKAT, 256 bits)
    b"": "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470",
    b"abc": "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45",
    # Ethereum's event topic for Transfer(address,address,uint256): the ERC-20 standard's published hash
    b"Transfer(address,address,uint256)": "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef",
}


@pytest.mark.parametrize("data", list(VECTORS))
def test_known_vectors(data: bytes) -> None:
    assert keccak256(data).hex() == VECTORS[data]


@pytest.mark.parametrize("size", [0, 1, 134, 135, 136, 137, 271, 272, 273, 500])
def test_not_sha3_and_every_padding_length(size: int) -> None:
    """SHA-3 pads otherwise: the digests differ at every length around the rate's edges (one and two blocks)."""
    data = bytes(range(256)) * 2
    digest = keccak256(data[:size])
    assert len(digest) == 32
    assert digest != hashlib.sha3_256(data[:size]).digest()
    assert digest != keccak256(data[: size + 1])
