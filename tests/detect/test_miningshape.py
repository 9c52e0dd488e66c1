"""Mining told from the record shape of TLS (egress.detect.miningshape), on the corpus's mining sessions as they
would be inside TLS (tests/detect/miningshape_traces.py: recorded sizes and times), on the lab's recorded TLS
(tests/detect/tlsshape_traces.py), on every benign capture of the corpus, and on shapes of ordinary TLS that come
close. Decisions depend only on the times given: a session replayed ten times faster, read with a window ten
times shorter, is decided on the same record."""

from __future__ import annotations

import math
import random

import pytest

from egress.detect.base import Category, Finding, evidence
from egress.detect.miningshape import BULK, MAX_BYTES, MINUTE, NAME, PROTOCOL, MiningShape, measure
from egress.detect.miningshape import mining as says_mining
from egress.detect.tlsshape import Record, TlsShape
from tests.budget import examples
from tests.corpus import CORPUS, needs_corpus
from tests.detect import miningshape_traces as mining
from tests.detect import tlsshape_traces
from tests.detect.miningshape_traces import FOUND_IN_A_MINUTE, MISSED
from tests.detect.shape_flows import flows, tls_stream


def _records(trace: mining.Trace, speed: float = 1.0) -> list[Record]:
    return [Record(side == "c", size, seconds / speed) for seconds, side, size in trace[1]]


def _first(records: list[Record], window: float = 60.0) -> tuple[Finding | None, float]:
    """The watcher's finding on these records and the time of the record that completed it."""
    watcher = MiningShape(window)
    for record in records:
        found = watcher.add(record)
        if found is not None:
            return found, record.at - records[0].at
    return None, math.inf


def test_every_session_of_the_corpus_has_a_trace() -> None:
    assert set(mining.ALL) == set(FOUND_IN_A_MINUTE) | set(MISSED)


@pytest.mark.parametrize(("name", "by"), FOUND_IN_A_MINUTE.items())
def test_mining_sessions_are_found_within_the_first_minute(name: str, by: float) -> None:
    found, at = _first(_records(mining.ALL[name]))
    assert found is not None, measure(_records(mining.ALL[name])[:40]).text()
    assert (found.category, found.protocol, found.detector) == (Category.MINING, PROTOCOL, NAME)
    assert at <= by, (at, found.evidence)


@pytest.mark.parametrize("name", MISSED)
def test_sessions_that_show_too_little_in_their_first_minute_are_missed(name: str) -> None:
    """Known gaps (the module docstring; docs/security.md, "Opaque streams"): listed so the recall the docs report
    stays true."""
    found, _ = _first(_records(mining.ALL[name]))
    assert found is None, (MISSED[name], found)


@pytest.mark.parametrize("speed", [10.0, 20.0])
@pytest.mark.parametrize("name", list(mining.ALL))
def test_a_faster_replay_with_a_shorter_window_is_decided_alike(name: str, speed: float) -> None:
    """The lab's time compression (policy ``detectors.mining_shape_window``): same verdict, on the same record."""
    real, at = _first(_records(mining.ALL[name]))
    fast, fast_at = _first(_records(mining.ALL[name], speed), 60.0 / speed)
    assert (real is None) == (fast is None)
    if real is not None:
        assert fast_at == pytest.approx(at / speed)


def test_the_evidence_carries_the_features() -> None:
    found, _ = _first(_records(mining.ALL["MONERO"]))
    assert found is not None
    text = found.evidence
    assert "3 shares ack 63B" in text and "1 pushes 253-253B" in text and "job answer 303B" in text, text
    assert "records" in text and "sizes" in text, text


def test_decided_within_the_window_or_not_at_all() -> None:
    """A record after the window ends watching: the jobs and shares of ZEC_FLYPOOL_EU from 72 s on are not read."""
    watcher = MiningShape()
    for record in _records(mining.ALL["ZEC_FLYPOOL_EU"]):
        assert watcher.add(record) is None
    assert watcher.done and all(record.at <= 60 for record in watcher.records)


def test_a_late_answer_still_carries_the_job() -> None:
    """XMR_NANOPOOL as the lab's gateway read it, 10x faster (window 6 s): a TLS 1.3 server's two session tickets,
    then the login's answer 62 ms later (a busy relay: past `QUIET` at that speed), the job pushed at 1.6 s."""
    records = [
        Record(True, 182, 0.0),
        Record(False, 233, 0.0168),
        Record(False, 233, 0.0168),
        Record(False, 278, 0.0788),
        Record(False, 242, 1.6244),
    ]
    found, at = _first(records, 6.0)
    assert found is not None and at == pytest.approx(1.6244), measure(records, 0.1)


def test_a_bulk_record_ends_watching() -> None:
    watcher = MiningShape()
    records = _records(mining.ALL["MONERO"])
    watcher.add(records[0])
    watcher.add(Record(False, 16_000, records[0].at + 0.1))
    assert watcher.done
    assert all(watcher.add(record) is None for record in records[1:])


