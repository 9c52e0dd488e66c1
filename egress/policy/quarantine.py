"""The ``quarantine:`` block of a sandbox: YAML node → validated `Quarantine` (problems at file:line:field).

    quarantine:
      after: 3                        # findings within the window (1-10000)
      within: 600                     # seconds (1-604800)
      categories: [mining, tunnel]    # of mining, tunnel, crypto-node; default mining and tunnel
      webhook: https://hooks.example/egress   # optional: POSTed a JSON body on each quarantine

The webhook is checked here, not when it is called: http or https, a host, no user or password in it (it is
logged and shown by the API), no fragment, printable ASCII only, at most `MAX_URL` characters.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING, Final

from egress.policy import yamlnodes
from egress.policy.model import QUARANTINE_CATEGORIES, Quarantine
from egress.policy.yamlnodes import quote

if TYPE_CHECKING:
    from egress.policy.loader import _Checker

FIELDS: Final = frozenset({"after", "within", "categories", "webhook"})
DEFAULT_CATEGORIES: Final = frozenset({"mining", "tunnel"})
MAX_URL: Final = 2048


def webhook_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook, or ``None`` when it can."""
    if len(url) > MAX_URL:
        return f"longer than {MAX_URL} characters"
    if not url.isascii() or any(not 0x21 <= ord(char) <= 0x7E for char in url):
        return "must be printable ASCII without spaces (percent-encode the rest)"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises on a port that is not a number in 0-65535
    except ValueError as error:
        return f"not a URL ({error})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "names no host"
    if parts.username is not None or parts.password is not None:
        return "must not carry a user or password (it is logged and shown): put a token in the path"
    if parts.fragment:
        return "must not have a #fragment"
    if port == 0:
        return "port 0 is not a port"
    return None


def parse(checker: _Checker, node: yamlnodes.Node, path: str) -> Quarantine | None:
    """The block at ``path``, or ``None`` (with the problems added to ``checker``) when it is not valid."""
    fields = checker.fields(node, path, FIELDS, ("after", "within"))
    after = checker.ranged(fields["after"], f"{path}.after", 1, 10_000) if "after" in fields else None
    within = (
        checker.ranged(fields["within"], f"{path}.within", 1, 7 * 24 * 3600, "seconds") if "within" in fields else None
    )
    categories = DEFAULT_CATEGORIES
    if "categories" in fields:
        where = f"{path}.categories"
        items = checker.sequence(fields["categories"], where)
        if isinstance(fields["categories"], yamlnodes.SequenceNode) and not items:
            checker.at(fields["categories"], where, "empty: list mining, tunnel or crypto-node, or leave it out")
        found: set[str] = set()
        for index, item in enumerate(items):
            value = checker.text(item, f"{where}[{index}]")
            if value is not None and value not in QUARANTINE_CATEGORIES:
                allowed = ", ".join(sorted(QUARANTINE_CATEGORIES))
                checker.at(item, f"{where}[{index}]", f"{quote(value)} is not one of: {allowed}")
            elif value is not None:
                found.add(value)
        categories = frozenset(found) or categories
    webhook = ""
    if "webhook" in fields:
        text = checker.text(fields["webhook"], f"{path}.webhook")
        problem = webhook_problem(text) if text is not None else None
        if problem is not None:
            checker.at(fields["webhook"], f"{path}.webhook", problem)  # not quoted: it may hold a password
        elif text is not None:
            webhook = text
    if after is None or within is None:
        return None
    return Quarantine(after, within, categories, webhook, yamlnodes.line(node))
