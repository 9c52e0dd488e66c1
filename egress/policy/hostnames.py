"""Host names and ``*.domain`` patterns of a policy: `host_pattern` normalises one or says what is wrong.

Names are IDNA-normalised with Python's IDNA 2003 codec (the one the resolver and the proxy use) to lowercase
punycode without a trailing dot; a punycode label (``xn--``) must decode (the codec passes ASCII labels through
unchecked); a name has at most 253 characters in DNS form (251 for the domain of a wildcard, which stands for
names one label longer) and labels of at most 63; ``*.`` is allowed only as the whole leftmost label. Messages
quote at most 80 characters of the name.
"""

from __future__ import annotations

import ipaddress
import re

from egress.policy.lists import valid_name
from egress.policy.yamlnodes import quote

__all__ = ["host_pattern"]

_PLAIN = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
"""A lowercase ASCII DNS name of two labels or more, each as `valid_name` takes it: what almost every entry of a
policy is, so `host_pattern` accepts it without the codec (a policy of 100,000 hosts spent most of its load in
the full check)."""


def host_pattern(text: str) -> str:
    """Normalise a host name or ``*.domain`` pattern (IDNA, punycode, lowercase, no trailing dot).

    Raises `ValueError` saying what is wrong (quoting at most 80 characters of it).
    """
    wildcard = text.startswith("*.")
    # The fast path: ASCII without punycode or anything address-like, which the full check would return lowercased
    # and unchanged (the IDNA codec passes ASCII labels through; ``tests/policy/test_hostnames.py`` compares both).
    base = text[2:] if wildcard else text
    if base.isascii() and len(base) <= (251 if wildcard else 253):
        normal = base.lower()
        if _PLAIN.fullmatch(normal) and "xn--" not in normal and not normal.replace(".", "").isdigit():
            return "*." + normal if wildcard else normal
    return checked(text)


def checked(text: str) -> str:
    """`host_pattern` without its fast path: every check, the IDNA codec included."""
    wildcard = text.startswith("*.")
    base = text[2:] if wildcard else text
    if "*" in base:
        raise ValueError("'*' is allowed only as the whole leftmost label, as in '*.example.com'")
    base = base.removesuffix(".")
    room = 251 if wildcard else 253  # '*.x' stands for names one label longer than x, at least 'a.x'
    if len(base) > 4 * room:  # no IDNA form of it fits: say so without encoding megabytes
        raise ValueError(f"{len(base)} characters: longer than a DNS name can be ({room})")
    try:
        ipaddress.ip_address(base.strip("[]"))
    except ValueError:
        pass
    else:
        raise ValueError("an IP address is not a host name: allow it under allow.networks")
    for label in base.split("."):
        if len(label) > 63 and label.isascii():
            raise ValueError(f"label of {len(label)} characters: a DNS label has 63 at most")
    try:
        normal = base.encode("idna").decode("ascii").lower()
    except UnicodeError as error:
        raise ValueError(f"not a valid host name ({str(error)[:80]})") from None
    if len(normal) > room:
        raise ValueError(f"{len(normal)} characters in DNS form: longer than a DNS name can be ({room})")
    _punycode(normal)
    if not valid_name(normal):
        raise ValueError("not a DNS name (labels of 1-63 letters, digits, '-' or '_'; at least two labels)")
    return "*." + normal if wildcard else normal


def _punycode(name: str) -> None:
    """Raise `ValueError` for an ``xn--`` label that does not decode (the IDNA codec passes ASCII labels through)."""
    for label in name.split("."):
        if label.startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                raise ValueError(f"label {quote(label)} is not valid punycode (an 'xn--' label must decode)") from None
