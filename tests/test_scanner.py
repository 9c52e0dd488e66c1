"""The scanner's flow handling, with a small pure detector standing in for the real ones."""

from __future__ import annotations

import pathlib
import struct
from collections import Counter
from collections.abc import Callable

import dpkt
import pytest

from egress.detect import encap
from egress.detect.base import MORE, Category, Finding, FlowView, Result
from egress.detect.engine import STREAM_CAP
from egress.detect.registry import DetectorSet, _NoDns, build_detectors
from egress.report import summary
from egress.scanner import MAX_DEPTH, FileStats, Scanner
from tests.detect import sshshape_traces as ssh_traces
from tests.lists import shipped_lists

CLIENT, SERVER = b"\xc0\x00\x02\x0a", b"\xc6\x33\x64\x14"
MESSAGE = b'{"id":1,"method":"mining.subscribe","params":[]}\n'


def wants_subscribe(view: FlowView) -> Result:
    """Finds MESSAGE once it is whole in the client stream; gives up on anything else but 0x80 junk."""
    if view.client.startswith(MESSAGE):
        return Finding(Category.MINING, "test", "test", MESSAGE.decode().strip())
    if MESSAGE.startswith(view.client) or not view.client.strip(b"\x80"):
        return None if view.complete else MORE
    return None


DETECTORS = DetectorSet(tcp=(wants_subscribe,), udp=(), icmp=(), dns_tracker=_NoDns)


def _frame(src: bytes, dst: bytes, sport: int, dport: int, seq: int, flags: int, data: bytes = b"") -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, flags=flags, data=data)
    ip = dpkt.ip.IP(src=src, dst=dst, p=6, data=tcp)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))


def _write(path: pathlib.Path, frames: list[tuple[float, bytes]]) -> str:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for ts, frame in frames:
        out += struct.pack("<IIII", int(ts), int((ts % 1) * 1e6), len(frame), len(frame)) + frame
    path.write_bytes(out)
    return str(path)


def _connection(sport: int, chunks: list[tuple[int, bytes]], start: float = 10.0) -> list[tuple[float, bytes]]:
    syn, ack, psh = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
    frames = [
        (start, _frame(CLIENT, SERVER, sport, 3333, 999, syn)),
        (start + 0.01, _frame(SERVER, CLIENT, 3333, sport, 5000, syn | ack)),
    ]
    for index, (offset, data) in enumerate(chunks):
        frames.append((start + 0.02 + index / 1000, _frame(CLIENT, SERVER, sport, 3333, 1000 + offset, psh, data)))
    return frames


def _scan(path: str) -> tuple[list[tuple[str, int, float]], FileStats]:
    stats = FileStats(path)
    found = [(f.meta.src, f.meta.sport, f.ts) for f in Scanner(DETECTORS).scan(path, stats)]
    return found, stats


@pytest.mark.parametrize("size", [1, 5, 17])
def test_message_split_reordered_and_retransmitted_is_found_once(tmp_path: pathlib.Path, size: int) -> None:
    chunks = [(offset, MESSAGE[offset : offset + size]) for offset in range(0, len(MESSAGE), size)]
    chunks = chunks[1:] + chunks[:1] + chunks[:2]  # first chunk late, then two retransmissions
    found, stats = _scan(_write(tmp_path / "c.pcap", _connection(40001, chunks)))
    assert found == [("192.0.2.10", 40001, 10.0)]
    assert stats.flows == 1


def test_flow_seen_from_server_side_first_keeps_client_as_source(tmp_path: pathlib.Path) -> None:
    psh = dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
    frames = [
        (1.0, _frame(SERVER, CLIENT, 3333, 40002, 7, psh, b'{"id":1,"result":true}\n')),
        (1.1, _frame(CLIENT, SERVER, 40002, 3333, 100, psh, MESSAGE)),
    ]
    found, _ = _scan(_write(tmp_path / "mid.pcap", frames))
    assert found == [("192.0.2.10", 40002, 1.0)]


