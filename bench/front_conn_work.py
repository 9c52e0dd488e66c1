"""The front's whole per-connection work in one process, for instruction and syscall counts (issue 15, tlsconn3).

One process runs the real `Front` on loopback (the real gate, tests/proxy/test_front.py's policy: TLS to
allowed.test through a host rule, the mining watch on) and nothing else; a second process, not measured, plays N
short TLS connections through it one after another, each as the lab's ``conns`` client makes them: a real
ClientHello (OpenSSL's, SNI allowed.test), a recorded TLS 1.3 server flight (tests/detect/tlsshape_traces.py's
first HTTPS trace: the real ServerHello, then its records' sizes), the client's Finished and request, the
server's answer, the client's close, the server's close. The front process exits once it relayed N connections
and all of them closed. Run from the repository's root with ``PYTHONPATH=.``::

    valgrind --tool=cachegrind --cache-sim=no python bench/front_conn_work.py 1
    valgrind --tool=cachegrind --cache-sim=no python bench/front_conn_work.py 101
    strace -c -f python bench/front_conn_work.py 301

The difference of the two totals over 100 is the front's instructions per connection (start-up cancels out); the
same for syscalls. ``python bench/front_conn_work.py 2000`` prints the front process's CPU per connection. The
front runs on the worker's loop (`egress.proxy.poller.front_loop`); ``EGRESS_FRONT_NESTED=1`` runs it on a plain
asyncio loop, where its poller has an epoll of its own. ``EGRESS_BENCH_LATE=MS``: the client sends its hello MS
milliseconds after its connect, so that the front has accepted it before (a quarter of the lab's connections come so:
docs/gateway-performance.md, tlsconn6); the front process prints how many of its connections waited.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import resource
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # tests' helpers, as `python bench/...`

from egress.proxy.front import Front
from egress.proxy.idle import Held
from egress.proxy.poller import front_loop
from tests.detect import tlsshape_traces as traces
from tests.proxy.test_front import allowed_gate


def _hello() -> bytes:
    context = ssl.create_default_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    wire, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = context.wrap_bio(wire, out, server_hostname="allowed.test")
    with contextlib.suppress(ssl.SSLWantReadError):
        conn.do_handshake()
    return out.read()


def _script() -> list[tuple[str, bytes]]:
    """The connection after the hello: (side, bytes), each side's consecutive records in one write."""
    hello, records = traces.HTTPS[0]
    steps: list[tuple[str, bytes]] = []
    first_server = True
    for _ms, side, kind, length in records:
        data = bytes([kind, 3, 3]) + length.to_bytes(2) + bytes(length)
        if side == "s" and first_server:
            data, first_server = bytes.fromhex(hello), False
        if steps and steps[-1][0] == side:
            steps[-1] = (side, steps[-1][1] + data)
        else:
            steps.append((side, data))
    return steps


def _read(sock: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:
        chunk = sock.recv(size - len(got))
        if not chunk:
            break
        got += chunk
    return got


def drive(front_port: int, server: socket.socket, count: int) -> None:
    """The client and the destination: ``count`` connections through the front, one after another."""
    hello, steps = _hello(), _script()
    late = float(os.environ.get("EGRESS_BENCH_LATE", "0")) / 1000
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", front_port))
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if late:
            time.sleep(late)
        client.sendall(hello)
        upstream, _ = server.accept()
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert _read(upstream, len(hello)) == hello
        for side, data in steps:
            writer, reader = (client, upstream) if side == "c" else (upstream, client)
            writer.sendall(data)
            assert _read(reader, len(data)) == data
        client.close()
        assert upstream.recv(1) == b""  # the client's end came through
        upstream.close()


def serve(count: int) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    upstream_port = server.getsockname()[1]

    class Reporter:
        def report(self, attempt: object) -> None:
            pass

    async def handoff(conn: socket.socket) -> None:
        conn.close()
        raise SystemExit("a connection was handed off: the bench measures the front's own path only")

    front = Front(allowed_gate(upstream_port), Reporter(), handoff, destination=lambda _: ("127.0.0.1", upstream_port))
    waited = 0
    hold = front.idle.hold

    def counted(fd: int, held: Held) -> None:  # the front holds a connection idle while it waits for its bytes
        nonlocal waited
        waited += 1
        hold(fd, held)

    front.idle.hold = counted  # type: ignore[method-assign]

    async def main() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        serving = asyncio.create_task(front.serve(port, hosts=("127.0.0.1",)))
        while not front._listeners:
            await asyncio.sleep(0.01)
        started = resource.getrusage(resource.RUSAGE_SELF)
        driver = subprocess.Popen(
            [sys.executable, __file__, "drive", str(port), str(count), str(server.fileno())],
            pass_fds=(server.fileno(),),
        )
        while driver.poll() is None or front.relayed < count:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)  # the last connection's close (the same tail for any count: it cancels out)
        ended = resource.getrusage(resource.RUSAGE_SELF)
        assert driver.returncode == 0 and front.relayed == count and front.handed_off == 0
        cpu = (ended.ru_utime + ended.ru_stime) - (started.ru_utime + started.ru_stime)
        each = cpu / count * 1e6
        print(f"{count} connections relayed ({waited} waited for their hello), front process {each:.1f} µs CPU each")
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving

    asyncio.run(main(), loop_factory=None if os.environ.get("EGRESS_FRONT_NESTED") else front_loop)


if __name__ == "__main__":
    if sys.argv[1] == "drive":
        drive(int(sys.argv[2]), socket.socket(fileno=int(sys.argv[4])), int(sys.argv[3]))
    else:
        serve(int(sys.argv[1]))
