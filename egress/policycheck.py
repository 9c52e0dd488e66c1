"""``egress rules check``: everything applying a policy runs, short of changing the kernel.

Apply (gateway start, SIGHUP, a changed file) reads the file under the size cap, validates it
(`egress.policy.loader`), renders the nftables table (`egress.nft.render`) and has ``nft -c`` check it before the
one transaction. `check_file` runs the same steps in the same order and stops where apply would: so what it
accepts, apply accepts (tests/policy/test_check_matches_apply.py generates policies to hold it to that). Then the
warnings (`egress.policy.risks`), which never refuse.

``nft -c`` needs the ``nft`` binary and CAP_NET_ADMIN; where either is missing (a laptop, CI without root) the
table is still rendered, and the result says the kernel's check was skipped and why.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from egress.nft import runner
from egress.nft.render import GatewaySettings, render
from egress.policy.loader import load_policy, parse_policy
from egress.policy.model import Address, Policy
from egress.policy.risks import risks
from egress.policy.yamlnodes import Problem, RulesError

__all__ = ["CHECK_SETTINGS", "Checked", "KernelCheck", "check_file", "kernel_check"]

CHECK_SETTINGS = GatewaySettings(sandbox_if="sandbox0", uplink_if="uplink0")
"""The wiring the table is rendered with for the check: interface names only fill in ``iifname`` strings, which
nftables does not resolve, so any valid names test the policy's part of the table."""

KernelCheck = Callable[[str], str | None]
"""A script in; ``nft -c``'s complaint, or ``None`` when it would load."""


@dataclass(frozen=True, slots=True)
class Checked:
    """What checking one file found."""

    file: str
    policy: Policy | None
    """The loaded policy; ``None`` when the file did not validate."""
    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...]
    kernel: str
    """How the rendered table fared: ``checked`` (``nft -c`` passed), ``skipped: why``, or ``not rendered``."""

    @property
    def ok(self) -> bool:
        return not self.errors


def kernel_check(netns: str | None = None) -> tuple[KernelCheck | None, str]:
    """``nft -c`` as a `KernelCheck`, or ``None`` and why it cannot run here (no binary, no permission)."""
    if shutil.which(runner.NFT) is None:
        return None, "no nft binary on this host"
    try:
        runner.check("table inet egress_check {}\n", netns)
    except runner.NftError as error:
        return None, f"nft -c does not run here ({str(error).splitlines()[0][:120]})"

    def check(script: str) -> str | None:
        try:
            runner.check(script, netns)
        except runner.NftError as error:
            return error.stderr.strip()[:2000] or str(error)
        return None

    return check, ""


def check_file(
    path: str | Path,
    suffixes: frozenset[str],
    kernel: KernelCheck | None,
    skipped: str = "",
    gateway: Iterable[Address] = (),
    settings: GatewaySettings = CHECK_SETTINGS,
    max_size: int | None = None,
) -> Checked:
    """Check one policy file as apply would take it; ``kernel`` ``None``: the ``nft -c`` step is skipped
    (``skipped`` says why)."""
    file = str(path)
    try:
        policy = load_policy(path, gateway, max_size)
    except RulesError as error:
        return Checked(file, None, error.problems, (), "not rendered")
    return _check_loaded(file, policy, suffixes, kernel, skipped, settings)


def check_text(
    text: str,
    origin: str,
    kernel: KernelCheck | None,
    skipped: str = "",
    settings: GatewaySettings = CHECK_SETTINGS,
) -> Checked:
    """`check_file` for a policy's text (one sent to `egress rules apply` or ``POST /v1/policy``): what the
    release accepts is what the check accepts, and what the gateways' apply then accepts. No warnings."""
    try:
        policy = parse_policy(text, origin)
    except RulesError as error:
        return Checked(origin, None, error.problems, (), "not rendered")
    return _check_loaded(origin, policy, frozenset(), kernel, skipped, settings)


def _check_loaded(
    file: str,
    policy: Policy,
    suffixes: frozenset[str],
    kernel: KernelCheck | None,
    skipped: str,
    settings: GatewaySettings,
) -> Checked:
    try:
        script = render(policy, settings)
    except ValueError as error:
        problem = Problem(file, 1, f"nftables: the table cannot be rendered: {str(error)[:300]}")
        return Checked(file, policy, (problem,), (), "not rendered")
    warnings = tuple(risks(policy, suffixes))
    if kernel is None:
        return Checked(file, policy, (), warnings, f"skipped: {skipped or 'not asked'}")
    complaint = kernel(script)
    if complaint is not None:
        problem = Problem(file, 1, f"nftables: the rendered table does not pass `nft -c`: {complaint}")
        return Checked(file, policy, (problem,), warnings, "refused")
    return Checked(file, policy, (), warnings, "checked")