def test_other_traffic_is_not_found(tmp_path: pathlib.Path) -> None:
    found, stats = _scan(_write(tmp_path / "o.pcap", _connection(40003, [(0, b"GET / HTTP/1.1\r\n\r\n")])))
    assert found == []
    assert stats.packets == 3


def test_idle_flows_are_closed_and_the_table_stays_bounded(tmp_path: pathlib.Path) -> None:
    frames: list[tuple[float, bytes]] = []
    for index in range(50):  # an undecided flow every 100 s of capture time, beyond the idle limit
        frames += _connection(41000 + index, [(0, MESSAGE[:10])], start=index * 100.0)
    path = _write(tmp_path / "idle.pcap", frames)
    stats = FileStats(path)
    assert list(Scanner(DETECTORS, idle_seconds=60.0).scan(path, stats)) == []
    assert stats.flows == 50
    assert 0 < stats.peak_entries <= 4  # at most two flows (two keys each) held at once, not fifty


def test_port_reuse_after_a_decided_flow_starts_a_new_flow(tmp_path: pathlib.Path) -> None:
    first = _connection(40005, [(0, MESSAGE)], start=1.0)
    second = _connection(40005, [(0, MESSAGE)], start=2.0)
    found, stats = _scan(_write(tmp_path / "reuse.pcap", first + second))
    assert [ts for _, _, ts in found] == [1.0, 2.0]
    assert stats.flows == 2


def test_a_decided_flow_stays_decided_across_a_generation_change(tmp_path: pathlib.Path) -> None:
    psh = dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
    decided = _connection(40006, [(0, MESSAGE)], start=1.0)  # found at once: decided
    other = _connection(40007, [], start=70.0)  # past the 60 s generation: the decided flow moves to `previous`
    again = [(71.0, _frame(CLIENT, SERVER, 40006, 3333, 1000 + len(MESSAGE), psh, MESSAGE))]
    path = _write(tmp_path / "generations.pcap", decided + other + again)
    stats = FileStats(path)
    found = [(f.meta.sport, f.ts) for f in Scanner(DETECTORS, idle_seconds=60.0).scan(path, stats)]
    assert found == [(40006, 1.0)]  # not found a second time by a flow made up from its middle
    assert stats.flows == 2


def test_a_flow_the_cap_stops_undecided_is_counted_unidentified(tmp_path: pathlib.Path) -> None:
    """Junk up to the inspection cap, then the message: not found, and not clean either (issue 9)."""
    junk = b"\x80" * 1400
    chunks = [(offset, junk) for offset in range(0, STREAM_CAP + 1400, 1400)]
    chunks.append((chunks[-1][0] + 1400, MESSAGE))
    found, stats = _scan(_write(tmp_path / "cap.pcap", _connection(40008, chunks)))
    assert found == []
    assert stats.unidentified == 1
    assert "1 flow(s) unidentified" in summary([stats], Counter())


# Tunnels: the outer flow is a tunnel, and what it carries is scanned like any other traffic (egress.detect.encap).
OUTER_A, OUTER_B = b"\xcb\x00\x71\x01", b"\xcb\x00\x71\x02"
WITH_ENCAP = DetectorSet(tcp=(wants_subscribe,), udp=(encap.detect,), icmp=(), dns_tracker=_NoDns)


def _ip_payload(frame: bytes) -> bytes:
    """The IP packet of an Ethernet frame made by `_frame`."""
    return frame[14:]


def _outer(proto: int, inner: bytes) -> bytes:
    ip = dpkt.ip.IP(src=OUTER_A, dst=OUTER_B, p=proto, data=inner)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))


