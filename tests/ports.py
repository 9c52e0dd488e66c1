"""Free ports for tests that cannot pass a bound socket to what they start (a subprocess, a Cluster node, a proxy
worker that binds its own listener after seconds of starting mitmproxy).

A port is drawn below the kernel's ephemeral range (``net.ipv4.ip_local_port_range``), which no ``bind(0)`` and no
outgoing connection takes: a port drawn from inside it was taken, between the probe and the real bind, by a
listener the code under test opened on port 0 (CI, stop 32: a worker's own sink got the front's port, and every
test of the module talked to the sink). Drawn with the system's randomness: pytest-randomly seeds ``random`` alike
in every xdist worker, so two workers would draw the same ports in step. Another test may still draw the same
port at the same moment: whoever uses one must check that what answers there is its own (`listening_here`;
tests/redis_server.py compares Redis's pid) or retry.
"""

from __future__ import annotations

import os
import pathlib
import random
import socket

LOWEST = 10000
"""The lowest port drawn: above the ports services on a host listen on by habit."""

_draw = random.SystemRandom()


def _ephemeral_start() -> int:
    try:
        return int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _port_free(port: int, host: str, udp: bool) -> bool:
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


def free_port(cluster_bus: bool = False, host: str = "127.0.0.1", udp: bool = False) -> int:
    """A port free for TCP on ``host`` (for UDP too with ``udp``; and port + 10000 too, for a Redis Cluster node's
    bus), below the ephemeral range."""
    highest = _ephemeral_start() - 1 - (10000 if cluster_bus else 0)
    if highest <= LOWEST:
        raise RuntimeError(f"no room below the ephemeral range for a test port (it starts at {highest + 1})")
    for _ in range(200):
        port = _draw.randint(LOWEST, highest)
        if _port_free(port, host, udp) and (not cluster_bus or _port_free(port + 10000, host, udp)):
            return port
    raise RuntimeError("no free port found")


def listening_here(port: int) -> bool:
    """Whether this process holds a TCP socket listening on ``port`` (any address): so a test knows the listener
    that answers on a port it chose is the one it started, not another's that took the port first."""
    return port in ports_listening_here()


def ports_listening_here() -> set[int]:
    """The ports this process's TCP sockets listen on."""
    ours = set()
    for fd in pathlib.Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            ours.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = pathlib.Path(table).read_text().splitlines()[1:]
        except OSError:
            continue  # no IPv6
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in ours:  # TCP_LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports
