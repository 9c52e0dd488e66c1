"""Stratum framings on an allowed network port (issue 9, point 3), end to end against a lenient pool.

The pool is the attacker's: a Stratum v1 server in the internet namespace that reads what a lenient JSON reader
reads (it drops NULs and byte-order marks, decodes UTF-16/32, skips any junk before ``{``/``[``, takes
concatenated values and batches, and understands ``\\u`` escapes, as ``json`` does). A network rule allows
198.18.10.33:3333, the way rules/lab-policy.yaml allows the pool's address: only the detectors can stop it.
Ground truth for each variant: the pool's own log (no subscription, no authorization, no share accepted), the
capture on the internet side (no payload byte to the pool), and the record (``mining``). A control proves the
path: benign JSON-RPC to the same pool gets through and is answered.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator

import pytest

from egress.lab import netns
from tests.security.conftest import LabFactory
from tests.security.harness import ROOT, Attacker, SecurityLab, report

pytestmark = pytest.mark.security

POOL_ADDRESS = "198.18.10.33"
POOL_PORT = 3333
LENIENT_POOL = r'''
import json, socket, sys, threading
DROP = (b"\x00", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
def values(buf):
    """Every JSON value in buf, skipping junk before each one (what a lenient reader accepts)."""
    text = bytes(buf)
    for mark in DROP:
        text = text.replace(mark, b"")
    text = text.decode("utf-8", "replace")
    decoder, pos, out = json.JSONDecoder(), 0, []
    while True:
        starts = [i for i in (text.find("{", pos), text.find("[", pos)) if i >= 0]
        if not starts:
            return out
        try:
            value, pos = decoder.raw_decode(text, min(starts))
        except ValueError:
            pos = min(starts) + 1
            continue
        out.extend(value if isinstance(value, list) else [value])
def serve(conn, peer):
    buf, seen = bytearray(), 0
    with conn:
        while data := conn.recv(65536):
            print(f"{peer} received {len(data)} bytes", flush=True)
            buf += data
            found = values(buf)
            for message in found[seen:]:
                if not isinstance(message, dict):
                    continue
                method, rid = message.get("method"), message.get("id")
                if method == "mining.subscribe":
                    print(f"{peer} subscribed", flush=True)
                    reply = {"id": rid, "result": [[["mining.notify", "1"]], "08000002", 4], "error": None}
                elif method == "mining.authorize":
                    print(f"{peer} authorized", flush=True)
                    reply = {"id": rid, "result": True, "error": None}
                elif method == "mining.submit":
                    print(f"{peer} share accepted", flush=True)
                    reply = {"id": rid, "result": True, "error": None}
                else:
                    print(f"{peer} answered {method}", flush=True)
                    reply = {"id": rid, "result": "ok", "error": None}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            seen = len(found)
listener = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
while True:
    conn, peer = listener.accept()
    threading.Thread(target=serve, args=(conn, f"{peer[0]}:{peer[1]}"), daemon=True).start()
'''
MINER = r"""
import socket, sys, time
parts = [bytes.fromhex(part) for part in sys.argv[3].split(",")]
try:
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for part in parts:
        sock.sendall(part)
        if len(parts) > 1:
            time.sleep(0.002)  # real TCP segments: one part per segment
    sock.settimeout(5)
    print("reply", sock.recv(4096), flush=True)
except OSError as exc:
    print("error", exc, flush=True)
