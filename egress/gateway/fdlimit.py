"""The descriptor limit of the gateway's processes: the supervisor's and each worker's soft limit raised to the
hard one (systemd's default soft limit is 1,024; deploy/systemd/egress-gateway.service sets ``LimitNOFILE``).

Every proxied connection costs a worker one descriptor, and two once dialled; the supervisor holds the resolver's
TCP connections (bounded: `egress.dnsserver.tcpbound`) next to the nflog socket, the record spool and Redis. Out
of descriptors, accept fails, and what records blocked attempts fails with it.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)


def raise_fd_limit() -> int:
    """Take the whole hard limit of descriptors; returns the soft limit in force after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("descriptor limit stays %d (%s)", soft, exc)
            return soft
    return hard
