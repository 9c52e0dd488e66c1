"""Mining inside TLS to an allowed network address with a bound name (issue 13): the corpus's mining sessions
(tests/detect/miningshape_traces.py, the recorded sizes and timing of each pool message) replayed from the sandbox
through TLS to a replay pool in the fake internet, which answers with the pool's recorded messages on the recorded
timeline. No payload detector can see them; the front's mining-shape watcher (egress/detect/miningshape.py) must.

Time compression: the sessions are replayed `SPEED` times faster and the policy sets
``detectors.mining_shape_window: 20`` (a third of the default minute), so the watcher reads the same timeline in
real time; the policy says ``mining_shape: block``. Judged by the records in the lab's Redis, by what the replay
pool got (client bytes, and whether the connection ended before the session did) and by the capture."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

import pytest

from egress.proxy.front import PEEK_WAIT
from tests.detect import miningshape_traces as traces
from tests.detect.miningshape_traces import FOUND_IN_A_MINUTE, MISSED
from tests.security.conftest import LabFactory
from tests.security.harness import SecurityLab, report
from tests.security.opaque_kit import ATTACK, POLICY, Kit, kit
from tests.waiting import eventually

pytestmark = pytest.mark.security

PORT = 8460
"""The replay pool's first TLS port on the network rule's address: one port a session (records of one kind to one
port are counted together)."""
SPEED = 3.0
"""Not more: the watcher's times shrink by this factor (an answer counts within 2 s / `SPEED`), and on a loaded
machine the relay and both ends are late by a few hundred milliseconds now and then (at 10x, a run beside eight
busy processes missed a session: an answer came late and was taken for a push)."""
WINDOW = 20
"""``detectors.mining_shape_window``: 60 / `SPEED`."""
HORIZON = 66.0
"""Seconds of each recorded session replayed (the watcher's minute and a little more)."""
POLLER: traces.Trace = (
    "a keep-alive HTTPS poller (constructed): the same request and answer every 10 s",
    tuple(
        (at + offset, side, size) for at in range(0, 66, 10) for offset, side, size in ((0, "c", 420), (0.05, "s", 610))
    ),
)
SESSIONS = {**traces.ALL, "POLLER": POLLER}
HOST_PORT = 8490
"""The host-rule pool's first port: 198.18.10.7 on ports no network rule names, allowed only as ``ssh.lab`` (a host
rule), so TLS there passes by its bound SNI alone (issue 9: not a network rule's, not on the decrypt list)."""
HOST_SESSIONS = {"MONERO": traces.ALL["MONERO"], "POLLER": POLLER}
"""A Stratum (XMRig) session found in its first minute, and the benign poller as the control."""
STARTTLS_PORT = HOST_PORT + len(HOST_SESSIONS)
"""The host-rule pool that upgrades to TLS after a ``STARTTLS`` line (ports for the same sessions)."""

# Both ends play their side of a session in ONE thread per connection (select, then read or send): an SSL object
# read in one thread while another writes it is not safe (OpenSSL), and under load it broke a session's records
# ("decryption failed or bad record mac") in this test's first version. And causally: a record goes out at its time
# AND once everything the peer sent before it (in the trace) has arrived, so the gateway sees the trace's order
# however slow the machine (10x faster, a client's share and the pool's answer are a fraction of a millisecond apart).
PUMP = r"""
import select, time
def pump(tls, sends, start, speed, until, got=0, reads=None):
    # Send each (at, payload, need) of sends at start + at / speed once `need` bytes were read, reading meanwhile,
    # until `until` (monotonic) or the peer's close. Returns (bytes read, records sent, whether the peer closed).
    # `reads`: a list that gets (wall-clock time, bytes) of each read.
    sent, index = 0, 0
    while True:
        now = time.monotonic()
        if index < len(sends) and now >= start + sends[index][0] / speed and got >= sends[index][2]:
            try:
                tls.sendall(sends[index][1]); sent += 1
            except OSError:
                return got, sent, True
            index += 1
            continue
        if now > until + 30:  # the peer never sent what the trace says it did: stop (the test reports what came)
            return got, sent, False
        wake = start + sends[index][0] / speed if index < len(sends) else until
        if now >= wake and index >= len(sends):
            return got, sent, False
        if tls.pending() or select.select([tls], [], [], min(max(0.0, wake - now), 0.05))[0]:
            try:
                chunk = tls.recv(65536)
            except OSError:
                return got, sent, True
            if not chunk:
                return got, sent, True
            got += len(chunk)
            if reads is not None:
                reads.append((time.time(), len(chunk)))
def plan(records, origin, side, payload):
    # This side's records from origin on as (at - origin, bytes, what the peer sent before it).
    return [(at - origin, payload(size), sum(z for t, d, z in records if d != side and origin <= t < at))
            for at, d, size in records if d == side and at >= origin]
"""

POOL = (
    PUMP
    + r"""
import json, socket, ssl, sys, threading
host, port, cert, key, table = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
speed = float(sys.argv[6])
starttls = sys.argv[7:] == ["starttls"]  # a line, "220 go ahead", then TLS (SMTP's STARTTLS, RFC 3207)
sessions = json.load(open(table))
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); context.load_cert_chain(cert, key)
listeners = [socket.create_server((host, port + index)) for index in range(len(sessions))]
print("listening", flush=True)
said = threading.Lock()
def say(row):  # one whole line at a time: threads' prints interleave (a line and its newline are two writes)
    with said:
        sys.stdout.write(json.dumps(row) + "\n"); sys.stdout.flush()
def serve(conn, name):
    got, sent, first, reads = 0, 0, b"", []
    try:
        while starttls and not first.endswith(b"\n"):
            chunk = conn.recv(1)
            if not chunk:
                raise OSError("closed before STARTTLS")
            first += chunk
        if starttls:
            conn.sendall(b"220 go ahead\r\n")
            first = b""
        tls = context.wrap_socket(conn, server_side=True)
        while b"\n" not in first:
            chunk = tls.recv(65536)
            if not chunk:
                break
            first += chunk
        got = len(first)
        if b"\n" in first:
            records = sessions[name]
            origin = next(at for at, side, _ in records if side == "c")
            sends = plan(records, origin, "s", lambda size: b"y" * size)
            start = time.monotonic()
            got, sent, _ = pump(tls, sends, start, speed, start + 3 + records[-1][0] / speed, got, reads)
        named = first.split(b"\n", 1)[0].decode()
        say({"session": name, "got": got, "sent": sent, "named": named, "reads": reads})
    except Exception as error:
        say({"session": name, "got": got, "sent": sent, "error": repr(error)})
def accept(listener, name):
    while True:
        conn, peer = listener.accept()
        say({"accepted": name, "peer": peer[1]})
        threading.Thread(target=serve, args=(conn, name), daemon=True).start()
for listener, name in zip(listeners, sessions):
    threading.Thread(target=accept, args=(listener, name), daemon=True).start()
threading.Event().wait()
"""
)

CLIENT = (
    PUMP
    + r"""
import json, socket, ssl, sys, threading
host, port, table, speed = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
sni = sys.argv[5] if len(sys.argv) > 5 else "ssh.lab"
starttls = sys.argv[6:] == ["starttls"]
slow = float(sys.argv[7]) if sys.argv[6:7] == ["slow"] else 0.0  # silent that long before the hello
sessions = json.load(open(table))
context = ssl.create_default_context(); context.check_hostname = False; context.verify_mode = ssl.CERT_NONE
said = threading.Lock()
def say(row):  # one whole line at a time, as the pool's
    with said:
        sys.stdout.write(json.dumps(row) + "\n"); sys.stdout.flush()
def play(name, records, port):
    try:
        raw = socket.create_connection((host, port), timeout=10)
        if starttls:  # a plaintext opening first: the TLS is no opening the front takes (mitmproxy relays it)
            raw.sendall(b"STARTTLS\r\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = raw.recv(1)
                if not chunk:
                    raise OSError("closed before TLS")
                answer += chunk
        time.sleep(slow)  # past the front's wait: the connection is mitmproxy's, with the hello its first byte
        tls = context.wrap_socket(raw, server_hostname=sni)
    except OSError as error:
        say({"session": name, "error": str(error)})
        return
    origin = next(at for at, side, _ in records if side == "c")
    sends = plan(records, origin, "c", lambda size: b"x" * size)
    label = ("slow:" if slow else "") + name  # the pool's log tells this run's sessions from the other tests'
    sends[0] = (0.0, (label.encode() + b"\n").ljust(len(sends[0][1]), b" "), 0)
    start = time.monotonic()
    received, sent, closed = pump(tls, sends, start, speed, start + (records[-1][0] - origin) / speed + 1.0)
    expected = sum(size for at, side, size in records if side == "s" and at >= origin)
    deadline = time.monotonic() + 30  # a loaded machine: the pool's last records may come after the timeline
    while not closed and received < expected and time.monotonic() < deadline:
        if tls.pending() or select.select([tls], [], [], 0.5)[0]:
            try:
                chunk = tls.recv(65536)
            except OSError:
                chunk = b""
            closed, received = not chunk, received + len(chunk)
    row = {"session": name, "port": port, "sent": sent, "closed": closed, "received": received}
    say({**row, "expected": expected})
    tls.close()
threads = [threading.Thread(target=play, args=(*item, port + index)) for index, item in enumerate(sessions.items())]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""
)


@pytest.fixture(scope="module")
def replay(lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecurityLab, Kit]]:
    source = POLICY.read_text()
    anchor = "ports: [8443, 8444, 8445, 8447, 8448, 8449, 8080]}"
    detectors = "detectors: {mining: block, tunnel: block, crypto_node: block}"
    assert anchor in source and detectors in source
    policy = tmp_path_factory.mktemp("mining-shape") / "mining-shape-policy.yaml"
    ports = ", ".join(str(PORT + index) for index in range(len(SESSIONS)))
    source = source.replace(anchor, anchor.replace("8080]", f"8080, {ports}]"))
    named = "{host: ssh.lab, ports: [1, "
    assert named in source
    host_ports = ", ".join(str(HOST_PORT + index) for index in range(2 * len(HOST_SESSIONS)))
    source = source.replace(named, f"{named}{host_ports}, ")
    shape = f"mining_shape: block, mining_shape_window: {WINDOW}}}"
    policy.write_text(
        source.replace(detectors, detectors.replace("crypto_node: block}", f"crypto_node: block, {shape}"))
    )
    lab = lab_factory(policy)
    tools = kit(lab)
    table = tools.root / "mining-sessions.json"
    cut = {name: [record for record in trace[1] if record[0] <= HORIZON] for name, trace in SESSIONS.items()}
    table.write_text(json.dumps(cut))
    pool = [sys.executable, "-c", POOL, ATTACK, str(PORT), str(tools.cert), str(tools.key), str(table), str(SPEED)]
    lab.attacker("replay-pool", pool).wait_for("listening")
    host_table = tools.root / "mining-sessions-host-rule.json"
    host_table.write_text(json.dumps({name: cut[name] for name in HOST_SESSIONS}))
    host_pool = [sys.executable, "-c", POOL, ATTACK, str(HOST_PORT), str(tools.cert), str(tools.key), str(host_table),
                 str(SPEED)]  # fmt: skip
    lab.attacker("host-rule-pool", host_pool).wait_for("listening")
    upgrading = [*host_pool[:4], str(STARTTLS_PORT), *host_pool[5:], "starttls"]
    lab.attacker("starttls-pool", upgrading).wait_for("listening")
    yield lab, tools


def _rows(log: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def _lines(log: str, key: str) -> dict[str, dict[str, object]]:
    return {str(row["session"]): row for row in _rows(log) if key in row}


def test_mining_sessions_replayed_inside_tls_are_found_by_their_shape(replay: tuple[SecurityLab, Kit]) -> None:
    lab, tools = replay
    lab.sandbox(["dig", "+short", "@10.203.1.1", "ssh.lab"])  # binds ssh.lab to the rule's address (the SNI)
    pool = next(p for p in lab.processes if p.name == "replay-pool")
    since = time.time()
    with lab.capture("mining-shape") as capture:
        done = lab.sandbox_python(CLIENT, ATTACK, str(PORT), str(tools.root / "mining-sessions.json"), str(SPEED),
                                  timeout=180)  # fmt: skip
    crossed = capture.result
    assert crossed is not None
    clients = _lines(done.stdout, "port")
    assert set(clients) == set(SESSIONS), done.stdout + done.stderr
    port = {name: int(str(row["port"])) for name, row in clients.items()}
    found = lab.records_until(
        since, lambda rs: {port[name] for name in FOUND_IN_A_MINUTE} <= {r.dport for r in rs if r.dst == ATTACK}
    )
    by_session = {name: [r for r in found if r.dst == ATTACK and r.dport == port[name]] for name in clients}
    pools: dict[str, dict[str, object]] = {}

    def pool_done() -> bool:
        # A session's report is the one of its connection that carried the session's name (the client makes one
        # connection a session; any other connection the pool saw is in its log, and shown on a failure below).
        named = [row for row in _rows(pool.log()) if "got" in row and row.get("named") == row["session"]]
        pools.update({str(row["session"]): row for row in named})
        assert set(pools) == set(SESSIONS), f"the pool has not reported {set(SESSIONS) - set(pools)}: {pool.log()}"
        return True

    eventually(pool_done, timeout=30)
    recorded = sorted(name for name, records in by_session.items() if records)
    found_bytes = sum(crossed.bytes_to(ATTACK, port[name], "tcp") for name in FOUND_IN_A_MINUTE)
    missed_bytes = sum(crossed.bytes_to(ATTACK, port[name], "tcp") for name in MISSED)
    for name in SESSIONS:  # the measurement, for the closing note (pytest -s)
        evidence = [r.evidence for r in by_session[name]]
        print(f"{name}: pool got {pools[name]['got']} B; client {clients[name]}; records {evidence}")
    accepted = [row for row in _rows(pool.log()) if "accepted" in row]
    assert len(accepted) == len(SESSIONS), f"one connection a session, no other: {pool.log()}"
    note = f"replayed {SPEED:.0f}x faster, window {WINDOW} s; benign control recorded: {'POLLER' in recorded}"
    report("opaque/mining-in-tls-shape-found", "mining", found_bytes,
           any(not clients[name]["closed"] for name in FOUND_IN_A_MINUTE), "mining" if recorded else None,
           f"{len(set(recorded) & set(traces.ALL))} of {len(traces.ALL)} corpus sessions blocked in their first "
           f"minute; {note}")  # fmt: skip
    report("opaque/mining-in-tls-shape-missed", "mining", missed_bytes, True, None,
           f"known gap: {len(MISSED)} sessions show too little in their first minute (docs/security.md)")  # fmt: skip
    for name in FOUND_IN_A_MINUTE:  # recorded as mining by the shape, closed before the session's end
        (record,) = by_session[name]
        assert (str(record.category), record.protocol, record.detector) == ("mining", "mining-in-tls", "tls-shape")
        assert (str(record.reason), str(record.action)) == ("mining", "block"), record
        assert "pushes" in record.evidence and "shares" in record.evidence, record.evidence
        row = clients[name]
        assert row["closed"] and int(str(row["received"])) < int(str(row["expected"])), row
    for name in [*MISSED, "POLLER"]:  # not recorded, and the whole session crossed both ways
        assert by_session[name] == [], (name, by_session[name])
        row = clients[name]
        assert not row["closed"] and row["received"] == row["expected"], row
        assert pools[name]["got"] == sum(size for at, side, size in SESSIONS[name][1] if side == "c" and at <= HORIZON)


@pytest.mark.parametrize("opening", ["bound-sni", "after-starttls", "slow-hello"])
def test_mining_inside_tls_to_a_host_rule_name_is_found_by_its_shape(
    replay: tuple[SecurityLab, Kit], opening: str
) -> None:
    """Stratum inside TLS to a host rule's bound name (issue 9; before, only network rules were watched and this
    was a strict xfail): the front watches every TLS connection it relays. Judged at the internet side by the
    pool's own log: no byte, so no share, reaches it after the decision, and the session is cut short; the benign
    poller through the same host rule is neither recorded nor cut. ``after-starttls``: the client says
    ``STARTTLS`` first and the pool answers before the TLS (as SMTP does), so the front hands the stream to
    mitmproxy, which relays it as bytes and before watched nothing once the bound hello had come
    (`egress.proxy.upgraded`). ``slow-hello``: the client says nothing for longer than the front waits
    (`PEEK_WAIT`), so mitmproxy gets the connection with the hello as its first byte (issue 9: once relayed
    unwatched, then refused, which also cut off honest clients a loaded machine slowed): watched the same way, and
    the benign poller that waits as long is not cut."""
    lab, tools = replay
    lab.sandbox(["dig", "+short", "@10.203.1.1", "ssh.lab"])  # binds ssh.lab to 198.18.10.7 (the SNI is bound)
    upgrade = opening == "after-starttls"
    pool = next(p for p in lab.processes if p.name == ("starttls-pool" if upgrade else "host-rule-pool"))
    table = str(tools.root / "mining-sessions-host-rule.json")
    first = STARTTLS_PORT if upgrade else HOST_PORT
    mode = {"after-starttls": ["starttls"], "slow-hello": ["slow", str(PEEK_WAIT + 1.0)]}.get(opening, [])
    label = "slow:" if opening == "slow-hello" else ""
    since = time.time()
    capture_name = {"bound-sni": "", "after-starttls": "-starttls", "slow-hello": "-slow-hello"}[opening]
    with lab.capture("mining-shape-host-rule" + capture_name) as capture:
        done = lab.sandbox_python(CLIENT, ATTACK, str(first), table, str(SPEED), "ssh.lab", *mode,
                                  timeout=180)  # fmt: skip
    crossed = capture.result
    assert crossed is not None
    clients = _lines(done.stdout, "port")
    assert set(clients) == set(HOST_SESSIONS), done.stdout + done.stderr
    port = {name: int(str(row["port"])) for name, row in clients.items()}
    found = lab.records_until(since, lambda rs: any(r.dst == ATTACK and r.dport == port["MONERO"] for r in rs))
    by_session = {name: [r for r in found if r.dst == ATTACK and r.dport == port[name]] for name in clients}
    pools: dict[str, dict[str, object]] = {}

    def pool_done() -> bool:
        named = [row for row in _rows(pool.log()) if "got" in row and row.get("named") == label + str(row["session"])]
        pools.update({str(row["session"]): row for row in named})
        assert set(pools) == set(HOST_SESSIONS), f"the pool has not reported {set(HOST_SESSIONS) - set(pools)}"
        return True

    eventually(pool_done, timeout=30)
    (record,) = by_session["MONERO"]
    reads = [(float(at), int(size)) for at, size in pools["MONERO"]["reads"]]  # type: ignore[attr-defined]
    after = [size for at, size in reads if at > record.ts]
    sent = sum(1 for at, side, _ in HOST_SESSIONS["MONERO"][1] if side == "c" and at <= HORIZON)
    technique = "opaque/mining-in-tls-host-rule-" + opening
    report(technique, "mining", sum(after), bool(after), str(record.reason),
           f"{len(reads)} of {sent} client records reached the pool, all before the decision "
           f"({crossed.bytes_to(ATTACK, port['MONERO'], 'tcp')} B with the TLS handshake); "
           f"replayed {SPEED:.0f}x faster, window {WINDOW} s")  # fmt: skip
    assert (str(record.category), record.protocol, record.detector) == ("mining", "mining-in-tls", "tls-shape")
    assert (str(record.reason), str(record.action), record.host) == ("mining", "block", "ssh.lab"), record
    assert after == [], (record.ts, reads)  # no share (no byte) reached the pool after the decision
    assert len(reads) < sent, reads
    row = clients["MONERO"]
    assert row["closed"] and int(str(row["received"])) < int(str(row["expected"])), row
    assert by_session["POLLER"] == [], by_session["POLLER"]  # the control: not recorded, and it crossed whole
    control = clients["POLLER"]
    assert not control["closed"] and control["received"] == control["expected"], control
