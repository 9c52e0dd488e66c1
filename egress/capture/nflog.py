"""A pure-Python NFLOG reader: the packets our ruleset logs (``log group N``), read over netfilter netlink.

One socket, bound to one group, in the network namespace it was created in (``netns`` creates it inside a named
namespace from a short-lived thread, leaving the caller's namespace alone). The reader sets the queue threshold to
1 and a short flush timeout, or the kernel batches messages for up to a second. Only one socket can bind a group
per namespace: a second gets `OSError` with ``EBUSY``. Decoding the IP payload is
`egress.capture.packet.decode`'s job.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from egress.netlinkwire import HEADER as _HEADER
from egress.netlinkwire import NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, nfmessage
from egress.netlinkwire import attr as _attr
from egress.netlinkwire import attrs as _attrs

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = NFNL_SUBSYS_ULOG << 8 | 0
NFULNL_MSG_CONFIG = NFNL_SUBSYS_ULOG << 8 | 1


# nfulnl_msg_config attributes and commands (linux/netfilter/nfnetlink_log.h)
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_NLBUFSIZ = 3
NFULA_CFG_TIMEOUT = 4
NFULA_CFG_QTHRESH = 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_CFG_CMD_PF_BIND = 3
NFULNL_CFG_CMD_PF_UNBIND = 4
NFULNL_COPY_PACKET = 2

# packet attributes
NFULA_PACKET_HDR = 1
NFULA_TIMESTAMP = 3
NFULA_IFINDEX_INDEV = 4
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10

COPY_RANGE = 1280
"""Bytes of each logged packet copied to us: headers and the first kilobyte or so of payload (the ICMP tunnel
detector judges an echo's size and content; the log is rate-limited, so this costs at most ~130 KB/s a rule)."""
FLUSH_TIMEOUT = 1
"""Hundredths of a second the kernel may hold a message (with a threshold of 1 it rarely waits at all)."""
RCVBUF = 1 << 20


@dataclass(frozen=True, slots=True)
class LoggedPacket:
    prefix: str
    """The rule's log prefix (see `egress.nft.names.parse_prefix`)."""
    family: int
    """``socket.AF_INET`` or ``socket.AF_INET6``."""
    payload: bytes
    """The IP packet, cut at the copy range."""
    indev: int | None
    """Index of the interface it came in on, if any."""
    ts: float
    """When it was logged (kernel time stamp when there is one, else when it was read)."""


def parse_packet(message: bytes, read_at: float) -> LoggedPacket | None:
    """One NFULNL_MSG_PACKET body (nfgenmsg + attributes) → `LoggedPacket`; ``None`` if it carries no payload."""
    if len(message) < 4:
        return None
    family = message[0]
    prefix, payload, indev, ts = "", b"", None, read_at
    for kind, value in _attrs(message[4:]):
        if kind == NFULA_PREFIX:
            prefix = value.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind == NFULA_PAYLOAD:
            payload = value
        elif kind == NFULA_IFINDEX_INDEV and len(value) >= 4:
            indev = struct.unpack_from("!I", value)[0]
        elif kind == NFULA_TIMESTAMP and len(value) >= 16:
            seconds, micros = struct.unpack_from("!QQ", value)
            ts = seconds + micros / 1e6
        elif kind == NFULA_PACKET_HDR and len(value) >= 2 and family not in (socket.AF_INET, socket.AF_INET6):
            protocol = struct.unpack_from("!H", value)[0]
            family = {0x0800: socket.AF_INET, 0x86DD: socket.AF_INET6}.get(protocol, family)
    if not payload:
        return None
    if family not in (socket.AF_INET, socket.AF_INET6):
        family = socket.AF_INET6 if payload[0] >> 4 == 6 else socket.AF_INET
    return LoggedPacket(prefix, family, payload, indev, ts)


def in_netns[T](netns: str | None, make: Callable[[], T]) -> T:
    """Run ``make`` inside the named network namespace (from a thread of its own) and return what it made.

    Sockets keep the namespace they were created in, so the caller can use them from any thread.
    """
    if netns is None:
        return make()
    result: list[T] = []
    failure: list[BaseException] = []

    def enter() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                os.setns(fd, os.CLONE_NEWNET)
            finally:
                os.close(fd)
            result.append(make())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=enter, name=f"netns {netns}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


class NflogReader:
    """Reads one nflog group. ``open`` it, poll `fileno` (or pass a timeout to `read`), `close` when done."""

    def __init__(self, netns: str | None = None, copy_range: int = COPY_RANGE) -> None:
        self.netns = netns
        self.copy_range = copy_range
        self.overruns = 0
        """Times the kernel said our buffer overflowed (messages were lost)."""
        self._sock: socket.socket | None = None
        self._seq = 0
        self._acked = False
        self._pending: list[LoggedPacket] = []

    def __enter__(self) -> NflogReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def open(self, group: int) -> NflogReader:
        """Bind ``group``; raises `OSError` (``EBUSY`` if another socket in the namespace has it)."""
        if self._sock is not None:
            raise RuntimeError("reader already open")

        def make() -> socket.socket:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)

        sock = in_netns(self.netns, make)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, 0))
            self._sock = sock
            for family in (socket.AF_INET, socket.AF_INET6):
                # Deprecated no-ops on current kernels, kept for older ones (libnetfilter_log does the same).
                self._config(family, 0, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_PF_UNBIND])), strict=False)
                self._config(family, 0, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_PF_BIND])), strict=False)
            try:
                self._config(socket.AF_UNSPEC, group, _attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])))
            except PermissionError as exc:  # the kernel's answer when another socket holds the group
                raise OSError(errno.EBUSY, f"nflog group {group} already has a reader in this namespace") from exc
            mode = struct.pack("!IBB", self.copy_range, NFULNL_COPY_PACKET, 0)
            self._config(socket.AF_UNSPEC, group, _attr(NFULA_CFG_MODE, mode))
            self._config(socket.AF_UNSPEC, group, _attr(NFULA_CFG_QTHRESH, struct.pack("!I", 1)))
            self._config(socket.AF_UNSPEC, group, _attr(NFULA_CFG_TIMEOUT, struct.pack("!I", FLUSH_TIMEOUT)))
        except BaseException:
            self._sock = None
            sock.close()
            raise
        return self

    def fileno(self) -> int:
        return self._socket().fileno()

    def close(self) -> None:
        """Close the socket; the kernel unbinds the group with it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def read(self, timeout: float = 0.0) -> list[LoggedPacket]:
        """Every packet waiting now, after waiting up to ``timeout`` seconds for the first one."""
        sock = self._socket()
        packets, self._pending = self._pending, []
        if not packets and timeout > 0:
            _readable(sock, timeout)
        while True:
            try:
                data = sock.recv(1 << 17, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return packets
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
                continue
            packets.extend(self._parse(data, time.time()))

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise RuntimeError("reader is not open")
        return self._sock

    def _parse(self, data: bytes, now: float, seq: int | None = None) -> Iterator[LoggedPacket]:
        """Packets in one datagram; an error reply to message ``seq`` raises it."""
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind, _flags, msg_seq, _pid = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size or offset + length > len(data):
                return
            body = data[offset + _HEADER.size : offset + length]
            if kind == NFULNL_MSG_PACKET:
                packet = parse_packet(body, now)
                if packet is not None:
                    yield packet
            elif kind == NLMSG_ERROR and seq is not None and msg_seq == seq:
                code = -struct.unpack_from("=i", body)[0]
                self._acked = True
                if code:
                    raise OSError(code, f"nflog config: {os.strerror(code)}")
            offset += (length + 3) & ~3

    def _config(self, family: int, group: int, attrs: bytes, strict: bool = True) -> None:
        sock = self._socket()
        self._seq += 1
        sock.send(nfmessage(NFULNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, self._seq, family, group, attrs))
        self._acked = False
        deadline = time.monotonic() + 2.0
        while not self._acked:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _readable(sock, remaining):
                raise TimeoutError("no answer from nfnetlink_log")
            data = sock.recv(1 << 17)
            try:
                self._pending.extend(self._parse(data, time.time(), self._seq))
            except OSError:
                if strict:
                    raise


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` became readable within ``timeout`` seconds (poll(2), not select(2): a process with its
    descriptor limit raised may number this socket past select's FD_SETSIZE)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(timeout * 1000))
