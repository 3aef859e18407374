"""Where care-ray finds its contract files and the shared data, overridable by environment."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
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
