"""`http.request_of` held to the parse it saves (docs/scanner-hot-path.md, scan16): the request head kept in a
view's memo is what `parse_request` reads of the client's bytes at every longer prefix, on generated streams and
on the corpus's flows, and the detectors that read it answer a grown view as they answer a fresh one."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from egress.detect import circumvent, http, proxytunnel, upgrade
from egress.detect.base import MORE, FlowMeta, FlowView, Result, Transport
from egress.detect.websocket import make_websocket_detector
from tests.budget import examples
from tests.detect import seeds

META = FlowMeta(Transport.TCP, "10.0.0.2", 40000, "198.51.100.7", 80)

PIECES = [
    b"GET / HTTP/1.1", b"CONNECT a:443 HTTP/1.1", b"POST /x HTTP/1.0", b"GE", b"T ", b"/ ", b"HTTP/1.1",
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\n\n", b"\r\n\r", b"Host: a", b"Upgrade: h2c", b"Upgrade: websocket",
    b"Connection: Upgrade", b"bad line", b": x", b"{}", b"X" * 300,
]  # fmt: skip


def plain(data: bytes) -> object:
    """What every prefix read before the memo: the parse itself (not `parse_request`'s one-object memo)."""
    return http._parse_request(data)


def check(client: bytes, cuts: list[int]) -> None:
    view = FlowView(META)
    for end in [*sorted(set(cuts)), len(client)]:
        view.client += client[len(view.client) : end]
        assert http.request_of(view) == plain(view.client), view.client


@settings(max_examples=examples(600), deadline=None)
@given(
    st.lists(st.sampled_from(PIECES), max_size=10).map(b"".join),
    st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
@example(b"GET / HTTP/1.1\r\nHost: a\r\n\r", [30])  # a CRLF blank line cut in its middle
@example(b"GET / HTTP/1.1\r\nHost: a\n\r\n\r\n", [25])  # LF blank line completed after a CRLF head end was near
@example(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbad line\r\n\r\n", [27, 30])  # a body after the head
@example(b"GE" + b"T / HTTP/1.1\r\n\r\n", [1, 2, 3])  # MORE, then a request: MORE is not kept
def test_the_kept_head_is_the_parse_of_every_longer_prefix_on_generated_streams(client: bytes, cuts: list[int]) -> None:
    check(client, [cut for cut in cuts if cut < len(client)])


def test_the_kept_head_is_the_parse_of_every_longer_prefix_of_the_corpus_flows() -> None:
    for flow in (*seeds.STREAMS, *seeds.corpus_seeds().streams):
        client = flow.client[: 16 * 1024]
        check(client, list(range(0, len(client), 97)))  # many cuts, a few inside each head
        check(client, list(range(0, min(len(client), 400))))  # byte by byte through the head


def test_a_head_that_is_not_whole_is_not_kept() -> None:
    view = FlowView(META, client=b"GET / HTTP/1.1\r\nHost: a\r\n")
    assert http.request_of(view) is MORE
    assert http.REQUEST_MEMO not in view.memo
    view.client += b"Upgrade: h2c\r\n\r\n"
    request = http.request_of(view)
    assert isinstance(request, http.HttpRequest) and request.headers["upgrade"] == "h2c"
    assert view.memo[http.REQUEST_MEMO] is request


DETECTORS: list[Callable[[FlowView], Result]] = [
    upgrade.detect,
    proxytunnel.detect,
    circumvent.detect,
    make_websocket_detector(()),
]


@pytest.mark.parametrize("detect", DETECTORS, ids=lambda each: getattr(each, "__module__", "websocket"))
def test_the_detectors_answer_a_grown_view_as_a_fresh_one(detect: Callable[[FlowView], Result]) -> None:
    flows = [*seeds.STREAMS, *seeds.corpus_seeds().streams]
    asked = [  # (the first request, the server's answer, what the client sends next)
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n", b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n"),
        (b"CONNECT a:443 HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n", b""),
        (b"GET /c HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", b"", b"\x82\x01x"),
    ]
    streams = [(flow.client[:8192], flow.server[:8192]) for flow in flows]
    streams += [(first + more, server) for first, server, more in asked]
    for client, server in streams:
        view = FlowView(META)
        cuts = sorted({*range(0, len(client), 211), *range(0, min(len(client), 80), 7), len(client)})
        for end in cuts:
            view.client += client[len(view.client) : end]
            view.server = server[: len(view.client)]  # the server's bytes grow alongside
            fresh = FlowView(META, client=view.client, server=view.server)
            assert detect(view) == detect(fresh), (client[:60], end)
