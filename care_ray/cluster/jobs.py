"""Running under `ray job submit`: what differs for a job's driver (its paths resolve in Ray's
temporary copy of the working directory)."""

from __future__ import annotations

import os
from pathlib import Path


def in_submitted_job() -> bool:
    """True inside the driver of a `ray job submit` job (Ray hands it its job config this way)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def refuse_relative_in_job(paths: dict[str, object]) -> None:
    """Under `ray job submit` the driver runs in Ray's temporary copy of the working dir: a
    relative output would vanish with it, a relative input would be looked up there. Every path a
    job gets must be absolute (resolved on the submitting side, e.g. $PWD/out/x) or a URI."""
    if not in_submitted_job():
        return
    for option, value in paths.items():
        if value is None:
            continue
        text = str(value)
        if "://" in text or Path(text).is_absolute():
            continue
        raise ValueError(
            f"{option} {text} is a relative path, and this runs under `ray job submit`, where "
            "it would resolve inside Ray's temporary "
            "copy of the working dir (and vanish with it); pass an absolute path (e.g. "
            f"$PWD/{text}) or an object-store URI"
        )
