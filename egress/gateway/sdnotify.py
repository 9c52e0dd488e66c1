"""systemd's notify protocol (sd_notify(3)): readiness, watchdog keep-alives and status, sent as one datagram each
to ``$NOTIFY_SOCKET``; a no-op when the variable is unset (the gateway run by hand, or in the lab).

The gateway unit (deploy/systemd/egress-gateway.service) is ``Type=notify`` with ``WatchdogSec=``: systemd holds
the unit in "activating" until the supervisor sends ``READY=1`` (every component up, the table applied), and kills
and restarts it when ``WATCHDOG=1`` stops arriving (a supervision loop that hangs is a dead gateway).
``NotifyAccess=main``: only the supervisor's own messages count, never a worker's.

The protocol is a datagram of newline-separated ``KEY=value`` lines on an ``AF_UNIX`` ``SOCK_DGRAM`` socket; a
path starting with ``@`` is in the abstract namespace. No dependency: the wire is a few bytes.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

NOTIFY_SOCKET: Final = "NOTIFY_SOCKET"
WATCHDOG_USEC: Final = "WATCHDOG_USEC"
WATCHDOG_PID: Final = "WATCHDOG_PID"


@dataclass(frozen=True, slots=True)
class Notifier:
    """Where notifications go (None: nowhere) and the watchdog period systemd asked for (None: no watchdog)."""

    address: str | None
    watchdog_usec: int | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """What systemd set for this process. ``WATCHDOG_PID``, when set, names the one process the watchdog is
        for: a child that inherited the environment must not keep it alive for its parent."""
        env = os.environ if environ is None else environ
        address = env.get(NOTIFY_SOCKET) or None
        watchdog: int | None = None
        owner = env.get(WATCHDOG_PID)
        if owner is None or owner == str(os.getpid() if pid is None else pid):
            try:
                watchdog = int(env.get(WATCHDOG_USEC, "")) or None
            except ValueError:
                watchdog = None
        return cls(address=address, watchdog_usec=watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between keep-alives: half systemd's period, as sd_watchdog_enabled(3) advises; None without a
        watchdog."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2_000_000

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (``send(READY=1, STATUS="...")``); False when there is nowhere to send or the
        send failed. Never raises on a socket error: losing a notification must not stop the gateway (systemd then
        times out the start or the watchdog, which is the fail-closed outcome)."""
        if self.address is None:
            return False
        message = "".join(f"{key}={_line(value)}\n" for key, value in fields.items()).encode()
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """Every component is up: systemd marks the unit started (and starts what is ordered after it)."""
        return self.send(READY=1, STATUS=status) if status else self.send(READY=1)

    def watchdog(self) -> bool:
        """The supervision loop is alive; call every `watchdog_interval` seconds."""
        return self.send(WATCHDOG=1)

    def stopping(self, status: str = "") -> bool:
        """A clean stop has begun (systemd shows "deactivating" instead of a failure)."""
        return self.send(STOPPING=1, STATUS=status) if status else self.send(STOPPING=1)

    def status(self, text: str) -> bool:
        """A one-line state shown by ``systemctl status`` (e.g. "lockdown: proxy-1 died, restarting")."""
        return self.send(STATUS=text)


def _line(value: str | int) -> str:
    # one field per line: a newline inside a value would start a new (forged) field
    return str(value).replace("\n", " ")
