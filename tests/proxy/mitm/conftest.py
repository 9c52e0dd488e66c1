"""Fixtures of the real-worker tests (test_worker_*.py): one worker per module, the site's log fresh per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.proxy.mitm.worker import Worker, running_worker
from tests.waiting import eventually


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with running_worker(tmp_path_factory.mktemp("worker")) as running:
        yield running


@pytest.fixture
def fresh_log(worker: Worker) -> None:
    """Each test judges by what the site received and what was reported during that test only (modules use it for
    every test): a local port the kernel hands out again must not find an earlier test's block, and bytes an
    earlier test's connection still had in flight must not land in this test's log (so wait until the site serves
    no connection first)."""
    eventually(lambda: worker.site.open == 0)
    worker.site.clear()
    worker.reported.clear()
