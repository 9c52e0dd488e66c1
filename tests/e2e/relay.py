"""Loopback ports of the test's own namespace, reachable from inside lab namespaces: a TCP relay per (namespace,
port) that listens on ``127.0.0.1:port`` inside the namespace and connects each accepted connection to
``127.0.0.1:port`` here.

What it is for: a Redis Cluster started by tests/redis_server.py (nodes on loopback ports of the test's namespace,
announcing ``127.0.0.1:port`` to their clients) serves gateways running in lab namespaces, each of which sees every
node at the same address the Cluster announces, so redirections and failover work as on a real network. A node
that is down is a refused connection here, and the relay then closes the namespace side at once: the client sees
the connection end, as it would see a refusal. Threads only; `close` ends every listener and connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable

from egress.capture.nflog import in_netns

BUFFER = 65536


class Relay:
    """Relays ``ports`` into each of ``namespaces`` until `close`."""

    def __init__(self, namespaces: Iterable[str], ports: Iterable[int]) -> None:
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._threads: list[threading.Thread] = []
        try:
            for ns in namespaces:
                for port in ports:
                    listener = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    self._own(listener)
                    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    listener.bind(("127.0.0.1", port))
                    listener.listen(64)
                    self._start(self._accept, listener, port)
        except BaseException:
            self.close()
            raise

    def _own(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                sock.close()
                return False
            self._sockets.add(sock)
            return True

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket, port: int) -> None:
        while True:
            try:
                inner, _ = listener.accept()
            except OSError:
                return  # closed
            if not self._own(inner):
                return
            try:
                outer = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                self._drop(inner)  # the node is down: the client sees its connection end
                continue
            outer.settimeout(None)
            if not self._own(outer):
                self._drop(inner)
                return
            self._start(self._pump, inner, outer)
            self._start(self._pump, outer, inner)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(BUFFER):
                sink.sendall(data)
        except OSError:
            pass
        self._drop(source)
        self._drop(sink)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
