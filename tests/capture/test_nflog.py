"""`egress.capture.nflog`: message parsing on built bytes, and (root) the reader in throwaway namespaces."""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from egress.capture import nflog
from egress.capture.nflog import LoggedPacket, NflogReader, parse_packet
from egress.nft import runner
from tests.nft.netns import namespace, socket_in
from tests.waiting import eventually, scaled

IP4 = bytes.fromhex("450000210000400040117cc97f0000017f000001") + bytes.fromhex("d43100090009fe32") + b"x"


def _attr(kind: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _message(family: int, *attrs: bytes) -> bytes:
    return struct.pack("=BBH", family, 0, 0) + b"".join(attrs)


def test_parses_prefix_payload_interface_and_time() -> None:
    body = _message(
        socket.AF_INET,
        _attr(nflog.NFULA_PACKET_HDR, struct.pack("!HBB", 0x0800, 0, 0)),
        _attr(nflog.NFULA_PREFIX, b"egress drop agents\0"),
        _attr(nflog.NFULA_IFINDEX_INDEV, struct.pack("!I", 4)),
        _attr(nflog.NFULA_TIMESTAMP, struct.pack("!QQ", 1_700_000_000, 250_000)),
        _attr(nflog.NFULA_PAYLOAD, IP4),
    )
    assert parse_packet(body, 5.0) == LoggedPacket("egress drop agents", socket.AF_INET, IP4, 4, 1_700_000_000.25)


def test_falls_back_to_the_hardware_protocol_then_the_ip_version_and_to_read_time() -> None:
    v6 = bytes([0x60]) + bytes(39)
    by_hw = parse_packet(
        _message(0, _attr(nflog.NFULA_PACKET_HDR, b"\x86\xdd\0\0"), _attr(nflog.NFULA_PAYLOAD, IP4)), 1
    )
    assert by_hw is not None and by_hw.family == socket.AF_INET6
    by_version = parse_packet(_message(0, _attr(nflog.NFULA_PAYLOAD, v6)), 9.5)
    assert by_version == LoggedPacket("", socket.AF_INET6, v6, None, 9.5)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        _message(socket.AF_INET, _attr(nflog.NFULA_PREFIX, b"no payload\0")),
        _message(socket.AF_INET) + struct.pack("=HH", 400, nflog.NFULA_PAYLOAD) + IP4,  # length past the end
        _message(socket.AF_INET) + struct.pack("=HH", 2, nflog.NFULA_PAYLOAD),  # length shorter than a header
    ],
    ids=["empty", "no-payload", "overlong-attr", "short-attr"],
)
def test_messages_without_a_usable_payload_are_skipped(body: bytes) -> None:
    assert parse_packet(body, 0) is None


def test_reading_a_reader_that_is_not_open_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        NflogReader().read()


RULES = """table inet egt_nft_log {
\tchain output {
\t\ttype filter hook output priority filter; policy accept;
\t\tudp dport 9 log prefix "egress drop t" group 3
\t}
}
"""


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    with namespace() as name:
        runner.apply(RULES, netns=name)
        yield name


def _send(ns: str, family: int, address: str, data: bytes = b"x") -> None:
    with socket_in(ns, family, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, (address, 9))


@pytest.mark.root
@pytest.mark.parametrize(("family", "address"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_reads_what_the_ruleset_logs_at_once(ns: str, family: int, address: str) -> None:
    with NflogReader(netns=ns, copy_range=64).open(3) as reader:
        assert reader.read() == []
        _send(ns, family, address, b"y" * 500)
        # The kernel logs the packet while sendto runs, and with a queue threshold of 1 hands the message over at
        # once: it is there when sendto returns. (Batched, it would wait for the flush timer.)
        packets = reader.read()
    assert [(p.prefix, p.family) for p in packets] == [("egress drop t", family)]
    assert len(packets[0].payload) == 64  # cut at the copy range
    assert abs(packets[0].ts - time.time()) < scaled(60)  # the kernel's wall-clock stamp, not zero or boot time


@pytest.mark.root
def test_only_one_reader_per_group_and_namespace(ns: str) -> None:
    with NflogReader(netns=ns).open(3):
        with pytest.raises(OSError) as busy:
            NflogReader(netns=ns).open(3)
        assert busy.value.errno == errno.EBUSY
        with NflogReader(netns=ns).open(4):  # another group is fine
            pass
    with NflogReader(netns=ns).open(3):  # and the group is free again once the first one closed
        pass


@pytest.mark.root
def test_a_reader_sees_only_its_own_namespace(ns: str) -> None:
    with namespace() as other, NflogReader(netns=other).open(3) as reader:
        runner.apply(RULES, netns=other)
        _send(ns, socket.AF_INET, "127.0.0.1", b"from the other namespace")
        _send(other, socket.AF_INET, "127.0.0.1", b"marker")  # logged after it, in the reader's own namespace
        packets = eventually(lambda: reader.read(timeout=scaled(1)))
    assert [p.payload[28:] for p in packets] == [b"marker"]  # after the IPv4 (20) and UDP (8) headers


@pytest.mark.root
def test_works_when_the_whole_process_runs_inside_the_namespace(ns: str) -> None:
    script = (
        "from egress.capture.nflog import NflogReader\n"
        "import socket\n"
        "with NflogReader().open(3) as r:\n"
        "    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'z', ('127.0.0.1', 9))\n"
        f"    print([p.prefix for p in r.read(timeout={scaled(10)})])\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['egress drop t']"
