"""Errors a user can act on.

A ``UserError`` is printed by the CLI as a clean message (no traceback) and exits with status 2.
``Problem`` is one finding of a validator: where (file, line, field), what was expected and what was
found. Validators collect every problem before raising, so a user fixes a file in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One validation finding, printed as ``FILE:LINE: message``."""

    file: str
    message: str
    line: int | None = None
    field: str | None = None
    severity: str = "error"  # "error" | "warning"

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        what = f"{self.field}: {self.message}" if self.field else self.message
        tag = "" if self.severity == "error" else f"{self.severity}: "
        return f"{where}: {tag}{what}"


class UserError(Exception):
    """A problem with the user's input or environment; the CLI prints it without a traceback."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.message = message
        self.problems = problems or []


@dataclass
class ProblemList:
    """Collects problems; ``raise_if_errors`` turns them into one ``UserError``."""

    problems: list[Problem] = field(default_factory=list)

    def add(self, file: str, message: str, line: int | None = None, field: str | None = None) -> None:
        self.problems.append(Problem(file, message, line, field))

    def warn(self, file: str, message: str, line: int | None = None, field: str | None = None) -> None:
        self.problems.append(Problem(file, message, line, field, severity="warning"))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    def raise_if_errors(self, what: str) -> None:
        if self.errors:
            n = len(self.errors)
            raise UserError(f"{what}: {n} problem{'s' if n != 1 else ''}", self.problems)
