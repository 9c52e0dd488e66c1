"""Programs of test_redteam_h2c: a fake Stratum pool that speaks HTTP/2 in clear text with prior knowledge (h2c,
RFC 9113 §3.3), and the miner in the sandbox that talks to it. Fake both: no real mining software.

The pool (`pool_main`, in the internet namespace) takes h2c connections on the addresses it is given; on each
stream it answers the request's headers with a 200 and reads the stream's DATA frames as one Stratum stream, as
a gRPC-style bidirectional server would: each whole line (subscribe, authorize, submit) is answered on the same
stream, its answer cut into DATA frames of `PIECE` bytes (``share accepted`` in its log).

The miner (`miner_main`, in the sandbox) sends the HTTP/2 preface, one POST stream, and its Stratum lines in
DATA frames of PIECE bytes each (a whole line per frame for the control), and prints ``share answered`` when the
submit's answer came back.
"""

from __future__ import annotations

import json
import socket
import time

import h2.config
import h2.connection
import h2.events

from tests.security.redteam_wire import SUBMIT_ID, miner_argv, serve_pools, stratum_messages

PIECE = 7
"""Bytes of Stratum per DATA frame, each way."""


def _send_pieces(conn: h2.connection.H2Connection, stream: int, data: bytes, piece: int = PIECE) -> None:
    for at in range(0, len(data), piece):
        conn.send_data(stream, data[at : at + piece])


def _answer(line: bytes) -> bytes:
    message = json.loads(line)
    method = message.get("method", "")
    print(f"pool got {method}", flush=True)
    result: object = [[["mining.notify", "ae6812eb4cd7735a"]], "08000002", 4] if method == "mining.subscribe" else True
    if method == "mining.submit":
        print("share accepted", flush=True)
    return json.dumps({"id": message.get("id"), "result": result, "error": None}).encode() + b"\n"


def _serve(sock: socket.socket) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    streams: dict[int, bytearray] = {}
    while data := sock.recv(65536):
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                streams[event.stream_id] = bytearray()
                conn.send_headers(event.stream_id, [(":status", "200"), ("content-type", "application/json")])
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                buf = streams.setdefault(event.stream_id, bytearray())
                buf += event.data
                while b"\n" in buf:
                    at = buf.index(b"\n") + 1
                    line = bytes(buf[:at])
                    del buf[:at]
                    _send_pieces(conn, event.stream_id, _answer(line))
        sock.sendall(conn.data_to_send())


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    serve_pools(_serve, ended=(Exception,))  # h2's protocol errors end a connection too, logged


def miner_main() -> None:
    """``python -c '...miner_main()' ADDRESS|- PORT HOST PIECE [split]`` (``-``: resolve HOST through the gateway;
    PIECE: bytes of Stratum per DATA frame; ``split``: the preface's first 18 bytes sent alone, a moment before
    the rest: ``PRI * HTTP/2.0\\r\\n\\r\\n`` is a whole HTTP/1 head)."""
    address, port, host, how = miner_argv()
    piece, split = int(how[0]), how[1:] == ["split"]
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    headers = [(":method", "POST"), (":path", "/rpc"), (":authority", host), (":scheme", "http")]
    conn.send_headers(1, headers)
    for call in stratum_messages():
        _send_pieces(conn, 1, json.dumps(call).encode() + b"\n", piece)
    answers = bytearray()
    try:
        with socket.create_connection((address, port), timeout=15) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            first = conn.data_to_send()
            if split:
                sock.sendall(first[:18])
                time.sleep(0.3)  # the attacker's pause: the head alone reaches the gateway first
                first = first[18:]
            sock.sendall(first)
            while data := sock.recv(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        answers += event.data
                    elif isinstance(event, h2.events.ResponseReceived):
                        print(f"response {event.headers!r}", flush=True)
                sock.sendall(conn.data_to_send())
                if f'"id": {SUBMIT_ID}, "result": true'.encode() in answers:
                    print("share answered", flush=True)
                    break
    except OSError as exc:
        print(f"miner ended: {exc!r}", flush=True)
    print(f"answers {bytes(answers)!r}", flush=True)
