"""The report's input: the folders `care-ray evaluate` and `care-ray analyze` write, checked against
the findings contract (the tables and the columns each must have) before anything is drawn.

A folder is recognised by the "kind" in its metrics.json (evaluate) or manifest.json (analyze); a
wrong, missing or damaged folder is a one-line ReportError. Columns beyond the required ones are
optional: the interval columns newer analyses add (mean_lo, share_lo, …) are used where present, and
a folder written before them is still reported, with point estimates alone."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from care_ray.common.errors import UserError

EVALUATION_KIND = "care-ray evaluation"
ANALYSIS_KIND = "care-ray analysis"
# An analysis written before manifest.json recorded its alpha used this one.
DEFAULT_ALPHA = 0.05

# Columns each table must have (the findings contract); extra columns are ignored.
EVALUATION_TABLES: dict[str, tuple[str, ...]] = {
    "agreement": (
        "rater",
        "dimension",
        "fold",
        "n",
        "pearson",
        "pearson_lo",
        "pearson_hi",
        "spearman",
        "spearman_lo",
        "spearman_hi",
        "mse",
        "mse_lo",
        "mse_hi",
    ),
    "calibration": (
        "dimension",
        "bin",
        "bin_lo",
        "bin_hi",
        "n",
        "predicted_mean",
        "observed_mean",
        "observed_sd",
    ),
    "pairs": ("session_id", "dimension", "predicted", "observed"),
    # optional (written with several --scores): the paired differences between scorers
    "comparisons": (
        "rater_a",
        "rater_b",
        "dimension",
        "n",
        "pearson_a",
        "pearson_b",
        "difference",
        "difference_lo",
        "difference_hi",
        "mse_difference",
        "mse_difference_lo",
        "mse_difference_hi",
    ),
    # optional (the scale checks): reliability and factor structure of the item ratings
    "scale": (
        "source",
        "dimension",
        "alpha",
        "alpha_lo",
        "alpha_hi",
        "omega",
        "omega_lo",
        "omega_hi",
        "n",
    ),
    "item_rest": ("source", "dimension", "item_id", "r", "n"),
    "dimension_correlations": ("source", "dimension_a", "dimension_b", "r", "n"),
    "factor_models": ("source", "model", "cfi", "rmsea", "srmr", "chi2", "df", "aic", "bic", "n"),
}
ANALYSIS_TABLES: dict[str, tuple[str, ...]] = {
    # optional: mean_lo, mean_hi
    "population": (
        "group_by",
        "grp",
        "outcome",
        "n",
        "mean",
        "sd",
        "q25",
        "median",
        "q75",
        "low_share",
        "is_weakest",
    ),
    "weakest_outcome": (
        "outcome",
        "runner_up",
        "n",
        "mean_difference",
        "test",
        "statistic",
        "p_value",
    ),
    "counselor_profiles": (
        "counselor_id",
        "outcome",
        "n_sessions",
        "raw_mean",
        "pooled_mean",
        "pooled_lo",
        "pooled_hi",
        "rank",
        "is_strength",
        "is_weakest",
    ),
    "features": ("session_id",),
    # optional: share_lo, share_hi, residual
    "transitions": ("source", "strategy", "reaction", "n", "share"),
    "transition_tests": ("source", "n", "chi2", "dof", "p_value", "cramers_v"),
    "drivers": (
        "outcome",
        "feature",
        "coef_std",
        "std_error",
        "ci_low",
        "ci_high",
        "p_value",
        "p_adjusted",
        "n",
        "model",
        "r2",
    ),
    # optional: mean_lo, mean_hi
    "contrasts": (
        "by",
        "variable",
        "grp",
        "n",
        "mean",
        "sd",
        "effect_size",
        "effect_measure",
        "test",
        "statistic",
        "p_value",
        "p_adjusted",
    ),
    "challenge_terms": ("dimension", "term", "count", "log_odds", "z"),
    "challenge_clusters": (
        "dimension",
        "cluster",
        "size",
        "top_terms",
        "example_rationale",
        "example_quote",
    ),
    "trajectories": ("client_id", "outcome", "n_sessions", "first", "last", "slope", "rises"),
    "trajectory_summary": ("outcome", "session_index", "n", "mean"),
    # optional: mean_slope_lo, mean_slope_hi, share_rising_lo, share_rising_hi
    "trajectory_clients": ("outcome", "n_clients", "share_rising", "mean_slope"),
    # optional: partial_p_value
    "outcome_links": (
        "source",
        "predictor",
        "outcome",
        "n",
        "r",
        "r_lo",
        "r_hi",
        "partial_r",
        "partial_lo",
        "partial_hi",
        "covariate",
        "p_value",
        "p_adjusted",
    ),
    "timeline_curve": ("dimension", "position", "n", "mean", "mean_lo", "mean_hi"),
    "timeline_summary": (
        "dimension",
        "group_by",
        "grp",
        "sessions",
        "sessions_with_rupture",
        "rupture_share",
        "ruptures",
        "repaired",
        "repaired_share",
    ),
    "timeline_precedents": (
        "dimension",
        "strategy",
        "segment",
        "segments",
        "with_strategy",
        "share",
        "steady_segments",
        "steady_share",
        "odds_ratio",
        "p_value",
        "p_adjusted",
    ),
    "timeline_dialogue": ("rank", "turn_index", "role", "text", "strategy", "rating", "drop"),
    "timeline_links": ("predictor", "outcome", "n", "r", "r_lo", "r_hi", "p_adjusted"),
}


class ReportError(UserError):
    """A folder that is missing or is not an evaluate/analyze output: a one-line user error."""


@dataclass(frozen=True)
class Findings:
    """One evaluate or analyze output folder: its metrics.json / manifest.json and the tables present."""

    kind: str
    path: Path
    meta: dict
    tables: dict[str, pl.DataFrame]

    @property
    def label(self) -> str:
        return self.path.resolve().name or str(self.path)

    @property
    def alpha(self) -> float:
        """The analysis's alpha: its intervals are at 1 − alpha and its tests judged at alpha."""
        value = self.meta.get("alpha")
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1:
            return float(value)
        return DEFAULT_ALPHA

    @property
    def comparable(self) -> bool:
        """Model scores (goal/task/bond) share one 1-5 scale; labels need not, so no label is
        called the weakest."""
        return self.meta.get("mode") != "labels"


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(value, dict):
        raise ReportError(f"{path} is not a JSON object")
    return value


