"""Validating a policy in a child process, for the gateway's reloads and its fleet follower.

Parsing a large policy (100,000 entries: seconds of CPU) in the supervisor would hold its interpreter lock that
long, and the resolver's answers, the event loop and the drop logger would wait behind it (issue 12: no DNS answer
delayed by more than 50 ms during an apply). A child process parses and validates the file or the text, pickles
the version once as the proxy workers receive it (`PolicyVersion.payload`: the supervisor only forwards those
bytes), and hands that back; the calling thread unpickles it and builds the rule indexes (`Policy.index`) with the
collector off, then freezes them (`egress.gateway.heap`). The pickle is chunked (`egress.policy.model`), so the
resolver's thread gets the interpreter lock between chunks, as it does between any two Python steps.

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

import contextlib
import functools
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from pathlib import Path

from egress.gateway import heap
from egress.gateway.reload import PolicyVersion, ValidationFailed, read_version, text_version

PRELOAD = ["egress.gateway.reload"]
"""What the fork server imports once, so that a child starts with the loader in memory."""


@functools.cache
def _context() -> BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


CHILD_NICE = 10
"""How much lower the validating child's CPU priority is than the supervisor's (`os.nice`)."""


def _timed(parse: Callable[..., PolicyVersion], *args: str) -> tuple[bytes, float]:
    """In the child: the version pickled as the workers receive it, and the CPU seconds its parse took."""
    with contextlib.suppress(OSError):  # a priority is a preference: validate all the same
        os.nice(CHILD_NICE)
    started = time.process_time()
    version = parse(*args)
    payload = pickle.dumps(version, pickle.HIGHEST_PROTOCOL)
    return payload, time.process_time() - started


def in_child(parse: Callable[..., PolicyVersion], *args: str) -> tuple[PolicyVersion, float]:
    """``parse(*args)`` run in a child process, with the child's CPU seconds; the version carries its payload, its
    rule indexes are built and frozen. Blocks the calling thread (call it from a worker thread). Raises what
    ``parse`` raised (`RulesError`) or `ValidationFailed`."""
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=_context()) as pool:
            payload, cpu = pool.submit(_timed, parse, *args).result()
    except BrokenProcessPool as error:
        raise ValidationFailed(f"the process validating the policy died ({error})") from None
    except OSError as error:
        raise ValidationFailed(f"no process to validate the policy ({error})") from None
    with heap.building():
        version = pickle.loads(payload)  # the supervisor's own pickle, from the child it started
        if not isinstance(version, PolicyVersion):
            raise ValidationFailed(f"the process validating the policy answered a {type(version).__name__}")
        version.policy.index()
    return PolicyVersion(version.policy, version.digest, payload), cpu


def load(path: str | Path) -> PolicyVersion:
    """`egress.gateway.reload.load_version` with the parse in a child: the file read, validated and hashed there,
    the indexes built here."""
    version, _ = in_child(read_version, str(path))
    return version


def parse(text: str, origin: str) -> tuple[PolicyVersion, float]:
    """`egress.gateway.reload.parse_version` with the parse in a child, and the CPU seconds of the whole (the
    child's parse and this thread's unpickling and indexing: the follower's log line, bench/rules.py)."""
    started = time.thread_time()
    version, child_cpu = in_child(text_version, text, origin)
    return version, child_cpu + time.thread_time() - started
