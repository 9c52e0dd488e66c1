"""The connections a proxy worker has open, for a policy applied with ``on_apply: close_forbidden`` and for a
lockdown.

The front (relayed TLS) and the mitmproxy addon (everything else) add each connection they let through, described
by the question the gate decided it on (`egress.replay.Question`: TLS and its SNI, HTTP and its Host, a stream
with no name) and how to close it; it leaves when it closes. On commit of such a policy, `OpenFlows.cut` decides
each again by the gateway's own functions (`egress.replay.decide`, the resolver's bindings as they are now) and
closes those the new policy blocks: a connection to a host the policy no longer allows stops there, one still
allowed goes on. Report mode's would-block keeps the connection, as it would a new one. On a lockdown (a component
down: the supervisor's ``CUT``, `egress.gateway.control`), `OpenFlows.cut_all` closes every one: what the gateway
holds must not go on reaching the destination while the lockdown table drops the sandbox's packets. Each close is
logged with its reason, then the count (``<reason>: N open connection(s) closed``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import logging
from collections.abc import Callable

from egress.decide import Enforcement
from egress.policy.model import Policy
from egress.replay import Kind, Question, decide

log = logging.getLogger("egress.proxy")

NamesFor = Callable[[str, str], frozenset[str]]
"""(sandbox name, destination address) → names the gateway resolver answered with that address."""


class OpenFlows:
    """Open connections by token; one per worker, used from its event loop only."""

    def __init__(self) -> None:
        self._open: dict[int, tuple[Question, Callable[[], None]]] = {}
        self._tokens = itertools.count(1)

    def __len__(self) -> int:
        return len(self._open)

    def add(self, question: Question, close: Callable[[], None]) -> int:
        """Track a connection let through on ``question``; the token to `discard` it with when it closes."""
        token = next(self._tokens)
        self._open[token] = (question, close)
        return token

    def discard(self, token: int) -> None:
        self._open.pop(token, None)

    def cut(self, policy: Policy, names_for: NamesFor) -> list[Question]:
        """Close every connection ``policy`` blocks (decided again now); return their questions."""
        chosen = []
        for token, (question, _) in list(self._open.items()):
            try:
                if not forbidden(policy, question, names_for):
                    continue
            except Exception:  # fail closed: a connection that cannot be judged again is cut
                log.exception("open connection %s could not be decided again: closed", question)
            chosen.append(token)
        return self._close(chosen, "policy applied with on_apply: close_forbidden")

    def cut_all(self, why: str) -> list[Question]:
        """Close every open connection whatever its decision (``why``: the lockdown, `egress.gateway.control`'s
        ``CUT``): the gateway forwards nothing more; return their questions."""
        return self._close(list(self._open), why)

    def _close(self, tokens: list[int], why: str) -> list[Question]:
        """Close the connections of ``tokens`` (each relay's or mitmproxy connection's abort: a reset, nothing more
        sent), each logged, then their count."""
        closed = []
        for token in tokens:
            entry = self._open.pop(token, None)
            if entry is None:
                continue
            question, close = entry
            closed.append(question)
            log.info("%s: closed %s %s -> %s:%d %s", why, question.kind, question.src, question.dst, question.dport,
                     question.name or "-")  # fmt: skip
            try:
                close()
            except Exception:
                log.exception("closing %s failed", question)
        if closed:
            log.info("%s: %d open connection(s) closed", why, len(closed))
        return closed


def forbidden(policy: Policy, question: Question, names_for: NamesFor) -> bool:
    """Whether ``policy`` blocks the connection ``question`` describes, with the bindings as ``names_for`` has them."""
    sandbox = policy.sandbox_for(ipaddress.ip_address(question.src.split("%", 1)[0]))
    if sandbox is None:
        return True
    names = names_for(sandbox.name, question.dst)
    if question.kind is Kind.RAW:
        question = dataclasses.replace(question, names=names)
    bound = question.name is not None and question.name in names
    return decide(policy, question, bound).action is Enforcement.BLOCK
