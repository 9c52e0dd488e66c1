"""Walking a composed YAML node tree with line numbers: the first stage of every rules loader.

A rules file is composed (not constructed) so every value keeps the line it came from; a `NodeChecker` then reads
typed values out of the nodes, appending a `Problem` for every value that is not what the schema says instead of
stopping at the first. Loaders (`lists.py`, `loader.py`, the API's tokens file) subclass it to phrase problems
their own way and add their schema on top. The only module that imports PyYAML: the node types are re-exported
here (`Node`, `MappingNode`, `SequenceNode`).

Exceptions: `RulesError` (a `ValueError`) carries every `Problem` of a load at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import yaml
from yaml import MappingNode, Node, ScalarNode, SequenceNode

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
BOOL = "tag:yaml.org,2002:bool"
FLOAT = "tag:yaml.org,2002:float"
NULL = "tag:yaml.org,2002:null"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
__all__ = [
    "BOOL",
    "FLOAT",
    "INT",
    "NULL",
    "STR",
    "MappingNode",
    "Node",
    "NodeChecker",
    "Problem",
    "RulesError",
    "ScalarNode",
    "SequenceNode",
    "compose",
    "key_name",
    "kind",
    "line",
]

_KINDS = {STR: "a string", INT: "an integer", BOOL: "a boolean", FLOAT: "a number", NULL: "empty (null)"}


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    """1-based."""
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class RulesError(ValueError):
    """A rules file did not validate. ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def line(node: yaml.Node | None) -> int:
    """The 1-based line a node starts on (1 when there is no node, e.g. an empty file)."""
    return node.start_mark.line + 1 if node is not None else 1


def kind(node: yaml.Node) -> str:
    """What a node is, for messages: ``a list``, ``an integer``..."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _KINDS.get(node.tag, node.tag)


def compose(text: str, file: str, problems: list[Problem]) -> yaml.Node | None:
    """Compose YAML text to its node tree; a syntax error becomes a problem (and ``None``)."""
    try:
        return yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problems.append(Problem(file, mark.line + 1 if mark is not None else 1, f"not valid YAML: {error}"))
        return None


def key_name(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else str(node.tag)


class NodeChecker:
    """Typed reads from nodes of one file; each wrong value appends a problem and reads as ``None`` (or empty).

    ``what`` names the value in messages. The ``*_message`` methods phrase problems; subclasses override them.
    """

    def __init__(self, file: str, problems: list[Problem]) -> None:
        self.file = file
        self.problems = problems

    def problem(self, node: yaml.Node | None, message: str) -> None:
        self.problems.append(Problem(self.file, line(node), message))

    # Phrasing (overridden by loaders whose messages lead with a field path).
    def type_message(self, what: str, expected: str, node: yaml.Node) -> str:
        return f"{what} must be {expected}"

    def unknown_key_message(self, what: str, key: str, allowed: frozenset[str]) -> str:
        return f"unknown key {key!r} in {what} (allowed: {', '.join(sorted(allowed))})"

    def duplicate_key_message(self, what: str, key: str, first: int) -> str:
        return f"duplicate key {key!r} in {what}"

    # Reads.
    def text(self, node: yaml.Node, what: str) -> str | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == STR:
            return str(node.value)
        self.problem(node, self.type_message(what, "a string", node))
        return None

    def integer(self, node: yaml.Node, what: str) -> int | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == INT:
            try:
                return int(str(node.value).replace("_", ""), 0)
            except ValueError:
                pass  # YAML 1.1 forms Python does not read (sexagesimal, 0-prefixed octal): not worth a port
        self.problem(node, self.type_message(what, "an integer", node))
        return None

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        self.problem(node, self.type_message(what, "a list", node))
        return []

    def pairs(self, node: yaml.Node, what: str, allowed: frozenset[str] | None) -> list[tuple[yaml.Node, yaml.Node]]:
        """The (key node, value node) pairs of a mapping, in file order, without duplicate or unknown keys.

        ``allowed`` ``None`` accepts any key (a mapping of names, e.g. sandboxes).
        """
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, self.type_message(what, "a mapping", node))
            return []
        seen: dict[str, int] = {}
        kept: list[tuple[yaml.Node, yaml.Node]] = []
        for key, value in node.value:
            name = key_name(key)
            if name in seen:
                self.problem(key, self.duplicate_key_message(what, name, seen[name]))
            elif allowed is not None and name not in allowed:
                self.problem(key, self.unknown_key_message(what, name, allowed))
            else:
                kept.append((key, value))
            seen.setdefault(name, line(key))
        return kept

    def mapping(self, node: yaml.Node, what: str, allowed: frozenset[str]) -> dict[str, yaml.Node]:
        """A mapping's values by key, without duplicate or unknown keys."""
        return {key_name(key): value for key, value in self.pairs(node, what, allowed)}