@pytest.mark.parametrize("tickets", [False, True])
@pytest.mark.parametrize("split", [0, 1, 7, 1000])
@pytest.mark.parametrize("name", list(mining.ALL))
def test_the_same_verdict_on_tls_bytes_split_anywhere(name: str, split: int, tickets: bool) -> None:
    """What the relay does: the bytes of each direction in chunks of any size, TlsShape's records handed on; also
    with a TLS 1.3 server's session tickets between the login and its answer (the lab's Python pool sends them)."""
    records = _records(mining.ALL[name])
    expected, _ = _first(records)
    shape, watcher = TlsShape(), MiningShape()
    judged, found = 0, None
    for at, from_client, data in tls_stream(records, tickets):
        pieces = [data[i : i + split] for i in range(0, len(data), split)] if split else [data]
        for piece in pieces:
            shape.feed(from_client, piece, at)
            for record in shape.records[judged:]:
                found = found or watcher.add(record)
            judged = len(shape.records)
    assert (found is None) == (expected is None), found
    assert found is None or expected is None or tickets or found.evidence == expected.evidence


def _lab_traces() -> list[tuple[str, tlsshape_traces.Trace]]:
    named = [(name, getattr(tlsshape_traces, name)) for name in ("SSH_EXEC", "SSH_SOCKS", "SSH_SHELL", "PTY_SHELL")]
    named += [("TLS_IN_TLS", tlsshape_traces.TLS_IN_TLS), ("TLS_IN_TLS_BULK", tlsshape_traces.TLS_IN_TLS_BULK)]
    return named + [(f"HTTPS[{index}]", trace) for index, trace in enumerate(tlsshape_traces.HTTPS)]


def _lab_records(trace: tlsshape_traces.Trace) -> list[Record]:
    """The records `TlsShape` reads from a lab trace (its recorded headers, zero bodies)."""
    hello, headers = trace
    shape, sent_hello = TlsShape(), False
    for ms, side, kind, length in headers:
        if side == "s" and not sent_hello:
            data, sent_hello = bytes.fromhex(hello), True
        else:
            data = bytes([kind, 3, 3]) + length.to_bytes(2) + bytes(length)
        shape.feed(side == "c", data, ms / 1000)
    return list(shape.records)


@pytest.mark.parametrize(("name", "trace"), _lab_traces(), ids=[name for name, _ in _lab_traces()])
def test_the_lab_recorded_tls_is_not_mining(name: str, trace: tlsshape_traces.Trace) -> None:
    assert _first(_lab_records(trace))[0] is None


BENIGN = sorted((CORPUS / "benign").glob("*.pcap*")) + sorted(
    (CORPUS.parent / "corpus-tunnels" / "benign").glob("*.pcap*")
)
BENIGN += sorted((CORPUS / "crypto-node").glob("*.pcap*"))


@needs_corpus
@pytest.mark.parametrize("path", BENIGN, ids=[path.name for path in BENIGN])
def test_no_benign_capture_is_mining(path: object) -> None:
    """Every TCP connection of every benign (and crypto-node) capture: TLS ones by their real records, the rest
    as they would be inside TLS (tests/detect/shape_flows.py)."""
    found = [(flow.name, _first(list(flow.records))[0]) for flow in flows(str(path))]
    assert [(name, finding) for name, finding in found if finding is not None] == []


def _trace(*steps: tuple[float, str, int]) -> list[Record]:
    return [Record(side == "c", size, at) for at, side, size in steps]


def _every(period: float, until: float, *pattern: tuple[float, str, int]) -> list[tuple[float, str, int]]:
    steps: list[tuple[float, str, int]] = []
    start = 1.0
    while start < until:
        steps += [(start + offset, side, size) for offset, side, size in pattern]
        start += period
    return steps


