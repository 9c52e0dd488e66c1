"""SSH's opening inside TLS read however its bytes are cut into records (egress.detect.sshopening, through
egress.detect.tlsshape): coalesced by a batching wrapper or a loaded stunnel, split by a re-chunking relay, on
either side; and what must not look like it (random sizes, the benign corpus; the recorded HTTPS sessions are
tests/detect/test_tlsshape.py's)."""

from __future__ import annotations

import random

import pytest

from egress.detect import sshopening
from egress.detect.base import Finding
from egress.detect.tlsshape import MAX_RECORDS, Record, TlsShape
from tests.budget import examples
from tests.corpus import CORPUS, needs_corpus
from tests.detect.shape_flows import flows, tls_stream

Turn = tuple[bool, tuple[int, ...]]

LEGACY_UNDER_LOAD = (
    (False, 249), (False, 249), (True, 41), (False, 1129), (True, 960), (True, 1208), (False, 1584), (True, 16),
    (True, 64), (False, 64), (True, 80), (False, 96), (True, 160), (False, 112), (True, 320),
)  # fmt: skip
"""What the front's watcher read of the lab's legacy-cipher session (aes128-ctr, hmac-sha2-256) under
``stress-ng --cpu 4`` when the shell answered (4 runs of 4 on the old reading): the server's stunnel sent the
server's identification and KEXINIT in one record (1129 = 41 + 1088), so no server record was a clear packet."""

NEWKEYS_WITH_REQUEST = (
    (True, 41), (False, 249), (False, 249), (False, 1129), (True, 960), (True, 1208), (False, 1584), (True, 80),
    (False, 64), (True, 80), (False, 96),
)  # fmt: skip
"""The same, a run where the client's stunnel also read NEWKEYS and the SERVICE_REQUEST together."""


def _opening(service: int, kex: int = 1208) -> list[Turn]:
    """SSH's turns inside TLS 1.3, message by message (the lab's OpenSSH 9.2 sizes): the server's session tickets,
    identifications, KEXINITs, key exchange, reply, NEWKEYS and SERVICE_REQUEST (``service`` bytes encrypted),
    SERVICE_ACCEPT, then user authentication."""
    return [
        (False, (249, 249)), (True, (41,)), (False, (41, 1088)), (True, (960, kex)), (False, (1584,)),
        (True, (16, service)), (False, (service,)), (True, (80,)), (False, (96,)), (True, (160,)), (False, (112,)),
    ]  # fmt: skip


ACCEPT_TURN = 6
"""Index of the SERVICE_ACCEPT's turn in `_opening`: the decision must come on one of its records or before."""


def _cut(turns: list[Turn], cut: str, rng: random.Random | None = None) -> list[tuple[bool, int, int]]:
    """(from client, plaintext size, turn index) records: ``message`` one per message, ``coalesced`` one per turn,
    ``N`` (digits) records of N bytes, ``random`` cuts at random points."""
    out: list[tuple[bool, int, int]] = []
    for index, (side, messages) in enumerate(turns):
        total = sum(messages)
        if cut == "message":
            sizes = list(messages)
        elif cut == "coalesced":
            sizes = [total]
        elif cut == "random":
            assert rng is not None
            points = sorted(rng.sample(range(1, total), min(total - 1, rng.randrange(0, 6))))
            sizes = [b - a for a, b in zip([0, *points], [*points, total], strict=True)]
        else:
            step = int(cut)
            sizes = [min(step, total - at) for at in range(0, total, step)]
        out += [(side, size, index) for size in sizes]
    return out


def _watch(records: list[tuple[bool, int, int]]) -> tuple[Finding | None, int]:
    """The first finding of a TLS 1.3 watcher fed these records, and the turn of the record that completed it."""
    shape = TlsShape(suspicions=False)
    stream = tls_stream([Record(side, size, float(at)) for at, (side, size, _) in enumerate(records)])
    preamble = len(stream) - len(records)
    for position, (at, from_client, data) in enumerate(stream):
        found = shape.feed(from_client, data, at)
        if found is not None:
            return found, records[position - preamble][2] if position >= preamble else -1
    return None, len(records)


@pytest.mark.parametrize("records", [LEGACY_UNDER_LOAD, NEWKEYS_WITH_REQUEST], ids=["lab-load", "lab-coalesced"])
def test_the_lab_sessions_that_got_through_under_load_are_found(records: tuple[tuple[bool, int], ...]) -> None:
    found, _ = _watch([(side, size, index) for index, (side, size) in enumerate(records)])
    assert found is not None and found.protocol == "ssh-in-tls", found
    assert "SERVICE_ACCEPT" in found.evidence


@pytest.mark.parametrize("service", [40, 44, 52, 64, 100], ids=["umac-64", "chacha20", "gcm", "ctr-sha256", "etm512"])
@pytest.mark.parametrize("cut", ["message", "coalesced", "1", "7", "100", "1000"])
def test_ssh_is_found_however_its_opening_is_cut(cut: str, service: int) -> None:
    """Each turn in one record (a client wrapper batching its writes), one per message, or re-chunked into records
    of N bytes (down to 1: 4,000 records, past `MAX_RECORDS`): found before the SERVICE_ACCEPT reaches the client,
    so no user authentication starts."""
    records = _cut(_opening(service), cut)
    found, turn = _watch(records)
    assert found is not None and found.protocol == "ssh-in-tls", (cut, found)
    assert turn <= ACCEPT_TURN, (turn, found)
    if cut == "1":
        assert len(records) > MAX_RECORDS


