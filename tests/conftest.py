"""The suite's shared test machinery; the helpers themselves live in importable modules beside it.

- Waiting: `eventually` and `scaled` (tests/waiting.py), with timeouts stretched by ``EGRESS_TEST_TIME_FACTOR``.
- Markers: ``root`` (network namespaces, nftables: needs root, ip and nft) and ``e2e`` (the whole gateway in the
  lab). Without what they need such tests are skipped with the reason, except in CI (``CI=true``), where they fail:
  CI must run everything (tests/needs.py). ``make unit`` runs what is marked neither. The shared corpus likewise:
  missing in CI, the run stops at collection (tests/corpus.py).
- Timeouts: every test gets pytest-timeout's ``timeout`` (pyproject.toml) times ``EGRESS_TEST_TIME_FACTOR``, unless
  it sets its own ``@pytest.mark.timeout`` or ``--timeout`` is given.
- Isolation: a test that leaves an ``EGRESS_*`` environment variable changed fails (`_environment_kept`): the
  processes later tests start inherit the environment, so a leak makes the suite depend on its order.
- Redis: `redis_factory` gives each test module that asks for it a factory of redis-servers of its own
  (tests/redis_server.py), stopped at the end of the module; `redis_server` is one such server for the module. A
  Cluster comes ready-started from the process's `ClusterSpares` (Redis makes a new master wait 2 s).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.corpus import missing_in_ci
from tests.needs import e2e_missing, in_ci, redis_missing, root_missing, unavailable
from tests.redis_server import ClusterSpares, RedisFactory, RedisServer
from tests.waiting import eventually, scaled

__all__ = ["eventually", "scaled"]

# The security suite's table, its markers and --security-report (tests/security/report.py): a plugin, so that the
# controlling process of an xdist run, which collects nothing, still prints the table. The halves of `make unit`
# (tests/halves.py, driven by tests/run_halves.py): which modules this process collects.
pytest_plugins = ["tests.security.report", "tests.halves"]

DEFAULT_TIMEOUT = 300.0


def pytest_collection(session: pytest.Session) -> None:
    """Hypothesis's per-example deadline (200 ms by default) is a timing assertion: at load 29 on two cores an
    example of tests/detect/test_dns.py took 428 ms once. Off for every property test; pytest-timeout still bounds
    a hang. Set where tests are collected, so not in xdist's controller, which runs none (importing hypothesis
    costs a process ~0.4 s of CPU)."""
    from hypothesis import settings  # here, not at the top: see above

    settings.register_profile("egress", deadline=None)
    settings.load_profile("egress")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if in_ci() and (reason := missing_in_ci()):  # its tests would skip (or have no rows): CI must run them all
        raise pytest.UsageError(f"CI must run the corpus tests, but {reason}")
    if config.getoption("timeout", None) is not None or os.environ.get("PYTEST_TIMEOUT"):
        return  # --timeout (or pytest-timeout's variable) is the operator's choice, taken as given
    timeout = pytest.mark.timeout(scaled(float(config.getini("timeout") or DEFAULT_TIMEOUT)))  # once, not per test
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(timeout)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture runs: a test whose machine requirements are missing skips (fails in CI)."""
    if item.get_closest_marker("e2e") is not None:
        reason = e2e_missing()
    elif item.get_closest_marker("root") is not None:
        reason = root_missing()
    else:
        return
    if reason:
        unavailable(reason)


def _egress_environment() -> dict[str, str]:
    # Names first, values only of ours: twice per test, reading every variable's value was a second of `make unit`.
    return {name: os.environ[name] for name in os.environ if name.startswith("EGRESS_")}


@pytest.fixture(autouse=True)
def _environment_kept() -> Iterator[None]:
    """Fails the test that changed an ``EGRESS_*`` variable and did not put it back (see the module docstring)."""
    before = _egress_environment()
    yield
    after = _egress_environment()
    if after != before:
        changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
        os.environ.update(before)
        for name in after.keys() - before.keys():
            del os.environ[name]
        pytest.fail(f"the test left the environment changed: {', '.join(changed)} (restore it, e.g. monkeypatch)")


@pytest.fixture(scope="session")
def _cluster_spares() -> Iterator[ClusterSpares]:
    """This process's next Redis Cluster, started ahead of the test that takes it (tests/redis_server.py)."""
    spares = ClusterSpares()
    try:
        yield spares
    finally:
        spares.cleanup()


@pytest.fixture(scope="module")
def redis_factory(_cluster_spares: ClusterSpares) -> Iterator[RedisFactory]:
    """Starts redis-servers (unix sockets) and Clusters (loopback ports verified to be theirs) for this module; a
    Cluster of masters was started ahead (`ClusterSpares`, the first one when the first module asked for Redis)."""
    if reason := redis_missing():
        unavailable(reason)
    _cluster_spares.prepare()
    factory = RedisFactory(_cluster_spares)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def redis_server(redis_factory: RedisFactory) -> RedisServer:
    """One redis-server for this module (tests that need an empty one flush it)."""
    return redis_factory.server()
