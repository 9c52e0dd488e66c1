"""Programs of test_redteam_qpform: a pool's JSON-RPC calls as a ``multipart/form-data`` POST whose fields are
``Content-Transfer-Encoding: quoted-printable``, a fake pool that reads them, and the miner in the sandbox. Fake
both ends: no real mining software.

A multipart part may say how its content is coded (RFC 2045 §6; RFC 7578 §4.7 deprecates it for forms, but
readers still undo it): Go's ``mime/multipart`` (what ``net/http``'s ``Request.FormValue`` reads) decodes a
quoted-printable part transparently and hides the header; Python's ``email`` parser does it for
``get_payload(decode=True)``. So a field ``method`` whose content is ``=6D=69=6E=69=6E=67=2E=73=75=62=6D=69=74``
is ``mining.submit`` to the pool. The pool here reads the form with the standard library's ``email`` parser.

The pool (`pool_main ADDRESS:PORT...`) answers each call (``jsonrpc``, ``method``, ``params``, ``id`` fields)
with JSON-RPC 2.0; ``share accepted`` in its log for a submit. The miner (`miner_main ADDRESS|- PORT HOST CTE`)
sends Stratum's subscribe, authorize and submit on one keep-alive connection, each field coded as ``CTE`` says
(``quoted-printable``: every byte ``=XX``; ``base64``; ``rfc2231``: the content plain, each field's *name*
an RFC 2231 extended parameter, ``name*=utf-8''%6D%65%74%68%6F%64``, which Go's ``mime.ParseMediaType`` and the
``email`` parser's ``get_param`` decode; ``lf``: names and content plain, every line of the body ended by LF
alone, which Go's ``mime/multipart`` and the ``email`` parser accept; ``spaced``: plain, the ``Content-Type``'s
parameter written ``boundary = "XB"``, which the ``email`` parser reads; and the variants that try past the
fix: ``utf16``, ``nested``, ``trailing``, ``folded``, see `_part_head`),
and prints ``share answered`` when the share's answer came.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
from typing import Any

from tests.security.redteam_wire import PoolHandler, http_miner, miner_argv, serve_http

CALLS: list[tuple[str, Any]] = [
    ("mining.subscribe", ["cpuminer/2.5.1"]),
    ("mining.authorize", ["wallet.redteam", "x"]),
    ("mining.submit", ["wallet.redteam", "job1", "00000001", "5f5e1000", "deadbeef"]),
]
JOB = {"job_id": "job1", "prevhash": "00" * 32, "coinb1": "01", "coinb2": "02", "merkle_branch": [],
       "version": "20000000", "nbits": "1d00ffff", "ntime": "5f5e1000", "clean_jobs": True}  # fmt: skip
"""The pool's one job, handed over as a result object (no notify pairs in any answer)."""


def _result(method: str) -> object:
    if method == "mining.subscribe":
        return ["08000002", 4]
    if method == "mining.authorize":
        return JOB
    return True


