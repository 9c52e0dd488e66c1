"""egress.policy.hostnames: the fast path of `host_pattern` returns what the full check returns, or leaves the
name to it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.policy.hostnames import checked, host_pattern
from tests.budget import examples

NAMES = [
    "pypi.org", "PyPI.Org", "files.pythonhosted.org", "*.github.io", "*.GitHub.IO", "a.b", "a_b.example",
    "x" * 63 + ".com", "x" * 64 + ".com", ".".join(["a" * 63] * 4), ".".join(["a" * 62] * 4), "1.2.3.4",
    "1.2.3.4.5", "10.0.0.1", "123.example", "example.123", "xn--bcher-kva.example", "xn--zz.example",
    "a.xn--zz", "pypi.org.", "-a.example", "a-.example", "a--b.example", "localhost", "", ".", "a..b",
    "*.com", "**.example", "a.*.example", "*", "*.", "bücher.example", "fe80::1", "[::1]", "a b.example",
    "a.b.", "_srv.example", "é.example", "*." + "a" * 63 + ".com", "K.example",
]  # fmt: skip


def _outcome(function: object, name: str) -> tuple[str, str]:
    try:
        return "ok", function(name)  # type: ignore[operator]
    except ValueError as error:
        return "error", str(error)


@pytest.mark.parametrize("name", NAMES)
def test_fast_path_agrees_with_the_full_check(name: str) -> None:
    assert _outcome(host_pattern, name) == _outcome(checked, name)


_ALPHABET = st.sampled_from("abcXYZ019-_.*:[]é")


@settings(max_examples=examples(500), deadline=None)
@given(st.text(_ALPHABET, max_size=40))
def test_fast_path_agrees_on_generated_names(name: str) -> None:
    assert _outcome(host_pattern, name) == _outcome(checked, name)
