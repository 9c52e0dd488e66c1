"""The fuzz budget knob: scaled, floored, and loud about a bad value."""

import pytest

from tests.budget import examples


def test_budgets_scale_and_keep_a_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGRESS_FUZZ_SCALE", "0.25")
    assert examples(400) == 100
    assert examples(20) == 10
    monkeypatch.setenv("EGRESS_FUZZ_SCALE", "20")
    assert examples(300) == 6000
    monkeypatch.delenv("EGRESS_FUZZ_SCALE")
    assert examples(300) == 300


@pytest.mark.parametrize("bad", ["", "many", "0", "-1"])
def test_a_bad_scale_is_an_error(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("EGRESS_FUZZ_SCALE", bad)
    with pytest.raises(ValueError, match="EGRESS_FUZZ_SCALE"):
        examples(100)
