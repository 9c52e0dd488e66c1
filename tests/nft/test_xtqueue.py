"""`egress.nft.xtqueue`: the queue rule's netlink batch, byte for byte, and (root) the kernel taking it or refusing
it (tests/capture/test_nfqueue.py proves the datagrams it queues reach the reader, and that the kernel drops them
with no reader)."""

from __future__ import annotations

import errno
import struct

import pytest

from egress import netlinkwire
from egress.nft import runner, xtqueue
from tests.nft.netns import namespace


def _attrs(data: bytes) -> dict[int, bytes]:
    found, offset = {}, 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        found[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


def test_the_target_is_nfqueue_revision_3_with_no_bypass() -> None:
    assert xtqueue.nfqueue_info(7) == struct.pack("=HHH", 7, 1, 0) + b"\0\0"  # flags 0: no NFQ_FLAG_BYPASS (1)
    with pytest.raises(ValueError):
        xtqueue.nfqueue_info(70000)


def test_the_batch_is_begin_newrule_end_in_the_inet_family() -> None:
    batch = xtqueue.rule_batch("egress", "udp_gate", 9, seq=40)
    kinds, offset, bodies = [], 0, []
    while offset < len(batch):
        length, kind, flags, seq, _ = struct.unpack_from("=IHHII", batch, offset)
        kinds.append((kind, seq, flags))
        bodies.append(batch[offset + 16 : offset + length])
        offset += length
    assert [k for k, _, _ in kinds] == [
        xtqueue.NFNL_MSG_BATCH_BEGIN,
        xtqueue.NFT_MSG_NEWRULE,
        xtqueue.NFNL_MSG_BATCH_END,
    ]
    assert [s for _, s, _ in kinds] == [40, 41, 42]
    assert kinds[1][2] & netlinkwire.NLM_F_ACK and kinds[1][2] & xtqueue.NLM_F_APPEND
    rule = bodies[1]
    assert rule[0] == xtqueue.NFPROTO_INET
    attrs = _attrs(rule[4:])
    assert attrs[xtqueue.NFTA_RULE_TABLE] == b"egress\0" and attrs[xtqueue.NFTA_RULE_CHAIN] == b"udp_gate\0"
    elements = list(_attrs(attrs[xtqueue.NFTA_RULE_EXPRESSIONS]).values())
    target = _attrs(_attrs(elements[-1])[xtqueue.NFTA_EXPR_DATA])
    assert target[xtqueue.NFTA_TARGET_NAME] == b"NFQUEUE\0"
    assert target[xtqueue.NFTA_TARGET_INFO] == xtqueue.nfqueue_info(9)


@pytest.mark.root
def test_the_kernel_takes_the_rule_into_a_declared_chain_and_refuses_a_missing_one() -> None:
    with namespace() as ns:
        runner.apply("table inet egt_xtq {\n\tchain udp_gate {\n\t}\n}\n", netns=ns)
        assert xtqueue.install("egt_xtq", "udp_gate", 3, netns=ns) in ("queue", "xt NFQUEUE")  # this kernel: xt
        listed = runner.list_table("egt_xtq", netns=ns)
        assert "counter" in listed  # the rule's first expression (nft 1.0.6 does not print the xt target)
        with pytest.raises(OSError) as missing:
            xtqueue.install("egt_xtq", "no_such_chain", 3, netns=ns)
        assert missing.value.errno == errno.ENOENT


def test_the_native_queue_expression_has_no_bypass_flag() -> None:
    batch = xtqueue.rule_batch("egress", "udp_gate", 9, seq=1, native=True)
    length = struct.unpack_from("=I", batch, 16)[0]
    rule = batch[16 + 16 : 16 + length]
    elements = list(_attrs(_attrs(rule[4:])[xtqueue.NFTA_RULE_EXPRESSIONS]).values())
    queue = _attrs(elements[-1])
    assert queue[xtqueue.NFTA_EXPR_NAME] == b"queue\0"
    data = _attrs(queue[xtqueue.NFTA_EXPR_DATA])
    assert data[xtqueue.NFTA_QUEUE_NUM] == struct.pack("!H", 9)
    assert data[xtqueue.NFTA_QUEUE_FLAGS] == struct.pack("!H", 0)  # NFT_QUEUE_FLAG_BYPASS is 1


@pytest.mark.parametrize("code", [errno.ENOENT, errno.EOPNOTSUPP])
def test_a_kernel_without_either_queue_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def refused(*_: object, **__: object) -> None:
        raise OSError(code, "queue rule: refused")

    monkeypatch.setattr(xtqueue, "_send", refused)
    with pytest.raises(OSError) as missing:
        xtqueue.install("egress", "udp_gate", 7)
    assert missing.value.errno == code and "xt_NFQUEUE" in str(missing.value) and "nft_queue" in str(missing.value)


def test_other_errors_pass_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*_: object, **__: object) -> None:
        raise OSError(errno.EPERM, "queue rule: not permitted")

    monkeypatch.setattr(xtqueue, "_send", refused)
    with pytest.raises(OSError) as other:
        xtqueue.install("egress", "udp_gate", 7)
    assert other.value.errno == errno.EPERM and "xt_NFQUEUE" not in str(other.value)
