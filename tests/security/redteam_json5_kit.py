"""Programs of test_redteam_json5: a fake Stratum pool whose JSON reader is lenient the way common JSON libraries
are when asked to be (Gson's lenient mode, Jackson's ALLOW_COMMENTS / ALLOW_UNQUOTED_FIELD_NAMES /
ALLOW_SINGLE_QUOTES, JSON5 readers: comments, unquoted keys, single quotes, ``\\x`` escapes; Go's encoding/json:
keys matched without regard to case), and the miner in the sandbox that talks to it, over a raw TCP stream. Fake
both: no real mining software.

The pool (`pool_main`, in the internet namespace) reads newline-delimited messages, `lenient` turns each into
standard JSON, answers subscribe, authorize and submit (``share accepted`` in its log), its answers written the
same lenient way. The miner (`miner_main`, in the sandbox) writes its three calls as HOW says (`SHAPES`) and
prints ``share answered`` when the submit's answer came.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator

from tests.security.redteam_wire import SUBMIT_ID, miner_argv, serve_pools, stratum_messages


def _unquoted(text: str) -> str:
    return re.sub(r'"([A-Za-z_][A-Za-z0-9_]*)":', r"\1:", text)


SHAPES: dict[str, Callable[[str], str]] = {
    "plain": lambda text: text,
    "comment-after-key": lambda text: text.replace('"method":', '"method"/**/:'),
    "unquoted-keys": _unquoted,
    "single-quotes": lambda text: text.replace('"', "'"),
    "hex-escapes": lambda text: text.replace("mining.", "min\\x69ng."),
    "key-in-capitals": lambda text: text.replace('"method"', '"METHOD"'),
    # Past the fix (lenient): the shapes together, a mixed-case bare key with a comment before its colon.
    "all-at-once": lambda text: (
        _unquoted(text).replace("method:", "MeThOd/* , */:").replace("mining.", "min\\x69ng.").replace('"', "'")
    ),
}


def lenient(text: str) -> object:
    """``text`` read as the lenient libraries above read it (enough of them for the shapes here)."""
    text = re.sub(r"/\*.*?\*/", "", text)
    text = text.replace("'", '"')
    text = re.sub(r"([{,]\s*)([A-Za-z_][A-Za-z0-9_]*)\s*:", r'\1"\2":', text)
    text = re.sub(r"\\x([0-9a-fA-F]{2})", r"\\u00\1", text)
    value = json.loads(text)
    return {str(k).lower(): v for k, v in value.items()} if isinstance(value, dict) else value


def _lines(conn: socket.socket) -> Iterator[str]:
    buf = b""
    while data := conn.recv(4096):
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode()


def _serve(conn: socket.socket) -> None:
    for line in _lines(conn):
        message = lenient(line)
        assert isinstance(message, dict)
        method = message.get("method")
        print(f"pool got {method}", flush=True)
        result: object = [[["mining.notify", "ae6812eb"]], "08000002", 4] if method == "mining.subscribe" else True
        answer = json.dumps({"id": message.get("id"), "result": result, "error": None}, separators=(",", ":"))
        conn.sendall(_unquoted(answer).replace('"', "'").encode() + b"\n")
        if method == "mining.submit":
            print("share accepted", flush=True)


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    serve_pools(_serve)


def miner_main() -> None:
    """``python -c '...miner_main()' ADDRESS|- PORT HOST HOW``"""
    address, port, _host, (how,) = miner_argv()
    try:
        with socket.create_connection((address, port), timeout=15) as sock:
            lines = _lines(sock)
            for call in stratum_messages():
                sock.sendall(SHAPES[how](json.dumps(call, separators=(",", ":"))).encode() + b"\n")
                line = next(lines, None)
                print(f"answer {line!r}", flush=True)
                if line is None:
                    return
                answer = lenient(line)
                if isinstance(answer, dict) and answer.get("id") == SUBMIT_ID and answer.get("result") is True:
                    print("share answered", flush=True)
    except (OSError, ValueError) as exc:
        print(f"miner ended: {exc!r}", flush=True)
