"""Summaries of rationale text for manifests: how long, per dimension."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def length_summary(pairs: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """(dimension, length in characters) pairs → per dimension: n, mean, median, p10, p90. (The
    paper's expert rationales average about 155 Chinese characters.)"""
    by_dim: dict[str, list[int]] = {}
    for dimension, n_chars in pairs:
        by_dim.setdefault(dimension, []).append(n_chars)
    out: dict[str, Any] = {}
    for dimension in sorted(by_dim):
        values = np.asarray(by_dim[dimension], dtype=float)
        p10, median, p90 = np.percentile(values, [10, 50, 90])
        out[dimension] = {
            "n": int(values.size),
            "mean": round(float(values.mean()), 1),
            "median": float(median),
            "p10": float(p10),
            "p90": float(p90),
        }
    return out
