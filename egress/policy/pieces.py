"""A policy as pieces rebuilt a chunk of rules at a time, so that a process whose event loop must keep answering
(the gateway supervisor's resolver) can rebuild a policy of 100,000 rules on that very loop, a few milliseconds
at a time (pure).

Rebuilding in another thread of the same interpreter is not enough on a busy machine: the thread holds the
interpreter lock while it runs, and when the kernel preempts it holding the lock, the loop waits for it to be
scheduled again (issue 12: answers 100 ms to a second late under load). On the loop itself, an answer waits at
most for the chunk under way. `split` makes the pieces (in the validating child: egress.gateway.validate),
`rebuild` gives the steps: ``None`` after each chunk (the caller may let others run), then the policy with
every sandbox's lookups (egress.policy.index) built, equal to the one split.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from egress.policy.index import HostIndex, NetworkIndex
from egress.policy.model import HostRule, NetworkRule, Policy, Sandbox, rules_chunk

__all__ = ["RULES_PER_PIECE", "Pieces", "rebuild", "split"]

RULES_PER_PIECE = 256
"""Rules per piece: about a millisecond of a quiet core to unpickle and index (several on a busy one, where the
loop's share of the CPU is smaller)."""


@dataclass(frozen=True, slots=True)
class Pieces:
    skeleton: bytes
    """The policy pickled with its sandboxes' rules left out."""
    hosts: tuple[tuple[bytes, ...], ...]
    """Per sandbox, its host rules pickled `RULES_PER_PIECE` at a time."""
    networks: tuple[tuple[bytes, ...], ...]
    """Per sandbox, its network rules likewise."""


def _chunks(kind: type[Any], rules: tuple[Any, ...]) -> tuple[bytes, ...]:
    return tuple(
        pickle.dumps(rules_chunk(kind, rules[at : at + RULES_PER_PIECE]), pickle.HIGHEST_PROTOCOL)
        for at in range(0, len(rules), RULES_PER_PIECE)
    )


def split(policy: Policy) -> Pieces:
    bare = tuple(dataclasses.replace(sandbox, hosts=(), networks=()) for sandbox in policy.sandboxes)
    return Pieces(
        pickle.dumps(dataclasses.replace(policy, sandboxes=bare), pickle.HIGHEST_PROTOCOL),
        tuple(_chunks(HostRule, sandbox.hosts) for sandbox in policy.sandboxes),
        tuple(_chunks(NetworkRule, sandbox.networks) for sandbox in policy.sandboxes),
    )


def rebuild(pieces: Pieces) -> Iterator[Policy | None]:
    """The steps of rebuilding the policy (the pieces come from `split` in a process this one started: trusted).
    Raises `ValueError` for pieces that do not fit together."""
    skeleton = pickle.loads(pieces.skeleton)
    if not isinstance(skeleton, Policy) or not len(skeleton.sandboxes) == len(pieces.hosts) == len(pieces.networks):
        raise ValueError("policy pieces that do not fit together")
    sandboxes: list[Sandbox] = []
    for bare, host_chunks, network_chunks in zip(skeleton.sandboxes, pieces.hosts, pieces.networks, strict=True):
        hosts: list[HostRule] = []
        host_index = HostIndex(())
        for chunk in host_chunks:
            rules = pickle.loads(chunk)
            host_index.add(rules, len(hosts))
            hosts += rules
            yield None
        networks: list[NetworkRule] = []
        network_index = NetworkIndex(())
        for chunk in network_chunks:
            rules = pickle.loads(chunk)
            network_index.add(rules, len(networks))
            networks += rules
            yield None
        sandbox = dataclasses.replace(bare, hosts=tuple(hosts), networks=tuple(networks))
        object.__setattr__(sandbox, "_index", (host_index, network_index))  # built as `Sandbox._indexes` would
        sandboxes.append(sandbox)
    yield dataclasses.replace(skeleton, sandboxes=tuple(sandboxes))
