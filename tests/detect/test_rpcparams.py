"""Tests for egress.detect.rpcparams: a pool's JSON-RPC calls as HTTP parameters (red team 5), each spelling a
lenient server reads, found by the pool detectors on both paths (the capture scanner's HTTP stream and the
gateway's `egress.proxy.mitm.inspect.read`); searches, pages and ordinary forms not."""

from __future__ import annotations

import base64
import gzip
import json
from urllib.parse import quote, urlencode

import pytest

from egress.detect.base import Category, Finding
from egress.detect.engine import FlowInspector
from egress.detect.registry import MINING
from egress.detect.rpcparams import call_text, pool_method
from egress.proxy.mitm.inspect import Message, inspect_exchange, read
from tests.detect.feeding import META

SUBMIT = ["wallet.redteam", "job1", "00000001", "5f5e1000", "deadbeef"]
CALL = urlencode({"jsonrpc": "2.0", "method": "mining.submit", "params": json.dumps(SUBMIT), "id": "3"})
FORM = "application/x-www-form-urlencoded"
XMRIG_LOGIN = {"login": "wallet", "pass": "x", "agent": "XMRig/6.21.0"}


Request = tuple[str, tuple[tuple[str, str], ...], bytes]
"""(start line, header fields, body)."""


def _request(target: str, *fields: tuple[str, str], body: bytes = b"", method: str = "") -> Request:
    return (f"{method or ('POST' if body else 'GET')} {target} HTTP/1.1", (("Host", "pool.test"), *fields), body)


def _form(body: str | bytes, kind: str = FORM, *fields: tuple[str, str]) -> Request:
    data = body.encode() if isinstance(body, str) else body
    return _request("/rpc", ("Content-Type", kind), *fields, body=data)


def _multipart(
    rest: bytes, name: bytes = b'name="method"', kind: str = "multipart/form-data; boundary=XX", head: bytes = b""
) -> Request:
    """A multipart form of one field: ``Content-Disposition: form-data; {name}``, then ``head``'s lines, then
    ``rest`` (the rest of the part's head, its blank line and its content)."""
    disposition = b"Content-Disposition: form-data; " + name + b"\r\n" + (head + b"\r\n" if head else b"")
    return _form(b"--XX\r\n" + disposition + rest + b"\r\n--XX--\r\n", kind)


def _wire(request: Request, chunked: bool = False) -> bytes:
    start, fields, body = request
    lines = [start, *(f"{name}: {value}" for name, value in fields)]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        framed = b"".join(
            b"%x\r\n%s\r\n" % (len(body[at : at + 7]), body[at : at + 7]) for at in range(0, len(body), 7)
        )
        body = framed + b"0\r\n\r\n"
    elif body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def _scanned(stream: bytes) -> Finding | None:
    """The capture scanner's reading: the request stream through the detectors, as `egress scan` feeds a flow."""
    inspector = FlowInspector(META, MINING)
    inspector.feed_stream(True, stream)
    return inspector.close()


def _gateway(request: Request) -> Finding | None:
    """The gateway's reading (the front's fast path and mitmproxy's addon share `read`)."""
    start, fields, body = request
    query = start.split(" ")[1].partition("?")[2].encode("utf-8", "surrogateescape")
    return inspect_exchange(META, MINING, read(Message(start, fields, body, (), query)))


