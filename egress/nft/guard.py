"""The guard table: the kernel's dead-man switch for the supervisor (pure, no IO; `egress.nft.runner` applies it).

A table of its own (``inet <table>_guard``), beside the policy table, which drops every packet from and to the
sandbox interfaces unless the interface is in the set ``alive``. The supervisor applies it closed (the set empty)
before anything else at start, then, while it runs, applies it again every second with each sandbox interface in
``alive`` for a few seconds (`render_guard` with ``alive_for``). When the supervisor is gone (killed, crashed,
stopped) the elements expire and the kernel drops all sandbox traffic: nothing is forwarded (allowed UDP networks,
report mode) without a supervisor, whatever the policy table says. A drop in any base chain is final, so the
guard needs nothing from the policy table; and a reload, which replaces the policy table, leaves it alone.
"""

from __future__ import annotations

from typing import Final

from egress.nft.render import GatewaySettings, interfaces
from egress.policy.model import Policy

__all__ = ["ALIVE_SET", "guard_table", "render_guard"]

ALIVE_SET: Final = "alive"


def guard_table(settings: GatewaySettings) -> str:
    """The guard's table name (family inet): the policy table's name with ``_guard``."""
    return f"{settings.table}_guard"


def render_guard(settings: GatewaySettings, policy: Policy | None = None, alive_for: int = 0) -> str:
    """The guard table as one ``nft -f`` script; ``alive_for`` seconds of life for every sandbox interface
    (0: closed). The table and its base chains are declared (made the first time, left as they are after), then,
    in the same transaction, the chains' rules and the set's elements are flushed and written again: a flushed and
    re-added element gets a new expiry whatever the kernel version (a plain re-add keeps the old timeout before
    Linux 6.10), the rules follow a reload's interfaces, and the base chains stay registered. Deleting and making
    the table again each second (what this did until stop 30) unregistered its hooks, and the kernel drops every
    packet waiting in any NFQUEUE of the namespace when a hook goes (``nfqnl_nf_hook_drop``): the UDP gate's held
    datagrams were dropped at the next heartbeat (red team 10b's benign split row)."""
    if alive_for < 0:
        raise ValueError(f"alive_for must not be negative: {alive_for}")
    ifs = interfaces(policy, settings)
    listed = ", ".join(f'"{name}"' for name in ifs)
    elements = ", ".join(f'"{name}" timeout {alive_for}s' for name in ifs) if alive_for else ""
    table = guard_table(settings)
    state = f"open for {alive_for} s unless refreshed" if alive_for else "closed"
    chains = (
        # Before the policy table's chains (priority - 10): a dropped packet creates no conntrack state or count.
        ("prerouting", "prerouting", "raw - 10", "iifname"),
        ("forward", "forward", "filter - 10", "oifname"),
        ("output", "output", "filter - 10", "oifname"),
    )
    lines = [
        f"# egress guard ({state}): sandbox traffic passes only while the supervisor refreshes @{ALIVE_SET}",
        f"table inet {table} {{",
        f"\tset {ALIVE_SET} {{ type ifname; flags timeout; }}",
    ]
    for chain, hook, priority, _match in chains:
        lines.append(f"\tchain {chain} {{ type filter hook {hook} priority {priority}; policy accept; }}")
    lines.append("}")
    for chain, _hook, _priority, match in chains:
        lines += [
            f"flush chain inet {table} {chain}",
            f"add rule inet {table} {chain} {match} {{ {listed} }} {match} != @{ALIVE_SET} drop",
        ]
    lines.append(f"flush set inet {table} {ALIVE_SET}")
    if elements:
        lines.append(f"add element inet {table} {ALIVE_SET} {{ {elements} }}")
    return "\n".join(lines) + "\n"
