"""What a readiness event and a registration cost on the worker's loop: asyncio's own (``loop.add_reader``) against
the front's `egress.proxy.poller.Poller` on `front_loop` (tlsconn4, docs/gateway-performance.md).

Two socket pairs play ping-pong inside one loop: each reader callback reads the byte that woke it and sends one to
the other pair, so every turn of the loop is one event and one callback; then a registration and a removal of a
reader on an idle socket, many times. Prints µs of this process's CPU per event and per registration pair, each
way, alternating ``--rounds`` times::

    python bench/poller_events.py --events 20000 --registrations 20000 --rounds 3

Instructions (which do not depend on the load): ``valgrind --tool=cachegrind --cache-sim=no python
bench/poller_events.py --way poller --rounds 1 --events N --registrations M`` for two values of N (or M), the
difference of the totals over the difference of N.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import sys
from collections.abc import Callable

sys.path.insert(0, __file__.rsplit("/", 2)[0])

from egress.proxy.poller import Poller, front_loop


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _ping_pong(events: int, add_reader: Callable[..., object], remove_reader: Callable[[int], object]) -> float:
    (a, a_far), (b, b_far) = socket.socketpair(), socket.socketpair()
    for sock in (a, a_far, b, b_far):
        sock.setblocking(False)
    done = asyncio.get_running_loop().create_future()
    count = 0

    def on(sock: socket.socket, other: socket.socket) -> None:
        nonlocal count
        sock.recv(1)
        count += 1
        if count >= events:
            if not done.done():
                done.set_result(None)
            return
        other.send(b"x")

    add_reader(a_far.fileno(), on, a_far, b)
    add_reader(b_far.fileno(), on, b_far, a)
    started = _cpu()
    a.send(b"x")
    await done
    spent = _cpu() - started
    for sock in (a_far, b_far):
        remove_reader(sock.fileno())
    for sock in (a, a_far, b, b_far):
        sock.close()
    return spent / events * 1e6


def _registrations(count: int, add_reader: Callable[..., object], remove_reader: Callable[[int], object]) -> float:
    a, b = socket.socketpair()
    fd = a.fileno()
    started = _cpu()
    for _ in range(count):
        add_reader(fd, _nothing)
        remove_reader(fd)
    spent = _cpu() - started
    a.close()
    b.close()
    return spent / count * 1e6


def _nothing() -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--registrations", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--way", choices=("asyncio", "poller"), help="only this one (for cachegrind's counts)")
    args = parser.parse_args()

    async def measure(way: str) -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        if way == "asyncio":
            return (
                await _ping_pong(args.events, loop.add_reader, loop.remove_reader),
                _registrations(args.registrations, loop.add_reader, loop.remove_reader),
            )
        poller = Poller()
        assert poller.shared
        try:
            return (
                await _ping_pong(args.events, poller.add_reader, poller.remove_reader),
                _registrations(args.registrations, poller.add_reader, poller.remove_reader),
            )
        finally:
            poller.close()

    for round_ in range(args.rounds):
        for way in (args.way,) if args.way else ("asyncio", "poller"):
            event, registration = asyncio.run(measure(way), loop_factory=front_loop)
            print(f"round {round_ + 1} {way:8} {event:6.2f} µs per event, {registration:6.2f} µs per add+remove")


if __name__ == "__main__":
    main()
