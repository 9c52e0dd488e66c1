"""The fake internet: binds every lab server on its addresses and serves until killed.

Run inside the internet namespace: ``ip netns exec <prefix>net python -m egress.lab.servers --prefix P``
(`start` does that and waits for the ``ready`` line). What listens where (IPv4 and IPv6 alike, see
`egress.lab.topology.SERVERS`):

- allowed.lab, blocked.lab: HTTP on 80, HTTPS on 443 (`egress.lab.httpd`); allowed.lab's UDP 443 answers QUIC.
- pool.lab: Stratum on 3333, on 443 (plaintext, or TLS when the first byte is a TLS handshake, as some pools
  do), and Stratum over TLS on 4443; xmr.lab: XMRig-style JSON-RPC on 3334 (`egress.lab.pools`).
- ns.lab: the DNS authority on 53, UDP and TCP (`egress.lab.authority`; zones tests delegate to a server of
  their own are relayed to it, `egress.lab.delegation`); doh.lab: DoH on 443.
- ssh.lab: an SSH banner on port 80; ws.lab: WebSocket echo on 80.

Certificates come from `egress.lab.certs` (made on first start). ``--workers N`` forks N processes that share
each TCP and UDP port (SO_REUSEPORT), for benchmarks that must not be limited by one core here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import pathlib
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence

from egress.lab import certs, delegation, httpd, netns, pools
from egress.lab.certs import CertFiles
from egress.lab.httpd import Handler
from egress.lab.topology import DEFAULT_PREFIX, SERVERS, Lab, server

READY = "ready"
TLS_HANDSHAKE = 0x16
HANDSHAKE_TIMEOUT = 5.0
BACKLOG = 1024


def _tls(files: CertFiles, key: str, alpn: Sequence[str] = ()) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    chain, private = files.servers[key]
    context.load_cert_chain(chain, private)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def _listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


async def _sniff_and_serve(conn: socket.socket, handler: Handler, context: ssl.SSLContext) -> None:
    """Serve ``conn`` in TLS if its first byte starts a TLS handshake, else in plaintext."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(conn.fileno(), wake)
    try:
        await asyncio.wait_for(readable, pools.IDLE)
        first = conn.recv(1, socket.MSG_PEEK)
    except (TimeoutError, OSError):
        conn.close()
        return
    finally:
        loop.remove_reader(conn.fileno())
    if not first:
        conn.close()
        return
    reader = asyncio.StreamReader(limit=1 << 16)
    protocol = asyncio.StreamReaderProtocol(reader)
    tls = context if first[0] == TLS_HANDSHAKE else None
    try:
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, conn, ssl=tls, ssl_handshake_timeout=HANDSHAKE_TIMEOUT if tls else None
        )
    except (OSError, ssl.SSLError, TimeoutError):
        conn.close()
        return
    await handler(reader, asyncio.StreamWriter(transport, protocol, reader, loop))


