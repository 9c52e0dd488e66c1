"""The sandbox a spoofed-source drop came from, named by the interface it arrived on (red team 10b).

The table logs a packet whose source belongs to no sandbox behind its interface as ``egress spoof`` (its source
names no sandbox: IPv6 from a sandbox whose policy is IPv4 only, a forged address). When exactly one sandbox sits
behind the interface the packet came in on (nflog's ``indev``), the packet can only be that sandbox's: the record
names it, so ``egress events --sandbox`` sees it. On an interface with no sandbox (the uplink: an outsider forging
a sandbox's address) or several, it names none. Spoofed sources are no finding, so no quarantine counts them.
"""

from __future__ import annotations

from collections.abc import Callable

from egress.policy.model import Policy

InterfaceName = Callable[[int], str | None]
"""Interface index → its name in the gateway's namespace, or None (the supervisor's asks the kernel)."""


def no_names(_index: int) -> str | None:
    """An `InterfaceName` that knows none (a judge given no way to ask names no sandbox by interface)."""
    return None


def sandbox_behind(policy: Policy, sandbox_if: str, indev: int | None, name_of: InterfaceName) -> str:
    """The name of the only sandbox behind interface ``indev`` (a sandbox without ``interface`` is behind
    ``sandbox_if``), or "" when there is none, several, or the interface is not known."""
    if indev is None or not sandbox_if:
        return ""
    name = name_of(indev)
    if name is None:
        return ""
    behind = [sandbox.name for sandbox in policy.sandboxes if (sandbox.interface or sandbox_if) == name]
    return behind[0] if len(behind) == 1 else ""
