"""Validating a policy in a child process, for the gateway's reloads and its fleet follower.

Parsing a large policy (100,000 entries: seconds of CPU) in the supervisor would hold its interpreter lock that
long, and the resolver's answers, the event loop and the drop logger would wait behind it (issue 12: no DNS answer
delayed by more than 50 ms during an apply). A child process parses and validates the file or the text and hands
back the policy; the calling thread then builds only the rule indexes (`Policy.index`).

Children are forked from a fork server started on first use, which imports the loader once (forking the
multi-threaded supervisor itself is unsafe; spawning a fresh interpreter per validation costs more than the parse
of a small policy). One child per validation: its memory goes back when it ends. A child that cannot start, dies
or is killed fails the validation with `ValidationFailed`; a policy that does not validate raises the child's
`RulesError`, every problem with its file and line. Either way nothing is applied: the running policy stays.
"""

from __future__ import annotations

import functools
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from pathlib import Path

from egress.gateway.reload import PolicyVersion, ValidationFailed, read_version, text_version

PRELOAD = ["egress.gateway.reload"]
"""What the fork server imports once, so that a child starts with the loader in memory."""


@functools.cache
def _context() -> BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _timed(parse: Callable[..., PolicyVersion], *args: str) -> tuple[PolicyVersion, float]:
    """In the child: the version and the CPU seconds its parse took."""
    started = time.process_time()
    version = parse(*args)
    return version, time.process_time() - started


def in_child(parse: Callable[..., PolicyVersion], *args: str) -> tuple[PolicyVersion, float]:
    """``parse(*args)`` run in a child process, with the child's CPU seconds; the rule indexes not built. Blocks
    the calling thread (call it from a worker thread). Raises what ``parse`` raised (`RulesError`) or
    `ValidationFailed`."""
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=_context()) as pool:
            return pool.submit(_timed, parse, *args).result()
    except BrokenProcessPool as error:
        raise ValidationFailed(f"the process validating the policy died ({error})") from None
    except OSError as error:
        raise ValidationFailed(f"no process to validate the policy ({error})") from None


def load(path: str | Path) -> PolicyVersion:
    """`egress.gateway.reload.load_version` with the parse in a child: the file read, validated and hashed there,
    the indexes built here."""
    version, _ = in_child(read_version, str(path))
    version.policy.index()
    return version


def parse(text: str, origin: str) -> tuple[PolicyVersion, float]:
    """`egress.gateway.reload.parse_version` with the parse in a child, and the CPU seconds of the whole (the
    child's parse and this thread's indexing: the follower's log line, bench/rules.py)."""
    version, child_cpu = in_child(text_version, text, origin)
    started = time.thread_time()
    version.policy.index()
    return version, child_cpu + time.thread_time() - started
