"""API tokens: the tokens file (or ``EGRESS_API_TOKENS``), roles, and constant-time lookup of a bearer token.

The file is YAML, validated like the rules files (every problem at once, with file and line)::

    tokens:
      - name: harness            # who holds it: appears in logs, never the token
        token_sha256: 9f86d0...  # hex SHA-256 of the token (preferred: the file then holds no secret)
        roles: [report]
      - name: oncall
        token: "a long random string"   # or the token itself (at least 16 characters)
        roles: [read, admin]
      - name: harness-7
        token_sha256: 2c26b4...
        roles: [report, read]
        sandboxes: [agent-7, agent-8]   # optional: only these sandboxes (see below)

``EGRESS_API_TOKENS`` holds a document of the same shape (YAML or JSON) when no file is given.

Roles: ``read`` (queries, follow, metrics), ``report`` (post actions), ``admin`` (everything). A token with
``sandboxes`` is scoped to them: it reports actions of those sandboxes only (403 naming ``actions[i].sandbox``
otherwise), reads only their records (a sandbox it names, ``?sandbox=`` or a timeline's path, must be one of
them; naming none, the list, the follow, the stats and the flows cover all of them; one attempt of another sandbox
is 404, the sandbox list shows its own), and is refused the fleet-wide routes (``/metrics``, the policy, the
quarantine), whatever its roles. Only digests are
kept in memory; a presented token is hashed and compared with every known digest by `hmac.compare_digest`, so
neither the comparison nor which entry matched depends on how much of a token was right.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from egress.policy import yamlnodes
from egress.policy.yamlnodes import NodeChecker, Problem, RulesError, compose

ENV_VAR: Final = "EGRESS_API_TOKENS"
MIN_TOKEN_LENGTH: Final = 16
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


class Role(enum.StrEnum):
    """What a token may do. Values are part of the API (tokens file, docs)."""

    READ = "read"
    """Queries (attempts, sandboxes, timelines, stats), live follow, metrics."""
    REPORT = "report"
    """Report agent actions (``POST /v1/actions``)."""
    ADMIN = "admin"
    """Everything the other roles may do."""


@dataclass(frozen=True, slots=True)
class Token:
    """One configured token: its holder's name, the SHA-256 digest of the secret, and its roles."""

    name: str
    sha256: bytes
    roles: frozenset[Role]
    sandboxes: frozenset[str] | None = None
    """The sandboxes it is scoped to; None: every sandbox (and the fleet-wide routes)."""

    def allows(self, role: Role) -> bool:
        return role in self.roles or Role.ADMIN in self.roles

    def sees(self, sandbox: str) -> bool:
        """Whether it may read or report for ``sandbox``."""
        return self.sandboxes is None or sandbox in self.sandboxes


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """The configured tokens; `authenticate` finds the one a presented secret belongs to, in constant time."""

    def __init__(self, tokens: Iterable[Token]) -> None:
        self.tokens = tuple(tokens)

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def authenticate(self, presented: str) -> Token | None:
        presented_digest = digest(presented)
        found = None
        for token in self.tokens:  # no early exit: every digest is compared whatever matches
            if hmac.compare_digest(presented_digest, token.sha256):
                found = token
        return found