def folder_kind(path: Path) -> tuple[str | None, dict]:
    """The "kind" written in metrics.json (evaluate) or manifest.json (analyze), and that file's content."""
    for name in ("metrics.json", "manifest.json"):
        if (path / name).is_file():
            meta = _read_json(path / name)
            if meta.get("kind") in (EVALUATION_KIND, ANALYSIS_KIND):
                return meta["kind"], meta
    for name in ("metrics.json", "manifest.json"):
        if (path / name).is_file():
            return _read_json(path / name).get("kind"), {}
    return None, {}


def _read_table(path: Path, name: str, required: Sequence[str]) -> pl.DataFrame:
    try:
        frame = pl.DataFrame(pq.read_table(path))
    except Exception as e:  # pyarrow raises several types for a damaged or empty file
        raise ReportError(f"{path}: cannot read {name} table ({type(e).__name__}: {e})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: {name} table lacks column(s) {', '.join(missing)}")
    return frame


def load_findings(path: Path, expected_kind: str) -> Findings:
    """Read one output folder, checking it is the kind the caller expects (evaluation or analysis)."""
    option = "--evaluation" if expected_kind == EVALUATION_KIND else "--analysis"
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{option} folder not found: {path}")
    if not path.is_dir():
        raise ReportError(f"{option} {path} is not a folder")
    kind, meta = folder_kind(path)
    if kind is None:
        raise ReportError(
            f'{path} is neither a care-ray evaluation nor an analysis (no metrics.json or manifest.json with a "kind")'
        )
    if kind != expected_kind:
        hint = {
            EVALUATION_KIND: " (pass it with --evaluation)",
            ANALYSIS_KIND: " (pass it with --analysis)",
        }.get(kind, "")
        raise ReportError(f"{path} is a {kind!r} folder, not a {expected_kind}{hint}")
    spec = EVALUATION_TABLES if kind == EVALUATION_KIND else ANALYSIS_TABLES
    tables = {
        name: _read_table(path / f"{name}.parquet", name, cols)
        for name, cols in spec.items()
        if (path / f"{name}.parquet").exists()
    }
    return Findings(kind=kind, path=path, meta=meta, tables=tables)
