"""Which record-store URLs name a Redis, and how one is shown: checked where a command takes ``--redis-url``, so
that a wrong one is one line naming the flag before anything connects (redis-py's own error surfaces only at the
first command); shown with its password hidden wherever a message or log line quotes it (a deployed gateway's URL
holds the local Redis's password, docs/deploy.md)."""

from __future__ import annotations

import urllib.parse
from typing import Final

SCHEMES: Final = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
HIDDEN: Final = "***"
"""What a password is shown as."""
NOT_A_URL: Final = "<not a URL>"
"""What a value that is no URL is shown as (it may be a password given in the wrong place)."""


def _split(url: str) -> urllib.parse.SplitResult | None:
    try:
        return urllib.parse.urlsplit(url)
    except ValueError:  # an unbalanced IPv6 bracket
        return None


def has_credentials(url: str) -> bool:
    """Whether ``url`` carries a password (``redis://:pw@host``, ``redis://user:pw@host``, ``?password=``)."""
    parts = _split(url)
    if parts is None:
        return False
    if parts.password:
        return True
    return any(key == "password" and value for key, value in urllib.parse.parse_qsl(parts.query))


def shown(url: str) -> str:
    """``url`` as a message may quote it: its password (in the authority or the query) replaced by ``***``.
    A string that is not a URL at all is shown as ``<not a URL>``: it may be a password pasted in the wrong place."""
    parts = _split(url)
    if parts is None or not parts.scheme:
        return NOT_A_URL
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}:{HIDDEN}@{hostport}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(key == "password" for key, _ in pairs):
            query = "&".join(
                f"{key}={HIDDEN if key == 'password' else urllib.parse.quote(value, safe='')}" for key, value in pairs
            )
    return _joined(parts._replace(netloc=netloc, query=query))


def _joined(parts: urllib.parse.SplitResult) -> str:
    """``scheme://netloc/path?query#fragment``, keeping ``//`` with an empty netloc (``unix:///run/redis.sock``)."""
    text = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return text + (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def without_credentials(url: str) -> str:
    """``url`` with no user, password or ``password=`` parameter: what anyone on the host could connect with."""
    parts = _split(url)
    if parts is None or not parts.scheme:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    pairs = [
        (key, value)
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if key not in ("password", "username")
    ]
    return _joined(parts._replace(netloc=netloc, query=urllib.parse.urlencode(pairs)))


def redis_url_problem(url: str) -> str:
    """Why ``url`` names no Redis (``""`` when it does): an unknown scheme, no host, a bad port or database."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as error:
        text = shown(url)
        return f"{text!r} is not a URL ({error})" if text != NOT_A_URL else f"not a URL ({error})"
    url = shown(url)
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
