"""libnftables in this process (ctypes): the ``nft`` command without a process per call.

The gateway's supervisor runs two nft commands every second while it lives: the guard table's heartbeat
(`egress.nft.guard`) and the read of the drop counters (`egress.gateway.droplog`); a subprocess each (fork, exec,
nft's own start) was most of what an idle gateway spent. `Nft` runs the same command text through the library
``nft`` itself is built on (the same parser, the same netlink transaction), in the calling process's network
namespace only: a call for another namespace still goes through ``ip netns exec nft`` (`egress.nft.runner`).

Calls are serialised (one context, one lock); the library is called with the GIL released, so a slow kernel
stalls only the calling thread. `load` returns ``None`` where the library is missing: callers use the binary.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Final

LIBRARY: Final = "libnftables.so.1"
OUTPUT_JSON: Final = 1 << 4
"""``nft -j``."""
OUTPUT_NUMERIC_ALL: Final = (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10)
"""``nft -n``: protocols, priorities, symbols and times as numbers."""


class NftCallError(RuntimeError):
    """The library refused a command; ``stderr`` is what nft would have printed."""

    def __init__(self, stderr: str) -> None:
        super().__init__(stderr.strip() or "libnftables: command failed")
        self.stderr = stderr


class Nft:
    """One libnftables context, buffered output and errors; `run` is ``nft [-j -n] -f -`` on a script."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lock = threading.Lock()
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise OSError("libnftables: nft_ctx_new failed")
        if lib.nft_ctx_buffer_output(self._ctx) != 0 or lib.nft_ctx_buffer_error(self._ctx) != 0:
            lib.nft_ctx_free(self._ctx)
            raise OSError("libnftables: cannot buffer its output")

    def run(self, script: str, flags: int = 0) -> str:
        """``script``'s output (``flags``: `OUTPUT_JSON`, `OUTPUT_NUMERIC_ALL`); `NftCallError` if refused."""
        with self._lock:
            self._lib.nft_ctx_output_set_flags(self._ctx, flags)
            code = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            output = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            error = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if code != 0:
            raise NftCallError(error.decode(errors="replace"))
        return output.decode(errors="replace")


_loaded: dict[str, Nft | None] = {}
_load_lock = threading.Lock()


def load() -> Nft | None:
    """This process's context, made on first use; ``None`` if the library cannot be loaded."""
    with _load_lock:
        if "nft" not in _loaded:
            try:
                _loaded["nft"] = Nft(ctypes.CDLL(ctypes.util.find_library("nftables") or LIBRARY))
            except (OSError, AttributeError):  # no library, or one without these calls: the binary then
                _loaded["nft"] = None
        return _loaded["nft"]
