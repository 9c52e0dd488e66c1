"""A pure-Python NFQUEUE reader: the packets our ruleset queues (``queue num N``), read over netfilter netlink and
given back to the kernel with a verdict (`NF_ACCEPT` or `NF_DROP`). The only module that speaks NFQUEUE.

One socket, bound to one queue, in the network namespace it was created in (``netns``: created inside a named
namespace from a short-lived thread, as `egress.capture.nflog` does). The reader asks for whole packets
(`COPY_PACKET`, up to `COPY_RANGE` bytes) and bounds the kernel's queue (`MAX_LENGTH`). Fail closed, by the
kernel: the ruleset queues without ``bypass``, so with no reader bound the packet is dropped; a full queue drops
(the reader never sets ``NFQA_CFG_F_FAIL_OPEN``); a packet still queued when the socket closes is dropped with it.
A packet given no verdict waits in the queue until the socket closes. Only one socket can bind a queue per
namespace: a second gets `OSError` with ``EBUSY``. The message builders and the parser are pure functions.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from dataclasses import dataclass

from egress.capture.nflog import in_netns
from egress.netlinkwire import HEADER as _HEADER
from egress.netlinkwire import NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, attr, attrs
from egress.netlinkwire import nfmessage as message

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = NFNL_SUBSYS_QUEUE << 8 | 0
NFQNL_MSG_VERDICT = NFNL_SUBSYS_QUEUE << 8 | 1
NFQNL_MSG_CONFIG = NFNL_SUBSYS_QUEUE << 8 | 2


# nfqnl_msg_config attributes and commands (linux/netfilter/nfnetlink_queue.h)
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_CFG_CMD_PF_BIND = 3
NFQNL_CFG_CMD_PF_UNBIND = 4
NFQNL_COPY_PACKET = 2

# packet attributes
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_TIMESTAMP = 4
NFQA_IFINDEX_INDEV = 5
NFQA_IFINDEX_OUTDEV = 6
NFQA_PAYLOAD = 10

NF_DROP = 0
NF_ACCEPT = 1

COPY_RANGE = 0xFFFF
"""Bytes of each queued packet copied to us: all of it (a datagram is judged whole)."""
MAX_LENGTH = 4096
MISSING = (
    "no queue could be bound: the kernel's nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE) is missing or not "
    "loaded; load it before the gateway starts (`modprobe nfnetlink_queue`, or /etc/modules-load.d/egress.conf "
    "from deploy/modules-load/), or build it in"
)
"""What `NfqueueReader.open` says when binding the queue fails for want of the kernel's queue subsystem."""
"""Packets the kernel holds waiting for a verdict; past it, it drops (no fail-open flag)."""
RCVBUF = 1 << 22


@dataclass(frozen=True, slots=True)
class QueuedPacket:
    packet_id: int
    """What the verdict names."""
    family: int
    """``socket.AF_INET`` or ``socket.AF_INET6``."""
    payload: bytes
    """The IP packet (whole, up to the copy range)."""
    indev: int | None
    outdev: int | None
    ts: float
    """When it was queued (kernel time stamp when there is one, else when it was read)."""


def config_command(seq: int, queue: int, command: int, family: int = socket.AF_UNSPEC) -> bytes:
    """NFQNL_MSG_CONFIG with a command (bind, unbind...), asking for an acknowledgement."""
    cmd = struct.pack("=BB", command, 0) + struct.pack("!H", family)
    return message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, family, queue, attr(NFQA_CFG_CMD, cmd))


def config_params(seq: int, queue: int, copy_range: int, max_length: int) -> bytes:
    """NFQNL_MSG_CONFIG: copy whole packets up to ``copy_range`` bytes, hold at most ``max_length`` of them."""
    params = attr(NFQA_CFG_PARAMS, struct.pack("!IB", copy_range, NFQNL_COPY_PACKET))
    maxlen = attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", max_length))
    return message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, socket.AF_UNSPEC, queue, params + maxlen)


def verdict_message(queue: int, packet_id: int, verdict: int) -> bytes:
    """NFQNL_MSG_VERDICT: ``verdict`` (`NF_ACCEPT`, `NF_DROP`) for packet ``packet_id`` of ``queue``."""
    if verdict not in (NF_ACCEPT, NF_DROP):
        raise ValueError(f"verdict {verdict}: only accept and drop are given")
    body = attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
    return message(NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, socket.AF_UNSPEC, queue, body)


def parse_packet(body: bytes, read_at: float) -> QueuedPacket | None:
    """One NFQNL_MSG_PACKET body (nfgenmsg + attributes) → `QueuedPacket`; ``None`` without an id or a payload."""
    if len(body) < 4:
        return None
    family = body[0]
    packet_id: int | None = None
    payload, indev, outdev, ts = b"", None, None, read_at
    for kind, value in attrs(body[4:]):
        if kind == NFQA_PACKET_HDR and len(value) >= 4:
            packet_id = struct.unpack_from("!I", value)[0]
            if len(value) >= 6 and family not in (socket.AF_INET, socket.AF_INET6):
                protocol = struct.unpack_from("!H", value, 4)[0]
                family = {0x0800: socket.AF_INET, 0x86DD: socket.AF_INET6}.get(protocol, family)
        elif kind == NFQA_PAYLOAD:
            payload = value
        elif kind == NFQA_IFINDEX_INDEV and len(value) >= 4:
            indev = struct.unpack_from("!I", value)[0]
        elif kind == NFQA_IFINDEX_OUTDEV and len(value) >= 4:
            outdev = struct.unpack_from("!I", value)[0]
        elif kind == NFQA_TIMESTAMP and len(value) >= 16:
            seconds, micros = struct.unpack_from("!QQ", value)
            ts = seconds + micros / 1e6
    if packet_id is None or not payload:
        return None
    if family not in (socket.AF_INET, socket.AF_INET6):
        family = socket.AF_INET6 if payload[0] >> 4 == 6 else socket.AF_INET
    return QueuedPacket(packet_id, family, payload, indev, outdev, ts)


