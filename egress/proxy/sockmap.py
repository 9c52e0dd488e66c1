"""The kernel relay (BPF sockmap): once a relayed connection's watch is finished, each of its two sockets' bytes
go to the other socket inside the kernel, no syscall or wake-up of the front per chunk. The only module that talks
to bpf(2).

Two ``SOCKHASH`` maps keyed by a socket's cookie (``SO_COOKIE``): ``peers`` maps a socket's cookie to the socket
its bytes go to, ``relayed`` holds the sockets whose bytes go there; an ``sk_skb`` verdict program of thirteen
hand-assembled instructions, attached to ``relayed`` (``BPF_SK_SKB_VERDICT``), redirects each received skb to its
peer's egress (``bpf_sk_redirect_hash``). A socket without a peer in ``peers`` (its peer closed) has its bytes
dropped: the relay is closing. `Kernel.join` puts both sockets in ``peers`` first, then in ``relayed``: the first
socket's bytes find their peer from the start. Bytes the kernel received before the join are redirected at once
(``SO_RCVLOWAT`` wakes the verdict over what waits in the receive queue).

Not used by default, and not kept: the kernel relays without back-pressure to the source (a redirected skb is
consumed at once, whether or not the destination takes it, and waits on the destination's queue without bound),
and it was slower than splice(2) with its sends in the kernel's workqueue (docs/gateway-performance.md).

End of stream and errors stay userspace's: the front still reads each socket's end and error
(`egress.proxy.splice`) and tells when all a source sent reached its destination's send queue (`received`,
`written`, from ``TCP_INFO``).

`probe` builds the maps and the program once per process; where the kernel refuses (no bpf(2), no permission, no
sockmap, the verifier) it returns None with the reason logged once, and the relay keeps splice(2).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
from dataclasses import dataclass
from typing import Final

log = logging.getLogger("egress.proxy")

MAX_SOCKETS: Final = 65536
"""Sockets each map holds (two per relayed connection); a join past it fails and the relay keeps splice(2)."""

_NR_BPF: Final = 321  # x86_64; other machines get None from probe (the relay keeps splice)
_MAP_CREATE, _MAP_UPDATE_ELEM, _MAP_DELETE_ELEM, _PROG_LOAD, _PROG_ATTACH = 0, 2, 3, 5, 8
_MAP_TYPE_SOCKHASH: Final = 18
_PROG_TYPE_SK_SKB: Final = 14
_SK_SKB_VERDICT: Final = 38
_FUNC_GET_SOCKET_COOKIE, _FUNC_SK_REDIRECT_HASH = 46, 72
_BPF_ANY: Final = 0
_PSEUDO_MAP_FD: Final = 1
_ATTR_SIZE: Final = 144  # sizeof(union bpf_attr) of the kernel headers this was written against; zero-padded
_SO_COOKIE: Final = 57
_TCP_INFO_SIZE: Final = 232
_BYTES_ACKED, _BYTES_RECEIVED = 120, 128  # offsets in struct tcp_info (linux/tcp.h)
_SIOCOUTQ: Final = 0x5411  # TIOCOUTQ: bytes in a TCP socket's send queue not yet acknowledged


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | (src << 4), off, imm)


def program(peers_fd: int) -> bytes:
    """The verdict program: redirect the skb to the egress of the socket ``peers`` holds under its socket's cookie
    (``SK_PASS``), or drop it where there is none (``SK_DROP``: the peer left, the relay is closing). An skb without
    data (the end of stream's) is dropped: sent on, it broke the peer's queue (``EPIPE``) once the front had passed
    the end on itself."""
    redirect = b"".join(
        (
            _insn(0xBF, dst=6, src=1),  # r6 = r1 (the skb)
            _insn(0x85, imm=_FUNC_GET_SOCKET_COOKIE),  # r0 = bpf_get_socket_cookie(skb)
            _insn(0x7B, dst=10, src=0, off=-8),  # *(u64 *)(r10 - 8) = r0: the key, on the stack
            _insn(0xBF, dst=1, src=6),  # r1 = skb
            _insn(0x18, dst=2, src=_PSEUDO_MAP_FD, imm=peers_fd),  # r2 = peers (a 16-byte load)
            _insn(0x00),
            _insn(0xBF, dst=3, src=10),  # r3 = r10
            _insn(0x07, dst=3, imm=-8),  # r3 += -8: &key
            _insn(0xB7, dst=4, imm=0),  # r4 = 0: the peer's egress
            _insn(0x85, imm=_FUNC_SK_REDIRECT_HASH),  # r0 = bpf_sk_redirect_hash(skb, peers, &key, 0)
        )
    )
    return b"".join(
        (
            _insn(0x61, dst=0, src=1, off=0),  # r0 = skb->len
            _insn(0x15, dst=0, off=len(redirect) // 8, imm=0),  # if r0 == 0 goto exit: SK_DROP (0)
            redirect,
            _insn(0x95),  # exit
        )
    )


class _Bpf:
    """bpf(2) through libc's syscall(); each call raises `OSError` with the kernel's errno."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint]

    def call(self, cmd: int, attr: bytes, keep: tuple[object, ...] = ()) -> int:
        """Run ``cmd`` with ``attr`` (packed, zero-padded); ``keep``: buffers ``attr`` points to, alive meanwhile."""
        buffer = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
        result = int(self._syscall(_NR_BPF, cmd, buffer, _ATTR_SIZE))
        del keep
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"bpf({cmd}): {os.strerror(code)}")
        return result

    def sockhash(self) -> int:
        return self.call(_MAP_CREATE, struct.pack("<IIIII", _MAP_TYPE_SOCKHASH, 8, 4, MAX_SOCKETS, 0))

    def update(self, map_fd: int, key: int, sock_fd: int) -> None:
        k, v = ctypes.c_uint64(key), ctypes.c_uint32(sock_fd)
        self.call(_MAP_UPDATE_ELEM, struct.pack("<IxxxxQQQ", map_fd, ctypes.addressof(k), ctypes.addressof(v),
                  _BPF_ANY), keep=(k, v))  # fmt: skip

    def delete(self, map_fd: int, key: int) -> None:
        k = ctypes.c_uint64(key)
        self.call(_MAP_DELETE_ELEM, struct.pack("<IxxxxQ", map_fd, ctypes.addressof(k)), keep=(k,))

    def load(self, insns: bytes) -> int:
        code = ctypes.create_string_buffer(insns, len(insns))
        license = ctypes.create_string_buffer(b"GPL")  # the helpers need none; what the kernel logs for it
        logbuf = ctypes.create_string_buffer(4096)
        attr = struct.pack("<IIQQIIQ", _PROG_TYPE_SK_SKB, len(insns) // 8, ctypes.addressof(code),
                           ctypes.addressof(license), 1, len(logbuf), ctypes.addressof(logbuf))  # fmt: skip
        try:
            return self.call(_PROG_LOAD, attr, keep=(code, license, logbuf))
        except OSError as exc:
            verifier = logbuf.value.decode(errors="replace").strip()
            raise OSError(exc.errno, f"{exc.strerror}; verifier: {verifier or '-'}") from None

    def attach(self, map_fd: int, prog_fd: int) -> None:
        self.call(_PROG_ATTACH, struct.pack("<IIII", map_fd, prog_fd, _SK_SKB_VERDICT, 0))


