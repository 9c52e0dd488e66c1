"""Where the rule data shipped with egress is: the name lists, the lab's policy, the public suffixes.

The data's home is the repository's top-level ``rules/``. The build maps that folder into the wheel as the package
``egress.ruledata`` (pyproject.toml, ``[tool.setuptools.package-dir]``), so an installed egress reads its own copy,
wherever it is run from; an editable install maps the same name to the checkout's ``rules/``. A checkout used
without any install (``PYTHONPATH=.``, as the tests run) cannot import that name: then its ``rules/`` is used.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from typing import Final

PACKAGE: Final = "egress.ruledata"
CHECKOUT_RULES: Final = Path(__file__).resolve().parents[1] / "rules"
"""``rules/`` beside this package, in a checkout."""
_ON_DISK: Final = (importlib.machinery.SourceFileLoader, importlib.machinery.SourcelessFileLoader)
"""Loaders of a package's files on disk (importlib.abc.FileLoader's kinds; a zip's loader is not one)."""


def rules_dir() -> Path:
    """The folder of the shipped rule data: the installed package's, else the checkout's ``rules/``.

    Found from the package's import spec, as `importlib.resources.files` finds a package on disk (the folder of its
    ``__init__.py``), without importing `importlib.resources` (with its zip and temporary-file readers, about 4 %
    of `egress scan`'s start-up) or the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        return CHECKOUT_RULES
    # The gateway hands these paths to other processes, so they must be real files (not inside a zip).
    if not isinstance(spec.loader, _ON_DISK) or spec.origin is None:
        raise RuntimeError(f"{PACKAGE} is not a folder on disk ({spec.origin}); install egress unzipped")
    return Path(spec.origin).parent


def lists_dir() -> Path:
    """The shipped name lists (``*.yaml``); ``--lists DIR`` (scan) and ``lists_dir`` (gateway) replace them."""
    return rules_dir() / "lists"


def lab_policy() -> Path:
    """The lab's policy, which ``egress lab demo`` runs the gateway with."""
    return rules_dir() / "lab-policy.yaml"


def public_suffixes() -> Path:
    """The vendored Public Suffix List, private section (`egress.policy.suffixes`)."""
    return rules_dir() / "psl" / "public-suffix-private.dat"
