"""User-facing errors: one clear message each (what, where, what to do), never a traceback wall."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainables.core.config import MISSING

__all__ = ["MISSING", "SpecError", "SpecIssue", "UserError"]


@dataclass
class SpecIssue:
    key: str
    message: str
    value: Any = MISSING
    # where the offending value came from when not the file: the ``--set KEY=VALUE`` that wrote it
    origin: str | None = None

    def render(self, file: str | None) -> str:
        where = f"{self.origin}: " if self.origin else (f"{file}: " if file else "")
        got = "" if self.value is MISSING else f" (got {self.value!r})"
        key = f"{self.key}: " if self.key else ""
        return f"{where}{key}{self.message}{got}"


class UserError(Exception):
    """A problem the user can fix; printed as ``error: <message>`` with exit code 2."""

    exit_code = 2


class SpecError(UserError):
    """One or more problems in a search-space file."""

    def __init__(self, file: str | None, issues: list[SpecIssue]):
        self.file = file
        self.issues = issues
        super().__init__("\n".join(issue.render(file) for issue in issues))

    @classmethod
    def single(cls, file: str | None, key: str, message: str, value: Any = MISSING) -> "SpecError":
        return cls(file, [SpecIssue(key, message, value)])
