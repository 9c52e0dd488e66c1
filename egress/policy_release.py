"""Releasing a policy to the fleet: validate a text as a gateway would before it touches the kernel, then make it
the applied version in Redis (`egress.record.policy_store`), which every gateway's follower then applies
(`egress.gateway.policy_follow`). `egress rules apply|rollback` and ``POST /v1/policy`` both come through here.

Validation here is the schema (`egress.policy.loader`) and the rendered nftables table (`egress.nft.render`,
pure). ``nft -c`` needs the gateway's kernel, so each gateway checks the table again when it prepares the version;
one that cannot apply it keeps what it runs and reports ``failed`` (``egress rules status``, ``GET /v1/policy``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from egress.nft.render import GatewaySettings
from egress.policy.yamlnodes import Problem, RulesError
from egress.policycheck import check_text, kernel_check
from egress.record.policy_store import PolicyHistory, StoredVersion

MAX_TEXT: Final = 8 * 1024 * 1024
"""Bytes a policy may have (the API's body limit; a 100,000-entry allowlist is about 3 MB)."""
_PROBE: Final = GatewaySettings(sandbox_if="sandbox0", uplink_if="uplink0")
"""Interface names for rendering the table at validation: each gateway renders it with its own."""


class UnknownVersion(LookupError):
    """A rollback to a version the history does not have (never applied, or no longer kept)."""


@dataclass(frozen=True, slots=True)
class Released:
    """What `release` did: the stored version, or nothing when the text is the one already applied."""

    version: StoredVersion
    unchanged: bool
    """The text was the applied version already: nothing new was stored, no gateway does anything."""


def digest(text: str) -> str:
    """The version's identity: hex SHA-256 of its UTF-8 bytes (as the gateway hashes its file)."""
    return hashlib.sha256(text.encode()).hexdigest()


def validate(text: str, origin: str) -> None:
    """Raise `RulesError` with every problem of ``text`` (named ``origin`` in them): the checks of `egress rules
    check` (`egress.policycheck`), ``nft -c`` included where it runs here, so that what is released every gateway
    can apply."""
    size = len(text.encode())
    if size > MAX_TEXT:
        raise RulesError([Problem(origin, 1, f"the policy has {size} bytes, more than the {MAX_TEXT} allowed")])
    kernel, why = kernel_check()
    checked = check_text(text, origin, kernel, why, _PROBE)
    if checked.errors:
        raise RulesError(list(checked.errors))


def release(
    history: PolicyHistory, text: str, who: str, source: str, *, rollback_of: int | None = None, force: bool = False
) -> Released:
    """Validate ``text`` and make it the applied version; raise `RulesError` (nothing stored) or one of the
    store's errors. The text already applied is not stored again unless ``force``."""
    validate(text, source)
    sha = digest(text)
    applied = history.applied()
    if applied is not None and applied.digest == sha and not force:
        return Released(applied, unchanged=True)
    return Released(history.record(text, sha, who, source, rollback_of), unchanged=False)


def rollback(history: PolicyHistory, who: str, number: int | None = None) -> Released:
    """Apply again the text of version ``number`` (default: the one before the applied one); raise
    `UnknownVersion`, `RulesError` (a kept text no longer validates under this egress) or a store error."""
    applied = history.applied()
    if number is None:
        if applied is None or applied.version < 2:
            raise UnknownVersion("there is no earlier version to roll back to")
        number = applied.version - 1
    text = history.text(number)
    if text is None:
        raise UnknownVersion(f"version {number} is not in the history")
    return release(history, text, who, f"rollback to version {number}", rollback_of=number)
