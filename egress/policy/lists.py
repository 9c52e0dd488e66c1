"""The one loader of name-list files (``rules/lists/*.yaml``): YAML in, validated frozen `NameList` out.

Two stages, as for every rules file: the YAML is composed to nodes (so every value keeps its line), then each
field is checked against the schema below. Every problem in every file is collected and raised at once as one
`RulesError` naming file and line; nothing is returned unless all files are valid.

File schema (``version: 1``)::

    version: 1                      # required, the integer 1
    name: pool-domains              # required, kebab-case; the list's name in findings and logs
    category: mining                # required: mining | crypto-node | tunnel
    protocol: pool-domain           # required, kebab-case; the finding's protocol label
    match: suffix                   # optional: suffix (default: a name covers itself and its subdomains) or
                                    # exact (a name covers itself; write *.example.com to cover its subdomains)
    description: ...                # optional text
    notes: ...                      # optional text (false-positive notes)
    sources:                        # optional; where the data came from
      - {repository: owner/name, path: file, commit: 40-hex, snapshot: "2018-06-03"}
    names: [example.com, ...]       # lowercase DNS names; a name also covers its subdomains
    addresses: [192.0.2.1, 2001:db8::/32, ...]

Unknown keys are rejected, duplicates are rejected (within a file and across the files loaded together: one
name, one verdict), names need at least two labels (a bare TLD would cover a whole registry).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path

from egress import shipped
from egress.detect.base import Category
from egress.detect.namelist import NameList, Network, Source
from egress.detect.names import NameLists
from egress.policy import yamlnodes
from egress.policy.yamlnodes import INT, NodeChecker, Problem, RulesError, compose

__all__ = [
    "NameList",
    "Network",
    "Problem",
    "RulesError",
    "Source",
    "load_lists",
    "load_lists_dir",
    "load_name_lists",
    "load_texts",
    "parse_list",
]

VERSION = 1

_KEYS = frozenset(
    {"version", "name", "category", "protocol", "match", "description", "notes", "sources", "names", "addresses"}
)
_MATCHES = ("suffix", "exact")
_REQUIRED = ("version", "name", "category", "protocol")
_SOURCE_KEYS = frozenset({"repository", "path", "commit", "snapshot"})
_KEBAB = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def valid_name(name: str) -> bool:
    """Whether ``name`` is a lowercase DNS name of at least two labels, without a trailing dot."""
    labels = name.split(".")
    return len(name) <= 253 and len(labels) >= 2 and all(_LABEL.fullmatch(label) for label in labels)


class _File(NodeChecker):
    """Validation of one file; problems are appended to the shared list."""

    def __init__(self, file: str, problems: list[Problem]) -> None:
        super().__init__(file, problems)
        self.lines: dict[str, int] = {}
        """Line of each valid name, for problems found across files."""

    def kebab(self, node: yamlnodes.Node, what: str) -> str:
        value = self.text(node, what)
        if value is not None and not _KEBAB.fullmatch(value):
            self.problem(node, f"{what} {value!r} must be kebab-case (a-z, 0-9, '-')")
        return value or ""

    def build(self, root: yamlnodes.Node | None) -> NameList | None:
        if root is None:
            self.problem(None, "empty file")
            return None
        fields = self.mapping(root, "the file", _KEYS)
        if not fields and not isinstance(root, yamlnodes.MappingNode):
            return None
        self._header(root, fields)
        category = self._category(fields["category"]) if "category" in fields else None
        name = self.kebab(fields["name"], "name") if "name" in fields else ""
        protocol = self.kebab(fields["protocol"], "protocol") if "protocol" in fields else ""
        match = self._match(fields["match"]) if "match" in fields else "suffix"
        description = (self.text(fields["description"], "description") or "") if "description" in fields else ""
        if "notes" in fields:
            self.text(fields["notes"], "notes")
        sources: tuple[Source, ...] = ()
        if "sources" in fields:
            sources = tuple(self._source(node) for node in self.sequence(fields["sources"], "sources"))
        names = self._names(fields["names"], wildcards=match == "exact") if "names" in fields else ()
        addresses = self._addresses(fields["addresses"]) if "addresses" in fields else ()
        if category is None:
            return None
        return NameList(self.file, name, category, protocol, match, description, sources, names, addresses)

    def _header(self, root: yamlnodes.Node, fields: dict[str, yamlnodes.Node]) -> None:
        """The required keys, and the version."""
        for key in _REQUIRED:
            if key not in fields:
                self.problem(root, f"missing required key {key!r}")
        version = fields.get("version")
        if version is not None and not (version.tag == INT and version.value == str(VERSION)):
            self.problem(version, f"version must be {VERSION}, got {getattr(version, 'value', '?')!r}")

    def _category(self, node: yamlnodes.Node) -> Category | None:
        value = self.text(node, "category")
        if value is None:
            return None
        try:
            return Category(value)
        except ValueError:
            allowed = ", ".join(c.value for c in Category)
            self.problem(node, f"category {value!r} is not one of: {allowed}")
            return None

    def _match(self, node: yamlnodes.Node) -> str:
        match = self.text(node, "match") or "suffix"
        if match not in _MATCHES:
            self.problem(node, f"match {match!r} is not one of: {', '.join(_MATCHES)}")
        return match

    def _source(self, node: yamlnodes.Node) -> Source:
        fields = self.mapping(node, "a source", _SOURCE_KEYS)
        values = {key: self.text(fields[key], f"source {key}") or "" for key in fields}
        for key in sorted(_SOURCE_KEYS - fields.keys()):
            if isinstance(node, yamlnodes.MappingNode):
                self.problem(node, f"source is missing {key!r}")
        return Source(values.get("repository", ""), values.get("path", ""), values.get("commit", ""),
                      values.get("snapshot", ""))  # fmt: skip

    def _names(self, node: yamlnodes.Node, wildcards: bool) -> tuple[str, ...]:
        seen = self.lines
        for item in self.sequence(node, "names"):
            value = self.text(item, "a name")
            if value is None:
                continue
            line = item.start_mark.line + 1
            bare = value[2:] if wildcards and value.startswith("*.") else value
            if not valid_name(bare):
                self.problem(item, f"bad name {value!r}: lowercase DNS name of two or more labels, no trailing dot")
            elif value in seen:
                self.problem(item, f"duplicate name {value!r} (first on line {seen[value]})")
            else:
                seen[value] = line
        return tuple(seen)

    def _addresses(self, node: yamlnodes.Node) -> tuple[Network, ...]:
        seen: dict[Network, int] = {}
        for item in self.sequence(node, "addresses"):
            value = self.text(item, "an address")
            if value is None:
                continue
            try:
                network = ipaddress.ip_network(value, strict=True)
            except ValueError as error:
                self.problem(item, f"bad address {value!r}: {error}")
                continue
            if network in seen:
                self.problem(item, f"duplicate address {value!r} (first on line {seen[network]})")
            else:
                seen[network] = item.start_mark.line + 1
        return tuple(seen)


def parse_list(text: str, file: str, problems: list[Problem]) -> NameList | None:
    """Validate one file's text; append its problems to ``problems``."""
    return _parse(text, file, problems)[0]


