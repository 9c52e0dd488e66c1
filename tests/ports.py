"""Free loopback ports for tests that cannot pass a bound socket to what they start (a subprocess, a Cluster node).

A port found free here may be taken by another process before it is used: whoever uses one must check that what
answers there is its own (tests/redis_server.py compares Redis's pid) or retry.
"""

from __future__ import annotations

import random
import socket


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(cluster_bus: bool = False) -> int:
    """A free loopback port (and port + 10000 too, for a Redis Cluster node's bus)."""
    for _ in range(200):
        port = random.randint(20000, 50000)
        if _port_free(port) and (not cluster_bus or _port_free(port + 10000)):
            return port
    raise RuntimeError("no free loopback port found")
