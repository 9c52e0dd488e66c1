"""The per-key counting sets in two generations, and the swap that retires one for the drop logger to read (pure).

Every packet a `COUNTED_KINDS` rule logs is first counted by a jump to `count_chain` (``count_drop``,
``count_pass``), whose two rules (IPv4, IPv6) update the current generation's sets. The drop logger reads the
retired generation, which nothing has counted into since the swap that retired it, then swaps: one transaction
empties the sets it has just read and points the counting rules at them, retiring the ones they counted into until
then, and records which generation counts now in `GENERATION_SET` (`swap_script`). A packet is counted in exactly
one generation and each generation is read once before it is emptied, so a count is read exactly once however late
the read comes: the elements need no timeout, and nothing expires unread (docs/nftables.md, "Logging").

A table replaced whole (``delete table`` then the new one) would empty both generations: what was counted since the
reader's last swap and the retired generation not yet read. `keeping` rewrites a whole-table script (`render`,
`render_lockdown`) into one transaction that replaces every other chain and set but keeps the counting sets, their
elements and counters, `GENERATION_SET` and the counting chains as they are (`KEPT_SETS`, `KEPT_CHAINS`): a reload
or the lockdown loses no count, and the reader's generations and swaps go on across it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Final

from egress.nft.names import (
    COUNT_GENERATIONS,
    COUNT_SIZE,
    GENERATION_SET,
    UNCOUNTED_MARK,
    LogKind,
    count_chain,
    count_set,
)

KINDS: Final = (LogKind.DROP, LogKind.REPORT)
"""One of each counting set's kinds: dropped (`LogKind.DROP` stands for every dropped kind) and let through."""
_FAMILIES: Final = ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr"))


def key(family: str) -> str:
    """The key a sandbox drop is counted and metered under: (source, IP protocol, destination)."""
    return f"{family} saddr . meta l4proto . {family} daddr"


def set_lines() -> list[str]:
    """The declarations of every generation's counting sets (inside the table), and of `GENERATION_SET` naming
    generation 0, the one `chain_lines` counts into."""
    lines = [f"set {GENERATION_SET} {{ type mark; elements = {{ 0 }}; }}"]
    for generation in range(COUNT_GENERATIONS):
        for kind in KINDS:
            for version, _, address in _FAMILIES:
                body = f"type {address} . inet_proto . {address}; flags dynamic; size {COUNT_SIZE}; counter;"
                lines.append(f"set {count_set(kind, version, generation)} {{ {body} }}")
    return lines


def rules(kind: LogKind, generation: int) -> list[str]:
    """The rules of ``kind``'s `count_chain` counting into ``generation`` (a ``{ ... }`` key: nft adds the
    family's dependency, so each rule counts its own family only and the other rule is skipped), then marking a
    packet whose key is not in the set after its ``update`` (`UNCOUNTED_MARK`): an ``update`` that fails (the set
    full, an insert the kernel refused) only ends its own rule, and the packet would be neither counted nor,
    beyond the log's limits, logged."""
    sets = [(count_set(kind, version, generation), family) for version, family, _ in _FAMILIES]
    out = [f"meta mark set meta mark & {~UNCOUNTED_MARK & 0xFFFFFFFF:#010x}"]
    out += [f"update @{name} {{ {key(family)} }}" for name, family in sets]
    out += [f"{key(family)} != @{name} meta mark set meta mark | {UNCOUNTED_MARK:#010x}" for name, family in sets]
    return out


def chain_lines(generation: int = 0) -> list[tuple[str, int]]:
    """The counting chains as rendered in a whole table, counting into ``generation``: (line, depth) pairs."""
    lines: list[tuple[str, int]] = []
    for kind in KINDS:
        lines.append((f"chain {count_chain(kind)} {{", 1))
        lines += [(rule, 2) for rule in rules(kind, generation)]
        lines.append(("}", 1))
    return lines


def retired(generation: int) -> int:
    """The generation not counted into while ``generation`` is."""
    return (generation + 1) % COUNT_GENERATIONS


def set_names(generation: int) -> dict[bool, tuple[str, ...]]:
    """``generation``'s sets, IPv4 then IPv6, by whether their packets were let through."""
    return {
        kind is LogKind.REPORT: tuple(count_set(kind, version, generation) for version, _, _ in _FAMILIES)
        for kind in KINDS
    }