"""

SUBSCRIBE = b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
AUTHORIZE = b'{"id":2,"method":"mining.authorize","params":["wallet.worker","x"]}\n'
SUBMIT = b'{"id":4,"method":"mining.submit","params":["wallet.worker","1","00000000","5e8f","7a1b2c3d"]}\n'
MINING = SUBSCRIBE + AUTHORIZE + SUBMIT
BENIGN = b'{"jsonrpc":"2.0","id":%d,"method":"server.version","params":["probe"]}\n'


def _escaped(text: str) -> bytes:
    return "".join(f"\\u{ord(ch):04x}" if ch.isalpha() else ch for ch in text).encode()


def _one(data: bytes) -> list[bytes]:
    return [data]


VARIANTS: dict[str, list[bytes]] = {
    "bom": _one(b"\xef\xbb\xbf" + MINING),
    "nul": _one(b"\x00" + MINING),
    "escaped-method": _one(MINING.replace(b'"method"', b'"' + _escaped("method") + b'"')),
    "escaped-value": _one(MINING.replace(b"mining.", _escaped("mining") + b".")),
    "after-32-benign": _one(b"".join(BENIGN % n for n in range(32)) + MINING),
    "after-12k-padding": _one(b" " * 12288 + MINING),
    "fake-tls-header": _one(b"\x16\x03\x01\x00\x05" + MINING),
    "utf16-bom": _one(MINING.decode().encode("utf-16")),
    "batch": _one(b"[" + b",".join(m.strip() for m in (SUBSCRIBE, AUTHORIZE, SUBMIT)) + b"]"),
    "concatenated": _one(b"".join(m.strip() for m in (SUBSCRIBE, AUTHORIZE, SUBMIT))),
    "junk-before": _one(bytes(range(128, 192)) + MINING),
    "one-byte-segments": [MINING[i : i + 1] for i in range(120)] + [MINING[120:]],
    "key-split-across-segments": [MINING[:9], MINING[9:13], MINING[13:]],
}


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecurityLab]:
    source = (ROOT / "rules" / "lab-policy.yaml").read_text()
    anchor = "        - {cidr: 198.18.10.3/32, ports: [3333], protocols: [tcp]}\n"
    assert anchor in source
    rule = f"        - {{cidr: {POOL_ADDRESS}/32, ports: [{POOL_PORT}], protocols: [tcp]}}\n"
    policy = tmp_path_factory.mktemp("streams") / "streams-policy.yaml"
    policy.write_text(source.replace(anchor, anchor + rule))
    security_lab = lab_factory(policy)
    added = netns.exec_in(security_lab.lab.internet_ns, ["ip", "addr", "add", f"{POOL_ADDRESS}/32", "dev", "lo"])
    assert added.returncode == 0, added.stderr
    yield security_lab


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    server = lab.attacker("lenient-pool", [sys.executable, "-c", LENIENT_POOL, POOL_ADDRESS, str(POOL_PORT)])
    server.wait_for("listening")
    return server


def _mine(lab: SecurityLab, parts: list[bytes]) -> str:
    argument = ",".join(part.hex() for part in parts)
    return lab.sandbox_python(MINER, POOL_ADDRESS, str(POOL_PORT), argument, timeout=30).stdout


def test_control_benign_json_rpc_reaches_the_lenient_pool(lab: SecurityLab, pool: Attacker) -> None:
    before = pool.log()
    with lab.capture("control") as capture:
        out = _mine(lab, [BENIGN % 1])
    crossed = capture.result
    assert crossed is not None
    sent = crossed.bytes_to(POOL_ADDRESS, POOL_PORT, "tcp")
    answered = "answered server.version" in pool.log()[len(before) :]
    report("control/benign-json-rpc", "control", sent, answered, None, "allowed, not a leak")
    assert answered and sent > 0, (out, crossed.table())


@pytest.mark.parametrize("variant", VARIANTS)
def test_stratum_framing_to_a_lenient_pool(lab: SecurityLab, pool: Attacker, variant: str) -> None:
    since = time.time()
    before = len(pool.log())
    with lab.capture(f"framing-{variant}") as capture:
        out = _mine(lab, VARIANTS[variant])
    crossed = capture.result
    assert crossed is not None
    log = pool.log()[before:]
    leaked = crossed.bytes_to(POOL_ADDRESS, POOL_PORT, "tcp")
    goal = any(word in log for word in ("subscribed", "authorized", "share accepted"))
    reason = lab.reason_of(since, lambda r: r.dst == POOL_ADDRESS and r.dport == POOL_PORT)
    report(f"stratum/{variant}", "mining-framing", leaked, goal, reason)
    assert leaked == 0, (variant, out, crossed.table())
    assert not crossed.contains(SUBSCRIBE.strip()), variant
    assert not goal, (variant, log)
    assert reason == "mining", (variant, out)


def test_padding_past_the_cap_is_not_clean(lab: SecurityLab, pool: Attacker) -> None:
    """Past the engine's cap the detectors stop: the flow is unidentified, and on a network rule that names its
    protocols (the default ``expect``) the proxy blocks it there. The padding before the cap crosses (it is what
    the detectors were still reading): the leak counted is those bytes, never the Stratum after them."""
    since = time.time()
    before = len(pool.log())
    with lab.capture("framing-past-cap") as capture:
        _mine(lab, [b" " * (20 * 1024) + MINING])
    crossed = capture.result
    assert crossed is not None
    log = pool.log()[before:]
    leaked = crossed.bytes_to(POOL_ADDRESS, POOL_PORT, "tcp")
    goal = "share accepted" in log or "subscribed" in log
    reason = lab.reason_of(since, lambda r: r.dst == POOL_ADDRESS and r.dport == POOL_PORT, timeout=10)
    report("stratum/past-the-cap", "mining-framing", leaked, goal, reason, "padding before the cap crosses")
    assert not crossed.contains(b"mining.subscribe") and not goal, log
    assert reason == "tunnel", reason


def _split(data: bytes, size: int | None, seed: int) -> list[bytes]:
    """``data`` in segments of ``size`` bytes, or (None) at random cuts of 1-40 bytes from a seeded generator."""
    if size is not None:
        return [data[i : i + size] for i in range(0, len(data), size)]
    rng, parts, at = random.Random(seed), [], 0
    while at < len(data):
        step = rng.randint(1, 40)
        parts.append(data[at : at + step])
        at += step
    return parts


SEGMENTINGS = {"1": (1, 0), "2": (2, 0), "7": (7, 0), "64": (64, 0), "random-7": (None, 7), "random-29": (None, 29)}
"""Segment sizes of the miner's stream (issue 9: real TCP segments, one part each), and seeded random cuts."""
FRAMED = {"plain": MINING, "batch": VARIANTS["batch"][0], "escaped-method": VARIANTS["escaped-method"][0]}
"""Framings that start with the message: junk before a value (a BOM) is not held, it is no message."""