HARD_NEGATIVES = {
    # an HTTP/1.1 keep-alive poller: the same request and answer every 10 s (an eth getWork poll without pushes)
    "keep-alive poller": _trace((0, "c", 420), (0.05, "s", 610), *_every(10, 60, (0, "c", 420), (0.05, "s", 610))),
    # HTTP/2 polling a streamed endpoint: a tiny HEADERS answer at once, the body a second later (session tickets
    # first, as TLS 1.3 servers send them)
    "h2 poller, streamed body": _trace(
        (0, "c", 180),
        (0.01, "s", 250),
        (0.01, "s", 250),
        (0.05, "s", 40),
        (1.2, "s", 300),
        *_every(8, 60, (0, "c", 90), (0.05, "s", 40), (1.2, "s", 300)),
    ),
    # server-sent events: one request, then an event of one size every 5 s; the client only acknowledges pings
    "sse feed with pings": _trace(
        (0, "c", 300),
        (0.1, "s", 220),
        *_every(5, 60, (0, "s", 210), (2.5, "s", 17), (2.51, "c", 17)),
    ),
    # a WebSocket notification channel: subscribe, events of varying size, the client's heartbeat every 25 s
    "websocket notifications": _trace(
        (0, "c", 520),
        (0.1, "s", 180),
        (0.3, "c", 90),
        (0.4, "s", 60),
        (7, "s", 340),
        (14, "s", 512),
        (25, "c", 6),
        (25.05, "s", 6),
        (31, "s", 275),
        (50, "c", 6),
        (50.05, "s", 6),
        (52, "s", 1210),
    ),
    # a feed: one request, its answer, then one event 20 s later, larger than the answer (a pool's job is smaller
    # than the login's answer, which wraps it)
    "one-event feed": _trace((0, "c", 300), (0.1, "s", 236), (20, "s", 240)),
    # a feed whose event follows a client request: the client spoke again, so it is no lone job
    "one-event feed, client asks again": _trace((0, "c", 300), (0.1, "s", 260), (8, "c", 120), (20, "s", 240)),
    # a pushed notification, then an upload answered by a tiny acknowledgement; the first answer is no job's wrapper
    "push then a beacon": _trace((0, "c", 400), (0.1, "s", 1500), (12, "s", 300), (30, "c", 2000), (30.05, "s", 40)),
    # the same at a chatty rate: the single-job rules want a nearly silent connection
    "push then a beacon, chatty": _trace(
        (0, "c", 400),
        (0.1, "s", 560),
        (12, "s", 300),
        *_every(1.0, 24, (12, "c", 30), (12.1, "s", 30)),
        (30, "c", 2000),
        (30.05, "s", 40),
    ),
    # an agent calling an API a few times: answers of many sizes, some slow
    "api calls": _trace(
        (0, "c", 700),
        (2.5, "s", 1800),
        (9, "c", 650),
        (9.3, "s", 96),
        (15, "c", 820),
        (19, "s", 3100),
        (30, "c", 640),
        (30.2, "s", 96),
        (41, "c", 700),
        (43, "s", 2400),
    ),
}


@pytest.mark.parametrize("name", HARD_NEGATIVES)
def test_ordinary_tls_that_comes_close_is_not_mining(name: str) -> None:
    found, _ = _first(HARD_NEGATIVES[name])
    assert found is None, found


def test_random_records_rarely_look_like_mining() -> None:
    """Records of random direction, size (20-400 bytes, log-uniform) and timing (1 s apart on average), a harder
    mix than ordinary TLS: measured 1 in 1,000 flows (here 150 flows, scaled by EGRESS_FUZZ_SCALE: at most one may
    match)."""
    rng = random.Random(7)
    hits = 0
    for _ in range(examples(150)):
        records, at = [], 0.0
        for _ in range(90):
            at += rng.expovariate(1.0)
            records.append(Record(rng.random() < 0.5, int(math.exp(rng.uniform(math.log(20), math.log(400)))), at))
        hits += _first(records)[0] is not None
    assert hits <= 1, hits


Answers = list[tuple[Finding | None, bool]]
"""The watcher's finding and ``done`` after each record."""


def _measured_each_time(records: list[Record], window: float) -> Answers:
    """The watcher's answers without its shortcut: all the records so far measured at each one."""
    scale, seen, answers, done = window / MINUTE, list[Record](), Answers(), False
    for record in records:
        found = None
        if done or (seen and record.at - seen[0].at > window):
            done = True
        else:
            seen.append(record)
            features = measure(seen, scale)
            if features.largest > BULK or features.up + features.down > MAX_BYTES:
                done = True
            elif says_mining(features, scale):
                done = True
                found = Finding(Category.MINING, PROTOCOL, NAME, evidence(features.text()))
        answers.append((found, done))
    return answers


def _watched(records: list[Record], window: float) -> Answers:
    """The watcher's answers, its shortcut taken."""
    watcher = MiningShape(window=window)
    return [(watcher.add(record), watcher.done) for record in records]


def _random_records(rng: random.Random, longest: int) -> list[Record]:
    """Up to ``longest`` records of random direction, size (bulk ones, byte limits) and timing, times sometimes
    going back."""
    records, at = [], 0.0
    for _ in range(rng.randrange(1, longest)):
        at += rng.choice((0.0, 0.01, 0.3, 1.0, 3.0, 20.0)) * rng.random() - (0.5 if rng.random() < 0.05 else 0)
        size = rng.choice((20, 40, 90, 120, 300, 2000, 4000, 4096, 5000, 20000))
        records.append(Record(rng.random() < 0.5, size, at))
    return records


@pytest.mark.parametrize("window", [MINUTE, 6.0])
def test_the_openings_shortcut_answers_as_measuring_every_record(window: float) -> None:
    """`MiningShape.add` measures nothing until a push has come (only the bulk and byte limits are read before);
    its answers and its `done` are those of measuring at every record, on the mining traces (sped up, and with
    bursts) and on random records with times out of order, bulk records and byte limits
    (tests/detect/test_miningshape_shortcut.py compares on more inputs)."""
    rng = random.Random(11)
    cases = [_records(trace) for trace in mining.ALL.values()]
    cases += [[Record(r.from_client, r.size, r.at * rng.choice((0.01, 0.1, 1.0))) for r in c] for c in list(cases)]
    cases += [_random_records(rng, 60) for _ in range(examples(300))]
    cases.append([Record(index % 2 == 0, 4000, index * 0.05) for index in range(40)])  # MAX_BYTES in the opening
    for records in cases:
        assert _watched(records, window) == _measured_each_time(records, window), records
