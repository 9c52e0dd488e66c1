"""egress.lab.record without a lab: an unknown attempt name is refused before anything is built."""

from __future__ import annotations

import pathlib

import pytest

from egress.lab.record import RecordError, record


def test_an_unknown_attempt_is_refused_up_front(tmp_path: pathlib.Path) -> None:
    with pytest.raises(RecordError, match=r"unknown attempt.*nope"):
        record(["stratum_3333", "nope"], tmp_path, prefix="never-")
    assert list(tmp_path.iterdir()) == []