def test_ssh_is_found_under_random_cuts() -> None:
    rng = random.Random(11)
    for _ in range(examples(300)):
        service = rng.choice([40, 44, 52, 64, 68, 96, 100])
        kex = rng.choice([48, 80, 1208, 272])
        found, turn = _watch(_cut(_opening(service, kex), "random", rng))
        assert found is not None and turn <= ACCEPT_TURN, (service, kex, found, turn)


def test_a_service_accept_of_another_size_is_not_ssh() -> None:
    """The turns' reading rests on the SERVICE_ACCEPT mirroring the request (same payload, same cipher)."""
    turns = _opening(64)
    turns[ACCEPT_TURN] = (False, (68,))
    assert sshopening.by_turns([(side, sum(sizes)) for side, sizes in turns[: ACCEPT_TURN + 1]]) is None
    turns[ACCEPT_TURN] = (False, (64,))
    assert sshopening.by_turns([(side, sum(sizes)) for side, sizes in turns[: ACCEPT_TURN + 1]]) is not None


def test_random_turns_rarely_look_like_ssh() -> None:
    """The turns' reading blocks, so sizes of random exchanges must not meet it (odds measured with 200,000 of
    each model: egress.detect.sshopening's docstring, about 1e-5 per connection)."""
    rng = random.Random(3)
    fired = 0
    for _ in range(examples(4000)):
        turns: list[tuple[bool, int]] = []
        for index in range(16):
            size = int(2 ** rng.uniform(3, 14)) if index % 3 else rng.randrange(8, 4096)
            sshopening.add_turn(turns, Record(rng.random() < 0.5, size, float(index)))
            fired += not turns[-1][0] and sshopening.by_turns(turns) is not None
    assert fired == 0


BENIGN = sorted((CORPUS / "benign").glob("*.pcap*")) + sorted(
    (CORPUS.parent / "corpus-tunnels" / "benign").glob("*.pcap*")
)
BENIGN += sorted((CORPUS / "crypto-node").glob("*.pcap*"))


@needs_corpus
@pytest.mark.parametrize("path", BENIGN, ids=[path.name for path in BENIGN])
def test_no_benign_connection_reads_as_ssh_turns(path: object) -> None:
    """Every TCP connection of the benign corpus (TLS ones by their records; the rest as each write would be a
    record inside TLS, tests/detect/shape_flows.py)."""
    hits = []
    for flow in flows(str(path)):
        turns: list[tuple[bool, int]] = []
        for record in flow.records[: MAX_RECORDS * 4]:
            sshopening.add_turn(turns, record)
            if not record.from_client and sshopening.by_turns(turns) is not None:
                hits.append(flow.name)
                break
    assert hits == []


def _fed(records: list[tuple[bool, int]]) -> TlsShape:
    shape = TlsShape(suspicions=False)
    for at, from_client, data in tls_stream([Record(side, size, float(i)) for i, (side, size) in enumerate(records)]):
        shape.feed(from_client, data, at)
    return shape


def test_a_bulk_transfer_still_ends_the_watch_at_its_record_budget() -> None:
    """The watch reads past `MAX_RECORDS` only while an opening may be under way: a download of 16 KiB records
    ends it at the budget as before (the relay then moves its bytes with splice(2)); tiny records in few turns
    keep it reading, up to `sshopening.OPENING_BYTES`."""
    bulk = _fed([(True, 300)] + [(False, 16384)] * (MAX_RECORDS + 40))
    assert bulk.done and bulk.count == MAX_RECORDS and len(bulk.records) == MAX_RECORDS
    tiny = _fed([(True, 41)] + [(False, 10)] * (MAX_RECORDS + 40))
    assert not tiny.done and tiny.count == MAX_RECORDS + 41 and len(tiny.records) == MAX_RECORDS
    past = _fed([(True, 41)] + [(False, 10)] * (sshopening.OPENING_BYTES // 10 + 1))
    assert past.done


def test_a_kexinit_dribbled_past_the_servers_kexinit_is_read_from_the_identification() -> None:
    """A wrapper that sends the client's KEXINIT in tiny records is still sending it when the server's KEXINIT
    passes (that part of the opening is not lockstep): the KEXINIT's tail rides in the key exchange turn (lab,
    7-byte writes). The packets still end 0 mod 8 from the end of the identification's turn."""
    turns = [(False, 498), (True, 41), (False, 41), (True, 500), (False, 1088), (True, 460 + 1208), (False, 1584)]
    turns += [(True, 16 + 64), (False, 64)]
    found = sshopening.by_turns(turns)
    assert found is not None and found.protocol == "ssh-in-tls", found
    turns[1], turns[3] = (True, 42), (True, 499)  # the same bytes, no turn ends 0 mod 8 before: not SSH
    assert sshopening.by_turns(turns) is None
