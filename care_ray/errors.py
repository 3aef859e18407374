"""One shape for every 'this record is bad, and here is why' error: a reason code + a detail."""

from __future__ import annotations

from enum import StrEnum


class ReasonedError(ValueError):
    """`reason` is a stable code (counted in manifests), `detail` says where — never transcript text."""

    def __init__(self, reason: StrEnum, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
