"""The only module that runs the ``nft`` binary (or its library, `egress.nft.libnft`, for the per-second calls).

Every change is one ``nft -f -`` transaction fed on stdin: either all of it is in force or none of it (a failure
raises `NftError` with nft's stderr and leaves the previous ruleset as it was). Each call takes ``netns`` to run
inside a named network namespace (``ip netns exec NS nft ...``), for tests and the lab.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Sequence
from typing import Any

from egress.nft import counting, libnft
from egress.nft.names import GENERATION_SET

NFT = "nft"
TIMEOUT = 30.0
"""Seconds any one nft call may take before it counts as failed."""
LIST_TIMEOUT = 5.0
"""Seconds the listing before a table replacement may take (`replace_table`): the lockdown waits for it, and
replaces the table whole when it is late."""

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,255}")
_FAMILIES = frozenset({"ip", "ip6", "inet", "arp", "bridge", "netdev"})


class NftError(RuntimeError):
    """nft refused a script or could not run; ``stderr`` is what nft said."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(f"{message}: {stderr.strip()}" if stderr.strip() else message)
        self.stderr = stderr


def _run(args: Sequence[str], stdin: str | None, netns: str | None, timeout: float | None = None) -> str:
    command = [NFT, *args]
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    try:
        limit = TIMEOUT if timeout is None else timeout
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=limit, check=False)
    except FileNotFoundError as exc:
        raise NftError(f"cannot run {command[0]}", str(exc)) from exc
    except subprocess.TimeoutExpired as exc:
        raise NftError(f"nft did not finish within {exc.timeout} s") from exc
    if done.returncode != 0:
        raise NftError(f"nft {' '.join(args)} failed (exit {done.returncode})", done.stderr)
    return done.stdout


def _ident(kind: str, name: str) -> str:
    if not _IDENT.fullmatch(name):
        raise ValueError(f"bad {kind} name {name!r}")
    return name


def _family(family: str) -> str:
    if family not in _FAMILIES:
        raise ValueError(f"bad table family {family!r}")
    return family


def apply(script: str, netns: str | None = None) -> None:
    """Load ``script`` (e.g. from `egress.nft.render.render`) as one transaction."""
    _run(["-f", "-"], script, netns)


def apply_here(script: str) -> None:
    """`apply` in this process's namespace, through libnftables without a process where it loads (the guard's
    heartbeat, every second: `egress.nft.libnft`)."""
    nft = libnft.load()
    if nft is None:
        _run(["-f", "-"], script, None)
        return
    try:
        nft.run(script)
    except libnft.NftCallError as exc:
        raise NftError("nft -f - failed (libnftables)", exc.stderr) from exc


def table_names(table: str, netns: str | None = None) -> tuple[set[str], set[str]] | None:
    """The names of the chains and of the named sets of ``inet table`` (two small listings: no rule, no element;
    the chains of every inet table, for nft lists no one table's chains without their rules);
    ``None`` when there is no such table."""
    name = _ident("table", table)
    found: dict[str, set[str]] = {"chain": set(), "set": set()}
    for what in (["sets", "table", "inet", name], ["chains", "inet"]):  # nft 1.0.6 lists no table's chains alone
        try:
            output = _run(["-j", "-t", "list", *what], None, netns, LIST_TIMEOUT)
        except NftError as exc:
            if "No such file or directory" in exc.stderr:
                return None
            raise
        try:
            document = json.loads(output)
        except json.JSONDecodeError as exc:
            raise NftError("nft -j printed something that is not JSON", output[:200]) from exc
        for item in document.get("nftables", []):
            for kind, names in found.items():
                body = item.get(kind)
                if isinstance(body, dict) and body.get("table") == name and body.get("family") == "inet":
                    names.add(str(body["name"]))
    return found["chain"], found["set"]


def replace_table(script: str, table: str, netns: str | None = None) -> bool:
    """Load ``script``, a whole table for ``inet table`` (`render`, `render_lockdown`), keeping the counting state the
    table has (`counting.keeping`: one transaction that replaces everything else); whole, as `apply` does, when the
    table has none yet or the keeping transaction failed (the table changed between the listing and the load: the
    policy matters more than the counts). Returns whether the counts were kept."""
    try:
        names = table_names(table, netns)
    except NftError:
        names = None
    kept = counting.keeping(script, table, *names) if names is not None else None
    if kept is not None:
        try:
            _run(["-f", "-"], kept, netns)
            return True
        except NftError:
            pass  # the whole script below says what is wrong with the policy, if anything is
    apply(script, netns)
    return False


def check(script: str, netns: str | None = None) -> None:
    """Ask the kernel whether ``script`` would load, without changing anything (``nft -c``)."""
    _run(["-c", "-f", "-"], script, netns)


def add_elements(
    table: str,
    set_name: str,
    elements: Sequence[tuple[str, int]],
    netns: str | None = None,
    family: str = "inet",
) -> None:
    """Add ``(address, timeout seconds)`` pairs to a set with timeouts, in one transaction.

    An address already in the set gets the new timeout: it is added, deleted and added again within the
    transaction, because kernels before 6.10 keep the old timeout on a plain re-add and a delete alone would fail
    for a new address.
    """
    if not elements:
        return
    where = f"{_family(family)} {_ident('table', table)} {_ident('set', set_name)}"
    items = []
    for address, timeout in elements:
        parsed = ipaddress.ip_address(address)  # raises ValueError: nothing but an address reaches the script
        if not isinstance(timeout, int) or timeout < 1:
            raise ValueError(f"timeout for {address} must be a positive number of seconds, not {timeout!r}")
        items.append((str(parsed), timeout))
    with_timeouts = ", ".join(f"{a} timeout {t}s" for a, t in items)
    bare = ", ".join(a for a, _ in items)
    script = (
        f"add element {where} {{ {with_timeouts} }}\n"
        f"delete element {where} {{ {bare} }}\n"
        f"add element {where} {{ {with_timeouts} }}\n"
    )
    _run(["-f", "-"], script, netns)


