"""Option files in YAML (--config, --mapping, --map-values): read one that must hold a mapping,
or say in one line what is wrong with it — missing, not YAML, or not a mapping."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def read_yaml_mapping(
    path: str | os.PathLike, what: str, expected: str, error: type[Exception] = ValueError
) -> dict[str, Any]:
    """The mapping in `path` ({} for an empty file); `what` names the file in the messages
    ("config", "--mapping"), `expected` says what it should hold."""
    p = Path(path)
    if not p.exists():
        raise error(f"{what} file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise error(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(loaded, dict):
        raise error(f"{p}: expected {expected}")
    return loaded