def _parse(text: str, file: str, problems: list[Problem]) -> tuple[NameList | None, dict[str, int]]:
    checker = _File(file, problems)
    start = len(problems)
    root = compose(text, file, problems)
    if root is None and len(problems) > start:
        return None, {}
    return checker.build(root), checker.lines


def load_lists(paths: Iterable[Path]) -> tuple[NameList, ...]:
    """Load and validate list files; raise `RulesError` with every problem of every file."""
    return load_texts((str(path), _read(path)) for path in paths)


def _read(path: Path) -> str | Problem:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return Problem(str(path), 1, f"cannot read: {error}")


def load_texts(files: Iterable[tuple[str, str | Problem]]) -> tuple[NameList, ...]:
    """`load_lists` of files already read: each file's name and its text (or the problem of reading it)."""
    problems: list[Problem] = []
    lists: list[NameList] = []
    owner: dict[str, tuple[str, int]] = {}
    for file, text in files:
        if isinstance(text, Problem):
            problems.append(text)
            continue
        start = len(problems)
        parsed, lines = _parse(text, file, problems)
        problems[start:] = sorted(problems[start:], key=lambda problem: problem.line)
        if parsed is not None:
            lists.append(parsed)
        for name, line in lines.items():
            first = owner.setdefault(name, (file, line))
            if first[0] != file:
                problems.append(Problem(file, line, f"name {name!r} is also listed in {first[0]}:{first[1]}"))
    if problems:
        raise RulesError(problems)
    return tuple(lists)


def load_lists_dir(directory: str | Path | None = None) -> tuple[NameList, ...]:
    """Load every ``*.yaml`` list in ``directory`` (default: the lists shipped with egress, `shipped.lists_dir`)."""
    folder = Path(directory) if directory is not None else shipped.lists_dir()
    paths = sorted(folder.glob("*.yaml"))
    if not paths:
        raise RulesError([Problem(str(folder), 1, "no *.yaml name lists in this directory")])
    return load_lists(paths)


def load_name_lists(directory: str | Path | None = None) -> NameLists:
    """`load_lists_dir`, ready for the detectors."""
    return NameLists(load_lists_dir(directory))
