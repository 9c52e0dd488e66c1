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
import socket
import sys
import threading
import xml.etree.ElementTree as ET
import xmlrpc.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

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


def _result(method: str) -> Any:
    if method == "mining.subscribe":
        return ["08000002", 4]
    if method == "mining.authorize":
        return {"job_id": "job1", "prevhash": "00" * 32, "nbits": "1d00ffff", "ntime": "5f5e1000"}
    return True


class _Pool(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        how = "json" if self.headers.get("Content-Type", "").endswith("json") else "xmltext"
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        params, method = xmlrpc.client.loads(unwrap(body, how))
        print(f"pool got {method} {params} ({how})", flush=True)
        if method == "mining.submit":
            print("share accepted", flush=True)
        answer = wrap(xmlrpc.client.dumps((_result(str(method)),), methodresponse=True), how)
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if how == "json" else "text/xml")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    for spec in sys.argv[1:]:
        address, port = spec.rsplit(":", 1)
        server = ThreadingHTTPServer((address, int(port)), _Pool)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()


def request(host: str, method: str, params: tuple[Any, ...], how: str) -> bytes:
    body = wrap(xmlrpc.client.dumps(params, method), how)
    kind = "application/json" if how == "json" else "text/xml"
    head = f"POST /rpc HTTP/1.1\r\nHost: {host}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _exchange(reader: Any, conn: socket.socket, data: bytes) -> tuple[bytes, bytes] | None:
    conn.sendall(data)
    status = reader.readline().rstrip(b"\r\n")
    if not status:
        return None
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value)
    body = reader.read(length)
    return (status, body) if len(body) == length else None


def miner_main() -> None:
    """``python -c '...miner_main()' ADDRESS|- PORT HOST WRAP``"""
    address, port, host, how = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if address == "-":
        address = str(socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    try:
        with socket.create_connection((address, port), timeout=10) as conn:
            reader = conn.makefile("rb")
            for method, params in CALLS:
                got = _exchange(reader, conn, request(host, method, params, how))
                print(f"answer to {method}: {got!r}", flush=True)
                if got is None or not got[0].endswith(b" 200 OK"):
                    return
                result = xmlrpc.client.loads(unwrap(got[1], how))[0][0]
                if method == "mining.submit" and result is True:
                    print("share answered", flush=True)
    except OSError as exc:
        print(f"miner ended: {exc!r}", flush=True)
