"""tests/redis_server.py: a server is taken as the test's own only when the Redis that answers is the process it
started; what it started it stops."""

from __future__ import annotations

import pytest

from tests import ports, redis_server
from tests.redis_server import PortTaken, RedisFactory, RedisServer


def test_a_unix_socket_server_answers_with_its_own_pid(redis_factory: RedisFactory) -> None:
    server = redis_factory.server()
    assert server.url.startswith("unix://") and server.socket_path.exists()
    assert server.info_pid() == server.pid
    assert server.cli("ping").strip() == "PONG"


def test_flush_empties_the_server(redis_server: RedisServer) -> None:
    assert redis_server.command("SET", "left-over", "1") == "+OK"
    redis_server.flush()
    assert redis_server.command("DBSIZE") == ":0"


def test_a_port_another_redis_holds_is_never_taken_for_ours(redis_factory: RedisFactory) -> None:
    other = redis_factory.server(tcp=True)
    impostor = RedisServer(port=other.port)  # told to use that port: it cannot, and says so
    try:
        with pytest.raises(PortTaken):
            impostor.start()
        assert impostor.process is None  # what it started, it stopped
    finally:
        impostor.cleanup()
    assert other.info_pid() == other.pid


def test_a_port_it_chose_that_turns_out_taken_is_swapped(
    redis_factory: RedisFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = redis_factory.server(tcp=True)
    first = [other.port]  # the first "free" port it is given is the other server's

    def free_port(cluster_bus: bool = False) -> int:
        return first.pop() if first else ports.free_port(cluster_bus)

    monkeypatch.setattr(redis_server, "free_port", free_port)
    server = RedisServer(tcp=True)
    try:
        assert server.port == other.port
        server.start()
        assert server.port != other.port and server.info_pid() == server.pid
    finally:
        server.cleanup()


def test_cleanup_stops_every_server(redis_factory: RedisFactory) -> None:
    factory = RedisFactory()
    made = [factory.server(), factory.server(tcp=True)]
    processes = [server.process for server in made]
    factory.cleanup()
    assert all(process is not None and process.poll() is not None for process in processes)
    assert not any(server.directory.exists() for server in made)
