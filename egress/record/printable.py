"""Text a sandbox chose (a host name it asked for, an agent's command) made safe to show: every character that is
not printable written as DNS presentation escapes (RFC 1035 5.1, ``\\DDD`` per UTF-8 byte), as the resolver
already writes a question's name. Pure.

A record's text reaches an operator's terminal (`egress events`, `egress timeline`) and other readers verbatim;
an agent that can put ESC, a carriage return or a line break into a name it asks for can erase the lines shown
before it, set the terminal's title or forge a line (red team 14). `escape` is idempotent (it adds only printable
characters), so a record escaped when it was made and again when it is read or printed shows the same.
`spreadsheet_cell` is the CSV outputs' twin: a cell a spreadsheet would evaluate (CWE-1236) is quoted.
"""

from __future__ import annotations

from typing import Final

FORMULA: Final = frozenset("=+-@")
"""What a spreadsheet reads a cell beginning with as a formula (OWASP, "CSV Injection")."""


def _escaped(char: str) -> str:
    if char.isprintable():
        return char
    return "".join(f"\\{byte:03d}" for byte in char.encode("utf-8", "surrogatepass"))


def escape(text: str) -> str:
    """``text`` with every character that is not printable (C0 and C1 controls, DEL, line and paragraph
    separators, format characters such as the bidirectional overrides) written as ``\\DDD``; the common case, a
    printable string, is returned as it is."""
    if text.isprintable():
        return text
    return "".join(_escaped(char) for char in text)


def spreadsheet_cell(text: str) -> str:
    """``text`` escaped, and behind a single quote when it begins with ``=``, ``+``, ``-`` or ``@``: a CSV cell
    that a spreadsheet shows as the text it is (``=HYPERLINK(...)`` in a recorded host name is not followed)."""
    shown = escape(text)
    return "'" + shown if shown[:1] in FORMULA else shown
