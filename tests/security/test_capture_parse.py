"""The ground truth's parser without a lab: which packets count as crossing out, and how many payload bytes."""

from __future__ import annotations

import pathlib
import socket

import dpkt

from tests.security.capture import CONTROL_PORT, CONTROL_PREFIX, parse


def _ip4(src: str, dst: str, body: dpkt.Packet | bytes, proto: int) -> bytes:
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=proto, data=body)
    ip.len = len(bytes(ip))
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def _write(path: pathlib.Path, frames: list[bytes]) -> None:
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        for index, frame in enumerate(frames):
            writer.writepkt(frame, ts=1.0 + index)


GRE = b"\0\0\x08\0inner"


def _quoted(src: str, data: bytes = b"answer for allowed.lab", sport: int = 53, dport: int = 40000) -> bytes:
    """The start of a UDP packet from ``src``, as an ICMP error quotes it."""
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton("10.203.2.1"), p=17)
    ip.data = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
    ip.len = len(bytes(ip))
    return bytes(ip)


def test_outbound_payload_is_counted_per_destination(tmp_path: pathlib.Path) -> None:
    control = CONTROL_PREFIX + b"abc"
    frames = [
        # the proxy upstream (gateway uplink) to the pool: counted
        _ip4("10.203.2.1", "198.18.10.3", dpkt.tcp.TCP(sport=40000, dport=3333, data=b"hello pool"), 6),
        # a SYN from the sandbox: a packet, no payload
        _ip4("10.203.1.2", "198.18.10.2", dpkt.tcp.TCP(sport=40001, dport=80, flags=dpkt.tcp.TH_SYN), 6),
        # the answer from the internet: not outbound
        _ip4("198.18.10.3", "10.203.2.1", dpkt.tcp.TCP(sport=3333, dport=40000, data=b"answer"), 6),
        # the positive control, and the gateway's ICMP answer quoting it: neither counted
        _ip4("10.203.2.2", "10.203.2.1", dpkt.udp.UDP(sport=5000, dport=CONTROL_PORT, data=control), 17),
        _ip4(
            "10.203.2.1",
            "10.203.2.2",
            dpkt.icmp.ICMP(type=3, code=3, data=b"\0" * 4 + _quoted("10.203.2.2", control, 5000, CONTROL_PORT)),
            1,
        ),
        # ns.lab's late answer, and the gateway's port unreachable about it: the internet's own bytes, not counted
        _ip4("198.18.10.5", "10.203.2.1", dpkt.udp.UDP(sport=53, dport=40000, data=b"answer for allowed.lab"), 17),
        _ip4("10.203.2.1", "198.18.10.5", dpkt.icmp.ICMP(type=3, code=3, data=b"\0" * 4 + _quoted("198.18.10.5")), 1),
        # ... but an ICMP error quoting a packet of the sandbox's is the sandbox's bytes: counted
        _ip4("10.203.1.2", "198.18.10.4", dpkt.icmp.ICMP(type=3, code=3, data=b"\0" * 4 + _quoted("10.203.1.2")), 1),
        # an echo request from the sandbox: its data after id/seq
        _ip4("10.203.1.2", "198.18.10.9", dpkt.icmp.ICMP(type=8, data=b"\0\1\0\1" + b"tunnel"), 1),
        # GRE: the whole IP payload
        _ip4("10.203.1.2", "198.18.10.2", GRE, 47),
    ]
    path = tmp_path / "c.pcap"
    _write(path, frames)
    crossed = parse(path)
    assert control.decode() in crossed.controls
    assert crossed.bytes_to("198.18.10.3", 3333, "tcp") == len(b"hello pool")
    assert crossed.packets_to("198.18.10.2", 80) == 1 and crossed.bytes_to("198.18.10.2", 80) == 0
    assert crossed.bytes_to("10.203.2.2") == 0
    assert crossed.packets_to("198.18.10.5") == 0
    quoting = 4 + len(_quoted("10.203.1.2"))  # an ICMP error's payload: 4 unused bytes, then the quote
    assert crossed.bytes_to("198.18.10.4", proto="icmp") == quoting
    assert crossed.bytes_to("198.18.10.9", proto="icmp") == len(b"tunnel")
    assert crossed.bytes_to("198.18.10.2", proto="47") == len(GRE)
    assert crossed.bytes_to("198.18.10.0/24") == len(b"hello pool") + len(b"tunnel") + len(GRE) + quoting
    assert crossed.contains(b"pool") and not crossed.contains(b"answer", "198.18.10.3")  # inbound: not counted


def test_a_truncated_last_record_is_read_as_far_as_it_goes(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "t.pcap"
    _write(path, [_ip4("10.203.1.2", "198.18.10.2", dpkt.udp.UDP(sport=1, dport=2, data=b"x" * 50), 17)] * 2)
    path.write_bytes(path.read_bytes()[:-20])  # a capture read while tcpdump writes its last record
    assert 50 <= parse(path).bytes_to("198.18.10.2", 2, "udp") < 100  # what is there counts: a leak is a leak


def test_an_icmp_error_counts_unless_it_provably_answers_a_packet_the_internet_sent(tmp_path: pathlib.Path) -> None:
    """Red team 2: an error from the sandbox quoting the proxy's upstream connection (site → gateway uplink) with
    chosen bytes after the quote used to be taken for the gateway's answer to the site, and read as 0 bytes."""
    sent = dpkt.tcp.TCP(sport=8080, dport=41000, flags=dpkt.tcp.TH_ACK, data=b"HTTP/1.1 200 OK")
    crafted = _quoted("198.18.10.4") + b"chosen bytes" * 10
    frames = [
        _ip4("198.18.10.4", "10.203.2.1", sent, 6),  # the site's answer to the proxy
        # from the sandbox, quoting an internet-side packet: the sandbox's bytes, counted
        _ip4("10.203.1.2", "198.18.10.4", dpkt.icmp.ICMP(type=3, code=3, data=b"\0" * 4 + crafted), 1),
        # from the gateway's address, quoting bytes the site never sent: counted too
        _ip4("10.203.2.1", "198.18.10.4", dpkt.icmp.ICMP(type=3, code=3, data=b"\0" * 4 + crafted), 1),
    ]
    path = tmp_path / "e.pcap"
    _write(path, frames)
    crossed = parse(path)
    assert crossed.packets_to("198.18.10.4", proto="icmp") == 2
    assert crossed.bytes_to("198.18.10.4", proto="icmp") == 2 * (4 + len(crafted))
    assert crossed.contains(b"chosen bytes", "198.18.10.4")
