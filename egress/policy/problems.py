"""What a rules load reports when a file does not validate: `Problem` (file, line, message) and `RulesError`.

Apart from `egress.policy.yamlnodes` (which re-exports both) so that a caller can catch a load's error without
importing PyYAML: `egress scan` with its name lists cached (`egress.policy.listcache`) never composes YAML.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Problem", "RulesError"]


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

    def __reduce__(self) -> tuple[type[RulesError], tuple[tuple[Problem, ...]]]:
        """Pickled with its problems (a policy is validated in a child process, egress.gateway.validate): the
        default would rebuild it from the message and lose every file, line and reason."""
        return type(self), (self.problems,)
