"""What makes two scoring runs comparable: a fingerprint of every setting that changes results.

An output folder holds the results of one configuration. The first run writes `fingerprint.json`;
a rerun (resume, --retry-errors) must compute the same fingerprint or is refused with the list of
differences, so a folder never silently mixes two models, rubrics or sampling settings. Paths are
recorded for information only: a model copied to another mount scores the same."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from care_ray.common.errors import UserError

FINGERPRINT_FILE = "fingerprint.json"
_FULL_HASH_MAX = 64 << 20  # files up to this size are hashed whole
_CHUNK = 1 << 20
# Everything in a model or adapter folder that shapes its outputs, besides the weights.
_MODEL_TEXT_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "adapter_config.json",
    "model.safetensors.index.json",
)


class FingerprintMismatch(UserError):
    """A rerun into a folder that holds results of another configuration."""


def file_digest(path: Path) -> str:
    """sha256 of a file; for large weight files, of its size, safetensors header and three 1 MiB
    samples (start, middle, end) — cheap on 16 GB of weights, and any retraining changes them."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= _FULL_HASH_MAX:
            for block in iter(lambda: f.read(_CHUNK), b""):
                h.update(block)
            return h.hexdigest()
        h.update(str(size).encode())
        if path.suffix == ".safetensors":
            header_len = int.from_bytes(f.read(8), "little")
            f.seek(0)
            h.update(f.read(8 + min(header_len, _FULL_HASH_MAX)))
        for offset in (0, size // 2, max(0, size - _CHUNK)):
            f.seek(offset)
            h.update(f.read(_CHUNK))
    return h.hexdigest()


def folder_digest(folder: str | os.PathLike | None) -> str | None:
    """One digest over a model or adapter folder's config, tokenizer and weights; None when the
    path is not a local folder (then the path itself is all there is to compare)."""
    if folder is None:
        return None
    root = Path(folder)
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    names = sorted(
        {
            p.name
            for p in root.iterdir()
            if p.is_file() and (p.name in _MODEL_TEXT_FILES or p.suffix == ".safetensors")
        }
    )
    for name in names:
        h.update(name.encode() + b"\0" + file_digest(root / name).encode() + b"\n")
    return h.hexdigest()


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def digest_of(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """'key: old → new' for every setting that differs."""
    old, new = flatten(recorded), flatten(current)

    def show(v: Any) -> str:
        s = json.dumps(v, default=str)
        return s[:12] + "…" if isinstance(v, str) and len(v) > 24 else s

    return [
        f"{k}: {show(old.get(k))} → {show(new.get(k))}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
