"""`care-ray sft-data` and `care-ray finetune` (registered on the main app by care_ray.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the training commands to `app`."""