SPELLINGS = {
    "get-binding": _request(f"/rpc?{CALL}"),
    "form": _form(CALL),
    "form-no-content-type": _request("/rpc", body=CALL.encode()),
    "double-encoded": _request("/rpc?method=mining%252Esubmit&params=%5B%5D"),
    "triple-encoded": _request("/rpc?method=mining%25252Esubmit"),
    "overlong-utf8": _request("/rpc?method=mining%C0%AEsubmit"),
    "nul-in-name": _request("/rpc?method=mining.%00submit"),
    "iis-unicode": _request("/rpc?method=mining%u002esubmit"),
    "html-entity-in-form": _form("method=mining%26%2346%3Bsubmit&params=%5B%5D"),
    "html-named-entity": _form("method=mining%26period%3Bsubmit"),
    "key-upper": _request("/rpc?METHOD=mining.submit"),
    "key-mixed": _request("/rpc?Method=mining.submit"),
    "key-array": _request("/rpc?method[]=mining.submit"),
    "key-encoded": _request("/rpc?%6D%65%74%68%6F%64=mining.submit"),
    "value-upper": _request("/rpc?method=MINING.SUBMIT"),
    "blank-inside-name": _request("/rpc?method=mining.%20sub%09mit"),
    "fullwidth-dot": _request("/rpc?method=mining%EF%BC%8Esubmit"),
    "utf16-value": _request("/rpc?method=%FF%FEm%00i%00n%00i%00n%00g%00.%00s%00u%00b%00m%00i%00t%00"),
    "key-nul": _request("/rpc?meth%00od=mining.submit"),
    "key-method-name": _request("/rpc?methodName=mining.submit"),
    "jsonrpc-method-header": _request("/rpc", ("X-JSONRPC-Method", "mining.submit")),
    "html-reference-without-semicolon": _form("method=mining%26%2346submit"),
    "method-in-query-params-in-form": _request("/rpc?method=mining.submit", body=b"params=%5B%5D", method="POST"),
    "xmrig-json5-params": _request("/rpc?method=login&params=%7Blogin:'w',pass:'x',agent:'XMRig'%7D"),
    "name-split-over-two-pairs": _request("/rpc?method=mining.&method=submit"),
    "x-method-header": _request("/rpc?params=%5B%5D", ("X-Method", "mining.submit")),
    "x-rpc-method-header": _request("/rpc", ("X-RPC-Method", "mining.authorize")),
    "cookie": _request("/rpc", ("Cookie", "session=1; method=mining.submit")),
    "path-binding": _request("/rpc/mining.submit?params=%5B%5D"),
    "path-binding-alone": _request("/rpc/mining.authorize"),
    "path-matrix": _request("/rpc/mining.submit;jsessionid=AB12"),
    "matrix-pair": _request("/rpc;method=mining.submit"),
    "semicolon-separators": _request("/rpc?jsonrpc=2.0;method=mining.submit;id=3"),
    "fragment": _request("/rpc?id=1#method=mining.submit"),
    "plus-for-space": _request("/rpc?method=+mining.submit+"),
    "whole-query-encoded": _request("/rpc%3Fmethod%3Dmining.subscribe"),
    "encoded-ampersand": _request("/rpc?x=1%26method%3Dmining.submit"),
    "other-key-jsonrpc-shape": _request("/rpc?jsonrpc=2.0&m=mining.submit&id=1"),
    "params-indexed": _request("/rpc?m=mining.submit&params[0]=w&params[1]=job1"),
    "form-utf16": _form("method=mining.submit&params=[]".encode("utf-16"), f"{FORM}; charset=utf-16"),
    "form-utf16-no-charset": _form("method=mining.submit".encode("utf-16-le")),
    "multipart": _form(
        b'--XX\r\nContent-Disposition: form-data; name="method"\r\n\r\nmining.submit\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="params"\r\n\r\n[]\r\n--XX--\r\n',
        "multipart/form-data; boundary=XX",
    ),
    "multipart-quoted-printable": _multipart(
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=6D=69=6E=69=6E=67=2E=73=75=62=6D=69=74"
    ),
    "multipart-base64": _multipart(b"Content-Transfer-Encoding: base64\r\n\r\nbWluaW5nLnN1Ym1pdA=="),
    "multipart-rfc2231-name": _multipart(b"\r\nmining.submit", name=b"name*=utf-8''%6D%65%74%68%6F%64"),
    "multipart-rfc2231-continued": _multipart(b"\r\nmining.submit", name=b"name*0*=utf-8''%6D%65; name*1=thod"),
    "multipart-lf": _form(
        b'--XX\nContent-Disposition: form-data; name="method"\n\nmining.submit\n--XX--\n',
        "multipart/form-data; boundary=XX",
    ),
    "multipart-spaced-boundary": _multipart(b"\r\nmining.submit", kind='multipart/form-data; boundary = "XX"'),
    "multipart-boundary-trailing-space": _form(
        b'--XX \r\nContent-Disposition: form-data; name="method"\r\n\r\nmining.submit\r\n--XX --\r\n',
        'multipart/form-data; boundary="XX "',
    ),
    "multipart-part-utf16": _multipart(
        b"Content-Type: text/plain; charset=utf-16\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode("mining.submit".encode("utf-16"))
    ),
    "multipart-nested-mixed": _form(
        b'--XX\r\nContent-Disposition: form-data; name="method"\r\nContent-Type: multipart/mixed; boundary=YY\r\n'
        b"\r\n--YY\r\nContent-Disposition: attachment\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"bWluaW5nLnN1Ym1pdA==\r\n--YY--\r\n--XX--\r\n",
        "multipart/form-data; boundary=XX",
    ),
    "multipart-folded-head": _multipart(
        b"\r\n=6D=69=6E=69=6E=67=2E=73=75=62=6D=69=74", head=b"Content-Transfer-Encoding:\r\n quoted-printable"
    ),
    "gzip-form": _form(gzip.compress(CALL.encode()), FORM, ("Content-Encoding", "gzip")),
    "xmrig-login-json-params": _request("/rpc?" + urlencode({"method": "login", "params": json.dumps(XMRIG_LOGIN)})),
    "xmrig-login-php-params": _request(
        "/rpc?method=login&" + "&".join(f"params[{key}]={quote(value)}" for key, value in XMRIG_LOGIN.items())
    ),
    "xmrig-login-flat-pairs": _form(urlencode({"method": "login", **XMRIG_LOGIN})),
    "xmrig-keepalived": _request("/rpc?method=keepalived&id=1"),
    "getwork": _request("/?method=getwork&params=%5B%5D&id=1"),
    "getblocktemplate-path": _request("/getblocktemplate?jsonrpc=1.0&id=1"),
    "eth-submit-work": _request("/?method=eth_submitWork&params=" + quote(json.dumps(["0x1", "0x2", "0x3"]))),
    "eth-path": _request("/eth_getWork"),
}


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_a_call_as_parameters_is_mining_on_both_paths(name: str) -> None:
    request = SPELLINGS[name]
    for stream in (_wire(request), _wire(request, chunked=True)):
        scanned = _scanned(stream)
        assert scanned is not None and scanned.category is Category.MINING, (name, stream, scanned)
    gateway = _gateway(request)
    assert gateway is not None and gateway.category is Category.MINING, (name, gateway)


