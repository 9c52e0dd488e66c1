"""The front's per-connection TLS work in one process, for instruction counts (issue 15, tlsconn2).

Each round is one new TLS connection's share of that work: the front's decision on a fresh copy of a real
ClientHello (OpenSSL's, 517 bytes, to allowed.test, bound to the address dialled: `Gate.sandbox`, `Gate.on_connect`
and the front's `_decided`, which parses the hello and runs the name detector; tests/proxy/test_gate_verdicts.py's
policy, the shipped lists) and the relay's shape watcher fed a recorded HTTPS connection's chunks
(tests/detect/tlsshape_traces.py, the real ServerHello, each record its own chunk). Compiled where
egress/detect/_tlsfast.c is built, the pure twins with ``EGRESS_TLS_PURE=1``. Run from the repository's root with
``PYTHONPATH=.`` (it reads the tests' traces and policy).

    valgrind --tool=cachegrind --cache-sim=no python bench/tlsconn_work.py 1
    valgrind --tool=cachegrind --cache-sim=no python bench/tlsconn_work.py 201

The difference of the two totals over 200 is the instructions per connection (start-up cancels out). A second
argument measures one part: ``decide`` (the front's decision, the hello's parse included), ``parse`` (the parse
alone) or ``watch`` (the shape watcher alone).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import sys
import time

if os.environ.get("EGRESS_TLS_PURE") == "1":  # the pure twins: the compiled module imports as if never built
    sys.modules["egress.detect._tlsfast"] = None  # type: ignore[assignment]

from egress.detect import tls, tlsfast
from egress.detect.names import make_name_detector
from egress.detect.registry import stream_detectors
from egress.detect.tlsshape import TlsShape
from egress.policy.loader import parse_policy
from egress.proxy.front import _decided
from egress.proxy.gate import Gate, Kind, flow_meta
from tests.detect import tlsshape_traces as traces
from tests.lists import shipped_lists
from tests.proxy.test_gate_verdicts import POLICY


def _hello() -> bytes:
    context = ssl.create_default_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    wire, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = context.wrap_bio(wire, out, server_hostname="allowed.test")
    with contextlib.suppress(ssl.SSLWantReadError):  # the hello is written; the handshake waits for the server
        conn.do_handshake()
    return out.read()


def _chunks() -> list[tuple[bool, bytes, float]]:
    hello, records = traces.HTTPS[0]
    chunks: list[tuple[bool, bytes, float]] = []
    first_server = True
    for ms, side, kind, length in records:
        if side == "s" and first_server:
            data = bytes.fromhex(hello)
            first_server = False
        else:
            data = bytes([kind, 3, 3]) + length.to_bytes(2) + bytes(length)
        chunks.append((side == "c", data, ms / 1000))
    return chunks


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    part = sys.argv[2] if len(sys.argv) > 2 else "all"
    hello, chunks = _hello(), _chunks()
    lists = shipped_lists()
    gate = Gate(
        parse_policy(POLICY, "bench"),
        lambda _sandbox, address: frozenset({"allowed.test"}) if address == "192.0.2.10" else frozenset(),
        make_name_detector(lists),
        stream_detectors(lists),
    )
    meta = flow_meta(("10.0.0.5", 40000), ("192.0.2.10", 443))
    started = time.process_time()
    for _ in range(rounds):
        fresh = bytes(bytearray(hello))  # a new object: the parse's one-answer memo does not hit
        if part == "parse":
            assert isinstance(tls.parse_client_hello(fresh), tls.ClientHello)
            continue
        if part == "watch":
            shape = TlsShape()
            for from_client, data, at in chunks:
                shape.feed(from_client, data, at)
            continue
        sandbox = gate.sandbox("10.0.0.5")
        assert sandbox is not None and gate.on_connect(sandbox, "192.0.2.10", 443).action.value == "allow"
        decision = _decided(fresh, gate, sandbox, meta)
        assert getattr(decision, "kind", None) is Kind.PASSTHROUGH, decision
        if part == "decide":
            continue
        shape = TlsShape()
        for from_client, data, at in chunks:
            shape.feed(from_client, data, at)
    spent = time.process_time() - started
    path = "compiled" if tlsfast.COMPILED is not None else "pure"
    print(f"{path}: {rounds} connections, {spent / rounds * 1e6:.1f} µs CPU each ({len(chunks)} chunks)")


if __name__ == "__main__":
    main()
