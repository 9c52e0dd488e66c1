"""Programs of test_redteam_xmlrpc: Stratum's calls as XML-RPC over HTTP, with Python's standard library on both
ends (`xmlrpc.server` for the fake pool, `xmlrpc.client` for the miner). Fake both: no real mining software.

The pool (`pool_main`, in the internet namespace) registers ``mining.subscribe``, ``mining.authorize`` and
``mining.submit`` (``share accepted`` in its log), ``system.multicall`` and a generic ``call(method, *params)``;
the miner (`miner_main URL [HOW]`, in the sandbox) calls the three and prints ``share answered`` when the submit's
answer came. ``HOW`` (`HOWS`) is how it writes them: as `xmlrpc.client` does, gzip-coded, inside one
``system.multicall``, as ``call``'s first argument, with the method name in pieces that Python's reader (expat)
joins (a prefixed tag, CDATA, a comment and a character reference, in UTF-16), or cut across two keep-alive POST
bodies, which this pool joins.
"""

from __future__ import annotations

import http.client
import sys
import threading
import urllib.parse
import xml.parsers.expat
import xmlrpc.client
from collections.abc import Callable
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

SUBSCRIBE = ("cpuminer/2.5.1",)
AUTHORIZE = ("wallet.worker", "x")
SUBMIT = ("wallet.worker", "job1", "00000000", "5f5e1000", "1a2b3c4d")


class _Quiet(SimpleXMLRPCRequestHandler):
    """Keep-alive (one handler per connection), and a lenient reader of a connection's bodies: a body that is no
    whole call is kept and joined to the next (answered by the no-op ``more``), as a pool that reads the bodies of
    one connection as a stream does."""

    rpc_paths = ("/", "/RPC2")
    protocol_version = "HTTP/1.1"
    pending = b""

    def decode_request_content(self, data: bytes) -> bytes | None:
        decoded = super().decode_request_content(data)
        if decoded is None:
            return None
        joined = self.pending + decoded
        try:
            xmlrpc.client.loads(joined)
        except (xml.parsers.expat.ExpatError, xmlrpc.client.ResponseError):
            self.pending = joined
            return xmlrpc.client.dumps((), "more").encode()
        self.pending = b""
        return joined


def _serve(address: str, port: int) -> None:
    pool = SimpleXMLRPCServer((address, port), requestHandler=_Quiet, logRequests=False, allow_none=True)

    def subscribe(*params: str) -> list[list[str] | str | int]:
        print(f"pool got mining.subscribe {params}", flush=True)
        return [["mining.notify", "ae6812eb"], "08000002", 4]

    def authorize(*params: str) -> bool:
        print(f"pool got mining.authorize {params}", flush=True)
        return True

    def submit(*params: str) -> bool:
        print(f"pool got mining.submit {params}", flush=True)
        print("share accepted", flush=True)
        return True

    pool.register_function(subscribe, "mining.subscribe")
    pool.register_function(authorize, "mining.authorize")
    pool.register_function(submit, "mining.submit")

    def call(*params: str) -> bool:
        # A generic dispatcher: the pool method's name is its first argument; it answers whether the call was taken.
        return bool(pool.funcs[params[0]](*params[1:]))

    pool.register_function(call, "call")
    pool.register_function(lambda: "more", "more")
    pool.register_multicall_functions()
    pool.serve_forever()


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    for spec in sys.argv[1:]:
        address, port = spec.rsplit(":", 1)
        threading.Thread(target=_serve, args=(address, int(port)), daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()


def _stdlib(url: str) -> object:
    pool = xmlrpc.client.ServerProxy(url)
    print(f"answer {pool.mining.subscribe(*SUBSCRIBE)!r}", flush=True)
    print(f"answer {pool.mining.authorize(*AUTHORIZE)!r}", flush=True)
    return pool.mining.submit(*SUBMIT)


def _gzip(url: str) -> object:
    transport = xmlrpc.client.Transport()
    transport.encode_threshold = 0  # every request body gzip-coded (Content-Encoding: gzip), as the server decodes
    pool = xmlrpc.client.ServerProxy(url, transport=transport)
    print(f"answer {pool.mining.subscribe(*SUBSCRIBE)!r}", flush=True)
    return pool.mining.submit(*SUBMIT)


def _multicall(url: str) -> object:
    calls = xmlrpc.client.MultiCall(xmlrpc.client.ServerProxy(url))
    calls.mining.subscribe(*SUBSCRIBE)
    calls.mining.authorize(*AUTHORIZE)
    calls.mining.submit(*SUBMIT)
    results = calls()
    answers = [results[index] for index in range(3)]  # MultiCallIterator: indexed, not typed as iterable
    print(f"answers {answers!r}", flush=True)
    return answers[-1]


def _wrapped(url: str) -> object:
    pool = xmlrpc.client.ServerProxy(url)
    print(f"answer {pool.call('mining.subscribe', *SUBSCRIBE)!r}", flush=True)
    return pool.call("mining.submit", *SUBMIT)


def _pieces(method: str, params: tuple[str, ...]) -> bytes:
    """The call with its name as ``<x:methodName>`` holding CDATA, a comment and ``&#x2e;``, in UTF-16."""
    body = xmlrpc.client.dumps(params, method).replace(
        "<?xml version='1.0'?>", '<?xml version="1.0" encoding="UTF-16"?>'
    )
    first, _, rest = method.partition(".")
    name = f'<x:methodName xmlns:x="urn:x"><![CDATA[{first}]]><!-- pool -->&#x2e;{rest}</x:methodName>'
    return body.replace(f"<methodName>{method}</methodName>", name).encode("utf-16")


def _cut(url: str) -> object:
    """Each call's body cut inside its method's name, the two halves POSTed one after the other on one connection.
    Authorize and submit only: their answers are booleans (subscribe's ``mining.notify`` pairs give the pool away
    in the answer, which is found whatever the request did)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=20)
    answer: object = None
    for method, params in (("mining.authorize", AUTHORIZE), ("mining.submit", SUBMIT)):
        body = xmlrpc.client.dumps(params, method).encode()
        at = body.index(b"mining.") + 4
        for piece in (body[:at], body[at:]):
            connection.request("POST", parts.path, piece, {"Content-Type": "text/xml", "Host": parts.netloc})
            (answer,), _ = xmlrpc.client.loads(connection.getresponse().read())
        print(f"answer {answer!r}", flush=True)
    return answer


def _raw(url: str) -> object:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=20)
    answer: object = None
    for method, params in (("mining.subscribe", SUBSCRIBE), ("mining.submit", SUBMIT)):
        headers = {"Content-Type": "text/xml; charset=utf-16", "Host": parts.netloc}
        connection.request("POST", parts.path, _pieces(method, params), headers)
        (answer,), _ = xmlrpc.client.loads(connection.getresponse().read())
        print(f"answer {answer!r}", flush=True)
    return answer


HOWS: dict[str, Callable[[str], object]] = {
    "stdlib": _stdlib,
    "gzip": _gzip,
    "multicall": _multicall,
    "pieces": _raw,
    "wrapped": _wrapped,
    "cut": _cut,
}


def miner_main() -> None:
    """``python -c '...miner_main()' URL [HOW]``"""
    how = sys.argv[2] if len(sys.argv) > 2 else "stdlib"
    try:
        answer = HOWS[how](sys.argv[1])
        print(f"answer {answer!r}", flush=True)
        if answer is True:
            print("share answered", flush=True)
    except (OSError, xmlrpc.client.Error, http.client.HTTPException) as exc:
        print(f"miner ended: {exc!r}", flush=True)