def _vxlan(inner_frame: bytes, sport: int = 50000) -> bytes:
    data = b"\x08\x00\x00\x00\x00\x00\x2a\x00" + inner_frame
    udp = dpkt.udp.UDP(sport=sport, dport=4789, ulen=8 + len(data), data=data)
    ip = dpkt.ip.IP(src=OUTER_A, dst=OUTER_B, p=17, data=udp)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))


def _tunnelled(wrap: Callable[[bytes], bytes]) -> list[tuple[float, bytes]]:
    return [(ts, wrap(frame)) for ts, frame in _connection(40010, [(0, MESSAGE)])]


def _labels(path: str, detectors: DetectorSet = WITH_ENCAP) -> list[tuple[str, str, str]]:
    stats = FileStats(path)
    found = [(f.finding.protocol, f.meta.src, f.meta.dst) for f in Scanner(detectors).scan(path, stats)]
    assert stats.skipped == 0 and stats.error is None
    return found


@pytest.mark.parametrize(
    ("name", "wrap"),
    [
        ("ipip", lambda frame: _outer(4, _ip_payload(frame))),
        ("gre", lambda frame: _outer(47, b"\x20\x00\x08\x00" + b"key!" + _ip_payload(frame))),  # GRE with a key
        ("gre", lambda frame: _outer(47, b"\x00\x00\x65\x58" + frame)),  # transparent Ethernet bridging
        ("vxlan", _vxlan),
    ],
)
def test_a_tunnel_is_found_and_what_it_carries_is_scanned(
    tmp_path: pathlib.Path, name: str, wrap: Callable[[bytes], bytes]
) -> None:
    found = _labels(_write(tmp_path / "t.pcap", _tunnelled(wrap)))
    assert sorted(found) == sorted([(name, "203.0.113.1", "203.0.113.2"), ("test", "192.0.2.10", "198.51.100.20")])


def test_a_decided_vxlan_flow_still_hands_over_what_it_carries(tmp_path: pathlib.Path) -> None:
    """The VXLAN flow is decided at its first datagram; the fast path must not skip the rest of it."""
    decided = [(1.0, _vxlan(_frame(CLIENT, SERVER, 40011, 80, 1, dpkt.tcp.TH_SYN)))]
    found = _labels(_write(tmp_path / "late.pcap", decided + _tunnelled(_vxlan)))
    assert ("test", "192.0.2.10", "198.51.100.20") in found


@pytest.mark.parametrize(("depth", "inner_found"), [(MAX_DEPTH, True), (MAX_DEPTH + 1, False)])
def test_tunnels_are_opened_to_a_bounded_depth(tmp_path: pathlib.Path, depth: int, inner_found: bool) -> None:
    def wrap(frame: bytes) -> bytes:
        packet = _ip_payload(frame)
        for _ in range(depth):
            packet = bytes(dpkt.ip.IP(src=OUTER_A, dst=OUTER_B, p=4, data=packet))
        return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=dpkt.ip.IP(packet)))

    found = _labels(_write(tmp_path / "deep.pcap", _tunnelled(wrap)))
    assert ("ipip", "203.0.113.1", "203.0.113.2") in found
    assert (("test", "192.0.2.10", "198.51.100.20") in found) is inner_found


def _ssh_session(reads: ssh_traces.Reads, port: int) -> list[tuple[float, bytes]]:
    """A TCP connection to ``port`` carrying a recorded OpenSSH session (tests/detect/sshshape_traces.py): its
    cleartext opening as read, then each encrypted read as segments of that many bytes at its capture time."""
    syn, ack, psh = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
    sport = 40022
    frames = [
        (10.0, _frame(CLIENT, SERVER, sport, port, 999, syn)),
        (10.01, _frame(SERVER, CLIENT, port, sport, 5000, syn | ack)),
    ]
    seqs = {True: 1000, False: 5001}
    chunks = [(chunk[:1] == b"C", chunk[1:], 0.0) for chunk in ssh_traces.CLEAR]
    chunks += [(from_client, bytes(size), at) for from_client, size, at in reads]
    for from_client, data, at in chunks:
        ends = (CLIENT, SERVER, sport, port) if from_client else (SERVER, CLIENT, port, sport)
        for offset in range(0, len(data), 1400):  # a read larger than a segment spans several
            piece = data[offset : offset + 1400]
            frames.append((10.02 + at, _frame(*ends, seqs[from_client], psh, piece)))
            seqs[from_client] += len(piece)
    return frames