def form_fields(body: bytes, content_type: str) -> dict[str, str]:
    """A multipart form's fields as the ``email`` parser reads them (each part's transfer coding undone, its
    charset decoded, a nested ``multipart/mixed`` part's parts named by their enclosing part)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    _read_parts(message, "", fields)
    return fields


def _read_parts(message: Any, name: str, fields: dict[str, str]) -> None:
    for part in message.iter_parts():
        own = part.get_param("name", header="content-disposition")
        named = str(own) if own is not None else name
        if part.is_multipart():
            _read_parts(part, named, fields)
            continue
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        fields[named] = payload.decode(part.get_content_charset() or "utf-8")


class _Pool(PoolHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server dispatches by this name)
        self.send_body(b"<html>hello</html>\n", "text/html")

    def do_POST(self) -> None:  # noqa: N802 (http.server dispatches by this name)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        fields = form_fields(body, self.headers.get("Content-Type", ""))
        method = fields["method"]
        print(f"pool got {method} {fields.get('params')}", flush=True)
        if method == "mining.submit":
            print("share accepted", flush=True)
        answer = {"jsonrpc": "2.0", "id": fields.get("id", "1"), "result": _result(method), "error": None}
        self.send_body(json.dumps(answer).encode(), "application/json")


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    serve_http(_Pool)


def coded(value: str, cte: str) -> str:
    raw = value.encode()
    if cte in ("rfc2231", "lf", "spaced"):
        return value
    if cte == "base64":
        return base64.b64encode(raw).decode()
    if cte == "utf16":
        return base64.b64encode(value.encode("utf-16")).decode()
    qp = "".join(f"={byte:02X}" for byte in raw)
    if cte == "nested":
        head = "Content-Disposition: attachment\r\nContent-Transfer-Encoding: quoted-printable\r\n"
        return f"--YB\r\n{head}\r\n{qp}\r\n--YB--"
    return qp


def _part_head(key: str, cte: str) -> str:
    """A part's head: its name plain and the content coded (``quoted-printable``, ``base64``), or (``rfc2231``) its
    name as an RFC 2231 extended parameter, every byte percent-encoded, and the content plain; the variants past
    the fix: ``utf16`` (base64 of UTF-16 text, ``charset=utf-16``), ``nested`` (a ``multipart/mixed`` part
    holding one quoted-printable part), ``trailing`` (quoted-printable, the boundary ``"XB "`` with a trailing
    space), ``folded`` (quoted-printable, the ``Content-Disposition`` folded over two lines)."""
    if cte == "rfc2231":
        return "Content-Disposition: form-data; name*=utf-8''" + "".join(f"%{byte:02X}" for byte in key.encode())
    if cte in ("lf", "spaced"):
        return f'Content-Disposition: form-data; name="{key}"\r\n'
    if cte == "utf16":
        return (
            f'Content-Disposition: form-data; name="{key}"\r\nContent-Type: text/plain; charset=utf-16\r\n'
            "Content-Transfer-Encoding: base64\r\n"
        )
    if cte == "nested":
        return f'Content-Disposition: form-data; name="{key}"\r\nContent-Type: multipart/mixed; boundary=YB\r\n'
    if cte == "folded":
        return f'Content-Disposition: form-data;\r\n name="{key}"\r\nContent-Transfer-Encoding: quoted-printable\r\n'
    coding = "quoted-printable" if cte == "trailing" else cte
    return f'Content-Disposition: form-data; name="{key}"\r\nContent-Transfer-Encoding: {coding}\r\n'


def request(name: str, method: str, params: Any, number: int, cte: str) -> bytes:
    fields = (("jsonrpc", "2.0"), ("method", method), ("params", json.dumps(params)), ("id", str(number)))
    delimiter = "--XB " if cte == "trailing" else "--XB"
    parts = "".join(f"{delimiter}\r\n{_part_head(key, cte)}\r\n{coded(value, cte)}\r\n" for key, value in fields)
    parts += "--XB--\r\n"
    if cte == "lf":  # every line of the body ended by LF alone
        parts = parts.replace("\r\n", "\n")
    boundary = {"spaced": 'boundary = "XB"', "trailing": 'boundary="XB "'}.get(cte, "boundary=XB")
    kind = f"Content-Type: multipart/form-data; {boundary}\r\n"
    return f"POST /rpc HTTP/1.1\r\nHost: {name}\r\n{kind}Content-Length: {len(parts)}\r\n\r\n{parts}".encode()


def miner_main() -> None:
    """``python -c '...miner_main()' ADDRESS|- PORT HOST CTE``"""
    address, port, host, (cte,) = miner_argv()
    calls = [(method, request(host, method, params, number, cte)) for number, (method, params) in enumerate(CALLS, 1)]
    http_miner(address, port, calls, _shared)


def _shared(method: str, body: bytes) -> bool:
    return method == "mining.submit" and json.loads(body).get("result") is True
