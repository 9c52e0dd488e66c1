"""A child process that must not outlive the process that started it (the gateway's proxy workers, the API's
uvicorn workers): the kernel stops it when its parent dies, even by SIGKILL. Imports nothing of egress, so either
side can use it without bringing the other's dependencies (mitmproxy, uvicorn)."""

from __future__ import annotations

import ctypes
import os
import signal
from typing import Final

_PR_SET_PDEATHSIG: Final = 1


def die_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM (a graceful stop) when ``parent`` dies.

    The signal is tied to the thread that forked us: both parents start their workers from their main thread,
    which lives as long as they do. If the parent died before this call, it is too late for the kernel: stop now."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): {os.strerror(error)}")
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
