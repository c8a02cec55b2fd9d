"""Reading a plan file and the one error type for plans, without parsing anything.

Split from plan.py so the submit client can read a plan (and fail with the same
words) without importing the validator: the daemon parses and validates it.
"""

from __future__ import annotations

import os

MAX_PLAN_BYTES = 1024 * 1024


class PlanError(Exception):
    """One problem in one plan, phrased for the person who wrote it."""

    def __init__(self, source: str, message: str, *, line: int | None = None,
                 where: str | None = None, hint: str | None = None) -> None:
        self.source, self.line, self.where, self.message, self.hint = (
            source, line, where, message, hint)
        super().__init__(str(self))

    def __str__(self) -> str:
        location = self.source if self.line is None else f"{self.source}:{self.line}"
        text = f"{location}: {self.where + ': ' if self.where else ''}{self.message}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text


def read_plan_file(path: str) -> bytes:
    try:
        if os.path.isdir(path):
            raise PlanError(path, "is a directory", hint="give the path of a .toml or .json plan")
        size = os.path.getsize(path)
        if size > MAX_PLAN_BYTES:
            raise PlanError(path, f"is too large ({size / 1e6:.1f} MB); plans are at most "
                            f"{MAX_PLAN_BYTES // 1024} KiB",
                            hint="a plan lists commands; keep data in files the steps read")
        with open(path, "rb") as handle:
            return handle.read(MAX_PLAN_BYTES + 1)
    except FileNotFoundError:
        raise PlanError(path, "no such file", hint="check the path and try again") from None
    except PermissionError:
        raise PlanError(path, "permission denied while reading the plan") from None
    except OSError as exc:
        raise PlanError(path, f"cannot read the plan: {exc.strerror or exc}") from None
