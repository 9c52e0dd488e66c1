"""Which resolver process answers a sandbox's DNS, when the gateway runs more than one (docs/dns-performance.md,
"Resolver processes").

A sandbox's queries must all reach one process: its tunnel tracker (`egress.detect.dns_tunnel`) lives in the
process that answers it, and a tunnel split across two trackers would be seen by neither. The partition is a pure
function of the sandbox's name and the number of processes, so a reload that adds, removes or reorders other
sandboxes never moves a sandbox (a move would split its tracker's state, and conntrack keeps an existing flow's
redirect to the old process until the flow ends). The price is balance: with few sandboxes the hash may put most of
them in one process; `partition` says which.
"""

from __future__ import annotations

import hashlib
from typing import Final

from egress.policy.model import Policy

MAX_PROCESSES: Final = 16
"""Resolver processes a gateway may run at most (one per core is the point; more only adds ports and probes)."""


def process_of(sandbox: str, processes: int) -> int:
    """The index (0 to ``processes`` - 1) of the resolver process that answers sandbox ``sandbox``."""
    if not 1 <= processes <= MAX_PROCESSES:
        raise ValueError(f"resolver processes must be 1 to {MAX_PROCESSES} (got {processes})")
    digest = hashlib.sha256(b"egress-dns-partition\0" + sandbox.encode()).digest()
    return int.from_bytes(digest[:8], "big") % processes


def partition(policy: Policy, processes: int) -> tuple[tuple[str, ...], ...]:
    """The policy's sandbox names in each process, in the policy's order (every sandbox in exactly one)."""
    parts: list[list[str]] = [[] for _ in range(processes)]
    for sandbox in policy.sandboxes:
        parts[process_of(sandbox.name, processes)].append(sandbox.name)
    return tuple(tuple(part) for part in parts)
