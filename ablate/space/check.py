"""_Check: the problems and notes one validate_space run collects, so that every problem
is reported at once; the probes, file checks and dry run all write into it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ablate.space.model import SearchSpace, format_value


@dataclass
class _Check:
    """Problems and notes collected over one validation (reported all at once)."""

    space: SearchSpace
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)  # fixed overrides not yet found broken

    def __post_init__(self) -> None:
        self.fixed = dict(self.space.fixed)

    def problem(self, text: str) -> None:
        if text not in self.problems:
            self.problems.append(text)

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """The trial's overrides, leaving out fixed items already reported as broken."""
        values = {**self.fixed, **params}
        if self.space.tests is not None:
            values["data.tests"] = list(self.space.tests)
        return [f"{k}={format_value(v)}" for k, v in values.items()]
