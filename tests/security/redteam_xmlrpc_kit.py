"""Programs of test_redteam_xmlrpc: Stratum's calls as XML-RPC over HTTP, with Python's standard library on both
ends (`xmlrpc.server` for the fake pool, `xmlrpc.client` for the miner). Fake both: no real mining software.

The pool (`pool_main`, in the internet namespace) registers ``mining.subscribe``, ``mining.authorize`` and
``mining.submit`` (``share accepted`` in its log); the miner (`miner_main URL`, in the sandbox) calls the three
and prints ``share answered`` when the submit's answer came.
"""

from __future__ import annotations

import sys
import threading
import xmlrpc.client
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer


class _Quiet(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/", "/RPC2")


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
    pool.serve_forever()


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    for spec in sys.argv[1:]:
        address, port = spec.rsplit(":", 1)
        threading.Thread(target=_serve, args=(address, int(port)), daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()


def miner_main() -> None:
    """``python -c '...miner_main()' URL``"""
    pool = xmlrpc.client.ServerProxy(sys.argv[1])
    try:
        print(f"answer {pool.mining.subscribe('cpuminer/2.5.1')!r}", flush=True)
        print(f"answer {pool.mining.authorize('wallet.worker', 'x')!r}", flush=True)
        answer = pool.mining.submit("wallet.worker", "job1", "00000000", "5f5e1000", "1a2b3c4d")
        print(f"answer {answer!r}", flush=True)
        if answer is True:
            print("share answered", flush=True)
    except (OSError, xmlrpc.client.Error) as exc:
        print(f"miner ended: {exc!r}", flush=True)
