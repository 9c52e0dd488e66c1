"""`MiningShape.add` measures nothing until a push has come (egress.detect.miningshape): its answers must be those
of measuring every record at each new one, for every input, since an agent that knows the shortcut would time its
records to stay inside it. Compared here record by record on the corpus's mining sessions (sped up too), the
lab's recorded TLS, every connection of the benign captures, and generated records that sit on the shortcut's
edges: times exactly `QUIET` and `ANSWER_WITHIN` apart, sizes at `PUSH_MIN`, `PUSH_MAX`, `BULK` and the byte limit,
times out of order."""

from __future__ import annotations

import random

import pytest

from egress.detect.miningshape import (
    ANSWER_WITHIN,
    BULK,
    MINUTE,
    PUSH_MAX,
    PUSH_MIN,
    QUIET,
    REQUEST_MIN,
    measure,
)
from egress.detect.tlsshape import Record
from tests.budget import examples
from tests.corpus import CORPUS, needs_corpus
from tests.detect import miningshape_traces
from tests.detect.shape_flows import flows
from tests.detect.test_miningshape import (
    _lab_records,
    _lab_traces,
    _measured_each_time,
    _random_records,
    _records,
    _watched,
)

WINDOWS = (MINUTE, 6.0)
"""The default window and the lab's ten times shorter one (its times scale by a tenth: other rounding)."""


def _assert_alike(records: list[Record]) -> None:
    for window in WINDOWS:
        assert _watched(records, window) == _measured_each_time(records, window), (window, records)


def _mining_sessions() -> list[list[Record]]:
    sessions = []
    for trace in miningshape_traces.ALL.values():
        sessions += [_records(trace, speed) for speed in (1, 10, 100)]
    return sessions


def _lab_tls() -> list[list[Record]]:
    return [_lab_records(trace) for _, trace in _lab_traces()]


def test_the_mining_sessions_are_answered_alike() -> None:
    sessions = _mining_sessions()
    found = [answer for records in sessions for answer, _ in _watched(records, MINUTE) if answer is not None]
    assert found, "the comparison must include findings, not only silence"
    for records in sessions:
        _assert_alike(records)


def test_the_lab_recorded_tls_is_answered_alike() -> None:
    for records in _lab_tls():
        _assert_alike(records)


BENIGN = sorted((CORPUS / "benign").glob("*.pcap*")) + sorted(
    (CORPUS.parent / "corpus-tunnels" / "benign").glob("*.pcap*")
)


@needs_corpus
@pytest.mark.parametrize("path", BENIGN, ids=[path.name for path in BENIGN])
def test_every_benign_connection_is_answered_alike(path: object) -> None:
    for flow in flows(str(path)):
        _assert_alike(list(flow.records))


def _edge_records(rng: random.Random, scale: float) -> list[Record]:
    """Records whose gaps are whole multiples of a quarter of `QUIET` (scaled), so that gaps of exactly `QUIET`
    and `ANSWER_WITHIN` come up, with sizes on each limit: a job's, a request's, a bulk record's."""
    assert (4 * ANSWER_WITHIN / QUIET).is_integer()  # both limits are whole numbers of steps
    step = QUIET * scale / 4
    sizes = (REQUEST_MIN - 1, REQUEST_MIN, PUSH_MIN - 1, PUSH_MIN, 243, PUSH_MAX, PUSH_MAX + 1, BULK, BULK + 1, 30)
    records, at = [], 0.0
    for _ in range(rng.randrange(2, 40)):
        at += step * rng.choice((0, 1, 2, 4, 4, 7, 8, 8, 9, 40, 80))
        records.append(Record(rng.random() < 0.4, rng.choice(sizes), at))
    return records