def swap_script(table: str, generation: int) -> str:
    """One transaction: empty ``generation``'s sets (read by now) and make the counting rules count into them, which
    retires the other generation; `GENERATION_SET` says so. Nothing is counted twice: a packet the kernel counts
    meets either the old rules or the new ones, never both, and the sets emptied here are counted into by nothing
    until the commit."""
    where = f"inet {table}"
    lines = []
    for kind in KINDS:
        for version, _, _ in _FAMILIES:
            lines.append(f"flush set {where} {count_set(kind, version, generation)}")
    for kind in KINDS:
        lines.append(f"flush chain {where} {count_chain(kind)}")
        lines += [f"add rule {where} {count_chain(kind)} {rule}" for rule in rules(kind, generation)]
    lines.append(f"flush set {where} {GENERATION_SET}")
    lines.append(f"add element {where} {GENERATION_SET} {{ {generation} }}")
    return "\n".join(lines) + "\n"


def generation_of(elements: list[str]) -> int | None:
    """The generation `GENERATION_SET`'s elements name, or ``None`` when they name none or several (not a table
    this module rendered)."""
    if len(elements) != 1 or elements[0] not in {str(g) for g in range(COUNT_GENERATIONS)}:
        return None
    return int(elements[0])


KEPT_SETS: Final = frozenset(
    [GENERATION_SET]
    + [count_set(kind, version, g) for g in range(COUNT_GENERATIONS) for kind in KINDS for version, _, _ in _FAMILIES]
)
"""The sets a table replacement keeps (`keeping`): every generation's counting sets and `GENERATION_SET`."""
KEPT_CHAINS: Final = frozenset(count_chain(kind) for kind in KINDS)
"""The chains a table replacement keeps, rules and all: the counting chains (their rules name the generation the
reader last made current)."""


def _declarations() -> tuple[list[str], str]:
    """The counting sets' declaration lines and the counting chains' block as `render` writes them in a table."""
    sets = ["\t" + line + "\n" for line in set_lines()]
    chains = "".join("\t" * depth + line + "\n" for line, depth in chain_lines())
    return sets, chains


_DECLARED: Final = re.compile(r"^\t(chain|set) ([A-Za-z][A-Za-z0-9_-]*) \{", re.MULTILINE)


def keeping(script: str, table: str, chains: Collection[str], sets: Collection[str]) -> str | None:
    """``script``, a whole table for ``inet table`` (it deletes the table, then declares it anew), as one
    transaction that keeps the counting state the table has now (``chains`` and ``sets``: the names it has).
    Every other chain is flushed; those ``script`` does not declare are then deleted, the others filled anew by its
    declarations; every other set ``script`` declares is flushed and filled anew, the rest deleted. The counting
    sets and chains are left out of the declarations (an ``add`` of a kept set would add `GENERATION_SET`'s
    element ``0`` beside the one there). Objects are flushed in place rather than deleted and declared again: a
    transaction holding both the old and the new object of a name cost nft half as much again as the whole
    replacement. ``None`` when the table lacks some of the counting state (none yet, a lockdown table of an older
    version): then it is replaced whole, as ``script`` says."""
    if not (set(sets) >= KEPT_SETS and set(chains) >= KEPT_CHAINS):
        return None
    where = f"inet {table}"
    header = f"table {where} {{}}\ndelete table {where}\n"
    if script.count(header) != 1:
        raise ValueError(f"not a whole-table script for table {where}")
    declared: dict[str, set[str]] = {"chain": set(), "set": set()}
    for kind, name in _DECLARED.findall(script):
        declared[kind].add(name)
    old_chains, old_sets = set(chains) - KEPT_CHAINS, set(sets) - KEPT_SETS
    removals = [f"flush chain {where} {name}\n" for name in sorted(old_chains)]
    removals += [f"delete chain {where} {name}\n" for name in sorted(old_chains - declared["chain"])]
    removals += [f"flush set {where} {name}\n" for name in sorted(old_sets & declared["set"])]
    removals += [f"delete set {where} {name}\n" for name in sorted(old_sets - declared["set"])]
    out = script.replace(header, "".join(removals))
    declarations, block = _declarations()
    for text in [*declarations, block]:  # `render` declares all of them, `render_lockdown` none
        if out.count(text) > 1:
            raise ValueError(f"counting declaration rendered twice: {text.strip()}")
        out = out.replace(text, "")
    return out