def parse(data: bytes, read_at: float) -> tuple[list[QueuedPacket], list[tuple[int, int]], list[int]]:
    """One datagram from the socket → (its packets, its error replies as (seq, errno), the ids of packets whose
    message had no usable payload: they still need a verdict)."""
    packets: list[QueuedPacket] = []
    errors: list[tuple[int, int]] = []
    unusable: list[int] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            break
        body = data[offset + _HEADER.size : offset + length]
        if kind == NFQNL_MSG_PACKET:
            packet = parse_packet(body, read_at)
            if packet is not None:
                packets.append(packet)
            else:
                for akind, value in attrs(body[4:]):
                    if akind == NFQA_PACKET_HDR and len(value) >= 4:
                        unusable.append(struct.unpack_from("!I", value)[0])
        elif kind == NLMSG_ERROR and len(body) >= 4:
            errors.append((seq, -struct.unpack_from("=i", body)[0]))
        offset += (length + 3) & ~3
    return packets, errors, unusable


class NfqueueReader:
    """Reads one queue and gives verdicts. ``open`` it, poll `fileno`, `read`, `verdict` each packet, `close`."""

    def __init__(self, netns: str | None = None, copy_range: int = COPY_RANGE, max_length: int = MAX_LENGTH) -> None:
        self.netns = netns
        self.copy_range = copy_range
        self.max_length = max_length
        self.queue = -1
        self.overruns = 0
        """Times the kernel said our socket buffer overflowed (those packets were dropped: no fail-open flag)."""
        self._sock: socket.socket | None = None
        self._seq = 0
        self._pending: list[QueuedPacket] = []

    def __enter__(self) -> NfqueueReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def open(self, queue: int) -> NfqueueReader:
        """Bind ``queue``; raises `OSError` (``EBUSY`` if another socket in the namespace has it)."""
        if self._sock is not None:
            raise RuntimeError("reader already open")
        if not 0 <= queue < 65536:
            raise ValueError(f"bad queue number {queue}")
        sock = in_netns(self.netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, 0))
            self._sock = sock
            self.queue = queue
            try:
                for family in (socket.AF_INET, socket.AF_INET6):  # no-ops on current kernels, kept for older ones
                    self._config(config_command(self._next(), 0, NFQNL_CFG_CMD_PF_UNBIND, family), strict=False)
                    self._config(config_command(self._next(), 0, NFQNL_CFG_CMD_PF_BIND, family), strict=False)
                self._config(config_command(self._next(), queue, NFQNL_CFG_CMD_BIND))
            except PermissionError as exc:  # the kernel's answer when another socket holds the queue
                raise OSError(errno.EBUSY, f"nfqueue {queue} already has a reader in this namespace") from exc
            except OSError as exc:  # no nfnetlink_queue: nfnetlink answers EINVAL (TimeoutError: nothing at all)
                raise OSError(exc.errno or errno.EPROTONOSUPPORT, f"nfqueue {queue}: {MISSING}") from exc
            self._config(config_params(self._next(), queue, self.copy_range, self.max_length))
        except BaseException:
            self._sock = None
            sock.close()
            raise
        return self

    def fileno(self) -> int:
        return self._socket().fileno()

    def close(self) -> None:
        """Close the socket; the kernel unbinds the queue and drops what still waits in it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def read(self, timeout: float = 0.0, limit: int = 256) -> list[QueuedPacket]:
        """The packets waiting now (at most about ``limit``), after waiting up to ``timeout`` seconds for one."""
        sock = self._socket()
        packets, self._pending = self._pending, []
        if not packets and timeout > 0:
            _readable(sock, timeout)
        while len(packets) < limit:
            try:
                data = sock.recv(1 << 18, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
                continue
            found, _errors, unusable = parse(data, time.time())
            packets.extend(found)
            for packet_id in unusable:  # nothing to judge: dropped (fail closed)
                self.verdict(packet_id, NF_DROP)
        return packets

    def verdict(self, packet_id: int, verdict: int) -> None:
        """Give the kernel ``verdict`` for ``packet_id``."""
        self._socket().send(verdict_message(self.queue, packet_id, verdict))

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise RuntimeError("reader is not open")
        return self._sock

    def _config(self, request: bytes, strict: bool = True) -> None:
        """Send one config request and wait for its acknowledgement (packets read meanwhile are kept)."""
        sock = self._socket()
        seq = _HEADER.unpack_from(request)[3]
        sock.send(request)
        deadline = time.monotonic() + 2.0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _readable(sock, remaining):
                raise TimeoutError("no answer from nfnetlink_queue")
            packets, errors, _unusable = parse(sock.recv(1 << 18), time.time())
            self._pending.extend(packets)
            for msg_seq, code in errors:
                if msg_seq == seq:
                    if code and strict:
                        raise OSError(code, f"nfqueue config: {os.strerror(code)}")
                    return


def _readable(sock: socket.socket, timeout: float) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(timeout * 1000))


__all__ = [
    "MISSING",
    "NF_ACCEPT",
    "NF_DROP",
    "NfqueueReader",
    "QueuedPacket",
    "parse",
    "parse_packet",
    "verdict_message",
]
