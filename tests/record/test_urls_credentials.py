"""Redis URLs as messages show them: the password hidden wherever it is (authority or query), everything else as
given; and the URL without credentials that `egress doctor` probes with."""

from __future__ import annotations

import pytest

from egress.record.urls import HIDDEN, NOT_A_URL, has_credentials, redis_url_problem, shown, without_credentials

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("url", "seen", "bare"),
    [
        (f"redis://:{SECRET}@127.0.0.1:6379/0", f"redis://:{HIDDEN}@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (f"redis://egress:{SECRET}@db.lab/2", f"redis://egress:{HIDDEN}@db.lab/2", "redis://db.lab/2"),
        (f"rediss://:{SECRET}@[::1]:6380/0", f"rediss://:{HIDDEN}@[::1]:6380/0", "rediss://[::1]:6380/0"),
        (
            f"redis://h:6379/0?password={SECRET}&db=1",
            f"redis://h:6379/0?password={HIDDEN}&db=1",
            "redis://h:6379/0?db=1",
        ),
        (
            f"unix:///run/redis.sock?password={SECRET}",
            f"unix:///run/redis.sock?password={HIDDEN}",
            "unix:///run/redis.sock",
        ),
        (f"redis+cluster://:{SECRET}@n1:7000", f"redis+cluster://:{HIDDEN}@n1:7000", "redis+cluster://n1:7000"),
        ("redis://egress@h/0", "redis://egress@h/0", "redis://h/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_shown_hides_the_password_and_nothing_else(url: str, seen: str, bare: str) -> None:
    assert shown(url) == seen
    assert SECRET not in shown(url)
    assert without_credentials(url) == bare
    assert has_credentials(url) is (SECRET in url)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@h:notaport/0",  # a bad port: the message quotes the URL
        f"http://:{SECRET}@h/0",  # a wrong scheme
        f"redis://:{SECRET}@h/zero",  # a bad database
        f"redis://:{SECRET}@:6379/0",  # no host
        f"redis://:{SECRET}@[::1/0",  # an unbalanced bracket: not a URL at all
        SECRET,  # the password where the URL belongs
    ],
)
def test_a_bad_urls_message_never_quotes_its_password(url: str) -> None:
    problem = redis_url_problem(url)
    assert problem and SECRET not in problem, problem


def test_what_is_no_url_is_not_shown() -> None:
    assert shown(SECRET) == NOT_A_URL
    assert shown("redis://[::1") == NOT_A_URL
