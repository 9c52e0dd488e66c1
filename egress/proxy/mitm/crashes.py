"""mitmproxy's own crashes on a connection, made to fail closed: the connection is closed and the block recorded.

When one of mitmproxy's layers raises (e.g. its HTTP/1 reader on a request with trailers: "HTTP trailers are not
implemented yet"), mitmproxy logs "mitmproxy has crashed!" for that connection and then does nothing more with
it: nothing is forwarded any longer, but the client's connection stays open forever, holding the worker's
resources, and nothing is recorded. No addon hook is called, so the only sign is that log line, which carries the
client's address (``extra={"client": peername}``). `CrashGuard` is a logging handler on mitmproxy's server logger
that, for such a line, closes both sides of that client's connection and records an inspection-error block
(`egress.proxy.mitm.layers.fail_closed_verdict`), like an exception in our own hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mitmproxy import connection
from mitmproxy.addons import proxyserver

CRASH_MESSAGE = "mitmproxy has crashed!"
"""What `mitmproxy.proxy.server.ConnectionHandler.server_event` logs when a layer raised (mitmproxy 12)."""
SERVER_LOGGER = "mitmproxy.proxy.server"

Crashed = Callable[[connection.Client, str], None]
"""Closes and records a crashed connection: the client, and why (the exception's repr)."""


class CrashGuard(logging.Handler):
    """Turns mitmproxy's "has crashed" log record for a connection into `crashed(client, why)`."""

    def __init__(self, server: proxyserver.Proxyserver, crashed: Crashed) -> None:
        super().__init__(logging.ERROR)
        self.server = server
        self.crashed = crashed

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() != CRASH_MESSAGE:
            return
        peername = getattr(record, "client", None)
        why = repr(record.exc_info[1]) if record.exc_info and record.exc_info[1] is not None else "unknown"
        for handler in list(self.server.connections.values()):
            if handler.client.peername == peername:
                try:
                    self.crashed(handler.client, f"mitmproxy: {why}")
                except Exception:  # a handler must not raise into mitmproxy's loop; the connection stays dead
                    self.handleError(record)
                return

    @classmethod
    def install(cls, server: proxyserver.Proxyserver, crashed: Crashed) -> CrashGuard:
        guard = cls(server, crashed)
        logging.getLogger(SERVER_LOGGER).addHandler(guard)
        return guard

    def uninstall(self) -> None:
        logging.getLogger(SERVER_LOGGER).removeHandler(self)
