"""A lab's teardown survives the pytest process being told to stop (SIGTERM, SIGHUP).

A lab outlived its pytest process once (a lockdown row run by hand, failing: gateway, site, upload and tcpdump still
running, the namespaces still there). Every path through an exception tears it down (`open_lab`,
`egress.lab.demo.running_gateway`, whose `egress.lab.netns.down` stops every process in the lab's namespaces), but a
signal whose default action ends the process runs no ``finally`` at all: a ``timeout N pytest ...`` run by hand
that ran out (SIGTERM), a closed terminal (SIGHUP), a CI job stopped. `terminated_as_interrupt` turns the first such
signal into a `KeyboardInterrupt` in the main thread, which pytest handles like Ctrl-C: the test's own ``finally``
blocks run, then every fixture's teardown (the module's labs included), then pytest exits. Later ones are ignored
until it is done, so a second signal cannot cut the teardown short.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """The process was told to stop (its signal's number in ``signum``): tear down, then stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name}: tearing the lab down before stopping")
        self.signum = signum


@contextlib.contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """Within the block, the first SIGTERM or SIGHUP raises `Terminated` in the main thread, and later ones are
    ignored; the handlers before are restored on the way out. A signal whose handler is not the default (someone
    else's, or ignored) is left alone, as is everything off the main thread (only it may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    ours = [signum for signum, handler in previous.items() if handler is signal.SIG_DFL]

    def stop(signum: int, frame: FrameType | None) -> None:
        for other in ours:
            signal.signal(other, signal.SIG_IGN)  # the teardown runs to its end
        raise Terminated(signum)

    for signum in ours:
        signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum in ours:
            signal.signal(signum, previous[signum])
