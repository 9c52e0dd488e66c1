"""The names the ruleset shares with the rest of the gateway: sets, chains and log prefixes (pure).

The resolver fills a sandbox's allow sets by name, and every logged packet carries a prefix ``egress <kind>
[sandbox]``: these are the contract between `egress.nft.render` and the components that read or fill the ruleset.
"""

from __future__ import annotations

import enum
import re

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_NAME = 100
"""Longest sandbox name: the kernel cuts log prefixes at 127 bytes (``egress report <name>``)."""


class LogKind(enum.StrEnum):
    """Why nftables logged a packet: the second word of every log prefix (``egress <kind> [sandbox]``)."""

    SPOOF = "spoof"
    """A source address on a sandbox interface that belongs to no sandbox behind it (dropped)."""
    GUARD = "guard"
    """Sandbox traffic to the gateway itself that is neither redirected proxy/DNS traffic nor needed ICMP."""
    DROP = "drop"
    """Sandbox traffic the gateway would have to forward (UDP, ICMP...) that no rule allows (dropped)."""
    REPORT = "report"
    """Like DROP, for a sandbox in report mode: the packet was let through."""
    INBOUND = "inbound"
    """Traffic towards a sandbox that is not a reply (dropped)."""
    LOCKDOWN = "lockdown"
    """Anything from a sandbox interface while the gateway is locked down (a component died)."""
    QUARANTINE = "quarantine"
    """What a quarantined sandbox sends (dropped before conntrack; the sandbox is the source's)."""
    LIMIT = "limit"
    """A new connection over its sandbox's ``max_connections`` (dropped; recorded ``connection-limit``)."""


COUNTED_KINDS = frozenset({LogKind.DROP, LogKind.REPORT, LogKind.GUARD, LogKind.QUARANTINE, LogKind.LIMIT})
"""Drops from a sandbox: besides the (rate-limited) log, the kernel counts each one in `count_set`, and its log is
metered per (source, IP protocol, destination) in `log_meter_set`."""
PASSED_KINDS = frozenset({LogKind.REPORT})
"""Kinds whose packets the kernel let through (report mode): the drop logger records them as would-block whatever
policy it holds, and every other kind as a block, so a record always says what the kernel did."""
COUNT_GENERATIONS = 2
"""Counting sets per kind and family: the rules count into one (the current generation) while the drop logger reads
the other, retired at its previous read and counted into by nothing since (`egress.nft.counting`). Their elements
have no timeout: the logger empties a set after reading it, so no count is lost however late the read."""
COUNT_SIZE = 65536
"""Counters per address family and generation at most: once full, a new key is still logged (rate-limited) but not
counted, until the logger's next read swaps in the other, emptied generation."""
UNCOUNTED_MARK = 0x40000000
"""The packet mark bit a counting chain (`count_chain`) sets on a packet it could not count: its key is not in the
set after the ``update`` (the set full, or an insert the kernel failed: seen here as 61 of a burst of 50,000 new
keys while the machine was busy). Such a packet is logged at once under `GatewaySettings.uncounted_log_rate`
(prefix `log_prefix(..., uncounted=True)`) and decided, skipping the per-key meters: its log is its one record. The
chain clears the bit before counting; egress sets no other mark."""
UNCOUNTED = "egress-uncounted"
"""The first word of the log prefix of a packet the kernel could not count (`UNCOUNTED_MARK`), where every other
log of ours says ``egress``."""
METER_TIMEOUT = 60
"""Seconds a key's log meter lives after its last packet."""
METER_SIZE = 65536
"""Log meters per address family at most; once full, a new key's drops are logged under the rule's own limit."""


def drop_count_set(version: int, generation: int = 0) -> str:
    """A dynamic set counting dropped sandbox packets per (source, IP protocol, destination): ``drops4a``/``drops4b``
    (``6`` for IPv6), one per generation (`COUNT_GENERATIONS`).

    Every packet logged with a `COUNTED_KINDS` prefix other than a `PASSED_KINDS` one was counted in the current
    generation's set first, logged or not: the drop logger adds what the log's rate limits left out
    (`egress.gateway.dropcount`)."""
    return f"drops{version}{_generation(generation)}"


