"""What reading a message's fields joined costs per request (red team 13): µs per exchange judged the way the front
and the addon judge it (`egress.proxy.mitm.inspect.read` of the request and its response, `inspect_exchange`, then
the connection's joins, `BodyStreams.message`), for ordinary traffic, under three readings:

- ``before``: no joined fields (`egress.detect.httpfields` giving none: main before the round);
- ``all-detectors``: the joined fields read by every stream detector (tunnels, WebSocket, names too);
- ``pools-only``: the joined fields read by the pool detectors (`POOL_DETECTORS`), as shipped.

Each exchange is judged ``--rounds`` times per run, the modes' runs interleaved ``--repeat`` times (one connection's
joins per mode, kept across runs); the best run of each is printed, per message shape.

    python bench/fieldjoin.py [--rounds 2000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from egress.detect import httpfields
from egress.detect.base import Detector, FlowMeta, Transport
from egress.detect.registry import stream_detectors
from egress.policy.lists import load_name_lists
from egress.proxy.mitm import inspect
from egress.proxy.mitm.inspect import BodyStreams, Message, Read, inspect_exchange, read

META = FlowMeta(Transport.TCP, "10.0.0.5", 40000, "198.51.100.7", 443)
AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
BROWSER = (
    ("Host", "allowed.lab"), ("User-Agent", AGENT), ("Accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
    ("Accept-Language", "en-US,en;q=0.5"), ("Accept-Encoding", "gzip, deflate, br"), ("Connection", "keep-alive"),
    ("Cookie", "session=3f2a9c; theme=dark; consent=1"), ("Upgrade-Insecure-Requests", "1"),
    ("Sec-Fetch-Dest", "document"), ("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Site", "none"),
    ("Priority", "u=0, i"),
)  # fmt: skip
API = (
    ("Host", "allowed.lab"), ("User-Agent", "python-httpx/0.27.0"), ("Accept", "application/json"),
    ("Content-Type", "application/json"), ("Authorization", "Bearer " + "x" * 40),
    ("X-Request-Id", "550e8400-e29b-41d4-a716-446655440000"),
    ("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
)  # fmt: skip
CONSENT = "session=3f2a9c; theme=dark; OptanonConsent=%7B%22necessary%22%3Atrue%2C%22ads%22%3Afalse%7D"
PAGE = (
    ("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-cache"), ("Vary", "Accept-Encoding"),
    ("Report-To", '{"group":"default","max_age":31536000,"endpoints":[{"url":"https://r.example/report"}]}'),
    ("NEL", '{"report_to":"default","max_age":31536000}'),
    *(("Set-Cookie", f"c{n}=v{n}; Path=/; HttpOnly; Secure") for n in range(12)),
)  # fmt: skip
SHAPES = {
    "browser GET + page (12 Set-Cookie)": (Message("GET / HTTP/1.1", BROWSER, b""), Message("HTTP/1.1 200 OK", PAGE,
                                           b"<html>" + b"x" * 2000 + b"</html>")),
    "API POST + JSON answer": (Message("POST /v1/q HTTP/1.1", API, b'{"query":"weather","city":"Lyon"}'),
                               Message("HTTP/1.1 200 OK", (("Content-Type", "application/json"),), b'{"ok":true}')),
    "API POST, a JSON field on every request": (Message("POST /v1/q HTTP/1.1", (*API, ("X-Client", '{"sdk":"js",'
                                                '"v":"2.1.0"}')), b'{"query":"weather"}'), Message("HTTP/1.1 200 OK",
                                                (("Content-Type", "application/json"),), b'{"ok":true}')),
    "browser GET, percent-encoded JSON cookie": (Message("GET / HTTP/1.1", (*BROWSER[:6], ("Cookie", CONSENT),
                                                   *BROWSER[7:]), b""), Message("HTTP/1.1 200 OK", PAGE, b"<html>" +
                                                   b"x" * 2000 + b"</html>")),
    "API POST, 4 own fields, one JSON": (Message("POST /v1/q HTTP/1.1", (*API, ("X-Client", '{"sdk":"js"}'),
                                         ("X-B", "1"), ("X-A", "2")), b'{"query":"weather"}'), Message(
                                         "HTTP/1.1 200 OK", (("Content-Type", "application/json"),), b'{"ok":true}')),
}  # fmt: skip
"""Ordinary exchanges: a browser's navigation (the page's answer with reporting headers and cookies), an API call,
the same with a field whose JSON value every request repeats (the connection's join of it grows to its window);
round 13b's: a consent manager's cookie of percent-encoded JSON (decoded, it opens), own fields not sent in the
order of their names (the sorted reading)."""


def _judge(stream: tuple[Detector, ...], request: Read, response: Read, bodies: BodyStreams) -> None:
    assert inspect_exchange(META, stream, request, response) is None
    assert bodies.message(request, True) is None and bodies.message(response, False) is None


def _timed(run: Callable[[], None], rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        run()
    return (time.perf_counter() - start) / rounds * 1e6


def _patch(mode: str, shipped: tuple[Callable[..., object], ...]) -> None:
    """Make the module functions read fields as ``mode`` says (``shipped``: the functions as shipped)."""
    inspect.pool_detectors, httpfields.joined, httpfields.by_name = shipped  # type: ignore[assignment]
    if mode == "all-detectors":
        inspect.pool_detectors = lambda detectors: detectors  # type: ignore[assignment]
    elif mode == "before":
        httpfields.joined = lambda fields: []
        httpfields.by_name = lambda fields: ()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    stream = stream_detectors(load_name_lists())
    shipped = (inspect.pool_detectors, httpfields.joined, httpfields.by_name)
    print(f"{'shape':40} {'before':>9} {'all-detectors':>14} {'pools-only':>11}  (µs per exchange, best of runs)")
    modes = ("before", "all-detectors", "pools-only")
    for name, (request, response) in SHAPES.items():
        bodies = {mode: BodyStreams(META, stream) for mode in modes}  # one connection per mode, its joins warm
        figures: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.repeat):
            for mode in modes:  # interleaved, so that a busy spell costs each mode alike
                _patch(mode, shipped)

                def run(
                    joins: BodyStreams = bodies[mode], request: Message = request, response: Message = response
                ) -> None:
                    _judge(stream, read(request), read(response), joins)

                figures[mode].append(_timed(run, args.rounds))
        _patch("pools-only", shipped)
        print(
            f"{name:40} " + " ".join(f"{min(figures[mode]):{w}.1f}" for mode, w in zip(modes, (9, 14, 11), strict=True))
        )


if __name__ == "__main__":
    main()
