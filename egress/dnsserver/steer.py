"""Which of the resolver's UDP sockets on one address a datagram reaches: a classic BPF program by source network.

The resolver's UDP sockets on one address and port form one ``SO_REUSEPORT`` group in the kernel (socket(7)):
each has its own receive queue, and for each datagram the kernel runs the group's program
(``SO_ATTACH_REUSEPORT_CBPF``) and delivers the datagram to the socket at the index it returns, in the order the
sockets joined the group. `program` compiles the policy's source networks into that program, in the policy's order
(`egress.policy.model.Policy.sandbox_for` is the first match in file order, so is this): the datagram's source
address is read from its IP header (``SKF_NET_OFF``: the program's own data starts at the UDP payload), masked and
compared with each network, and the first network it is in names the socket; a source in none goes to socket 0.

The steering decides only whose queue a datagram waits in, never what it is answered: every socket's datagrams are
judged by their source address (`egress.dnsserver.resolver.Resolver.answer_now`). A program the kernel did not
take, an index past the group's sockets (the kernel then picks a socket by hash) or a socket that failed to open
mean shared queues, not an unjudged answer.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from typing import Final

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Insn = tuple[int, int, int, int]
"""One classic BPF instruction: code, jump if true, jump if false, constant (linux/filter.h ``sock_filter``)."""

MAX_INSNS: Final = 4096
"""``BPF_MAXINSNS``: the kernel refuses a longer classic program."""
SKF_NET_OFF: Final = -0x100000
"""linux/filter.h: loads at this offset plus n read the packet's network header at n."""

LD_W_ABS: Final = 0x20
AND_K: Final = 0x54
JEQ_K: Final = 0x15
RET_K: Final = 0x06

_SOURCE_AT: Final = {4: 12, 6: 8}
"""Where the source address starts in the IPv4 and IPv6 header."""


def _block(index: int, network: Network) -> list[Insn]:
    """Return ``index`` when the source is in ``network``, else fall through to the next block."""
    words = network.max_prefixlen // 32
    address = network.network_address.packed
    checks: list[tuple[int, int, int]] = []  # (offset, mask, value) of each word the prefix covers
    for word in range(words):
        bits = min(32, max(0, network.prefixlen - 32 * word))
        if bits == 0:
            break
        mask = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
        value = int.from_bytes(address[4 * word : 4 * word + 4], "big") & mask
        checks.append((_SOURCE_AT[network.version] + 4 * word, mask, value))
    body: list[Insn] = []
    sizes = [3 if mask != 0xFFFFFFFF else 2 for _offset, mask, _value in checks]
    for n, (offset, mask, value) in enumerate(checks):
        body.append((LD_W_ABS, 0, 0, (SKF_NET_OFF + offset) & 0xFFFFFFFF))
        if mask != 0xFFFFFFFF:
            body.append((AND_K, 0, 0, mask))
        rest = sum(sizes[n + 1 :]) + 1  # the later words' checks and the return: skipped when this word differs
        body.append((JEQ_K, 0, rest, value))
    body.append((RET_K, 0, 0, index))
    return body


def program(routes: Sequence[tuple[int, Network]], version: int) -> tuple[list[Insn], list[tuple[int, Network]]]:
    """The program for sources of IP ``version``: each route (socket index, network) in order, then socket 0; and
    the routes left out because the program would pass `MAX_INSNS` (their sources reach socket 0)."""
    out: list[Insn] = []
    left: list[tuple[int, Network]] = []
    for index, network in routes:
        if network.version != version:
            continue
        block = _block(index, network)
        if left or len(out) + len(block) + 1 > MAX_INSNS:
            left.append((index, network))
            continue
        out.extend(block)
    out.append((RET_K, 0, 0, 0))
    return out, left


def run(insns: Sequence[Insn], header: bytes) -> int:
    """What ``insns`` returns for a packet whose network header is ``header`` (the instructions `program` emits
    only; for tests and for checking a program before it is attached)."""
    pc = 0
    acc = 0
    while pc < len(insns):
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == LD_W_ABS:
            offset = k - (SKF_NET_OFF & 0xFFFFFFFF)
            if not 0 <= offset <= len(header) - 4:
                return 0  # the kernel ends a program whose load runs past the packet with 0
            acc = int.from_bytes(header[offset : offset + 4], "big")
        elif code == AND_K:
            acc &= k
        elif code == JEQ_K:
            pc += jt if acc == k else jf
        elif code == RET_K:
            return k
        else:
            raise ValueError(f"instruction {code:#x} is not one program() emits")
    raise ValueError("the program ran past its end")


def encode(insns: Sequence[Insn]) -> bytes:
    """``insns`` as the kernel reads them (``struct sock_filter`` each); `egress.dnsserver.listen.attach_steering`
    attaches them."""
    if not 0 < len(insns) <= MAX_INSNS:
        raise ValueError(f"a classic BPF program has 1 to {MAX_INSNS} instructions (got {len(insns)})")
    return b"".join(struct.pack("HBBI", *insn) for insn in insns)