class _TokensChecker(NodeChecker):
    def entry(self, node: yamlnodes.Node, index: int) -> Token | None:
        what = f"tokens[{index}]"
        fields = self.mapping(node, what, frozenset({"name", "token", "token_sha256", "roles", "sandboxes"}))
        if not isinstance(node, yamlnodes.MappingNode):
            return None
        name = self.text(fields["name"], f"{what}.name") if "name" in fields else None
        if "name" not in fields:
            self.problem(node, f"{what} needs a name")
        elif name is not None and not _NAME.fullmatch(name):
            self.problem(fields["name"], f"{what}.name {name!r} is not a name (letters, digits, _.@-; 1-64)")
            name = None
        secret = self._secret(node, fields, what)
        roles = self._roles(node, fields, what)
        sandboxes = self._sandboxes(fields["sandboxes"], what) if "sandboxes" in fields else None
        if name is None or secret is None or roles is None or sandboxes == frozenset():
            return None
        return Token(name, secret, roles, sandboxes)

    def _sandboxes(self, node: yamlnodes.Node, what: str) -> frozenset[str]:
        """The names of a ``sandboxes:`` list; empty (a problem said) when it has none or a bad one."""
        names: set[str] = set()
        for position, item in enumerate(self.sequence(node, f"{what}.sandboxes")):
            text = self.text(item, f"{what}.sandboxes[{position}]")
            if text is None:
                return frozenset()
            if not text or len(text) > 256 or not text.isprintable():
                self.problem(item, f"{what}.sandboxes[{position}] {text[:40]!r} is not a sandbox name")
                return frozenset()
            names.add(text)
        if not names:
            self.problem(node, f"{what}.sandboxes is empty (leave it out for every sandbox)")
        return frozenset(names)

    def _secret(self, node: yamlnodes.Node, fields: dict[str, yamlnodes.Node], what: str) -> bytes | None:
        if ("token" in fields) == ("token_sha256" in fields):
            self.problem(node, f"{what} needs exactly one of token or token_sha256")
            return None
        if "token" in fields:
            token = self.text(fields["token"], f"{what}.token")
            if token is not None and len(token) < MIN_TOKEN_LENGTH:
                self.problem(fields["token"], f"{what}.token is shorter than {MIN_TOKEN_LENGTH} characters")
                return None
            return digest(token) if token is not None else None
        hexdigest = self.text(fields["token_sha256"], f"{what}.token_sha256")
        if hexdigest is not None and not _SHA256_HEX.fullmatch(hexdigest.lower()):
            self.problem(fields["token_sha256"], f"{what}.token_sha256 must be 64 hex digits (sha256sum of the token)")
            return None
        return bytes.fromhex(hexdigest) if hexdigest is not None else None

    def _roles(self, node: yamlnodes.Node, fields: dict[str, yamlnodes.Node], what: str) -> frozenset[Role] | None:
        if "roles" not in fields:
            self.problem(node, f"{what} needs roles (some of: {', '.join(role.value for role in Role)})")
            return None
        roles: set[Role] = set()
        items = self.sequence(fields["roles"], f"{what}.roles")
        for position, item in enumerate(items):
            text = self.text(item, f"{what}.roles[{position}]")
            if text is None:
                return None
            try:
                roles.add(Role(text))
            except ValueError:
                choices = ", ".join(role.value for role in Role)
                self.problem(item, f"{what}.roles[{position}]: unknown role {text!r} (choose from {choices})")
                return None
        if not roles:
            self.problem(fields["roles"], f"{what}.roles is empty")
            return None
        return frozenset(roles)


def parse_tokens(text: str, file: str) -> tuple[Token, ...]:
    """Tokens from the text of a tokens document; `RulesError` lists every problem (file and line)."""
    problems: list[Problem] = []
    root = compose(text, file, problems)
    tokens: list[Token] = []
    if root is not None or not problems:
        checker = _TokensChecker(file, problems)
        top = checker.mapping(root, "the tokens file", frozenset({"tokens"})) if root is not None else {}
        if "tokens" not in top:
            checker.problem(root, "the tokens file needs a tokens: list")
        else:
            for index, node in enumerate(checker.sequence(top["tokens"], "tokens")):
                token = checker.entry(node, index)
                if token is not None:
                    tokens.append(token)
        _duplicates(tokens, file, problems)
    if problems:
        raise RulesError(problems)
    return tuple(tokens)


def _duplicates(tokens: Sequence[Token], file: str, problems: list[Problem]) -> None:
    names = [token.name for token in tokens]
    for name in sorted({name for name in names if names.count(name) > 1}):
        problems.append(Problem(file, 1, f"token name {name!r} is used more than once"))
    secrets = [token.sha256 for token in tokens]
    if len(set(secrets)) != len(secrets):
        problems.append(Problem(file, 1, "two entries have the same token"))


def load_tokens(path: Path) -> tuple[Token, ...]:
    """Tokens from a tokens file; `RulesError` on any problem, `OSError` when it cannot be read."""
    return parse_tokens(path.read_text(encoding="utf-8"), str(path))


def tokens_from_env(environ: dict[str, str] | None = None) -> tuple[Token, ...]:
    """Tokens from ``EGRESS_API_TOKENS`` (a tokens document); empty when it is unset or blank."""
    import os

    text = (environ if environ is not None else dict(os.environ)).get(ENV_VAR, "")
    return parse_tokens(text, f"${ENV_VAR}") if text.strip() else ()