def test_pipelined_calls_on_one_connection_are_each_read() -> None:
    benign = _wire(_request("/index.html?page=2"))
    calls = b"".join(_wire(_request(f"/rpc?{call}")) for call in ("method=mining.subscribe", CALL))
    found = _scanned(benign * 3 + calls)
    assert found is not None and found.category is Category.MINING
    assert b"mining.subscribe" in found.evidence.encode()


BENIGN = {
    "search": _request("/search?q=mining.submit"),
    "search-form": _form("search=mining.submit&page=2"),
    "wiki-page": _request("/wiki/Getblocktemplate"),
    "project-page": _request("/acassen/keepalived"),
    "getwork-page": _request("/docs/getwork"),
    "login-form": _form("method=login&user=alice&password=x"),
    "node-rpc": _request("/?method=getmininginfo&id=1&jsonrpc=2.0"),
    "http-method-override": _request("/api", ("X-HTTP-Method-Override", "DELETE")),
    "cors": _request("/api", ("Access-Control-Request-Method", "POST"), method="OPTIONS"),
    "id-only": _request("/item?id=7&name=mining.submit"),
    "multipart-upload-quoted-printable": _multipart(
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nmining.submit is a Stratum method=2E",
        name=b'name="comment"',
    ),
    "multipart-upload-malformed": _form(b"--XX\r\nno head\r\n--XX", "multipart/form-data; boundary*=XX"),
}


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_searches_pages_and_forms_are_no_call(name: str) -> None:
    request = BENIGN[name]
    assert _scanned(_wire(request)) is None, name
    assert _gateway(request) is None, name


def test_the_name_sets_are_the_pool_detectors() -> None:
    assert pool_method("mining.submit") == "mining.submit"
    assert pool_method("Mining.Notify") == "mining.notify"
    assert pool_method("ETH_GETWORK") == "eth_getWork"
    assert pool_method("login") == "login"
    assert pool_method("mining.") is None
    assert pool_method("getmininginfo") is None


def test_the_rebuilt_call_carries_params_and_the_other_pairs() -> None:
    text = call_text(b"/rpc?" + CALL.encode())
    assert json.loads(text) == {"jsonrpc": 2.0, "id": 3, "method": "mining.submit", "params": SUBMIT}
    assert call_text(b"/rpc?q=x") == b""


@pytest.mark.parametrize(
    "target",
    [b"/rpc?params=" + b"[" * 5000, b"/rpc?method=mining.submit&params=" + b"[" * 5000, b"/?" + b"%25" * 3000],
)
def test_hostile_values_are_read_without_error(target: bytes) -> None:
    call_text(target)
