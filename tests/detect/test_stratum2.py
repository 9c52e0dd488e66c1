"""Tests for the Stratum v2 detector.

The corpus has no Stratum v2 capture, so the fixtures are built field by field from the sv2-spec message tables
(03-Protocol-Overview.md SetupConnection, 04-Protocol-Security.md handshake sizes).
"""

from __future__ import annotations

import random
import struct

import pytest

from egress.detect import stratum2
from egress.detect.base import Category, Finding
from tests.detect.feeding import feed_every_split, feed_stream
from tests.detect.test_jsonrpc import NEGATIVE_IDS, NEGATIVES


def _str0_255(text: bytes) -> bytes:
    return bytes([len(text)]) + text


def setup_connection(protocol: int = 0, min_version: int = 2, max_version: int = 2) -> bytes:
    payload = (
        struct.pack("<BHHI", protocol, min_version, max_version, 0b110)
        + _str0_255(b"pool.example.org")
        + struct.pack("<H", 34254)
        + _str0_255(b"Bitmain")
        + _str0_255(b"S19")
        + _str0_255(b"2.0.1")
        + _str0_255(b"dev-1")
    )
    return struct.pack("<HB", 0, 0) + len(payload).to_bytes(3, "little") + payload


_RANDOM = random.Random(20240601)
ACT1 = _RANDOM.randbytes(64)
ACT2_SPEC = _RANDOM.randbytes(170)
ACT2_SRI = _RANDOM.randbytes(234)


@pytest.mark.parametrize("protocol", [0, 1, 2])
def test_finds_setup_connection_at_every_split(protocol: int) -> None:
    results = feed_every_split(stratum2.detect, setup_connection(protocol))
    assert all(result == results[0] for result in results)
    finding = results[0]
    assert isinstance(finding, Finding)
    assert (finding.category, finding.protocol, finding.detector) == (Category.MINING, "stratum-v2", "stratum2")
    assert "pool.example.org" in finding.evidence


@pytest.mark.parametrize("act2", [ACT2_SPEC, ACT2_SRI], ids=["spec-170", "sri-234"])
def test_finds_noise_handshake_shape(act2: bytes) -> None:
    finding = feed_stream(stratum2.detect, ACT1, act2, close=False)
    assert finding is not None and finding.protocol == "stratum-v2-noise"


@pytest.mark.parametrize(
    ("client", "server"),
    [
        *NEGATIVES,
        (setup_connection(min_version=1, max_version=1), b""),
        (setup_connection(protocol=7), b""),
        (ACT1, ACT2_SPEC + b"\x00"),
        (ACT1 + b"\x01", ACT2_SPEC),
        (b"\x00" * 64, b"\x00" * 170),
        (b"A" * 64, ACT2_SPEC),
    ],
    ids=[*NEGATIVE_IDS, "version-1", "bad-protocol", "long-reply", "long-hello", "zeros", "text-hello"],
)
def test_ignores_other_traffic(client: bytes, server: bytes) -> None:
    assert feed_stream(stratum2.detect, client, server) is None
