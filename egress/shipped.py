"""Where the rule data shipped with egress is: the name lists, the lab's policy, the public suffixes.

The data's home is the repository's top-level ``rules/``. The build maps that folder into the wheel as the package
``egress.ruledata`` (pyproject.toml, ``[tool.setuptools.package-dir]``), so an installed egress reads its own copy,
wherever it is run from; an editable install maps the same name to the checkout's ``rules/``. A checkout used
without any install (``PYTHONPATH=.``, as the tests run) cannot import that name: then its ``rules/`` is used.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Final

PACKAGE: Final = "egress.ruledata"
CHECKOUT_RULES: Final = Path(__file__).resolve().parents[1] / "rules"
"""``rules/`` beside this package, in a checkout."""


def rules_dir() -> Path:
    """The folder of the shipped rule data: the installed package's, else the checkout's ``rules/``."""
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        return CHECKOUT_RULES
    # The gateway hands these paths to other processes, so they must be real files (not inside a zip).
    if not isinstance(root, Path):
        raise RuntimeError(f"{PACKAGE} is not a folder on disk ({root}); install egress unzipped")
    return root


def lists_dir() -> Path:
    """The shipped name lists (``*.yaml``); ``--lists DIR`` (scan) and ``lists_dir`` (gateway) replace them."""
    return rules_dir() / "lists"


def lab_policy() -> Path:
    """The lab's policy, which ``egress lab demo`` runs the gateway with."""
    return rules_dir() / "lab-policy.yaml"


def public_suffixes() -> Path:
    """The vendored Public Suffix List, private section (`egress.policy.suffixes`)."""
    return rules_dir() / "psl" / "public-suffix-private.dat"