async def _sniffing_server(sock: socket.socket, handler: Handler, context: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    while True:
        conn, _ = await loop.sock_accept(sock)
        conn.setblocking(False)
        task = asyncio.create_task(_sniff_and_serve(conn, handler, context))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


async def serve(prefix: str, stop: asyncio.Event) -> int:
    """Bind everything, print `READY`, serve until ``stop`` is set; return the number of listeners."""
    files = certs.ensure(Lab(prefix).state_dir)
    delegations = delegation.Delegations(Lab(prefix).state_dir)  # zones tests delegate to an attacker's server
    loop = asyncio.get_running_loop()
    plain: list[tuple[str, int, Handler, ssl.SSLContext | None]] = []
    for key in ("allowed", "blocked"):
        site = server(key)
        plain += [
            (site.v4, 80, httpd.site_handler(site), None),
            (site.v4, 443, httpd.site_handler(site), _tls(files, key, ["http/1.1"])),
        ]
    pool, doh = server("pool"), server("doh")
    plain += [
        (pool.v4, 3333, pools.stratum, None),
        (pool.v4, 4443, pools.stratum, _tls(files, "pool")),
        (server("xmr").v4, 3334, pools.xmrig, None),
        (server("ns").v4, 53, functools.partial(delegation.serve_tcp, delegations), None),
        (doh.v4, 443, httpd.site_handler(doh), _tls(files, "doh", ["http/1.1"])),
        (server("ssh").v4, 80, pools.ssh, None),
        (server("ws").v4, 80, httpd.site_handler(server("ws")), None),
    ]
    v6 = {s.v4: s.v6 for s in SERVERS}
    servers: list[asyncio.Server] = []
    sniffers: list[asyncio.Task[None]] = []
    transports: list[asyncio.BaseTransport] = []
    for host in (lambda a: a, lambda a: v6[a]):
        for address, port, handler, context in plain:
            sock = _listening_socket(host(address), port)
            servers.append(
                await asyncio.start_server(
                    handler,
                    sock=sock,
                    backlog=BACKLOG,
                    ssl=context,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT if context else None,
                )
            )
        sock = _listening_socket(host(pool.v4), 443)
        sniffers.append(asyncio.create_task(_sniffing_server(sock, pools.stratum, _tls(files, "pool"))))
        endpoint, _ = await loop.create_datagram_endpoint(  # the lab's DNS authority
            lambda: delegation.UdpAuthority(delegations), local_addr=(host(server("ns").v4), 53), reuse_port=True
        )
        transports.append(endpoint)
        endpoint, _ = await loop.create_datagram_endpoint(  # QUIC: a version negotiation
            functools.partial(pools.DatagramReplier, pools.version_negotiation),
            local_addr=(host(server("allowed").v4), 443),
            reuse_port=True,
        )
        transports.append(endpoint)
    count = len(servers) + len(sniffers) + len(transports)
    print(f"{READY} {count} listeners", flush=True)
    await stop.wait()
    for each in servers:
        each.close()
    for task in sniffers:
        task.cancel()
    for transport in transports:
        transport.close()
    return count


async def _main(prefix: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(prefix, stop)


def _run_workers(prefix: str, workers: int) -> int:
    children: list[int] = []
    for _ in range(workers - 1):
        pid = os.fork()
        if pid == 0:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (only the first worker says ready)
            asyncio.run(_main(prefix))
            os._exit(0)
        children.append(pid)
    try:
        asyncio.run(_main(prefix))
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return 0


def start(
    lab: Lab, *, workers: int = 1, timeout: float = 15.0, log: pathlib.Path | None = None
) -> subprocess.Popen[bytes]:
    """Start the servers in ``lab``'s internet namespace and wait until they listen; raise RuntimeError if not."""
    certs.ensure(lab.state_dir)  # made here, not raced by several workers
    argv = [sys.executable, "-m", "egress.lab.servers", "--prefix", lab.prefix, "--workers", str(workers)]
    if log is None:
        proc = netns.popen_in(lab.internet_ns, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    else:
        with log.open("ab") as stderr:
            proc = netns.popen_in(lab.internet_ns, argv, stdout=subprocess.PIPE, stderr=stderr)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 0.1)[0]:
            line = proc.stdout.readline()
            break
    if not line.startswith(READY.encode()):
        stop(proc)
        raise RuntimeError(f"lab servers did not start in {lab.internet_ns} (exit {proc.returncode}, said {line!r})")
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Stop a process (the servers `start` started, a Redis, a Squid): TERM, then KILL after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    if proc.stdout:
        proc.stdout.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egress.lab.servers", description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="the lab's prefix (names its state directory)")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing every port (SO_REUSEPORT)")
    args = parser.parse_args(argv)
    return _run_workers(args.prefix, max(1, args.workers))


if __name__ == "__main__":
    sys.exit(main())