@pytest.mark.parametrize("port", [22, 2222])
@pytest.mark.parametrize(
    ("name", "forwarding"),
    [("FORWARD_L", True), ("FORWARD_D", True), ("INTERACTIVE", False), ("SCP_GET", False), ("SFTP", False)],
)
def test_the_scanner_watches_ssh_for_port_forwarding(
    tmp_path: pathlib.Path, name: str, forwarding: bool, port: int
) -> None:
    """The SSH shape watcher the gateway's SSH relay runs (egress.detect.sshshape) runs in the scanner too, on the
    segments' capture times: forwarding sessions found, on port 22 as elsewhere; a shell, scp and sftp not."""
    path = _write(tmp_path / "ssh.pcap", _ssh_session(getattr(ssh_traces, name), port))
    scanned = Scanner(build_detectors(shipped_lists())).scan(path, FileStats(path))
    found = {(each.finding.category, each.finding.protocol) for each in scanned}
    expected = {(Category.TUNNEL, "ssh-forwarding")} if forwarding else set()
    if port != 22:
        expected.add((Category.TUNNEL, "ssh-nonstandard-port"))
    assert found == expected


def _exchange(sport: int, client: list[bytes], server: list[bytes]) -> list[tuple[float, bytes]]:
    """One plain-HTTP connection to port 80: the client's messages, each answered by the server's in turn."""
    syn, ack, psh = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK
    frames = [
        (1.0, _frame(CLIENT, SERVER, sport, 80, 999, syn)),
        (1.001, _frame(SERVER, CLIENT, 80, sport, 4999, syn | ack)),
    ]
    seq, ack_seq, ts = 1000, 5000, 1.002
    for index in range(max(len(client), len(server))):
        for data, outgoing in ((client[index : index + 1], True), (server[index : index + 1], False)):
            if data:
                src, dst, ports, at = (
                    (CLIENT, SERVER, (sport, 80), seq) if outgoing else (SERVER, CLIENT, (80, sport), ack_seq)
                )
                frames.append((ts, _frame(src, dst, *ports, at, psh, data[0])))
                seq, ack_seq = (seq + len(data[0]), ack_seq) if outgoing else (seq, ack_seq + len(data[0]))
                ts += 0.001
    return frames


def _scan_http(tmp_path: pathlib.Path, client: list[bytes], server: tuple[bytes, ...] = ()) -> list[tuple[str, str]]:
    path = _write(tmp_path / "http.pcap", _exchange(40100, client, list(server)))
    stats = FileStats(path)
    found = [
        (f.finding.category.value, f.finding.protocol)
        for f in Scanner(build_detectors(shipped_lists())).scan(path, stats)
    ]
    assert stats.skipped == 0 and stats.error is None
    return found


SUBMIT = '{"id":4,"method":"mining.submit","params":["w","j1","00","5f5e1000","deadbeef"]}'
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize(
    "target",
    [
        f"/{SUBMIT}",  # verbatim (red team: test_redteam_http_target.py)
        f"/x?{SUBMIT}",  # the whole query, no name=value
        "/" + "".join(f"%{byte:02X}" for byte in SUBMIT.encode()),  # percent-encoded
        "/" + "".join(f"%25{byte:02X}" for byte in SUBMIT.encode()),  # twice
    ],
)
def test_the_scanner_reads_stratum_in_a_request_target(tmp_path: pathlib.Path, target: str) -> None:
    request = f"GET {target} HTTP/1.1\r\nHost: pool.example\r\n\r\n".encode()
    assert _scan_http(tmp_path, [request], (OK,)) == [("mining", "stratum-v1")]


