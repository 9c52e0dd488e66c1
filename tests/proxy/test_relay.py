"""The relay's watch (egress.proxy.relay.Watch) without sockets: chunks of a watched TLS connection, each with the
time an injected clock gives, shown to it before they would be forwarded."""

from __future__ import annotations

from egress.detect.base import Category, Finding
from egress.detect.miningshape import MiningShape
from egress.detect.tlsshape import Record
from egress.proxy.relay import Watch
from tests.detect import miningshape_traces as traces
from tests.detect.shape_flows import tls_stream

MONERO = [Record(side == "c", size, seconds) for seconds, side, size in traces.MONERO[1]]


def _play(block: bool, mining: MiningShape | None) -> tuple[list[Finding], int, int]:
    """Play the Monero session's bytes through a watch; returns the findings told, the chunks let through and the
    chunks offered."""
    told: list[Finding] = []
    now = [0.0]

    def on_finding(finding: Finding) -> bool:
        told.append(finding)
        return block

    watch = Watch(on_finding, clock=lambda: now[0], mining=mining)
    chunks = tls_stream(MONERO)
    passed = 0
    for at, from_client, data in chunks:
        now[0] = at
        if not watch.passes(from_client, data):
            break
        passed += 1
    return told, passed, len(chunks)


def test_a_mining_shape_that_blocks_closes_before_the_chunk_that_completed_it() -> None:
    told, passed, offered = _play(block=True, mining=MiningShape())
    assert [(f.category, f.protocol) for f in told] == [(Category.MINING, "mining-in-tls")]
    # the handshake (4 chunks), then the records up to the push at 30 s, which is not forwarded
    assert passed == 4 + next(i for i, r in enumerate(MONERO) if r.at >= 29.9) < offered


def test_a_recorded_mining_shape_lets_the_connection_go_on() -> None:
    told, passed, offered = _play(block=False, mining=MiningShape())
    assert len(told) == 1 and passed == offered


def test_without_a_mining_watcher_nothing_is_told() -> None:
    told, passed, offered = _play(block=True, mining=None)
    assert told == [] and passed == offered


def test_the_window_is_read_on_the_injected_clock() -> None:
    """A watcher with a one-second window on a clock that says the session is a minute long: past its window at
    the first push, so nothing is found."""
    told, _, _ = _play(block=True, mining=MiningShape(window=1.0))
    assert told == []
