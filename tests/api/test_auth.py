"""Tokens file and env var parsing (every problem with its line), roles, and the bearer lookup."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from egress.api.auth import ENV_VAR, Role, Token, TokenTable, digest, load_tokens, parse_tokens, tokens_from_env
from egress.policy.yamlnodes import RulesError

SECRET = "s3cret-token-0123456789"
GOOD = f"""\
tokens:
  - name: harness
    token_sha256: {hashlib.sha256(b"harness-token-0123456789").hexdigest()}
    roles: [report]
  - name: oncall
    token: "{SECRET}"
    roles: [read, admin]
"""


def test_parses_both_secret_forms() -> None:
    tokens = parse_tokens(GOOD, "tokens.yaml")
    assert [token.name for token in tokens] == ["harness", "oncall"]
    assert tokens[0].sha256 == hashlib.sha256(b"harness-token-0123456789").digest()
    assert tokens[0].roles == frozenset({Role.REPORT})
    assert tokens[1].sha256 == digest(SECRET)


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(GOOD)
    assert len(load_tokens(path)) == 2


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("tokens: 3\n", 1, "tokens must be a list"),
        ("version: 1\ntokens: []\n", 1, "unknown key 'version'"),
        ("{}\n", 1, "needs a tokens: list"),
        ("tokens:\n  - name: a\n    roles: [read]\n", 2, "exactly one of token or token_sha256"),
        ("tokens:\n  - name: a\n    token: short\n    roles: [read]\n", 3, "shorter than 16"),
        ("tokens:\n  - name: a\n    token_sha256: abc\n    roles: [read]\n", 3, "64 hex digits"),
        (f"tokens:\n  - name: a\n    token: {SECRET}\n    roles: [read, root]\n", 4, "unknown role 'root'"),
        (f"tokens:\n  - name: a\n    token: {SECRET}\n    roles: []\n", 4, "roles is empty"),
        (f"tokens:\n  - name: a\n    token: {SECRET}\n", 2, "needs roles"),
        (f"tokens:\n  - token: {SECRET}\n    roles: [read]\n", 2, "needs a name"),
        (f"tokens:\n  - name: a b\n    token: {SECRET}\n    roles: [read]\n", 2, "is not a name"),
        (f"tokens:\n  - name: a\n    token: {SECRET}\n    roles: [read]\n    extra: 1\n", 5, "unknown key 'extra'"),
        ("tokens: [\n", 2, "not valid YAML"),
    ],
)
def test_problems_name_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(RulesError) as caught:
        parse_tokens(text, "t.yaml")
    problems = caught.value.problems
    assert any(p.file == "t.yaml" and p.line == line and message in p.message for p in problems), problems


def test_every_problem_reported_at_once() -> None:
    text = "tokens:\n  - name: a\n    token: x\n    roles: [read]\n  - name: b\n    roles: [god]\n    token: y\n"
    with pytest.raises(RulesError) as caught:
        parse_tokens(text, "t.yaml")
    assert {problem.line for problem in caught.value.problems} >= {3, 6}


def test_duplicates_refused() -> None:
    text = (
        f"tokens:\n  - {{name: a, token: {SECRET}, roles: [read]}}\n  - {{name: a, token: {SECRET}, roles: [read]}}\n"
    )
    with pytest.raises(RulesError, match=r"used more than once[\s\S]*same token"):
        parse_tokens(text, "t.yaml")


def test_env_var_holds_a_document() -> None:
    env = {ENV_VAR: f'{{"tokens": [{{"name": "ci", "token": "{SECRET}", "roles": ["read"]}}]}}'}
    (token,) = tokens_from_env(env)
    assert token.name == "ci"
    assert tokens_from_env({}) == ()
    assert tokens_from_env({ENV_VAR: "  "}) == ()
    with pytest.raises(RulesError, match=rf"\${ENV_VAR}:1"):
        tokens_from_env({ENV_VAR: "tokens: 1"})


def test_authenticate_and_roles() -> None:
    table = TokenTable(parse_tokens(GOOD, "t.yaml"))
    oncall = table.authenticate(SECRET)
    assert oncall is not None and oncall.name == "oncall"
    harness = table.authenticate("harness-token-0123456789")
    assert harness is not None and harness.allows(Role.REPORT) and not harness.allows(Role.READ)
    assert oncall.allows(Role.REPORT) and oncall.allows(Role.READ)  # admin implies every role
    assert table.authenticate("") is None
    assert table.authenticate(SECRET[:-1]) is None
    assert table.authenticate(SECRET + "x") is None
    assert not TokenTable([])


def test_every_digest_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the time taken does not tell which entry (if any) matched."""
    import hmac

    calls: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)  # the module egress.api.auth calls it through
    tokens = [Token(f"t{i}", digest(f"token-number-{i:04d}-xxxxxxxx"), frozenset({Role.READ})) for i in range(5)]
    table = TokenTable(tokens)
    for presented in ("token-number-0000-xxxxxxxx", "token-number-0004-xxxxxxxx", "nope"):
        calls.clear()
        table.authenticate(presented)
        assert len(calls) == 5
