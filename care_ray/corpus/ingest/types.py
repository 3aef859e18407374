from __future__ import annotations

from dataclasses import dataclass

from care_ray.contracts.session import ContractError


@dataclass
class Candidate:
    """What a format reader hands the writer: a session built from `n_input_records` input
    records, or the reason they were rejected before a session could be built."""

    origin: str
    raw: str
    n_input_records: int
    session: dict | None
    error: ContractError | None
    source: str
