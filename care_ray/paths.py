"""Where care-ray finds its contract files and the shared data, overridable by environment."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def schemas_dir() -> Path:
    """`schemas/` beside the package (editable install or a `ray job submit` working_dir)."""
    return Path(os.environ.get("CARE_RAY_SCHEMAS", REPO_ROOT / "schemas"))


def queries_dir() -> Path:
    return Path(os.environ.get("CARE_RAY_QUERIES", REPO_ROOT / "queries"))


def shared_dir() -> Path:
    """The read-only shared folder (ESConv data, docs) that lives beside the repo, never inside it."""
    return Path(os.environ.get("CARE_RAY_SHARED", REPO_ROOT.parent / "shared"))


def esconv_dir() -> Path:
    return Path(os.environ.get("CARE_RAY_ESCONV", shared_dir() / "data" / "esconv"))


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