def cookie(sock: socket.socket) -> int:
    """The kernel's id of ``sock`` (``SO_COOKIE``), what the maps are keyed by."""
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, _SO_COOKIE, 8), "little")


def received(sock: socket.socket, ended: bool) -> int:
    """Bytes of data ``sock`` received so far (``tcpi_bytes_received``, which counts the end of stream as one more
    once it came: ``ended``)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    return int.from_bytes(info[_BYTES_RECEIVED : _BYTES_RECEIVED + 8], "little") - ended


def written(sock: socket.socket) -> int:
    """Bytes of data written into ``sock`` so far: acknowledged by the peer plus still in its send queue."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    acked = int.from_bytes(info[_BYTES_ACKED : _BYTES_ACKED + 8], "little")
    queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0"))[0]
    return acked + int(queued)


@dataclass(slots=True)
class Joined:
    """Two sockets the kernel relays to each other, by cookie (a closed socket leaves both maps by itself)."""

    cookies: tuple[int, int]


class Kernel:
    """The maps and the attached program of one process (`probe`)."""

    def __init__(self) -> None:
        self._bpf = _Bpf()
        self._fds: list[int] = []
        try:
            self.peers = self._keep(self._bpf.sockhash())
            self.relayed = self._keep(self._bpf.sockhash())
            prog = self._keep(self._bpf.load(program(self.peers)))
            self._bpf.attach(self.relayed, prog)
        except BaseException:
            self.close()
            raise

    def _keep(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def join(self, a: socket.socket, b: socket.socket) -> Joined:
        """Relay ``a``'s bytes to ``b`` and ``b``'s to ``a`` in the kernel from now on, after what the kernel
        received of each before; `OSError` (nothing joined) where the kernel refuses, the maps full."""
        keys = (cookie(a), cookie(b))
        done: list[tuple[int, int]] = []
        try:
            for map_fd, key, sock in ((self.peers, keys[0], b), (self.peers, keys[1], a)):
                self._bpf.update(map_fd, key, sock.fileno())
                done.append((map_fd, key))
            for key, sock in zip(keys, (a, b), strict=True):
                self._bpf.update(self.relayed, key, sock.fileno())
                done.append((self.relayed, key))
        except OSError:
            for map_fd, key in reversed(done):
                self._forget(map_fd, key)
            raise
        for sock in (a, b):  # the verdict over what the receive queue held before the join (tcp_set_rcvlowat)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        return Joined(keys)

    def _forget(self, map_fd: int, key: int) -> None:
        try:
            self._bpf.delete(map_fd, key)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


_probed: list[Kernel | None] = []


def probe() -> Kernel | None:
    """This process's kernel relay, built at the first call; None (reason logged once) where the kernel refuses."""
    if not _probed:
        try:
            kernel: Kernel | None = Kernel() if os.uname().machine == "x86_64" else None
            if kernel is None:
                log.info("front: no kernel relay on %s: splice(2) it is", os.uname().machine)
        except OSError as exc:
            log.info("front: no kernel relay (%s): splice(2) it is", exc)
            kernel = None
        _probed.append(kernel)
    return _probed[0]
