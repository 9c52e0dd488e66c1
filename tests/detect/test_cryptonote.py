"""Tests for the CryptoNote (XMRig-style) stratum detector."""

from __future__ import annotations

import pytest

from egress.detect import cryptonote
from egress.detect.base import Category, Finding
from tests.detect.feeding import feed_every_split, feed_stream
from tests.detect.test_jsonrpc import NEGATIVE_IDS, NEGATIVES

# nesfit_xmr-eu1.nanopool.org.pcapng: the miner's login and the pool's login result (a job object).
XMR_LOGIN = (
    b'{"method": "login", "params": {"login": "47mr7jYTroxQMwdKoPQuJoc9Vs9S9qCUAL6Ek4qyNFWJdqgBZRn4RYY2QjQfqEMJZVWP'
    b'scupSgaqmUn1dpdUTC4fQsu3yjN", "pass": "x", "agent": "xmr/1.0"}, "id": 1}\n'
)
XMR_LOGIN_RESULT = (
    b'{"id":1,"jsonrpc":"2.0","result":{"id":"1","job":{"blob":"0405d5e1f3c3051418c24106d1f20432fb12e3ac2910d763616a'
    b"015f03cbc257160b2530a5d2b900000000fe340b4d33c582a9f69c3986739425afe9c5ef53dad702ab0fa002ebd0a19ce007"
    b'","job_id":"6774","target":"69ba0000"},"status":"OK"},"error":null}\n'
)
XMR_JOB = (
    b'{"jsonrpc":"2.0","method":"job","params":{"blob":"0405efe1f3c305b64e6d0eaea3c2677a2d426a0cc4d303fa38e5ee73b4e60'
    b'4f2bfb62290a91fdc000000000f34a357ce9ddecda3d6206cdacfd1b145af13355bf6b14c1875fb4c85f02e1905","job_id":"6775",'
    b'"target":"69ba0000"}}\n'
)
# peafowl_monero.pcap: xmr-stak-cpu's share submission.
XMRSTAK_SUBMIT = (
    b'{"method":"submit","params":{"id":"479059546883218","job_id":"722134174127131","nonce":"98024001",'
    b'"result":"c9be9381a68d533c059d614d961e0534d7d8785dd5c339c2f9596eb95f320100"},"id":1}\n'
)


@pytest.mark.parametrize(
    ("client", "server"),
    [
        (XMR_LOGIN, XMR_LOGIN_RESULT),
        (XMR_LOGIN_RESULT, b""),
        (XMR_JOB, b""),
        (XMRSTAK_SUBMIT, b""),
        (XMR_LOGIN.rstrip(b"\n") + XMR_JOB.rstrip(b"\n"), b""),
        (b'{"id":2,"jsonrpc":"2.0","method":"keepalived","params":{"id":"1"}}\n', b""),
    ],
    ids=["login", "login-result", "job", "submit", "concatenated", "keepalived"],
)
def test_finds_cryptonote_at_every_split(client: bytes, server: bytes) -> None:
    results = feed_every_split(cryptonote.detect, client, server)
    assert all(result == results[0] for result in results)
    finding = results[0]
    assert isinstance(finding, Finding)
    assert (finding.category, finding.protocol, finding.detector) == (
        Category.MINING,
        "cryptonote-stratum",
        "cryptonote",
    )


PAD = b"x" * 5000
PADDED = {
    # Red team 12: a 2,100-byte password put XMRig's agent key past the 2,048 bytes the detectors read after the
    # method name; padding before it, or params before the method, moved keys out the other way.
    "long-password": b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"47mr7jYTrox","pass":"'
    + PAD
    + b'","agent":"XMRig/6.21.0"}}\n',
    "params-first": b'{"params":{"login":"47mr7jYTrox","pass":"x","agent":"XMRig/6.21.0","rigid":"'
    + PAD
    + b'"},"id":1,"method":"login"}\n',
    "padded-both-sides": b'{"pad":"'
    + PAD
    + b'","method":"login","params":{"agent":"XMRig/6.21.0","pass":"x","note":"'
    + PAD
    + b'","login":"47mr7jYTrox"}}\n',
    "escaped-quotes-in-padding": b'{"method":"login","params":{"pass":"'
    + b'\\"{[' * 1700
    + b'","login":"47mr7jYTrox","agent":"XMRig/6.21.0"}}\n',
}


@pytest.mark.parametrize("client", list(PADDED.values()), ids=list(PADDED))
def test_a_login_padded_past_any_window_is_found_at_every_cut(client: bytes) -> None:
    for cut in (1, 700, 2048, 2049, len(client) // 2, len(client) - 1):
        found = feed_stream(cryptonote.detect, client[:cut])
        assert found is None or isinstance(found, Finding)  # nothing decided on a message still arriving
        finding = feed_stream(cryptonote.detect, client[:cut] + client[cut:])
        assert isinstance(finding, Finding) and finding.protocol == "cryptonote-stratum", cut


def test_a_padded_api_login_is_still_no_miner() -> None:
    client = b'{"jsonrpc":"2.0","method":"login","params":{"login":"alice","pass":"' + PAD + b'"},"id":1}\n'
    assert feed_stream(cryptonote.detect, client) is None


def test_server_only_direction() -> None:
    assert isinstance(feed_stream(cryptonote.detect, b"", XMR_JOB), Finding)


@pytest.mark.parametrize(("client", "server"), NEGATIVES, ids=NEGATIVE_IDS)
def test_ignores_other_traffic(client: bytes, server: bytes) -> None:
    assert feed_stream(cryptonote.detect, client, server) is None


@pytest.mark.parametrize(
    "client",
    [
        # A generic API login: no agent, so not a miner.
        b'{"jsonrpc":"2.0","method":"login","params":{"login":"alice","pass":"secret"},"id":1}\n',
        b'{"jsonrpc":"2.0","method":"submit","params":{"form":"contact"},"id":1}\n',
        # The keys split over two messages do not make a job.
        b'{"id":1,"result":{"blob":"00"}}\n{"id":2,"result":{"job_id":"1","target":"ff"}}\n',
    ],
    ids=["api-login", "form-submit", "split-keys"],
)
def test_ignores_near_misses(client: bytes) -> None:
    assert feed_stream(cryptonote.detect, client) is None