def delete_table(name: str, netns: str | None = None, family: str = "inet", missing_ok: bool = True) -> None:
    """Remove one table (ours); with ``missing_ok`` a table that is not there is not an error."""
    table = f"{_family(family)} {_ident('table', name)}"
    script = f"table {table} {{}}\ndelete table {table}\n" if missing_ok else f"delete table {table}\n"
    _run(["-f", "-"], script, netns)


def list_table(name: str, netns: str | None = None, family: str = "inet") -> str:
    """The table as nft prints it (raises `NftError` if it does not exist)."""
    return _run(["list", "table", _family(family), _ident("table", name)], None, netns)


def _element(value: Any) -> str:
    if isinstance(value, dict):
        if "elem" in value:
            return _element(value["elem"]["val"])
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            low, high = value["range"]
            return f"{_element(low)}-{_element(high)}"
    return str(value)


def _set_elements(output: str) -> list[str]:
    """The elements of the set that ``nft -j list set`` printed as ``output``."""
    try:
        document = json.loads(output)
    except json.JSONDecodeError as exc:
        raise NftError("nft -j printed something that is not JSON", output[:200]) from exc
    elements: list[str] = []
    for item in document.get("nftables", []):
        if "set" in item:
            elements.extend(_element(e) for e in item["set"].get("elem", []))
    return elements


def list_set(table: str, set_name: str, netns: str | None = None, family: str = "inet") -> list[str]:
    """The set's live elements: addresses, ``net/len`` prefixes or ``low-high`` ranges (expired ones are gone)."""
    output = _run(["-j", "list", "set", _family(family), _ident("table", table), _ident("set", set_name)], None, netns)
    return _set_elements(output)


def _here_or_in(netns: str | None, args: Sequence[str], script: str, flags: int = 0) -> str:
    """``script`` through libnftables in this process (no process per call: the drop logger's per-second calls),
    or ``nft args`` in ``netns`` or where the library does not load."""
    nft = libnft.load() if netns is None else None
    if nft is None:
        return _run(args, script if args[-1:] == ["-"] else None, netns)
    try:
        return nft.run(script, flags)
    except libnft.NftCallError as exc:
        raise NftError(f"nft {' '.join(args)} failed (libnftables)", exc.stderr) from exc


def count_generation(table: str, netns: str | None = None) -> int | None:
    """The generation of counting sets the table's counting rules count into now (`egress.nft.counting`), as its
    `GENERATION_SET` says; ``None`` if it names none. Raises `NftError` if the table has no such set."""
    args = ["-j", "list", "set", "inet", _ident("table", table), GENERATION_SET]
    output = _here_or_in(netns, args, " ".join(args[1:]), libnft.OUTPUT_JSON)
    return counting.generation_of(_set_elements(output))


def swap_counts(table: str, generation: int, netns: str | None = None) -> None:
    """Empty ``generation``'s counting sets and count into them from now on, in one transaction
    (`counting.swap_script`): the other generation is retired, to be read."""
    _here_or_in(netns, ["-f", "-"], counting.swap_script(_ident("table", table), generation))


DropKey = tuple[str, int, str]
"""(source address, IP protocol number, destination address) of dropped packets."""


def drop_counters(table: str, set_names: Sequence[str], netns: str | None = None) -> dict[DropKey, int]:
    """Packets counted per key in the drop counting sets (`egress.nft.names.drop_count_set`), one ``nft`` call.

    Protocols are read as numbers (``-n``): nft prints names only for the protocols it knows."""
    args = ["-j", "-n", "list", "set", "inet", _ident("table", table)]
    nft = libnft.load() if netns is None else None
    counts: dict[DropKey, int] = {}
    for name in set_names:  # nft 1.0.6 lists one set per call
        if nft is not None:  # in this process (every second in the drop logger: no process per read)
            try:
                output = nft.run(
                    " ".join([*args[2:], _ident("set", name)]), libnft.OUTPUT_JSON | libnft.OUTPUT_NUMERIC_ALL
                )
            except libnft.NftCallError as exc:
                raise NftError(f"nft {' '.join(args)} {name} failed (libnftables)", exc.stderr) from exc
        else:
            output = _run([*args, _ident("set", name)], None, netns)
        try:
            document = json.loads(output)
        except json.JSONDecodeError as exc:
            raise NftError("nft -j printed something that is not JSON", output[:200]) from exc
        for item in document.get("nftables", []):
            for element in item.get("set", {}).get("elem", []):
                key, packets = _counted(element)
                if key is not None:  # listed twice (a dump resumed while the set changed): one counter, not two
                    counts[key] = max(counts.get(key, 0), packets)
    return counts


def _counted(element: Any) -> tuple[DropKey | None, int]:
    try:
        body = element["elem"]
        src, proto, dst = body["val"]["concat"]
        return (str(ipaddress.ip_address(src)), int(proto), str(ipaddress.ip_address(dst))), int(
            body["counter"]["packets"]
        )
    except (KeyError, TypeError, ValueError):  # an element without a counter, or of another shape: not ours
        return None, 0
