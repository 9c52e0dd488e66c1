"""sd_notify against a real unix datagram socket, as systemd listens for it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from egress.gateway.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_ready_and_watchdog_arrive_as_systemd_reads_them(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.ready("4 workers, policy sha256:ab")
    assert sock.recv(4096) == b"READY=1\nSTATUS=4 workers, policy sha256:ab\n"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1\n"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1\n"


def test_a_newline_cannot_forge_a_field(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    assert Notifier.from_environment({"NOTIFY_SOCKET": path}).status("lockdown\nREADY=1")
    assert sock.recv(4096) == b"STATUS=lockdown READY=1\n"


def test_abstract_namespace_address() -> None:
    name = f"egress-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier.from_environment({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1\n"


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert notifier.watchdog_interval() is None


def test_a_socket_that_is_gone_is_not_an_error(tmp_path: Path) -> None:
    assert not Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "absent")}).ready()


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "15000000"}, 7.5),
        ({"WATCHDOG_USEC": "15000000", "WATCHDOG_PID": "1234"}, 7.5),
        ({"WATCHDOG_USEC": "15000000", "WATCHDOG_PID": "99"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_period_for_this_process(environ: dict[str, str], interval: float | None) -> None:
    assert Notifier.from_environment(environ, pid=1234).watchdog_interval() == interval
