"""Stratum v2: the plaintext ``SetupConnection`` frame and the shape of the encrypted Noise NX handshake.

Signatures (stratum-mining/sv2-spec 03-Protocol-Overview.md "Framing" and "SetupConnection",
04-Protocol-Security.md section 4.5; SRI ``noise_sv2`` constants):

- plaintext frame header: ``extension_type`` u16 LE (0 for common messages), ``msg_type`` u8 (``0x00`` =
  SetupConnection), ``msg_length`` u24 LE; then ``protocol`` u8 (0 mining, 1 job declaration, 2 template
  distribution), ``min_version`` and ``max_version`` u16 LE (2 is the only version), ``flags`` u32 and
  ``endpoint_host`` as STR0_255 (u8 length, then bytes);
- encrypted: the initiator's first message is exactly its 64-byte EllSwift ephemeral key (act 1); the responder
  answers with one message of 170 bytes per the spec text, or 234 bytes as SRI sizes it (64-byte key, 64+16
  encrypted static key, 74+16 encrypted SIGNATURE_NOISE_MESSAGE); nothing else is sent before act 2 arrives.
  Both must look random (no long zero runs, not text).
"""

from __future__ import annotations

from typing import Final

from egress.detect.base import MORE, Category, Finding, FlowView, Result, evidence

NAME: Final = "stratum2"
_HEADER_LEN: Final = 6
_SETUP_FIXED: Final = 1 + 2 + 2 + 4 + 1
"""protocol, min_version, max_version, flags, endpoint_host length."""
_ACT1_LEN: Final = 64
_ACT2_LENS: Final = frozenset({170, 234})
_MAX_SETUP_LEN: Final = _SETUP_FIXED + 2 + 5 * 255


def _setup_connection(data: bytes) -> Result:
    """``SetupConnection`` at the start of ``data``: a finding, None, or MORE while the prefix is short."""
    head = data[: _HEADER_LEN + _SETUP_FIXED]
    expected = b"\x00\x00\x00"
    if head[:3] != expected[: len(head[:3])]:
        return None
    if len(head) < _HEADER_LEN + _SETUP_FIXED:
        return MORE
    length = int.from_bytes(head[3:6], "little")
    protocol = head[6]
    min_version = int.from_bytes(head[7:9], "little")
    max_version = int.from_bytes(head[9:11], "little")
    host_len = head[15]
    if not (_SETUP_FIXED + 2 + 4 <= length <= _MAX_SETUP_LEN and protocol <= 2):
        return None
    if not (min_version == 2 or max_version == 2) or min_version > max_version or max_version > 16:
        return None
    host = data[16 : 16 + host_len]
    if not all(0x21 <= byte < 0x7F for byte in host):
        return None
    if len(host) < host_len:
        return MORE
    label = ("mining", "job-declaration", "template-distribution")[protocol]
    return Finding(Category.MINING, "stratum-v2", NAME, evidence(f"SetupConnection {label} host={host.decode()}"))


def _looks_random(data: bytes) -> bool:
    printable = sum(1 for byte in data if 0x20 <= byte < 0x7F)
    return data.find(b"\x00\x00\x00\x00") < 0 and printable < len(data) * 3 // 4 and len(set(data)) > len(data) // 3


def _noise_shape(view: FlowView) -> Result:
    client, server = view.client, view.server
    if len(client) < _ACT1_LEN:
        return None if view.complete else MORE
    if len(client) > _ACT1_LEN:
        return None
    if not _looks_random(client):
        return None
    if len(server) in _ACT2_LENS and _looks_random(server):
        return Finding(
            Category.MINING, "stratum-v2-noise", NAME, evidence(f"noise NX handshake 64/{len(server)} bytes")
        )
    if len(server) > max(_ACT2_LENS) or view.complete:
        return None
    return MORE


def detect(view: FlowView) -> Result:
    """Find a Stratum v2 connection from its first client bytes (and the size of the server's first reply)."""
    client = view.client
    if not client:
        return None if view.complete or view.server else MORE
    if client[0] == 0:
        found = _setup_connection(client)
        if found is not None:
            return None if found is MORE and view.complete else found
    return _noise_shape(view)
