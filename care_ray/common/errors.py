"""The two shapes of error care-ray raises on purpose: a user's mistake (UserError: one line, exit
code 2, no traceback) and a bad record (ReasonedError: a reason code counted in manifests + a
detail). Every room's own input errors subclass UserError, so the CLI catches one type."""

from __future__ import annotations

from enum import StrEnum


class UserError(ValueError):
    """A mistake in what the user gave (an option, a file, a folder): said in one line."""


class ReasonedError(ValueError):
    """`reason` is a stable code (counted in manifests), `detail` says where — never transcript text."""

    def __init__(self, reason: StrEnum, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
