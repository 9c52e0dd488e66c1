"""The lab's protocol fakes that are not HTTP: a Stratum v1 pool, an XMRig-style pool, an SSH banner, QUIC.

None of them mines or checks work: they say what a real server says first so clients (and the gateway's
detectors) see genuine protocol bytes.

- Stratum v1 (line-delimited JSON-RPC; the de-facto spec is slush pool's "Stratum mining protocol" page and
  cpuminer/cgminer sources): ``mining.subscribe`` answers subscriptions + extranonce1 + extranonce2 size;
  ``mining.authorize`` answers true, then the pool pushes ``mining.set_difficulty`` and ``mining.notify``.
- XMRig/Monero pool protocol (JSON-RPC 2.0 lines, xmrig src/base/net/stratum/Client.cpp): ``login`` answers an
  id and a job (blob, job_id, target, algo, height, seed_hash); ``getjob``, ``submit``, ``keepalived`` too.
- SSH: the server speaks first with its identification string (RFC 4253 §4.2).
- QUIC: any long-header packet (RFC 9000 §17.2) gets a Version Negotiation packet back (§17.2.1), which proves
  the datagram reached the server without implementing QUIC.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from typing import Any

IDLE = 30.0
SSH_BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"
EXTRANONCE1 = "08000002"
NOTIFY_PARAMS: list[Any] = [
    "4d1b",
    "8f3d5e9b2c6a1f0e7d4c3b2a1908f7e6d5c4b3a29180706050403020100ffeedd",
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff20020862062f503253482f04b8864e5008",
    "072f736c7573682f000000000100f2052a010000001976a914d23fcdf86f7e756a64a7a9688ef9903327048ed988ac00000000",
    [],
    "20000000",
    "1d00ffff",
    "5f5e1000",
    True,
]
XMR_JOB = {
    "blob": "0707"
    + "d6b5c9a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c" * 2
    + "00000000"
    + "ab" * 36
    + "01",
    "job_id": "lab-job-1",
    "target": "b88d0600",
    "algo": "rx/0",
    "height": 3_100_000,
    "seed_hash": "c1" * 32,
}


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _stratum_reply(request: dict[str, Any]) -> list[dict[str, Any]]:
    """What a Stratum v1 pool sends in answer to one request (XMRig-style methods included)."""
    rid, method = request.get("id"), request.get("method")
    if method == "mining.subscribe":
        subscriptions = [["mining.set_difficulty", "lab1"], ["mining.notify", "lab1"]]
        return [{"id": rid, "result": [subscriptions, EXTRANONCE1, 4], "error": None}]
    if method == "mining.authorize":
        return [
            {"id": rid, "result": True, "error": None},
            {"id": None, "method": "mining.set_difficulty", "params": [1]},
            {"id": None, "method": "mining.notify", "params": NOTIFY_PARAMS},
        ]
    if method in ("mining.submit", "mining.extranonce.subscribe", "mining.suggest_difficulty"):
        return [{"id": rid, "result": True, "error": None}]
    if method == "mining.configure":
        return [{"id": rid, "result": {}, "error": None}]
    if method in ("login", "getjob", "submit", "keepalived"):
        return [_xmrig_reply(request)]
    return [{"id": rid, "result": None, "error": [20, "Unknown method", None]}]


def _xmrig_reply(request: dict[str, Any]) -> dict[str, Any]:
    rid, method = request.get("id"), request.get("method")
    result: dict[str, Any]
    if method == "login":
        result = {"id": "lab-miner-1", "job": XMR_JOB, "extensions": ["algo", "keepalive"], "status": "OK"}
    elif method == "getjob":
        result = XMR_JOB
    elif method == "keepalived":
        result = {"status": "KEEPALIVED"}
    elif method == "submit":
        result = {"status": "OK"}
    else:
        return {"id": rid, "jsonrpc": "2.0", "error": {"code": -1, "message": "Unknown method"}}
    return {"id": rid, "jsonrpc": "2.0", "error": None, "result": result}


async def _json_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, xmrig: bool) -> None:
    try:
        while True:
            line = await asyncio.wait_for(reader.readline(), IDLE)
            if not line:
                return
            try:
                request = json.loads(line)
            except ValueError:
                return  # a pool hangs up on garbage
            if not isinstance(request, dict):
                return
            replies = [_xmrig_reply(request)] if xmrig else _stratum_reply(request)
            writer.write(b"".join(_line(reply) for reply in replies))
            await writer.drain()
    except (TimeoutError, ConnectionError, ssl.SSLError, ValueError):
        pass
    finally:
        writer.close()


async def stratum(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _json_lines(reader, writer, xmrig=False)


async def xmrig(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _json_lines(reader, writer, xmrig=True)


async def ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send the banner, read the client's identification, then hold the connection until it closes or idles."""
    try:
        writer.write(SSH_BANNER)
        await writer.drain()
        while await asyncio.wait_for(reader.read(4096), IDLE):
            pass
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


def version_negotiation(datagram: bytes) -> bytes | None:
    """The Version Negotiation packet answering a QUIC long-header datagram, or None if it is not one."""
    if len(datagram) < 7 or not datagram[0] & 0x80:
        return None
    dcid_len = datagram[5]
    if dcid_len > 20 or len(datagram) < 7 + dcid_len:
        return None
    dcid = datagram[6 : 6 + dcid_len]
    scid_len = datagram[6 + dcid_len]
    scid = datagram[7 + dcid_len : 7 + dcid_len + scid_len]
    if scid_len > 20 or len(scid) != scid_len:
        return None
    # the server's packet swaps the IDs: its destination is the client's source (RFC 9000 §17.2.1)
    return bytes([0x80 | 0x2A, 0, 0, 0, 0, scid_len]) + scid + bytes([dcid_len]) + dcid + b"\x00\x00\x00\x01"


class DatagramReplier(asyncio.DatagramProtocol):
    """Answers each datagram with what ``reply`` makes of it (nothing when it returns None)."""

    def __init__(self, reply: Callable[[bytes], bytes | None]) -> None:
        self.reply = reply
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        answer = self.reply(data)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)
