"""The facade's own command packer (egress/record/redis_facade.py): byte for byte what redis-py's packer sends."""

from __future__ import annotations

import pytest
import redis.exceptions
from redis.connection import Connection

from egress.record.redis_facade import Arg, pack_command


@pytest.mark.parametrize(
    "args",
    [
        ("PING",),
        ("EVALSHA", "a" * 40, 2, "egress:{sandbox-1}:counts:60:29932982", "egress:{x}:y", 1, 0),
        ("SET", "ünï 😀", b"\x00\r\n\xff", -7, 0.1, 1e22, 1_795_979_023.7520187, float(2**53)),
        ("X", "", b"", 0, -0.0),
        ("EVALSHA", "b" * 40, 300, *(f"egress:{{s}}:counts:60:{minute}" for minute in range(300))),
    ],
)
def test_packs_as_redis_py_does(args: tuple[Arg, ...]) -> None:
    assert pack_command(args) == b"".join(Connection().pack_command(*args))  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("bad", [True, None, [1], "\ud800"])
def test_refuses_what_redis_py_refuses(bad: object) -> None:
    with pytest.raises((redis.exceptions.DataError, UnicodeEncodeError)):
        pack_command(("SET", "k", bad))  # type: ignore[arg-type]