@pytest.mark.parametrize("window", WINDOWS)
def test_records_on_the_edges_are_answered_alike(window: float) -> None:
    """Gaps of exactly `QUIET` and `ANSWER_WITHIN` (a push is a record after at least the one, and more than the
    other), and one step either side; a shortcut off by one comparison differs here."""
    rng = random.Random(23)
    scale = window / MINUTE
    pushes = 0
    for _ in range(examples(2000)):
        records = _edge_records(rng, scale)
        assert _watched(records, window) == _measured_each_time(records, window), records
        pushes += bool(measure(records, scale).pushes)
    assert pushes > examples(2000) // 10, pushes  # the edges reached: many of these sequences hold a push


def test_random_records_are_answered_alike() -> None:
    """Random direction, size and timing, times sometimes going back (a clock is not the watcher's to trust), and
    sequences that reach the byte limit before any push."""
    rng = random.Random(29)
    cases = [_random_records(rng, 80) for _ in range(examples(300))]
    cases.append([Record(index % 2 == 0, 4000, index * 3.0) for index in range(40)])  # MAX_BYTES, no push
    for records in cases:
        _assert_alike(records)


def _varied(rng: random.Random, session: list[Record]) -> list[Record]:
    """A mining session changed as an agent might change it: records dropped, small client records (a keep-alive,
    an acknowledgement) and server records slipped in, a job pushed before the client's first request, times
    moved. Many stay mining, so the comparison reaches the records where a finding is made."""
    records = [r for r in session if r.at <= 70 and rng.random() > 0.1]
    start = records[0].at if records else 0.0
    for _ in range(rng.randrange(0, 6)):
        at = start + rng.uniform(-3.0, 60.0)
        from_client = rng.random() < 0.5
        size = rng.choice((6, 17, 30, 63)) if from_client else rng.choice((25, 39, 243, 300, 1200))
        records.append(Record(from_client, size, at))
    if rng.random() < 0.3:  # a job pushed before the client's first request (after a keep-alive, say)
        before = start - rng.choice((0.6, 2.5, 4.0))
        records.append(Record(False, rng.choice((243, 297)), before))
        if rng.random() < 0.7:
            records += [Record(True, rng.choice((6, 30)), before - 4.0), Record(False, 40, before - 3.9)]
    records.sort(key=lambda record: record.at)
    shift = rng.choice((0.0, QUIET / 4, 0.1))
    return [Record(r.from_client, r.size, r.at + shift * rng.randrange(-2, 3)) for r in records]


def test_varied_mining_sessions_are_answered_alike() -> None:
    """The corpus's mining sessions, varied (`_varied`): found or not, on the same record as measuring every
    record finds them."""
    rng = random.Random(31)
    sessions = _mining_sessions()
    found = 0
    for _ in range(examples(600)):
        records = _varied(rng, rng.choice(sessions))
        _assert_alike(records)
        found += any(answer is not None for answer, _ in _watched(records, MINUTE))
    assert found > examples(600) // 10, found  # findings among them: the records that decide are compared


def test_a_miner_that_delays_its_first_push_is_still_found() -> None:
    """The attacker's timing: a miner that keeps every record within `ANSWER_WITHIN` of the client's last for as
    long as it likes (so the watcher measures nothing), then lets the pool push. It is found on the record a
    watcher that measured everything finds it on."""
    opening = [Record(True, 174, 0.0), Record(False, 282, 0.04), Record(True, 81, 0.05), Record(False, 243, 0.09)]
    keepalive = []
    for tick in range(1, 12):  # a poll every 1.9 s, answered at once: never a push
        keepalive += [Record(True, 81, tick * 1.9), Record(False, 243, tick * 1.9 + 0.04)]
    pushes = [Record(False, 243, 23.0 + index * 3.0) for index in range(4)]
    shares = []
    for index in range(3):
        shares += [Record(True, 205, 36.0 + index * 2.5), Record(False, 39, 36.0 + index * 2.5 + 0.05)]
    records = opening + keepalive + pushes + shares
    answers = _watched(records, MINUTE)
    assert answers == _measured_each_time(records, MINUTE)
    assert any(found is not None for found, _ in answers), answers
