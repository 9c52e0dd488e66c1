"""Sandboxes that share a link: which of them the gateway cannot tell apart (pure).

The gateway tells sandboxes apart by source address, and the anti-spoofing only asks that a source belong to some
sandbox behind the interface a packet came in on. On a link two sandboxes share, neither the IP nor the MAC
address identifies a sandbox whose agent has root: it takes the other's address, and with it that sandbox's
allowlist, and its attempts are recorded under the other's name (red team 2, tests/security/
test_redteam_sources.py). So two sandboxes behind one interface (named, or both behind ``--sandbox-if``) are
refused unless each says ``link_pins_sources: true``: the operator states that the link itself pins each
sandbox's source addresses (a switch's port security, a hypervisor's anti-spoofing filter), which the gateway
cannot check. The loader checks the interfaces a policy names (`egress.policy.loader`); the gateway's
pre-flight checks them again once ``--sandbox-if`` is known (`egress.gateway.preflight`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from egress.policy.model import Sandbox

DEFAULT_LINK = "--sandbox-if"
"""How a message names the interface of the sandboxes that name none."""


@dataclass(frozen=True, slots=True)
class Shared:
    """``sandbox`` is behind ``interface`` (how a message names it) with ``other`` (the first other one in file
    order), and does not say the link pins sources."""

    sandbox: Sandbox
    other: Sandbox
    interface: str

    def message(self) -> str:
        field = "interface" if self.sandbox.interface else "link_pins_sources"
        return (
            f"sandboxes.{self.sandbox.name}.{field}: behind {self.interface} with sandbox {self.other.name!r} (line "
            f"{self.other.line}): on a shared link an agent with root takes the other sandbox's address and its "
            "allowlist; give each sandbox its own interface (docs/deploy.md), or write link_pins_sources: true on "
            "each if the link pins their source addresses (switch port security, hypervisor anti-spoofing)"
        )


def shared(sandboxes: Iterable[Sandbox], default_if: str | None = None) -> list[Shared]:
    """Each sandbox behind an interface another sandbox is behind too, unless every one of them says the link pins
    sources. ``default_if``: the interface of the sandboxes that name none (``None``: not known yet, those only
    share with each other)."""
    groups: dict[str | None, list[Sandbox]] = {}
    for sandbox in sandboxes:
        groups.setdefault(sandbox.interface or default_if, []).append(sandbox)
    found: list[Shared] = []
    for interface, behind in groups.items():
        if len(behind) < 2 or all(sandbox.link_pins_sources for sandbox in behind):
            continue
        if interface is None:
            label = f"{DEFAULT_LINK} (no interface named)"
        else:
            label = f"interface {interface!r}" + (f" ({DEFAULT_LINK})" if interface == default_if else "")
        for sandbox in behind:
            if not sandbox.link_pins_sources:
                other = next(s for s in behind if s is not sandbox)
                found.append(Shared(sandbox, other, label))
    return found