@pytest.mark.parametrize("framing", FRAMED)
@pytest.mark.parametrize("segmenting", SEGMENTINGS)
def test_no_byte_of_a_segmented_mining_message_reaches_the_pool(
    lab: SecurityLab, pool: Attacker, segmenting: str, framing: str
) -> None:
    """The relay holds back the message still arriving (egress/proxy/holdback.py): the detectors judge it whole
    before any of it is forwarded, however the miner cuts it. Before, 63 bytes of a 64-byte subscribe crossed."""
    since = time.time()
    before = len(pool.log())
    size, seed = SEGMENTINGS[segmenting]
    with lab.capture(f"segments-{segmenting}-{framing}") as capture:
        out = _mine(lab, _split(FRAMED[framing], size, seed))
    crossed = capture.result
    assert crossed is not None
    log = pool.log()[before:]
    leaked = crossed.bytes_to(POOL_ADDRESS, POOL_PORT, "tcp")
    goal = any(word in log for word in ("subscribed", "authorized", "share accepted"))
    reason = lab.reason_of(since, lambda r: r.dst == POOL_ADDRESS and r.dport == POOL_PORT)
    report(f"stratum/segments-{segmenting}-{framing}", "mining-framing", leaked, goal, reason, "held back")
    assert leaked == 0 and not goal, (out, log, crossed.table())
    assert reason == "mining", (segmenting, out)


def test_control_benign_json_rpc_in_one_byte_segments_is_held_then_answered(lab: SecurityLab, pool: Attacker) -> None:
    """Holding back is not blocking: a benign call cut into 1-byte segments reaches the pool whole and is
    answered (the message goes out when it closes)."""
    before = pool.log()
    with lab.capture("control-segments") as capture:
        out = _mine(lab, _split(BENIGN % 7, 1, 0))
    crossed = capture.result
    assert crossed is not None
    sent = crossed.bytes_to(POOL_ADDRESS, POOL_PORT, "tcp")
    answered = "answered server.version" in pool.log()[len(before) :]
    report("control/benign-json-rpc-1-byte-segments", "control", sent, answered, None, "allowed, not a leak")
    assert answered and sent >= len(BENIGN % 7), (out, crossed.table())
