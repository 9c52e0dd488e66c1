"""The agent's side of test_mitm_records (HTTP/2 games and silent connections inside intercepted TLS), run in the
lab's sandbox: ``python -m tests.security.mitm_h2_client TECHNIQUE PORT CAFILE``.

It resolves allowed.lab through the gateway's resolver, opens TLS to PORT trusting the gateway's CA (with the ALPN
the technique asks for), writes its frames (built with hyperframe and hpack, so framing games are exact: a
preface in pieces, CONTINUATION, PRIORITY, SETTINGS, RST_STREAM, a Content-Length the DATA breaks), then reads
until the gateway closes the connection or ``HOLD`` seconds pass, and prints ``closed-after S`` or ``still-open``.
The idle techniques keep the connection busy the way a slowloris would: one byte, a PING or a SETTINGS frame per
interval under the gateway's idle timeout.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
import time
from collections.abc import Callable

import hpack
from hyperframe import frame

from tests.security.mitm_client import SECRET, resolve

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HOLD = 25.0
"""Seconds the client keeps the connection at most (the lab's idle timeout is a few seconds)."""
TICK = 1.0
"""Seconds between two bytes or frames of a busy-but-idle technique (under the lab's idle timeout)."""


def _headers(stream: int, path: str, authority: str = "allowed.lab", **extra: str) -> list[tuple[str, str]]:
    fields = [(":method", "POST"), (":scheme", "https"), (":authority", authority), (":path", path)]
    return fields + list(extra.items())


def _block(fields: list[tuple[str, str]]) -> bytes:
    return bytes(hpack.Encoder().encode(fields))


def _request(stream: int, path: str, body: bytes, **extra: str) -> bytes:
    head = frame.HeadersFrame(stream, _block(_headers(stream, path, **extra)), flags=["END_HEADERS"])
    data = frame.DataFrame(stream, body, flags=["END_STREAM"])
    return head.serialize() + data.serialize()


def _opening() -> bytes:
    return PREFACE + frame.SettingsFrame(0).serialize()


def preface_without_alpn(sock: socket.socket) -> None:
    sock.sendall(_opening() + _request(1, "/api", SECRET))


def preface_in_pieces(sock: socket.socket) -> None:
    data = _opening() + _request(1, "/api", SECRET)
    for cut in (3, 14, 18, 24):  # "PRI", the request line, its blank line (a whole HTTP/1 head), the rest
        sock.sendall(data[:cut])
        data = data[cut:]
        time.sleep(0.2)
    sock.sendall(data)


def streams(sock: socket.socket) -> None:
    """Two mining streams, a fronting stream and a benign one, interleaved with PRIORITY, SETTINGS and a reset."""
    out = _opening()
    out += frame.PriorityFrame(9, depends_on=0, stream_weight=200).serialize()
    out += _request(3, "/one", SECRET)
    out += frame.SettingsFrame(0, settings={frame.SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20}).serialize()
    out += frame.HeadersFrame(5, _block(_headers(5, "/five")), flags=["END_HEADERS"]).serialize()
    out += frame.RstStreamFrame(5, error_code=8).serialize()  # CANCEL before its body
    out += _request(7, "/two", SECRET)
    head = frame.HeadersFrame(11, _block(_headers(11, "/front", authority="blocked.lab")), flags=["END_HEADERS"])
    out += head.serialize() + frame.DataFrame(11, b"{}", flags=["END_STREAM"]).serialize()
    out += _request(13, "/benign", b'{"query":"weather"}')
    sock.sendall(out)


def continuation(sock: socket.socket) -> None:
    """The request head in a HEADERS frame (which ends the stream) and two CONTINUATIONs, the job in a header cut
    across them."""
    block = _block(_headers(1, "/api", **{"x-job": SECRET.decode().strip()}))
    thirds = len(block) // 3
    out = _opening() + frame.HeadersFrame(1, block[:thirds], flags=["END_STREAM"]).serialize()
    out += frame.ContinuationFrame(1, block[thirds : 2 * thirds]).serialize()
    out += frame.ContinuationFrame(1, block[2 * thirds :], flags=["END_HEADERS"]).serialize()
    sock.sendall(out)


def length_mismatch(sock: socket.socket) -> None:
    """A stream whose DATA breaks its own Content-Length: mitmproxy's HTTP/2 layer refuses the connection."""
    sock.sendall(_opening() + _request(1, "/api", SECRET, **{"content-length": "5"}))


def data_before_headers(sock: socket.socket) -> None:
    sock.sendall(_opening() + frame.DataFrame(1, SECRET, flags=["END_STREAM"]).serialize())


def _busy(sock: socket.socket, each: Callable[[int], bytes]) -> None:
    sock.setblocking(False)
    for tick in range(int(HOLD / TICK)):
        try:
            if sock.recv(65536) == b"":
                return
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        except OSError:
            return
        try:
            sock.sendall(each(tick))
        except (BlockingIOError, ssl.SSLWantWriteError):
            pass
        except OSError:
            return
        time.sleep(TICK)
    sock.setblocking(True)


def silent(sock: socket.socket) -> None:
    pass


def slowloris_head(sock: socket.socket) -> None:
    head = b"POST /api HTTP/1.1\r\nHost: allowed.lab\r\nContent-Length: 100\r\nX-Padding: " + b"a" * 200
    _busy(sock, lambda tick: head[tick : tick + 1])


def h2_open_stream(sock: socket.socket) -> None:
    """An HTTP/2 stream opened and never ended, kept busy with PINGs, SETTINGS and WINDOW_UPDATEs."""
    start = _opening() + frame.HeadersFrame(1, _block(_headers(1, "/api")), flags=["END_HEADERS"]).serialize()
    games = [
        frame.PingFrame(0, opaque_data=b"12345678").serialize(),
        frame.SettingsFrame(0, settings={frame.SettingsFrame.MAX_FRAME_SIZE: 16384}).serialize(),
        frame.WindowUpdateFrame(0, window_increment=1).serialize(),
        frame.PriorityFrame(1, depends_on=0, stream_weight=16).serialize(),
    ]
    _busy(sock, lambda tick: start if tick == 0 else games[tick % len(games)])


TECHNIQUES: dict[str, tuple[tuple[str, ...], Callable[[socket.socket], None]]] = {
    "preface-no-alpn": ((), preface_without_alpn),
    "preface-http11-alpn": (("http/1.1",), preface_without_alpn),
    "preface-in-pieces": ((), preface_in_pieces),
    "streams": (("h2",), streams),
    "continuation": (("h2",), continuation),
    "length-mismatch": (("h2",), length_mismatch),
    "data-before-headers": (("h2",), data_before_headers),
    "silent": (("http/1.1",), silent),
    "silent-h2": (("h2",), lambda sock: sock.sendall(_opening())),
    "slowloris-head": (("http/1.1",), slowloris_head),
    "h2-open-stream": (("h2",), h2_open_stream),
}


def main() -> None:
    technique, port, cafile = sys.argv[1:4]
    alpn, play = TECHNIQUES[technique]
    sock = socket.create_connection((resolve("allowed.lab"), int(port)), timeout=5)
    context = ssl.create_default_context(cafile=cafile)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    started = time.monotonic()
    with context.wrap_socket(sock, server_hostname="allowed.lab") as tls:
        print("alpn", tls.selected_alpn_protocol(), flush=True)
        with contextlib.suppress(OSError):  # the gateway closed it while it was still writing
            play(tls)
        tls.settimeout(1.0)
        while time.monotonic() - started < HOLD:
            try:
                if tls.recv(65536) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        else:
            print("still-open", flush=True)
            return
    print(f"closed-after {time.monotonic() - started:.1f}", flush=True)


if __name__ == "__main__":
    main()
