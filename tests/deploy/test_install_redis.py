"""deploy/install.sh gives the local Redis a password on a new install (red team 10b reached the gateway's Redis
through its loopback before the guard closed that: the password is the layer behind it): a file of its own that
redis.conf includes, both settings files' URL carrying it, nothing on an upgrade, and `uninstall --purge` takes it
away. The staged file is then read by a real redis-server, which refuses a client without the password and answers
the settings' URL; `egress doctor`'s probe tells the two apart."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from egress.gateway.hostprobe import SystemHost
from egress.record.redis_facade import STORE_ERRORS, RedisFacade
from egress.record.urls import has_credentials, without_credentials
from tests.deploy.staging import Staged, staging, tree
from tests.needs import unavailable
from tests.redis_server import REDIS_SERVER, RedisFactory

pytestmark = pytest.mark.root  # chown/chgrp to the staged user's group

DEBIANS = "# Debian's redis.conf, shortened\nbind 127.0.0.1 -::1\nport 6379\n"
AUTH = "etc/redis/egress-auth.conf"
URL = re.compile(r"^EGRESS_REDIS_URL=(.*)$", re.M)


@pytest.fixture
def staged(tmp_path: Path) -> Staged:
    made = staging(tmp_path)
    conf = made.root / "etc/redis/redis.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(DEBIANS)
    return made


def _urls(root: Path) -> list[str]:
    return [URL.findall((root / "etc/egress" / name).read_text())[0] for name in ("gateway.env", "api.env")]


def _password(root: Path) -> str:
    found: list[str] = re.findall(r"^requirepass ([0-9a-f]+)$", (root / AUTH).read_text(), re.M)
    assert len(found) == 1, found
    return found[0]


def test_a_new_install_gives_the_local_redis_a_password(staged: Staged) -> None:
    done = staged.install()
    root = staged.root
    password = _password(root)
    assert len(password) == 64, "32 random bytes in hex: no character a URL must escape"
    assert stat.S_IMODE((root / AUTH).stat().st_mode) == 0o640, "root and the group redis only"
    conf = (root / "etc/redis/redis.conf").read_text()
    assert conf.startswith(DEBIANS), "the administrator's settings stay as they were"
    assert conf.endswith("\ninclude /etc/redis/egress-auth.conf\n"), "last: it wins over an earlier requirepass"
    assert _urls(root) == [f"redis://:{password}@127.0.0.1:6379/0"] * 2
    assert "password" in done.stderr and staged.host_calls() == []


def test_installing_twice_keeps_the_password(staged: Staged) -> None:
    staged.install()
    first = tree(staged.root)
    staged.install()
    assert tree(staged.root) == first


def test_two_hosts_get_two_passwords(tmp_path: Path) -> None:
    found = []
    for host in ("a", "b"):
        (tmp_path / host).mkdir()
        made = staging(tmp_path / host)
        (made.root / "etc/redis").mkdir(parents=True)
        (made.root / "etc/redis/redis.conf").write_text(DEBIANS)
        made.install()
        found.append(_password(made.root))
    assert found[0] != found[1]


def test_an_upgrade_leaves_redis_and_the_settings_alone(staged: Staged) -> None:
    """Settings written before this version (no password): the upgrade does not set one, since the running
    gateway's URL would then be refused (docs/deploy.md says how to add one by hand)."""
    root = staged.root
    (root / "etc/egress").mkdir(parents=True)
    (root / "etc/egress/gateway.env").write_text("EGRESS_REDIS_URL=redis://127.0.0.1:6379/0\n")
    (root / "etc/egress/api.env").write_text("EGRESS_REDIS_URL=redis://127.0.0.1:6379/0\n")
    staged.install()
    assert not (root / AUTH).exists()
    assert (root / "etc/redis/redis.conf").read_text() == DEBIANS
    assert _urls(root) == ["redis://127.0.0.1:6379/0"] * 2


@pytest.mark.parametrize("how", ["--no-redis", "no redis.conf"])
def test_no_local_redis_no_password(staged: Staged, how: str) -> None:
    if how == "--no-redis":
        staged.install("--no-redis")
    else:
        (staged.root / "etc/redis/redis.conf").unlink()
        staged.install()
    assert not (staged.root / AUTH).exists()
    assert _urls(staged.root) == ["redis://127.0.0.1:6379/0"] * 2


def test_uninstall_keeps_the_password_and_purge_takes_it_away(staged: Staged) -> None:
    root = staged.root
    staged.install()
    password = _password(root)
    staged.uninstall()
    assert _password(root) == password, "kept with the settings whose URL carries it"
    assert "egress-auth.conf" in (root / "etc/redis/redis.conf").read_text()
    staged.install()
    assert _password(root) == password and _urls(root)[0].endswith(f":{password}@127.0.0.1:6379/0")
    staged.uninstall("--purge")
    assert not (root / AUTH).exists()
    assert (root / "etc/redis/redis.conf").read_text() == DEBIANS
    assert staged.host_calls() == []


def test_redis_reads_the_staged_password_and_doctor_tells_the_difference(staged: Staged) -> None:
    """A real redis-server given the staged file (as redis.conf's include line gives it): no password, no answer;
    the settings' URL, an answer; `egress doctor`'s probe (`SystemHost.redis_lets_anyone_in`) says so, and says the
    opposite of a Redis without a password."""
    if REDIS_SERVER is None:
        unavailable("needs redis-server (apt-get install redis-server)")
    staged.install()
    [url, _] = _urls(staged.root)
    password = _password(staged.root)
    factory = RedisFactory()
    try:
        guarded = factory.server(tcp=True, password=password, config_file=staged.root / AUTH)
        ours = url.replace("127.0.0.1:6379", f"127.0.0.1:{guarded.port}")
        assert has_credentials(ours)
        anyone = RedisFacade.from_url(without_credentials(ours))
        try:
            with pytest.raises(STORE_ERRORS, match=r"(?i)auth"):
                anyone.ping()
        finally:
            anyone.close()
        facade = RedisFacade.from_url(ours)
        try:
            facade.ping()
        finally:
            facade.close()
        assert SystemHost().redis_lets_anyone_in(ours) is False
        open_one = factory.server(tcp=True)
        assert SystemHost().redis_lets_anyone_in(open_one.url) is True
    finally:
        factory.cleanup()
