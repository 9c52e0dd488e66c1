"""The one rule nft cannot write here: hand a packet to an NFQUEUE queue, without ``bypass``.

`install` tries nf_tables' own ``queue`` expression first (kernels built with ``CONFIG_NFT_QUEUE``, a module on
most distributions': what ``nft`` writes for ``queue num N``), then the xtables target below.

Kernels built without ``CONFIG_NFT_QUEUE`` (this project's test kernel, 6.18, among them) refuse nft's ``queue``
statement (``Could not process rule: No such file or directory``), but most build ``CONFIG_NFT_COMPAT`` and
``NETFILTER_XT_TARGET_NFQUEUE``: an nf_tables rule may carry the xtables ``NFQUEUE`` target (revision 3), which is
what ``iptables-nft -j NFQUEUE`` writes. nft 1.0.6 can list such a rule (``xt target "NFQUEUE"``) but not parse
one, so this module adds it over netfilter netlink in one batch (``NFT_MSG_NEWRULE`` in the table's family), into
a regular chain the rendered table declares empty (`egress.nft.render`: ``UDP_GATE_CHAIN``). Until the rule is
there, the chain returns at once and the datagram meets the sandbox's drop: fail closed.

``flags`` stay 0: no ``NFQ_FLAG_BYPASS`` (no reader bound means the kernel drops) and no CPU fanout. The message
builders are pure functions (tests/nft/test_xtqueue.py checks their bytes); `install` sends them. (On a modular
kernel the xtables path needs ``xt_NFQUEUE`` loaded already: nft_compat cannot autoload a target for the inet
family; the native ``queue`` autoloads ``nft_queue``.)
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Final

from egress.capture.nflog import in_netns
from egress.netlinkwire import HEADER as _HEADER
from egress.netlinkwire import NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR
from egress.netlinkwire import attr as _attr
from egress.netlinkwire import nfmessage as _message

NETLINK_NETFILTER: Final = 12
NFNL_SUBSYS_NFTABLES: Final = 10
NFNL_MSG_BATCH_BEGIN: Final = 0x10
NFNL_MSG_BATCH_END: Final = 0x11
NFT_MSG_NEWRULE: Final = NFNL_SUBSYS_NFTABLES << 8 | 6
NFPROTO_INET: Final = 1

NLM_F_CREATE: Final = 0x400
NLM_F_APPEND: Final = 0x800

NFTA_RULE_TABLE: Final = 1
NFTA_RULE_CHAIN: Final = 2
NFTA_RULE_EXPRESSIONS: Final = 4
NFTA_LIST_ELEM: Final = 1
NFTA_EXPR_NAME: Final = 1
NFTA_EXPR_DATA: Final = 2
NFTA_TARGET_NAME: Final = 1
NFTA_TARGET_REV: Final = 2
NFTA_TARGET_INFO: Final = 3
NFTA_COUNTER_BYTES: Final = 1
NFTA_COUNTER_PACKETS: Final = 2
NFTA_QUEUE_NUM: Final = 1
NFTA_QUEUE_TOTAL: Final = 2
NFTA_QUEUE_FLAGS: Final = 3

NFQUEUE_REVISION: Final = 3

MISSING: Final = (
    "the kernel has no NFQUEUE for nf_tables: neither nft_queue (CONFIG_NFT_QUEUE) nor the xtables target "
    "xt_NFQUEUE through nft_compat (CONFIG_NETFILTER_XT_TARGET_NFQUEUE, CONFIG_NFT_COMPAT) is loaded; load them "
    "before the gateway starts (`modprobe -a nft_compat xt_NFQUEUE nfnetlink_queue`, or "
    "/etc/modules-load.d/egress.conf from deploy/modules-load/), or build them in (or the chain is missing)"
)
"""Why neither queue rule could be written (both answered ENOENT or EOPNOTSUPP): what the gateway's error says."""


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _string(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def nfqueue_info(queue: int) -> bytes:
    """``struct xt_NFQ_info_v3``: queue number, one queue (no fanout), no flags (no bypass), padded as
    ``XT_ALIGN`` pads it (8 bytes)."""
    if not 0 <= queue < 65536:
        raise ValueError(f"bad queue number {queue}")
    return struct.pack("=HHH", queue, 1, 0) + b"\0\0"


def _native(queue: int) -> bytes:
    """nf_tables' own ``queue`` expression (``queue num N``: one queue, flags 0, so no bypass)."""
    if not 0 <= queue < 65536:
        raise ValueError(f"bad queue number {queue}")
    data = _attr(NFTA_QUEUE_NUM, struct.pack("!H", queue)) + _attr(NFTA_QUEUE_TOTAL, struct.pack("!H", 1))
    data += _attr(NFTA_QUEUE_FLAGS, struct.pack("!H", 0))
    return _nested(NFTA_LIST_ELEM, _string(NFTA_EXPR_NAME, "queue"), _nested(NFTA_EXPR_DATA, data))


def _xt(queue: int) -> bytes:
    """The xtables ``NFQUEUE`` target (revision 3) through nft_compat."""
    return _nested(
        NFTA_LIST_ELEM,
        _string(NFTA_EXPR_NAME, "target"),
        _nested(
            NFTA_EXPR_DATA,
            _string(NFTA_TARGET_NAME, "NFQUEUE"),
            _attr(NFTA_TARGET_REV, struct.pack("!I", NFQUEUE_REVISION)),
            _attr(NFTA_TARGET_INFO, nfqueue_info(queue)),
        ),
    )


def rule_batch(table: str, chain: str, queue: int, seq: int = 1, native: bool = False) -> bytes:
    """The batch that appends ``counter`` and the queue to ``inet table chain`` (seqs ``seq`` to ``seq + 2``; the
    rule's message asks for an acknowledgement): the xtables ``NFQUEUE`` target, or (``native``) nf_tables' own
    ``queue`` expression, what ``nft`` writes for ``queue num N``."""
    counter = _nested(
        NFTA_LIST_ELEM,
        _string(NFTA_EXPR_NAME, "counter"),
        _nested(NFTA_EXPR_DATA, _attr(NFTA_COUNTER_BYTES, bytes(8)), _attr(NFTA_COUNTER_PACKETS, bytes(8))),
    )
    target = _native(queue) if native else _xt(queue)
    rule = _string(NFTA_RULE_TABLE, table) + _string(NFTA_RULE_CHAIN, chain)
    rule += _nested(NFTA_RULE_EXPRESSIONS, counter, target)
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK
    return (
        _message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES, b"")
        + _message(NFT_MSG_NEWRULE, flags, seq + 1, NFPROTO_INET, 0, rule)
        + _message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq + 2, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES, b"")
    )


