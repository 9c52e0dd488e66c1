"""Which record-store URLs name a Redis: checked where a command takes ``--redis-url``, so that a wrong one is one
line naming the flag before anything connects (redis-py's own error surfaces only at the first command)."""

from __future__ import annotations

import urllib.parse
from typing import Final

SCHEMES: Final = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def redis_url_problem(url: str) -> str:
    """Why ``url`` names no Redis (``""`` when it does): an unknown scheme, no host, a bad port or database."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"{url!r} is not a URL ({error})"
    if parts.scheme not in SCHEMES:
        return f"{url!r}: the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}"
    if parts.scheme == "unix":
        return "" if parts.path else f"{url!r}: a unix:// URL needs the socket's path (unix:///run/redis.sock)"
    if not parts.hostname:
        return f"{url!r} names no host (redis://host:port/db)"
    if port == 0:
        return f"{url!r}: port 0 is no port"
    database = parts.path.strip("/")
    if database and not database.isdigit():
        return f"{url!r}: the database after the host is a number (redis://host:port/0)"
    return ""