def pass_count_set(version: int, generation: int = 0) -> str:
    """Like `drop_count_set`, for the packets a report-mode sandbox sent that the kernel let through:
    ``passes4a``/``passes4b``... Kept apart so that a count says what the kernel did with the packets it counts."""
    return f"passes{version}{_generation(generation)}"


def count_set(kind: LogKind, version: int, generation: int = 0) -> str:
    """The counting set of a `COUNTED_KINDS` kind."""
    return pass_count_set(version, generation) if kind in PASSED_KINDS else drop_count_set(version, generation)


GENERATION_SET = "counting"
"""A set of one element, the generation the counting chains count into (``0``: ``…a``), changed with them in the same
transaction: a reader learns it by listing these few bytes (listing the chain would fetch every set's elements)."""


def count_chain(kind: LogKind) -> str:
    """The regular chain every rule of a `COUNTED_KINDS` kind jumps to to count a packet (``count_drop``,
    ``count_pass``): its rules name the current generation's sets, and only they change when the logger swaps."""
    return "count_pass" if kind in PASSED_KINDS else "count_drop"


def _generation(generation: int) -> str:
    if not 0 <= generation < COUNT_GENERATIONS:
        raise ValueError(f"no counting generation {generation}")
    return "ab"[generation]


def log_meter_set(version: int) -> str:
    """The dynamic set of per-key log meters (``logs4``/``6``): each (source, IP protocol, destination) has its own
    token bucket, so a flood to one destination uses up only its own log budget, never another attempt's."""
    return f"logs{version}"


def quarantine_set(version: int) -> str:
    """The interval set of quarantined sandboxes' sources (``quarantine4``/``6``): every packet from or to them is
    dropped before any other rule, established connections included (`egress.gateway.quarantine`)."""
    return f"quarantine{version}"


def set_id(sandbox_name: str) -> str:
    """The sandbox's name as it appears in set names, chain names and log prefixes."""
    safe = _NAME_UNSAFE.sub("_", sandbox_name)
    if not safe or len(safe) > MAX_NAME:
        raise ValueError(f"sandbox name {sandbox_name!r} must have 1 to {MAX_NAME} characters for nftables")
    return safe


def source_set(sandbox_name: str, version: int) -> str:
    """The named set of the sandbox's source networks (``version`` 4 or 6)."""
    return f"src{version}_{set_id(sandbox_name)}"


def allow_set(sandbox_name: str, version: int) -> str:
    """The dynamic set (with timeouts) the resolver fills with the addresses it answered to this sandbox."""
    return f"allow{version}_{set_id(sandbox_name)}"


def log_prefix(kind: LogKind, sandbox_name: str | None = None, uncounted: bool = False) -> str:
    """``egress <kind> [sandbox]``; `UNCOUNTED` for the first word of a packet the kernel could not count."""
    first = UNCOUNTED if uncounted else "egress"
    return f"{first} {kind}" if sandbox_name is None else f"{first} {kind} {set_id(sandbox_name)}"


def uncounted(prefix: str) -> bool:
    """Whether ``prefix`` logged a packet the kernel could not count (`UNCOUNTED_MARK`)."""
    return prefix.startswith(UNCOUNTED + " ")


def parse_prefix(prefix: str) -> tuple[LogKind, str | None] | None:
    """``"egress drop agents"`` → ``(LogKind.DROP, "agents")``; ``None`` for a prefix that is not ours. A packet
    the kernel could not count is logged as ``"egress-uncounted drop agents"`` (`uncounted`), read the same way.

    The sandbox part is `set_id` of the name; `Policy.sandbox_for` on the packet's source is the sure way back.
    """
    words = prefix.split(" ")
    if len(words) not in (2, 3) or words[0] not in ("egress", UNCOUNTED):
        return None
    try:
        kind = LogKind(words[1])
    except ValueError:
        return None
    return kind, (words[2] if len(words) == 3 else None)
