"""A capture's TCP connections as the records a TLS shape watcher would read, for the mining-shape tests and bench.

TLS connections (the client's first bytes a TLS record) give their real records (`egress.detect.tlsshape.TlsShape`
reads them from the reassembled streams, with each segment's capture time). Any other connection is what it
would be inside TLS: each *write* (a run of one side's segments less than `WRITE_GAP` apart, at most 16 KiB, the
largest TLS record) becomes one record of that many plaintext bytes at its first segment's time. A pool client or
server writes each message at once, so a message is a record, as it would be under ``stratum+ssl``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from egress.capture.packet import SYN, TCP, Defragmenter, Malformed, decode
from egress.capture.reader import read_frames
from egress.capture.reassembly import TcpStream
from egress.detect import tls
from egress.detect.tlsshape import Record, TlsShape
from tests.detect.tlsshape_traces import HTTPS

WRITE_GAP: Final = 0.05
"""Seconds: segments of one side closer than this are one write (the corpus's Zcash shares: 6 segments in 30 ms)."""
MAX_RECORD: Final = 16384


@dataclass(slots=True)
class _Connection:
    client: TcpStream = field(default_factory=TcpStream)
    server: TcpStream = field(default_factory=TcpStream)
    chunks: list[tuple[float, bool, bytes]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Flow:
    name: str
    """``client:port->server:port``."""
    tls: bool
    """The client's first bytes were a TLS record (its records are real); else writes stand in for records."""
    records: tuple[Record, ...]


def _endpoint(raw: bytes, port: int) -> str:
    return f"{ipaddress.ip_address(raw)}:{port}"


def connections(path: str) -> Iterator[tuple[str, list[tuple[float, bool, bytes]]]]:
    """Each TCP connection of the capture with data: its name and its in-order chunks (time, from client, bytes).
    The client is the side that sent the SYN, else the side seen first."""
    defrag = Defragmenter()
    table: dict[tuple[tuple[bytes, int], tuple[bytes, int]], _Connection] = {}
    for ts, linktype, frame in read_frames(path):
        try:
            segment = decode(linktype, frame, ts, defrag)
        except Malformed:
            continue
        if segment is None or segment.proto != TCP:
            continue
        here, there = (segment.src, segment.sport), (segment.dst, segment.dport)
        if (here, there) in table:
            key, from_client = (here, there), True
        elif (there, here) in table:
            key, from_client = (there, here), False
        else:
            synack = segment.flags & 0x12 == 0x12
            key, from_client = ((there, here), False) if synack else ((here, there), True)
            table[key] = _Connection()
        connection = table[key]
        stream = connection.client if from_client else connection.server
        if segment.flags & SYN:
            stream.syn(segment.seq)
        data = stream.add(segment.seq, segment.payload)
        if data:
            connection.chunks.append((ts, from_client, data))
    for (client, server), connection in table.items():
        if connection.chunks:
            yield f"{_endpoint(*client)}->{_endpoint(*server)}", connection.chunks


def writes(chunks: list[tuple[float, bool, bytes]]) -> tuple[Record, ...]:
    """The chunks as records of writes (see the module docstring)."""
    out: list[tuple[float, bool, int, float]] = []  # first time, from client, bytes, last time
    for ts, from_client, data in chunks:
        for start in range(0, len(data), MAX_RECORD):
            size = len(data[start : start + MAX_RECORD])
            if out and out[-1][1] == from_client and ts - out[-1][3] < WRITE_GAP and out[-1][2] + size <= MAX_RECORD:
                out[-1] = (out[-1][0], from_client, out[-1][2] + size, ts)
            else:
                out.append((ts, from_client, size, ts))
    return tuple(Record(from_client, size, at) for at, from_client, size, _ in out)


def flows(path: str) -> Iterator[Flow]:
    """The capture's TCP connections with data, as records."""
    for name, chunks in connections(path):
        first = next((data for _, from_client, data in chunks if from_client), b"")
        if tls.looks_like_tls(first):
            shape = TlsShape()
            for ts, from_client, data in chunks:
                shape.feed(from_client, data, ts)
            yield Flow(name, True, tuple(shape.records))
        else:
            yield Flow(name, False, writes(chunks))


TLS13_HELLO = HTTPS[0][0]
"""A TLS 1.3 ServerHello the lab recorded: records carry 17 bytes beyond their plaintext (RFC 8446 §5.2)."""


TICKET: Final = 233
"""Plaintext bytes of a session ticket Python's TLS 1.3 server (OpenSSL 3) sends twice after the handshake (lab)."""


def tls_stream(records: list[Record], tickets: bool = False) -> list[tuple[float, bool, bytes]]:
    """The records as the bytes of a TLS 1.3 connection (headers, zero bodies), after a handshake; ``tickets``: the
    server's two session tickets arrive just after the client's first record (as from Python's ``ssl`` server)."""
    start = records[0].at
    chunks = [(start, True, bytes([22, 3, 1, 2, 0]) + bytes(512)), (start, False, bytes.fromhex(TLS13_HELLO))]
    chunks += [
        (start, False, bytes([23, 3, 3, 0, 50]) + bytes(50)),
        (start, True, bytes([23, 3, 3, 0, 69]) + bytes(69)),
    ]
    for index, record in enumerate(records):
        length = record.size + 17
        chunks.append((record.at, record.from_client, bytes([23, 3, 3]) + length.to_bytes(2) + bytes(length)))
        if tickets and index == 0:
            ticket = bytes([23, 3, 3]) + (TICKET + 17).to_bytes(2) + bytes(TICKET + 17)
            chunks += [(record.at + 0.001, False, ticket), (record.at + 0.001, False, ticket)]
    return chunks