def errors(data: bytes) -> list[tuple[int, int]]:
    """The (seq, errno) of each netlink error or acknowledgement (errno 0) in ``data``."""
    found = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            break
        if kind == NLMSG_ERROR and length >= _HEADER.size + 4:
            found.append((seq, -struct.unpack_from("=i", data, offset + _HEADER.size)[0]))
        offset += (length + 3) & ~3
    return found


def install(table: str, chain: str, queue: int, netns: str | None = None, timeout: float = 5.0) -> str:
    """Append the queue rule to ``inet table chain`` (which must exist): nf_tables' own ``queue`` where the kernel
    has it, else the xtables target; raises `OSError` with the kernel's errno (when neither exists, its message
    is `MISSING`, naming the modules). Returns which (``queue``, ``xt NFQUEUE``)."""
    try:
        _send(table, chain, queue, netns, timeout, native=True)
        return "queue"
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EOPNOTSUPP):  # a missing chain is ENOENT too: the xt try says so
            raise
    try:
        _send(table, chain, queue, netns, timeout, native=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EOPNOTSUPP):
            raise
        raise OSError(exc.errno, f"{exc.strerror}: {MISSING}") from exc
    return "xt NFQUEUE"


def _send(table: str, chain: str, queue: int, netns: str | None, timeout: float, native: bool) -> None:
    sock = in_netns(netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
    with sock:
        sock.bind((0, 0))
        sock.settimeout(timeout)
        seq = int.from_bytes(os.urandom(2)) + 1
        sock.send(rule_batch(table, chain, queue, seq, native))
        while True:
            try:
                data = sock.recv(1 << 16)
            except TimeoutError as exc:
                raise OSError(f"no answer from nf_tables adding the queue rule to {table}/{chain}") from exc
            for msg_seq, code in errors(data):
                if msg_seq == seq + 1:
                    if code:
                        raise OSError(code, f"queue rule in inet {table} {chain}: {os.strerror(code)}")
                    return


__all__ = ["MISSING", "install", "nfqueue_info", "rule_batch"]
