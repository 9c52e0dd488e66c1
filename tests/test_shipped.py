"""Tests for egress.shipped: the rule data is found in a checkout, and the build is set up to ship all of it.

Building and installing the wheel is tests/test_packaging.py's job (slow); these check the configuration itself.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import pathlib
import tomllib
import zipfile
import zipimport
from typing import Any

import pytest

from egress import shipped
from egress.policy.lists import load_lists_dir
from egress.policy.loader import load_policy

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS: dict[str, Any] = PYPROJECT["tool"]["setuptools"]


def test_in_a_checkout_the_data_is_the_top_level_rules() -> None:
    # Holds both without any install (egress.ruledata is not importable) and with an editable one (it maps there).
    assert shipped.rules_dir() == ROOT / "rules"
    assert shipped.lists_dir() == ROOT / "rules" / "lists"
    assert shipped.lab_policy() == ROOT / "rules" / "lab-policy.yaml"


def test_the_shipped_data_loads() -> None:
    assert {item.name for item in load_lists_dir()} == {"doh", "pool-domains", "reverse-tunnels", "vpn-services"}
    assert load_policy(shipped.lab_policy()).sandboxes


def test_without_the_package_the_checkout_s_rules_are_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda package: None)
    assert shipped.rules_dir() == shipped.CHECKOUT_RULES


def test_an_installed_package_s_folder_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    init = tmp_path / "__init__.py"
    init.write_text("")
    spec = importlib.util.spec_from_file_location(shipped.PACKAGE, init)
    monkeypatch.setattr(importlib.util, "find_spec", lambda package: spec)
    assert shipped.lists_dir() == tmp_path / "lists"


def test_the_folder_is_the_one_importlib_resources_gives() -> None:
    assert shipped.rules_dir() == importlib.resources.files(shipped.PACKAGE)


def test_a_zipped_install_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    archive = tmp_path / "egress.zip"
    with zipfile.ZipFile(archive, "w") as made:
        made.writestr("ruledata/__init__.py", "")
    spec = zipimport.zipimporter(str(archive)).find_spec("ruledata")
    assert spec is not None
    monkeypatch.setattr(importlib.util, "find_spec", lambda package: spec)
    with pytest.raises(RuntimeError, match="not a folder on disk"):
        shipped.rules_dir()


def _packages_in_the_tree() -> set[str]:
    return {
        ".".join(folder.relative_to(ROOT).parts)
        for folder in [ROOT / "egress", *(ROOT / "egress").rglob("*")]
        if folder.is_dir() and any(folder.glob("*.py"))
    }


def test_the_build_lists_every_package_and_maps_the_rule_data() -> None:
    assert SETUPTOOLS["package-dir"] == {shipped.PACKAGE: "rules"}
    listed = set(SETUPTOOLS["packages"])
    missing = _packages_in_the_tree() - listed
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"
    assert listed == _packages_in_the_tree() | {shipped.PACKAGE}


def test_the_build_ships_every_rule_data_file() -> None:
    rules = ROOT / "rules"
    data = {path for path in rules.rglob("*") if path.is_file() and path.suffix not in (".py", ".pyc")}
    shipped_files = {path for glob in SETUPTOOLS["package-data"][shipped.PACKAGE] for path in rules.glob(glob)}
    assert (rules / "lab-policy.yaml") in shipped_files and (rules / "lists" / "doh.yaml") in shipped_files
    unshipped = sorted(str(path.relative_to(ROOT)) for path in data - shipped_files)
    assert not unshipped, f"files under rules/ that the wheel would leave out: {unshipped}"
