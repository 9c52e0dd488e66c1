"""The netlink wire format the gateway's kernel readers and writers share: the message header, netfilter's
``nfgenmsg``, attributes and their walk. Pure (bytes in, bytes out); each user owns its socket and its subsystem's
numbers: the drop logger's nflog (`egress.capture.nflog`), the UDP gate's queue (`egress.capture.nfqueue`) and its
queue rule (`egress.nft.xtqueue`)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final

NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLA_F_NESTED: Final = 0x8000
NLA_TYPE_MASK: Final = 0x3FFF
HEADER: Final = struct.Struct("=IHHII")
"""``struct nlmsghdr``: length, type, flags, sequence, port id."""


def attr(kind: int, data: bytes) -> bytes:
    """One attribute (``struct nlattr`` and its value), padded to 4 bytes."""
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The (type, value) attributes in ``data``, type flags masked off; stops at the first malformed one."""
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4 or offset + length > len(data):
            return
        yield kind & NLA_TYPE_MASK, data[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def nfmessage(kind: int, flags: int, seq: int, family: int, res_id: int, body: bytes) -> bytes:
    """A netfilter netlink message of ``kind``: the header, an nfgenmsg (``family``, version 0, ``res_id``: the
    group, queue or subsystem, big-endian) and ``body``."""
    payload = struct.pack("=BB", family, 0) + struct.pack("!H", res_id) + body
    return HEADER.pack(HEADER.size + len(payload), kind, flags, seq, 0) + payload
