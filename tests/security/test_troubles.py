"""What a failed security test's report shows of its lab's gateway log (`harness.trouble_lines`), without a lab."""

from __future__ import annotations

from tests.security.harness import trouble_lines

LOG = """\
2026-12-03 17:40:01,000 gateway[10] INFO policy v1 in force
2026-12-03 17:40:02,000 gateway[10] WARNING recorder queue full: 3 decisions lost
2026-12-03 17:40:03,000 gateway[10] INFO decision
2026-12-03 17:40:04,000 proxy[11] ERROR worker 1 crashed
Traceback (most recent call last):
  File "x.py", line 1, in <module>
RuntimeError: boom
"""


def test_warnings_errors_and_exceptions_are_kept_and_the_rest_left_out() -> None:
    assert trouble_lines(LOG).splitlines() == [
        "2026-12-03 17:40:02,000 gateway[10] WARNING recorder queue full: 3 decisions lost",
        "2026-12-03 17:40:04,000 proxy[11] ERROR worker 1 crashed",
        "Traceback (most recent call last):",
        "RuntimeError: boom",
    ]


def test_only_the_last_lines_are_kept_and_the_cut_is_said() -> None:
    text = "".join(f"t gateway[1] ERROR number {n}\n" for n in range(100))
    lines = trouble_lines(text, limit=3).splitlines()
    assert lines == ["(97 earlier lines left out)", *(f"t gateway[1] ERROR number {n}" for n in (97, 98, 99))]
    assert trouble_lines("t gateway[1] INFO fine\n") == "(no warning or error in the gateway log)"
