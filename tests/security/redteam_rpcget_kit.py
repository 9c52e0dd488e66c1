"""Programs of test_redteam_rpcget: a pool's JSON-RPC calls carried as HTTP parameters rather than a JSON body,
the "JSON-RPC over HTTP" GET binding (JSON-RPC 1.1 WD §6.3, jsonrpc4j's ``GET ?method=..&params=..&id=``) and
its form-encoded POST twin (``application/x-www-form-urlencoded``, what PHP and Rails JSON-RPC endpoints take).
Fake both ends: no real mining software.

The pool (`pool_main ADDRESS:PORT...`, in the internet namespace) answers ``GET /`` with a page (the control) and
every request whose query or form body names a ``method`` as a JSON-RPC 2.0 call: Stratum's ``mining.subscribe``,
``mining.authorize``, ``mining.submit`` (``share accepted`` in its log), XMRig's ``login``/``submit``, and
Ethereum's ``eth_submitLogin``/``eth_getWork``/``eth_submitWork``; its answers are JSON (``{"jsonrpc":"2.0",
"id":..,"result":..}``), the job handed over as an object in a result.

The miner (`miner_main ADDRESS|- PORT HOST HOW DIALECT`, in the sandbox) sends one plain GET first (``first answer
...`` on its output: the control), then its dialect's calls the way ``HOW`` says (``get``: the call in the query
string; ``form``: in a form-encoded POST body), one keep-alive connection, and prints ``share answered`` when the
pool accepted its share.
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from tests.security.redteam_wire import PoolHandler, http_calls, http_exchange, miner_argv, serve_http

JOB = {"job_id": "job1", "prevhash": "00" * 32, "coinb1": "01", "coinb2": "02", "merkle_branch": [],
       "version": "20000000", "nbits": "1d00ffff", "ntime": "5f5e1000", "clean_jobs": True}  # fmt: skip
"""The pool's one job, handed over as a result object (Stratum's notify parameters, named)."""

DIALECTS: dict[str, list[tuple[str, Any]]] = {
    "stratum": [
        ("mining.subscribe", ["cpuminer/2.5.1"]),
        ("mining.authorize", ["wallet.redteam", "x"]),
        ("mining.submit", ["wallet.redteam", "job1", "00000001", "5f5e1000", "deadbeef"]),
    ],
    "xmrig": [
        ("login", {"login": "wallet", "pass": "x", "agent": "XMRig/6.21.0", "algo": ["rx/0"]}),
        ("submit", {"id": "w1", "job_id": "job1", "nonce": "deadbeef", "result": "00" * 32}),
    ],
    "ethereum": [
        ("eth_submitLogin", ["0xwallet"]),
        ("eth_getWork", []),
        ("eth_submitWork", ["0x0000000000000001", "0x" + "00" * 32, "0x" + "11" * 32]),
    ],
}
SHARES = {"mining.submit", "submit", "eth_submitWork"}
"""The calls that hand in a share."""
EVASIONS = ("encoded", "multipart", "chunked", "pipelined", "header-path")
"""``HOW``s past the plain binding (Stratum only): ``encoded`` (the name double percent-encoded under a key
``METHOD``, ``;`` separators, a ``%00``, overlong UTF-8 for its dot), ``multipart`` (a multipart/form-data POST),
``chunked`` (the form chunked 3 bytes at a time), ``pipelined`` (every call written at once on the connection, a
benign GET first), ``header-path`` (the name in an ``X-Method`` header and as the path's last segment, the
params in a cookie)."""


def _result(method: str) -> object:
    if method == "mining.subscribe":
        return ["08000002", 4]  # extranonce1 and its size; the job comes as a result of its own (no notify pairs)
    if method == "login":
        return {"id": "w1", "job": {"blob": "07" * 38, "job_id": "job1", "target": "b88d0600"}, "status": "OK"}
    if method == "eth_getWork":
        return ["0x" + "22" * 32, "0x" + "33" * 32, "0x" + "00" * 4 + "ff" * 28]
    if method == "mining.authorize":
        return JOB
    return True


class _Pool(PoolHandler):
    def _fields(self, body: bytes) -> dict[str, list[str]]:
        """What this lenient pool reads of a call: the query's and a form's pairs (keys in any case, ``;`` too,
        decoded while they change), a multipart form's fields, an ``X-Method`` header, the path's last segment,
        cookies."""
        fields: dict[str, list[str]] = {}
        kind = self.headers.get("Content-Type", "")
        texts = [urlsplit(self.path).query, self.headers.get("Cookie", "").replace("; ", "&")]
        if kind.startswith("multipart/"):
            for part in body.split(b"--" + kind.split("boundary=")[1].encode())[1:-1]:
                head, _, content = part.partition(b"\r\n\r\n")
                name = head.split(b'name="')[1].split(b'"')[0].decode()
                fields.setdefault(name, []).append(content.removesuffix(b"\r\n").decode())
        else:
            texts.append(body.decode("latin-1"))
        for text in texts:
            for key, values in parse_qs(text.replace(";", "&")).items():
                for value in values:
                    while "%" in value and unquote(value, "latin-1") != value:
                        value = unquote(value, "latin-1")
                    value = value.replace("\x00", "").encode("latin-1").replace(b"\xc0\xae", b".").decode()
                    fields.setdefault(key.lower(), []).append(value)
        if "x-method" in self.headers:
            fields.setdefault("method", []).append(self.headers["X-Method"])
        return fields

    def _call(self, fields: dict[str, list[str]]) -> None:
        method = fields["method"][0]
        params = json.loads(fields.get("params", ["[]"])[0])
        print(f"pool got {method} {params}", flush=True)
        if method in SHARES:
            print("share accepted", flush=True)
        answer = {"jsonrpc": "2.0", "id": fields.get("id", ["1"])[0], "result": _result(method), "error": None}
        self.send_body(json.dumps(answer).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802 (http.server dispatches by this name)
        fields = self._fields(b"")
        if "method" in fields:
            self._call(fields)
        else:
            self.send_body(b"<html>hello</html>\n", "text/html")

    def do_POST(self) -> None:  # noqa: N802 (http.server dispatches by this name)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._call(self._fields(body))


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    serve_http(_Pool)


def _request(how: str, name: str, method: str, params: Any, number: int) -> bytes:
    """One call as ``HOW`` spells it (`EVASIONS`, or ``get``/``form``)."""
    call = urlencode({"jsonrpc": "2.0", "method": method, "params": json.dumps(params), "id": str(number)})
    head = f"Host: {name}\r\n"
    if how == "get" or how == "pipelined":
        return f"GET /rpc?{call} HTTP/1.1\r\n{head}\r\n".encode()
    if how == "encoded":
        spelled = method.replace(".", "%C0%AE%00").replace("%", "%25")  # double-encoded, its dot overlong, a NUL
        query = f"jsonrpc=2.0;METHOD={spelled};params={quote(json.dumps(params))};id={number}"
        return f"GET /rpc?{query} HTTP/1.1\r\n{head}\r\n".encode()
    if how == "header-path":
        cookie = urlencode({"params": json.dumps(params), "id": str(number)}).replace("&", "; ")
        return f"GET /rpc/{method} HTTP/1.1\r\n{head}X-Method: {method}\r\nCookie: {cookie}\r\n\r\n".encode()
    if how == "multipart":
        parts = (
            "".join(
                f'--XB\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
                for key, value in (
                    ("jsonrpc", "2.0"),
                    ("method", method),
                    ("params", json.dumps(params)),
                    ("id", number),
                )
            )
            + "--XB--\r\n"
        )
        kind = "Content-Type: multipart/form-data; boundary=XB\r\n"
        return f"POST /rpc HTTP/1.1\r\n{head}{kind}Content-Length: {len(parts)}\r\n\r\n{parts}".encode()
    kind = "Content-Type: application/x-www-form-urlencoded\r\n"
    if how == "chunked":
        chunks = "".join(f"{len(call[at : at + 3]):x}\r\n{call[at : at + 3]}\r\n" for at in range(0, len(call), 3))
        return f"POST /rpc HTTP/1.1\r\n{head}{kind}Transfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n".encode()
    return f"POST /rpc HTTP/1.1\r\n{head}{kind}Content-Length: {len(call)}\r\n\r\n{call}".encode()


def miner_main() -> None:
    """``python -c '...miner_main()' ADDRESS|- PORT HOST HOW DIALECT``"""
    address, port, name, (how, dialect) = miner_argv()
    try:
        with socket.create_connection((address, port), timeout=10) as conn:
            reader = conn.makefile("rb")
            first = http_exchange(reader, conn, f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
            print(f"first answer {first[0] if first else None!r}", flush=True)
            calls = [(call[0], _request(how, name, *call, n)) for n, call in enumerate(DIALECTS[dialect], 1)]
            if how == "pipelined":  # every call at once, behind a benign GET; then each answer in turn
                page = f"GET /?page=2 HTTP/1.1\r\nHost: {name}\r\n\r\n".encode()
                conn.sendall(page + b"".join(request for _, request in calls))
                print(f"page answer {http_exchange(reader, conn, b'')!r}", flush=True)
                calls = [(method, b"") for method, _ in calls]
            http_calls(reader, conn, calls, _shared)
    except OSError as exc:
        print(f"miner ended: {exc!r}", flush=True)


def _shared(method: str, body: bytes) -> bool:
    return method in SHARES and json.loads(body).get("result") is True
