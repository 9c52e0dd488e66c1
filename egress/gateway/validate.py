"""Validating a policy in a child process, for the gateway's reloads and its fleet follower.

Parsing a large policy (100,000 entries: seconds of CPU) in the supervisor would hold its interpreter lock that
long, and the resolver's answers, the event loop and the drop logger would wait behind it (issue 12: no DNS answer
delayed by more than 50 ms during an apply). A child process parses and validates the file or the text, pickles
the version once as the proxy workers receive it (`PolicyVersion.payload`: the supervisor only forwards those
bytes), and hands that back with the policy in pieces (`egress.policy.pieces`). The supervisor rebuilds the
policy and its rule indexes from the pieces on its event loop, 256 rules at a time with the loop's
other work (DNS answers) in between, with the collector off, then freezes them (`egress.gateway.heap`): rebuilt
in another thread, the policy's seconds of lock holding became, on a busy machine, stalls of the loop whenever
the kernel preempted that thread holding the lock.

The child runs at a lower CPU priority (`CHILD_NICE`): on two cores shared with the proxy workers, the
supervisor's resolver must win the CPU over seconds of parsing, and a nice of 10 still leaves the parse a share of
a busy machine (19 would all but stop it there).

Children are forked from a fork server started on first use, which imports the loader once (forking the
multi-threaded supervisor itself is unsafe; spawning a fresh interpreter per validation costs more than the parse
of a small policy). One child per validation: its memory goes back when it ends. A child that cannot start, dies
or is killed fails the validation with `ValidationFailed`; a policy that does not validate raises the child's
`RulesError`, every problem with its file and line. Either way nothing is applied: the running policy stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from pathlib import Path

from egress.gateway import heap
from egress.gateway.reload import PolicyVersion, ValidationFailed, read_version, text_version
from egress.policy.model import Policy
from egress.policy.pieces import Pieces, rebuild, split

PRELOAD = ["egress.gateway.reload"]
"""What the fork server imports once, so that a child starts with the loader in memory."""


@functools.cache
def _context() -> BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


CHILD_NICE = 10
"""How much lower the validating child's CPU priority is than the supervisor's (`os.nice`)."""


def _timed(parse: Callable[..., PolicyVersion], *args: str) -> tuple[bytes, Pieces, str, float]:
    """In the child: the version pickled as the workers receive it, the policy in pieces as the supervisor
    rebuilds it, the digest, and the CPU seconds the child's work took."""
    with contextlib.suppress(OSError):  # a priority is a preference: validate all the same
        os.nice(CHILD_NICE)
    started = time.process_time()
    version = parse(*args)
    payload = pickle.dumps(version, pickle.HIGHEST_PROTOCOL)
    return payload, split(version.policy), version.digest, time.process_time() - started


def _steps(pieces: Pieces) -> Iterator[tuple[Policy | None, float]]:
    """`rebuild`'s steps, each with the CPU seconds this thread spent on it."""
    steps = rebuild(pieces)
    while True:
        started = time.thread_time()
        step = next(steps)
        yield step, time.thread_time() - started
        if step is not None:
            return


async def _cooperatively(pieces: Pieces) -> tuple[Policy, float]:
    spent = 0.0
    for step, cpu in _steps(pieces):
        spent += cpu
        if step is not None:
            return step, spent
        await asyncio.sleep(0)  # what the loop has to do (a DNS answer) comes before the next piece
    raise AssertionError("rebuild ends with the policy")


def _rebuilt(pieces: Pieces, loop: asyncio.AbstractEventLoop | None) -> tuple[Policy, float]:
    """The policy and the CPU seconds its rebuilding took (on ``loop``, or in this thread)."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:  # the usual case: a worker thread
        running = None
    if loop is None or running is loop:  # from the loop's own thread, waiting on it would never end
        spent = 0.0
        for step, cpu in _steps(pieces):
            spent += cpu
            if step is not None:
                return step, spent
        raise AssertionError("rebuild ends with the policy")
    return asyncio.run_coroutine_threadsafe(_cooperatively(pieces), loop).result()


def in_child(
    parse: Callable[..., PolicyVersion], *args: str, loop: asyncio.AbstractEventLoop | None = None
) -> tuple[PolicyVersion, float]:
    """``parse(*args)`` run in a child process; the version carries its payload, its rule indexes are built (on
    ``loop``, a piece at a time, when given; else in this thread) and frozen; with the CPU seconds of the child
    and of the rebuilding. Blocks the calling thread (call it from a worker thread, not from ``loop``'s). Raises
    what ``parse`` raised (`RulesError`) or `ValidationFailed`."""
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=_context()) as pool:
            payload, pieces, digest, cpu = pool.submit(_timed, parse, *args).result()
    except BrokenProcessPool as error:
        raise ValidationFailed(f"the process validating the policy died ({error})") from None
    except OSError as error:
        raise ValidationFailed(f"no process to validate the policy ({error})") from None
    with heap.building():
        policy, rebuilding = _rebuilt(pieces, loop)
    return PolicyVersion(policy, digest, payload), cpu + rebuilding


def load(path: str | Path, loop: asyncio.AbstractEventLoop | None = None) -> PolicyVersion:
    """`egress.gateway.reload.load_version` with the parse in a child: the file read, validated and hashed there,
    the policy rebuilt and indexed here (on ``loop``: see `in_child`)."""
    version, _ = in_child(read_version, str(path), loop=loop)
    return version


def parse(text: str, origin: str, loop: asyncio.AbstractEventLoop | None = None) -> tuple[PolicyVersion, float]:
    """`egress.gateway.reload.parse_version` with the parse in a child, and the CPU seconds of the whole (the
    child's parse and this process's rebuilding: the follower's log line, bench/rules.py)."""
    return in_child(text_version, text, origin, loop=loop)
