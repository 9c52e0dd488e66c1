"""Programs of test_redteam_jsonwrap: Stratum's JSON-RPC calls carried as a *string* inside another document, a
fake pool that unwraps them with the standard library, and the miner in the sandbox. Fake both ends: no real
mining software.

- ``jsonstr``: the call as a JSON string value, ``{"payload": "{\\"id\\": 1, \\"method\\": \\"mining.subscribe\\",
  ...}"}``: what every JSON library writes when a message is encoded twice (a queue's or a webhook's envelope);
  the pool's ``json.loads`` twice.
- ``xmltext``: the call as the text of an XML element, ``<rpc><payload>{"id": 1, ...}</payload></rpc>``
  (``xml.sax.saxutils.escape``: quotes are left as they are in text); the pool reads it with ``ElementTree``.
- ``xmlattr``: the call as an attribute's value, ``<rpc payload="{&quot;id&quot;: 1, ...}"/>``
  (``xml.sax.saxutils.quoteattr``, ElementTree's writer alike: ``"`` as ``&quot;``).

The pool (`pool_main ADDRESS:PORT...`) answers each call wrapped the same way (``{"id": N, "result": ...,
"error": null}``; the job as a result object, no notify pairs), ``share accepted`` in its log for
``mining.submit``. The miner (`miner_main ADDRESS|- PORT HOST WRAP`) sends subscribe, authorize and submit as HTTP
POSTs on one keep-alive connection and prints ``share answered`` when the share's answer came.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from tests.security.redteam_wire import PoolHandler, http_miner, miner_argv, serve_http

CALLS: list[dict[str, Any]] = [
    {"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5.1"]},
    {"id": 2, "method": "mining.authorize", "params": ["wallet.redteam", "x"]},
    {"id": 3, "method": "mining.submit", "params": ["wallet.redteam", "job1", "00000001", "5f5e1000", "deadbeef"]},
]
KINDS = {"jsonstr": "application/json", "xmltext": "text/xml", "xmlattr": "application/xml"}


def wrap(message: dict[str, Any], how: str) -> bytes:
    text = json.dumps(message)
    if how == "jsonstr":
        return json.dumps({"payload": text}).encode()
    if how == "xmltext":
        return f"<?xml version='1.0'?><rpc><payload>{escape(text)}</payload></rpc>".encode()
    return f"<?xml version='1.0'?><rpc payload={quoteattr(text)}/>".encode()


def unwrap(body: bytes, how: str) -> Any:
    if how == "jsonstr":
        return json.loads(json.loads(body)["payload"])
    root = ET.fromstring(body)
    return json.loads((root.findtext("payload") if how == "xmltext" else root.get("payload")) or "")


def result(method: str) -> Any:
    """The pool's result for a call (also redteam_xmlwrap_kit's): extranonce1 and its size, the job as an object
    (no notify pairs), True for a share."""
    if method == "mining.subscribe":
        return ["08000002", 4]
    if method == "mining.authorize":
        return {"job_id": "job1", "prevhash": "00" * 32, "nbits": "1d00ffff", "ntime": "5f5e1000"}
    return True


class _Pool(PoolHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server dispatches by this name)
        kind = self.headers.get("Content-Type", "")
        how = next(name for name, value in KINDS.items() if value == kind)
        call = unwrap(self.rfile.read(int(self.headers.get("Content-Length", "0"))), how)
        method = call["method"]
        print(f"pool got {method} ({how})", flush=True)
        if method == "mining.submit":
            print("share accepted", flush=True)
        self.send_body(wrap({"id": call["id"], "result": result(method), "error": None}, how), kind)


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    serve_http(_Pool)


def request(host: str, call: dict[str, Any], how: str) -> bytes:
    body = wrap(call, how)
    head = f"POST /rpc HTTP/1.1\r\nHost: {host}\r\nContent-Type: {KINDS[how]}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def miner_main() -> None:
    """``python -c '...miner_main()' ADDRESS|- PORT HOST WRAP``"""
    address, port, host, (how,) = miner_argv()

    def shared(method: str, body: bytes) -> bool:
        return method == "mining.submit" and unwrap(body, how).get("result") is True

    http_miner(address, port, [(call["method"], request(host, call, how)) for call in CALLS], shared)
