"""Walking a composed YAML node tree with line numbers: the first stage of every rules loader.

A rules file is composed (not constructed) so every value keeps the line it came from; a `NodeChecker` then reads
typed values out of the nodes, appending a `Problem` for every value that is not what the schema says instead of
stopping at the first. Loaders (`lists.py`, `loader.py`, the API's tokens file) subclass it to phrase problems
their own way and add their schema on top. The only module that imports PyYAML: the node types are re-exported
here (`Node`, `MappingNode`, `SequenceNode`).

YAML merge keys work (``<<: *common`` copies the keys of an anchored mapping, or of a list of them, that the
mapping does not set itself; nested merges too), so a file can share a block between sandboxes. Messages quote at
most `QUOTE` characters of any value (`quote`): a 50 MB host name is not echoed to a terminal or a log.

Exceptions: `RulesError` (a `ValueError`; `egress.policy.problems`) carries every `Problem` of a load at once.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from yaml import MappingNode, Node, ScalarNode, SequenceNode

from egress.policy.problems import Problem, RulesError

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
BOOL = "tag:yaml.org,2002:bool"
FLOAT = "tag:yaml.org,2002:float"
NULL = "tag:yaml.org,2002:null"
MERGE = "tag:yaml.org,2002:merge"
QUOTE = 80
"""Characters of a value a message quotes at most."""
MAX_BYTES = 4 * 1024 * 1024
"""The default size cap of a rules file, checked before it is parsed (a 50 MB policy took 21 s and 1.5 GB to
parse; the largest real policies, 100,000 allowlist entries, are about 3 MB)."""
_MERGE_DEPTH = 8
"""Nested merges followed at most (a merge of a merge...): deeper is a problem, never a deep recursion."""
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser when PyYAML was built with it (marks and so lines are the same either way)."""
_PLAIN_FIRST = frozenset(key for key in _Base.yaml_implicit_resolvers if key)
"""First characters some implicit tag (int, bool, null, float, timestamp, merge...) may start with."""


class _Loader(_Base):  # type: ignore[misc,valid-type]
    """The safe loader without PyYAML's per-node Python work where the safe schema has nothing to do: a plain
    scalar whose first character starts no implicit tag is a string (what `resolve` would conclude after its
    lookups), and there are no path resolvers to descend into. A policy of 100,000 hosts has 100,000 scalars."""

    def resolve(self, kind: type[yaml.Node], value: str, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode and implicit[0] and value and value[0] not in _PLAIN_FIRST:
            return STR
        return str(super().resolve(kind, value, implicit))

    def descend_resolver(self, current_node: yaml.Node | None, current_index: object) -> None:
        if self.yaml_path_resolvers:
            super().descend_resolver(current_node, current_index)

    def ascend_resolver(self) -> None:
        if self.yaml_path_resolvers:
            super().ascend_resolver()


__all__ = [
    "BOOL",
    "FLOAT",
    "INT",
    "MAX_BYTES",
    "MERGE",
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
    "decode",
    "key_name",
    "kind",
    "line",
    "quote",
    "read_text",
]

_KINDS = {STR: "a string", INT: "an integer", BOOL: "a boolean", FLOAT: "a number", NULL: "empty (null)"}


def decode(data: bytes, file: str, max_bytes: int = MAX_BYTES) -> str:
    """A rules file's bytes as text; raise `RulesError` when it is over ``max_bytes`` (before anything parses it)
    or not UTF-8 (at the line of the first bad byte)."""
    if len(data) > max_bytes:
        raise RulesError([_too_big(file, len(data), max_bytes)])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        at = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        byte = data[error.start : error.start + 1].hex()
        raise RulesError([Problem(file, at, f"not UTF-8: byte 0x{byte} at column {column} ({error.reason})")]) from None


def read_text(path: str | Path, max_bytes: int = MAX_BYTES) -> str:
    """Read a rules file as `decode` does; the size is checked before the file is read."""
    try:
        size = Path(path).stat().st_size
        if size > max_bytes:
            raise RulesError([_too_big(str(path), size, max_bytes)])
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)  # it may have grown since the stat
    except OSError as error:
        raise RulesError([Problem(str(path), 1, f"cannot read: {error.strerror or error}")]) from None
    return decode(data, str(path), max_bytes)


def _too_big(file: str, size: int, max_bytes: int) -> Problem:
    return Problem(file, 1, f"file too large: {size} bytes, over the limit of {max_bytes} (checked before parsing)")


def quote(value: object, limit: int = QUOTE) -> str:
    """``repr(value)`` of a string or name, cut to ``limit`` characters with the full length said."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


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
        text = str(error)  # PyYAML quotes at most a 75-character snippet, but a clip costs nothing
        text = text if len(text) <= 8 * QUOTE else text[: 8 * QUOTE] + "..."
        problems.append(Problem(file, mark.line + 1 if mark is not None else 1, f"not valid YAML: {text}"))
        return None


def key_name(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else str(node.tag)


def _shown(name: str) -> str:
    """A key as messages show it: itself when short, else quoted and cut."""
    return name if len(name) <= QUOTE else quote(name)


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
        """The (key node, value node) pairs of a mapping, in file order, without duplicate or unknown keys; the
        pairs a merge key (``<<``) brings in follow, those whose key the mapping sets itself left out.

        ``allowed`` ``None`` accepts any key (a mapping of names, e.g. sandboxes).
        """
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, self.type_message(what, "a mapping", node))
            return []
        seen: dict[str, int] = {}
        kept: list[tuple[yaml.Node, yaml.Node]] = []
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key, value in node.value:
            if key.tag == MERGE:
                merged.extend(self._merged(key, value, what, 1))
                continue
            name = key_name(key)
            if name in seen:
                self.problem(key, self.duplicate_key_message(what, _shown(name), seen[name]))
            elif allowed is not None and name not in allowed:
                self.problem(key, self.unknown_key_message(what, _shown(name), allowed))
            else:
                kept.append((key, value))
            seen.setdefault(name, line(key))
        for key, value in merged:
            name = key_name(key)
            if name in seen:
                continue  # set by the mapping itself, or by an earlier merge: that one wins (YAML's merge rule)
            seen[name] = line(key)
            if allowed is not None and name not in allowed:
                self.problem(key, self.unknown_key_message(what, _shown(name), allowed))
            else:
                kept.append((key, value))
        return kept

    def _merged(self, key: yaml.Node, value: yaml.Node, what: str, depth: int) -> list[tuple[yaml.Node, yaml.Node]]:
        """The pairs one merge key brings in: its mapping's (or mappings', first wins), their own merges flattened."""
        sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
        if depth > _MERGE_DEPTH or not all(isinstance(source, yaml.MappingNode) for source in sources):
            why = f"nested more than {_MERGE_DEPTH} deep" if depth > _MERGE_DEPTH else "not a mapping or a list of them"
            self.problem(key, f"{what or 'the file'}: '<<' (YAML merge key) must name an anchored mapping ({why})")
            return []
        pairs: list[tuple[yaml.Node, yaml.Node]] = []
        for source in sources:
            own = [(k, v) for k, v in source.value if k.tag != MERGE]
            pairs.extend(own)
            for k, v in source.value:
                if k.tag == MERGE:
                    pairs.extend(self._merged(k, v, what, depth + 1))
        return pairs

    def mapping(self, node: yaml.Node, what: str, allowed: frozenset[str]) -> dict[str, yaml.Node]:
        """A mapping's values by key, without duplicate or unknown keys."""
        return {key_name(key): value for key, value in self.pairs(node, what, allowed)}
