"""Programs of test_redteam_xmlwrap: XML-RPC calls wrapped in another document, a fake pool that unwraps and reads
them with Python's own ``xmlrpc.client.loads``, and the miner in the sandbox. Fake both ends: no real mining
software.

- ``json``: the XML-RPC document as a JSON string, ``{"xmlrpc": "<?xml ...><methodCall>..."}``, written as Go's
  ``encoding/json`` ``Marshal`` writes it by default (``<``, ``>`` and ``&`` escaped as ``\\u003c``, ``\\u003e``,
  ``\\u0026``: its HTML-safe escaping); the pool's ``json.loads`` gives the document back.
- ``xmltext``: the XML-RPC document as the text of an element of an outer XML document (``<rpc><payload>&lt;?xml
  ...&lt;methodCall&gt;...</payload></rpc>``, what any XML writer makes of a string holding markup); the pool
  reads the outer document with ``xml.etree.ElementTree`` and the payload's text with ``xmlrpc.client.loads``.

The pool (`pool_main ADDRESS:PORT...`) answers each call with an XML-RPC ``methodResponse`` wrapped the same way;
``share accepted`` in its log for ``mining.submit``. The miner (`miner_main ADDRESS|- PORT HOST WRAP`) sends
Stratum's subscribe, authorize and submit as HTTP POSTs on one keep-alive connection and prints ``share answered``
when the share's answer came.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import xmlrpc.client
from typing import Any
from xml.sax.saxutils import escape

from tests.security.redteam_jsonwrap_kit import result
from tests.security.redteam_wire import PoolHandler, http_miner, miner_argv, serve_http

CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("mining.subscribe", ("cpuminer/2.5.1",)),
    ("mining.authorize", ("wallet.redteam", "x")),
    ("mining.submit", ("wallet.redteam", "job1", "00000001", "5f5e1000", "deadbeef")),
]


def wrap(document: str, how: str) -> bytes:
    """``document`` inside JSON (Go's default escaping) or as an outer XML element's text."""
    if how == "json":
        text = json.dumps({"xmlrpc": document})
        return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()
    return f"<?xml version='1.0'?><rpc><payload>{escape(document)}</payload></rpc>".encode()


def unwrap(body: bytes, how: str) -> str:
    if how == "json":
        return str(json.loads(body)["xmlrpc"])
    return ET.fromstring(body).findtext("payload") or ""


class _Pool(PoolHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server dispatches by this name)
        how = "json" if self.headers.get("Content-Type", "").endswith("json") else "xmltext"
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        params, method = xmlrpc.client.loads(unwrap(body, how))
        print(f"pool got {method} {params} ({how})", flush=True)
        if method == "mining.submit":
            print("share accepted", flush=True)
        answer = wrap(xmlrpc.client.dumps((result(str(method)),), methodresponse=True), how)
        self.send_body(answer, "application/json" if how == "json" else "text/xml")


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    serve_http(_Pool)


def request(host: str, method: str, params: tuple[Any, ...], how: str) -> bytes:
    body = wrap(xmlrpc.client.dumps(params, method), how)
    kind = "application/json" if how == "json" else "text/xml"
    head = f"POST /rpc HTTP/1.1\r\nHost: {host}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def miner_main() -> None:
    """``python -c '...miner_main()' ADDRESS|- PORT HOST WRAP``"""
    address, port, host, (how,) = miner_argv()

    def shared(method: str, body: bytes) -> bool:
        got = xmlrpc.client.loads(unwrap(body, how))[0][0]  # every answer read, the share's judged
        return method == "mining.submit" and got is True

    http_miner(address, port, [(method, request(host, method, params, how)) for method, params in CALLS], shared)
