"""`egress.capture.nfqueue`: message building and parsing on bytes, and (root) the reader in throwaway namespaces
judging real forwarded datagrams: what it accepts reaches the receiver, what it drops does not, and with no
reader (or a full queue) the kernel drops."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator

import pytest

from egress import netlinkwire
from egress.capture import nfqueue
from egress.capture.nfqueue import NF_ACCEPT, NF_DROP, NfqueueReader, QueuedPacket, parse, parse_packet
from egress.nft import runner, xtqueue
from tests.nft.netns import Topology, socket_in, topology
from tests.waiting import eventually, scaled

IP4 = bytes.fromhex("450000210000400040117cc97f0000017f000001") + bytes.fromhex("d43100090009fe32") + b"x"


def _body(family: int, queue: int, *attrs: bytes) -> bytes:
    return struct.pack("=BB", family, 0) + struct.pack("!H", queue) + b"".join(attrs)


def _netlink(kind: int, body: bytes, seq: int = 0) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body
    return raw + b"\0" * (-len(raw) % 4)


def test_parses_id_payload_interfaces_and_time() -> None:
    body = _body(
        socket.AF_INET,
        3,
        netlinkwire.attr(nfqueue.NFQA_PACKET_HDR, struct.pack("!IHB", 77, 0x0800, 2)),
        netlinkwire.attr(nfqueue.NFQA_IFINDEX_INDEV, struct.pack("!I", 4)),
        netlinkwire.attr(nfqueue.NFQA_IFINDEX_OUTDEV, struct.pack("!I", 5)),
        netlinkwire.attr(nfqueue.NFQA_TIMESTAMP, struct.pack("!QQ", 1_700_000_000, 250_000)),
        netlinkwire.attr(nfqueue.NFQA_PAYLOAD, IP4),
    )
    assert parse_packet(body, 5.0) == QueuedPacket(77, socket.AF_INET, IP4, 4, 5, 1_700_000_000.25)


def test_family_from_the_hardware_protocol_then_the_ip_version() -> None:
    v6 = bytes([0x60]) + bytes(39)
    hdr = netlinkwire.attr(nfqueue.NFQA_PACKET_HDR, struct.pack("!IHB", 1, 0x86DD, 2))
    by_hw = parse_packet(_body(0, 0, hdr, netlinkwire.attr(nfqueue.NFQA_PAYLOAD, IP4)), 1)
    assert by_hw is not None and by_hw.family == socket.AF_INET6
    bare = netlinkwire.attr(nfqueue.NFQA_PACKET_HDR, struct.pack("!I", 2))
    by_version = parse_packet(_body(0, 0, bare, netlinkwire.attr(nfqueue.NFQA_PAYLOAD, v6)), 9.5)
    assert by_version == QueuedPacket(2, socket.AF_INET6, v6, None, None, 9.5)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        _body(socket.AF_INET, 0, netlinkwire.attr(nfqueue.NFQA_PAYLOAD, IP4)),  # no id
        _body(socket.AF_INET, 0, netlinkwire.attr(nfqueue.NFQA_PACKET_HDR, struct.pack("!IHB", 1, 0x800, 2))),
        _body(socket.AF_INET, 0) + struct.pack("=HH", 400, nfqueue.NFQA_PAYLOAD) + IP4,  # past the end
    ],
    ids=["empty", "no-id", "no-payload", "overlong-attr"],
)
def test_messages_without_an_id_or_payload_give_no_packet(body: bytes) -> None:
    assert parse_packet(body, 0) is None


def test_parse_splits_a_batch_and_names_what_needs_a_drop() -> None:
    good = _body(
        socket.AF_INET,
        0,
        netlinkwire.attr(nfqueue.NFQA_PACKET_HDR, struct.pack("!IHB", 5, 0x800, 2)),
        netlinkwire.attr(nfqueue.NFQA_PAYLOAD, IP4),
    )
    empty = _body(socket.AF_INET, 0, netlinkwire.attr(nfqueue.NFQA_PACKET_HDR, struct.pack("!IHB", 6, 0x800, 2)))
    error = _netlink(netlinkwire.NLMSG_ERROR, struct.pack("=i", -errno.EPERM) + bytes(16), seq=9)
    data = _netlink(nfqueue.NFQNL_MSG_PACKET, good) + _netlink(nfqueue.NFQNL_MSG_PACKET, empty) + error
    packets, errors, unusable = parse(data, 1.0)
    assert [p.packet_id for p in packets] == [5]
    assert errors == [(9, errno.EPERM)]
    assert unusable == [6]


def test_verdict_message_bytes() -> None:
    raw = nfqueue.verdict_message(7, 0x01020304, NF_DROP)
    length, kind, flags = struct.unpack_from("=IHH", raw)
    assert (length, kind, flags) == (len(raw), nfqueue.NFQNL_MSG_VERDICT, netlinkwire.NLM_F_REQUEST)
    assert raw[16:20] == bytes([socket.AF_UNSPEC, 0, 0, 7])
    assert raw[20:] == struct.pack("=HH", 12, nfqueue.NFQA_VERDICT_HDR) + struct.pack("!II", NF_DROP, 0x01020304)
    accept = nfqueue.verdict_message(7, 1, NF_ACCEPT)
    assert accept[24:28] == struct.pack("!I", NF_ACCEPT)
    with pytest.raises(ValueError):
        nfqueue.verdict_message(7, 1, 3)  # NF_QUEUE and the rest are never given


def test_config_messages_bytes() -> None:
    bind = nfqueue.config_command(4, 9, nfqueue.NFQNL_CFG_CMD_BIND)
    assert struct.unpack_from("=IHHI", bind) == (len(bind), nfqueue.NFQNL_MSG_CONFIG, 0x5, 4)
    assert bind[16:20] == bytes([socket.AF_UNSPEC, 0, 0, 9])
    assert bind[20:28] == struct.pack("=HH", 8, nfqueue.NFQA_CFG_CMD) + bytes([1, 0, 0, 0])
    params = nfqueue.config_params(5, 9, 0xFFFF, 100)
    found = dict(netlinkwire.attrs(params[20:]))
    assert found[nfqueue.NFQA_CFG_PARAMS] == struct.pack("!IB", 0xFFFF, nfqueue.NFQNL_COPY_PACKET)
    assert found[nfqueue.NFQA_CFG_QUEUE_MAXLEN] == struct.pack("!I", 100)


def test_reading_a_reader_that_is_not_open_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        NfqueueReader().read()


@pytest.mark.parametrize(
    ("answer", "named"),
    [(OSError(errno.EINVAL, "nfqueue config: Invalid argument"), "nfnetlink_queue"),
     (TimeoutError("no answer from nfnetlink_queue"), "nfnetlink_queue"),
     (PermissionError(errno.EPERM, "held"), "already has a reader")],
)  # fmt: skip
def test_a_queue_that_cannot_be_bound_says_why(monkeypatch: pytest.MonkeyPatch, answer: OSError, named: str) -> None:
    """nfnetlink answers EINVAL for a subsystem it does not have (a modular kernel without nfnetlink_queue)."""

    def config(self: NfqueueReader, request: bytes, strict: bool = True) -> None:
        if strict:
            raise answer

    monkeypatch.setattr(NfqueueReader, "_config", config)
    reader = NfqueueReader()
    with pytest.raises(OSError) as failed:
        reader.open(7)
    assert named in str(failed.value) and failed.value.errno
    with pytest.raises(RuntimeError):
        reader.fileno()  # closed again


QUEUE = 5
PORT = 9999
RULES = f"""table inet egt_nfq {{
\tchain udp_gate {{
\t}}
\tchain forward {{
\t\ttype filter hook forward priority filter; policy drop;
\t\tudp dport {PORT} jump udp_gate
\t}}
}}
"""
"""As the gateway's table does it (`egress.nft.xtqueue`: this kernel has no nft ``queue``): the datagrams jump to a
chain whose one rule hands them to the queue."""


@pytest.fixture(scope="module")
def lab() -> Iterator[Topology]:
    with topology() as t:
        runner.apply(RULES, netns=t.gateway)
        xtqueue.install("egt_nfq", "udp_gate", QUEUE, netns=t.gateway)
        yield t


def _receiver(t: Topology, family: int) -> socket.socket:
    sock = socket_in(t.internet, family, socket.SOCK_DGRAM)
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", PORT))
    sock.settimeout(scaled(0.5))
    return sock


def _received(sock: socket.socket) -> list[bytes]:
    got = []
    sock.setblocking(False)
    while True:
        try:
            got.append(sock.recv(2048))
        except BlockingIOError:
            return got


def _more[T](found: list[T], new: list[T]) -> list[T]:
    """``found`` after adding ``new`` (a check for `eventually` that gathers as it polls)."""
    found.extend(new)
    return found


def _payload_of(packet: QueuedPacket) -> bytes:
    header = 40 if packet.family == socket.AF_INET6 else (packet.payload[0] & 0x0F) * 4
    return packet.payload[header + 8 :]


@pytest.mark.root
@pytest.mark.parametrize(
    ("family", "address"), [(socket.AF_INET, Topology.INTERNET4), (socket.AF_INET6, Topology.INTERNET6)]
)
def test_accepted_datagrams_reach_the_receiver_dropped_ones_do_not(lab: Topology, family: int, address: str) -> None:
    with _receiver(lab, family) as receiver, NfqueueReader(netns=lab.gateway).open(QUEUE) as reader:
        with socket_in(lab.sandbox, family, socket.SOCK_DGRAM) as sender:
            for word in (b"pass-1", b"block-1", b"pass-2", b"block-2"):
                sender.sendto(word, (address, PORT))
        seen: list[QueuedPacket] = []

        def four() -> bool:
            seen.extend(reader.read(timeout=scaled(0.5)))
            return len(seen) >= 4

        eventually(four)
        for packet in seen:
            verdict = NF_ACCEPT if _payload_of(packet).startswith(b"pass") else NF_DROP
            reader.verdict(packet.packet_id, verdict)
        assert sorted(_payload_of(p) for p in seen) == [b"block-1", b"block-2", b"pass-1", b"pass-2"]
        got: list[bytes] = []
        eventually(lambda: _more(got, _received(receiver)) and len(got) >= 2)
        # the drops were given before the accepts' arrival was seen: had they passed, they would be there too
        got.extend(_received(receiver))
    assert sorted(got) == [b"pass-1", b"pass-2"]


@pytest.mark.root
def test_no_reader_means_the_kernel_drops(lab: Topology) -> None:
    with _receiver(lab, socket.AF_INET) as receiver:
        with socket_in(lab.sandbox, socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"nobody reads", (Topology.INTERNET4, PORT))
        # then a reader accepts everything: the first datagram never queued (dropped), the second passes
        with NfqueueReader(netns=lab.gateway).open(QUEUE) as reader:
            with socket_in(lab.sandbox, socket.AF_INET, socket.SOCK_DGRAM) as sender:
                sender.sendto(b"read", (Topology.INTERNET4, PORT))
            packets: list[QueuedPacket] = []
            eventually(lambda: _more(packets, reader.read(timeout=scaled(0.5))) and packets)
            for packet in packets:
                reader.verdict(packet.packet_id, NF_ACCEPT)
            got: list[bytes] = []
            eventually(lambda: _more(got, _received(receiver)) and got)
    assert got == [b"read"] and [_payload_of(p) for p in packets] == [b"read"]


@pytest.mark.root
def test_a_full_queue_drops_and_a_closed_reader_drops_what_waited(lab: Topology) -> None:
    with _receiver(lab, socket.AF_INET) as receiver:
        with NfqueueReader(netns=lab.gateway, max_length=4).open(QUEUE) as reader:
            with socket_in(lab.sandbox, socket.AF_INET, socket.SOCK_DGRAM) as sender:
                for n in range(50):
                    sender.sendto(f"flood-{n}".encode(), (Topology.INTERNET4, PORT))
            packets: list[QueuedPacket] = []
            eventually(lambda: _more(packets, reader.read(timeout=scaled(0.5))) and len(packets) >= 4)
            packets.extend(reader.read(timeout=scaled(0.2)))
            assert len(packets) == 4  # the queue held 4; the kernel dropped the other 46
            reader.verdict(packets[0].packet_id, NF_ACCEPT)
            got: list[bytes] = []
            eventually(lambda: _more(got, _received(receiver)) and got)
        # the reader closed with 3 packets given no verdict: dropped with the socket
        with NfqueueReader(netns=lab.gateway).open(QUEUE) as again:
            assert again.read(timeout=scaled(0.3)) == []
        got.extend(_received(receiver))
    assert got == [b"flood-0"]


@pytest.mark.root
def test_only_one_reader_per_queue_and_namespace(lab: Topology) -> None:
    with NfqueueReader(netns=lab.gateway).open(QUEUE):
        with pytest.raises(OSError) as busy:
            NfqueueReader(netns=lab.gateway).open(QUEUE)
        assert busy.value.errno == errno.EBUSY
    with NfqueueReader(netns=lab.gateway).open(QUEUE):
        pass
