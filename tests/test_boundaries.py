"""Each dependency enters through one module (STYLE.md rule 4), and data flows one way (rule 1)."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "egress"

# library -> the modules allowed to import it
GATES = {
    "dpkt": {"egress/capture/reader.py"},
    "mitmproxy": {"egress/proxy/addon.py"},
    "redis": {"egress/record/store.py"},
}


def _imports(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_dependencies_enter_through_their_gate(path: pathlib.Path) -> None:
    relative = str(path.relative_to(PACKAGE.parent))
    for library, allowed in GATES.items():
        uses = any(name == library or name.startswith(library + ".") for name in _imports(path))
        assert not uses or relative in allowed, f"{relative} imports {library}; only {sorted(allowed)} may"


@pytest.mark.parametrize("path", sorted((PACKAGE / "detect").glob("*.py")), ids=lambda p: p.name)
def test_detectors_import_nothing_later_in_the_flow_and_do_no_io(path: pathlib.Path) -> None:
    forbidden = {"socket", "subprocess", "egress.capture", "egress.scanner", "egress.cli", "egress.report"}
    for name in _imports(path):
        assert not any(name == bad or name.startswith(bad + ".") for bad in forbidden), f"{path.name} imports {name}"
