"""The agent's side of the decrypted-traffic techniques, run in the lab's sandbox:
``python -m tests.security.mitm_client TECHNIQUE PORT TLS CAFILE``.

It resolves allowed.lab through the gateway's resolver (so the address is bound), connects to PORT (TLS trusting
the gateway's CA when TLS is ``1``), plays the technique and prints what it got back (``answer HEX``). The
server's side is tests/proxy/mitm/site.py, whose log is the ground truth.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import ssl
import sys
from collections.abc import Sequence

import wsproto
import wsproto.events

from egress.detect import dns

RESOLVER = "10.203.1.1"
SECRET = b'{"id":2,"method":"mining.submit","params":["worker","job1","00000000","5f5e1000","a1b2c3d4"]}\n'
BENIGN = b'{"query":"weather","city":"Lyon"}'
BENIGN_KB = '{"type":"chat","text":"' + "la " * 330 + '"}'


def resolve(name: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(dns.build_query(7, name, 1), (RESOLVER, 53))
        address = dns.address_of(dns.parse(sock.recv(4096)).answers[0])
        assert address is not None, "allowed.lab did not resolve"
        return address


def post(body: bytes, *extra: str) -> bytes:
    fields = "".join(f"{line}\r\n" for line in extra)
    if not any(line.lower().startswith("transfer-encoding") for line in extra):
        fields += f"Content-Length: {len(body)}\r\n"
    return f"POST /api HTTP/1.1\r\nHost: allowed.lab\r\n{fields}\r\n".encode() + body


def chunked(body: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7)) + (
        b"0\r\n\r\n"
    )


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except (OSError, ssl.SSLError):
        return b""


def exchange(sock: socket.socket, data: bytes) -> bytes:
    """Send, then read one response (a head and its Content-Length body) or until the connection ends."""
    with contextlib.suppress(OSError):
        sock.sendall(data)
    got = b""
    while b"\r\n\r\n" not in got and (chunk := _recv(sock)):
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    fields = (line.partition(b":") for line in head.split(b"\r\n"))
    length = next((int(value) for name, _, value in fields if name.lower() == b"content-length"), 0)
    while len(body) < length and (chunk := _recv(sock)):
        body += chunk
    return got[: len(head) + 4] + body if got else b""


def _event(ws: wsproto.WSConnection, sock: socket.socket) -> wsproto.events.Event | None:
    """The next WebSocket event, or None when the connection ended."""
    while True:
        for event in ws.events():
            return event
        chunk = _recv(sock)
        if not chunk:
            return None
        ws.receive_data(chunk)


def websocket(sock: socket.socket, messages: Sequence[bytes | str]) -> None:
    """Open a WebSocket and send each message, waiting for the site's ``ack``; prints each answer."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    sock.sendall(ws.send(wsproto.events.Request(host="allowed.lab", target="/ws")))
    if not isinstance(_event(ws, sock), wsproto.events.AcceptConnection):
        print("answer", b"refused".hex())
        return
    for message in messages:
        frame = (
            wsproto.events.TextMessage(message) if isinstance(message, str) else wsproto.events.BytesMessage(message)
        )
        with contextlib.suppress(OSError):
            sock.sendall(ws.send(frame))
        event = _event(ws, sock)
        answer = event.data if isinstance(event, wsproto.events.TextMessage) else "closed"
        print("answer", answer.encode().hex(), flush=True)
        if answer != "ack":
            return


UPGRADE = b"GET /up HTTP/1.1\r\nHost: allowed.lab\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n"
EXCHANGES: dict[str, tuple[bytes, ...]] = {
    "raw-stratum": (SECRET,),
    "second-post-bogus-coding": (post(BENIGN), post(SECRET, "Content-Encoding: bogus")),
    "second-post-chunked": (post(BENIGN), post(chunked(SECRET), "Transfer-Encoding: chunked")),
    "second-post-gzip": (post(BENIGN), post(gzip.compress(SECRET), "Content-Encoding: gzip")),
    "upgrade-rawtcp": (UPGRADE % b"rawtcp", SECRET),
    "upgrade-h2c": (UPGRADE % b"h2c", SECRET),
    "unprompted-101": (b"GET /switch HTTP/1.1\r\nHost: allowed.lab\r\n\r\n", SECRET),
}
"""Techniques played as a series of sends, each followed by reading the answer."""
MESSAGES: dict[str, Sequence[bytes | str]] = {
    "ws-mining-after-16kb": [BENIGN_KB] * 20 + [SECRET.decode()],
    "ws-random-binary": [BENIGN_KB, os.urandom(2048)],
}
"""Techniques played as WebSocket messages."""


def main() -> None:
    technique, port, tls, cafile = sys.argv[1:5]
    address = resolve("allowed.lab")
    sock = socket.create_connection((address, int(port)), timeout=5)
    if tls == "1":
        sock = ssl.create_default_context(cafile=cafile).wrap_socket(sock, server_hostname="allowed.lab")
    with sock:
        if technique in MESSAGES:
            websocket(sock, MESSAGES[technique])
            return
        for data in EXCHANGES[technique]:
            print("answer", exchange(sock, data).hex(), flush=True)


if __name__ == "__main__":
    main()