def test_the_scanner_reads_a_job_in_a_reason_phrase(tmp_path: pathlib.Path) -> None:
    job = (
        b'{"id":null,"method":"mining.notify","params":["j1","00","01","02",[],"20000000","1d00ffff","5f5e1000",true]}'
    )
    answer = b"HTTP/1.1 200 " + job + b"\r\nContent-Length: 0\r\n\r\n"
    request = b"GET /job HTTP/1.1\r\nHost: pool.example\r\n\r\n"
    assert _scan_http(tmp_path, [request], (answer,)) == [("mining", "stratum-v1")]


def _posts(pieces: list[bytes]) -> list[bytes]:
    head = "POST /work HTTP/1.1\r\nHost: pool.example\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n"
    return [head.format(len(piece)).encode() + piece for piece in pieces]


def test_the_scanner_reads_stratum_cut_across_keep_alive_bodies(tmp_path: pathlib.Path) -> None:
    pieces = [MESSAGE[at : at + 7] for at in range(0, len(MESSAGE), 7)]
    assert _scan_http(tmp_path, _posts(pieces), (OK,) * len(pieces)) == [("mining", "stratum-v1")]


def test_the_scanner_reads_a_pools_answers_cut_across_response_bodies(tmp_path: pathlib.Path) -> None:
    notify = b'{"id":null,"method":"mining.notify","params":["j1","00","01","02",[],"2","1d","5f",true]}\n'
    pieces = [notify[at : at + 7] for at in range(0, len(notify), 7)]
    answers = [f"HTTP/1.1 200 OK\r\nContent-Length: {len(piece)}\r\n\r\n".encode() + piece for piece in pieces]
    requests = [b"GET /job HTTP/1.1\r\nHost: pool.example\r\n\r\n"] * len(pieces)
    assert _scan_http(tmp_path, requests, tuple(answers)) == [("mining", "stratum-v1")]


def test_brackets_in_targets_and_json_bodies_on_one_connection_are_no_finding(tmp_path: pathlib.Path) -> None:
    """Benign control: a JSON API on one keep-alive connection, brackets in its targets and bodies."""
    requests = [
        b"GET /search?q=%5B1,2%5D&filter={%22tag%22:%22x%22} HTTP/1.1\r\nHost: api.example\r\n\r\n",
        *_posts([b'{"query":"status","id":1}', b'{"query":"list","id":2}', b'[{"page":1}]']),
    ]
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b'{"ok":true}'[:10]] * 4
    assert _scan_http(tmp_path, requests, tuple(answers)) == []


def _datagram(sport: int, dport: int, data: bytes, src: bytes = CLIENT, dst: bytes = SERVER) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=dport, ulen=8 + len(data), data=data)
    ip = dpkt.ip.IP(src=src, dst=dst, p=17, data=udp)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=ip))


def test_a_pool_message_over_udp_is_found(tmp_path: pathlib.Path) -> None:
    """Red team 12's captures: a Stratum subscribe whole in one datagram, and XMRig's login cut over three, to a
    pool port; the gate named both, a scan named neither (its UDP detectors were VPNs, encapsulations, names)."""
    login = b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"4AAAA","pass":"x","agent":"XMRig/6.21.0"}}\n'
    frames = [(10.0, _datagram(40020, 3333, MESSAGE))]
    frames += [
        (11.0 + index / 10, _datagram(40021, 3334, login[cut : cut + 40])) for index, cut in enumerate((0, 40, 80))
    ]
    path = _write(tmp_path / "udp.pcap", frames)
    stats = FileStats(path)
    found = {(f.meta.sport, f.finding.protocol) for f in Scanner(build_detectors(shipped_lists())).scan(path, stats)}
    assert found == {(40020, "stratum-v1"), (40021, "cryptonote-stratum")}
