"""`care-ray evaluate`: agreement of a scoring run with the client's own ratings (or a proxy label).

Reads a scoring run (`sessions/`, else `items/` through queries/session_scores.sql) and a corpus,
pairs each session's predicted dimension score with the observed one, and writes into `out`:
metrics.json, pairs.parquet, agreement.parquet, calibration.parquet and calibration.svg (the
layout is the findings contract). The statistics are the pure functions of care_ray.evaluation.metrics.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from care_ray.cluster.storage import PathOrURI, is_uri
from care_ray.common.errors import UserError
from care_ray.contracts.rubric import Rubric, load_rubric
from care_ray.corpus.ratings import RATIONALE_KEY
from care_ray.corpus.reader import redaction_summary
from care_ray.evaluation import metrics as ev
from care_ray.evaluation.checks import expected_checks, scale_checks

log = logging.getLogger(__name__)

CLIENT_WAI = "client_wai"
FIRST_RATER = "model"
BASELINE_KIND = "care-ray baseline scores"
_RATER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
LABEL_PREFIX = "labels."


class EvaluateError(UserError):
    """A mistake in the evaluation's input (a folder, a truth spec, a fold source)."""


def truth_field(description: str) -> Any:
    """The truth option evaluate and baseline share: `client_wai` (the default) or
    `labels.NAME=DIMENSION[,DIMENSION]` specs, parsed by parse_truth."""
    return Field(default_factory=lambda: [CLIENT_WAI], min_length=1, description=description)


class EvaluateConfig(BaseModel):
    """Agreement of a scoring run's dimension scores with the client's own ratings (or a proxy
    label): Pearson r, Spearman rho and MSE with bootstrap intervals, the counselor baseline and the
    model ÷ counselor ratio, per-fold mean ± SD, calibration, quote and rationale checks."""

    model_config = ConfigDict(extra="forbid")

    scores: list[str] = Field(
        min_length=1,
        description="a scoring run folder (`care-ray score --out`, or `care-ray baseline`): "
        "sessions/, else items/; a local path or a URI. Repeatable, as NAME=PATH or PATH (name = "
        "the folder's name; the first one unnamed is 'model'): every scorer is compared with the "
        "same truth on the sessions all of them scored, the first one with each other one",
    )
    expected: bool = Field(
        True,
        description="a run that kept the score token's probabilities (`<dim>_expected`) is also "
        "evaluated on its expected scores, as the scorer NAME_expected beside NAME (greedy), with "
        "the paired interval of their difference",
    )
    sessions: PathOrURI = Field(description="the corpus folder that was scored, a path or a URI")
    out: Path = Field(
        description="folder for metrics.json, pairs/agreement/calibration.parquet, calibration.svg"
    )
    truth: list[str] = truth_field(
        "what to compare with, repeatable: client_wai (default: the client's own "
        "WAI-SR, dimension = mean of its rated items) or labels.NAME=DIMENSION[,DIMENSION] (a "
        "numeric session label stands for those dimensions, e.g. --truth labels.empathy=bond "
        "--truth labels.relevance=goal,task); labels.NAME alone compares NAME with every "
        "dimension. The counselor baseline (counselor_wai, where present) is compared with the "
        "same truth"
    )
    folds: PathOrURI | None = Field(
        None,
        description="a folder with folds.parquet (sft-data, baseline) or the file itself: "
        "per-fold metrics and mean ± SD",
    )
    fold_key: str | None = Field(
        None, description="a session metadata key that holds the fold (instead of --folds)"
    )
    resamples: int = Field(
        1000, ge=0, description="bootstrap resamples for the intervals (0 = none)"
    )
    seed: int = Field(123, description="bootstrap and sampling seed")
    level: float = Field(0.95, gt=0, lt=1, description="confidence level of the intervals")
    bootstrap_max_n: int | None = Field(
        2000,
        ge=10,
        description="above this many sessions in a cell, bootstrap a seeded subsample and "
        "rescale the interval by sqrt(subsample/n)",
    )
    fold_intervals: bool = Field(
        False,
        description="bootstrap intervals for each fold's rows too (default: overall rows only)",
    )
    bin_width: float = Field(
        0.5, gt=0, description="width of the predicted-score bins of the calibration table"
    )
    rubric: Path | None = Field(
        None, description="rubric file (item → dimension); default: the English WAI-SR"
    )
    scale_resamples: int = Field(
        200,
        ge=0,
        description="bootstrap resamples for McDonald's ω intervals in the scale checks (0 = none)",
    )
    scale_min_sessions: int = Field(
        30,
        ge=3,
        description="scale checks (α, ω, factor models) need at least this many sessions with all "
        "items rated in a source (predicted items, the clients' own client_wai)",
    )
    rationale_key: str = Field(
        RATIONALE_KEY, description="session metadata key of reference rationales; {item} = item id"
    )
    rationale_max_pairs: int = Field(
        2000,
        ge=1,
        description="ROUGE on at most this many (session, item) rationale pairs (a seeded sample)",
    )

    @field_validator("scores", mode="before")
    @classmethod
    def _one_scores_is_a_list(cls, value: Any) -> Any:
        """One folder (a str or a path, as callers before side-by-side passed it) is a list of one."""
        if isinstance(value, str | os.PathLike):
            return [str(value)]
        if isinstance(value, list | tuple):
            return [str(v) if isinstance(v, os.PathLike) else v for v in value]
        return value

    @model_validator(mode="after")
    def _one_fold_source(self) -> EvaluateConfig:
        if self.folds is not None and self.fold_key is not None:
            raise ValueError("give --folds or --fold-key, not both")
        if "{item}" not in self.rationale_key:
            raise ValueError("rationale_key needs {item}")
        return self


@dataclass(frozen=True)
class Truth:
    """What the predictions are compared with: the client's WAI, or a label per dimension."""

    kind: str  # client_wai | labels
    label_of_dimension: dict[str, str]  # labels only: dimension → label name

    def describe(self, dimensions: list[str]) -> dict[str, str]:
        if self.kind == CLIENT_WAI:
            return {d: CLIENT_WAI for d in dimensions}
        return {d: LABEL_PREFIX + name for d, name in self.label_of_dimension.items()}


def parse_truth(specs: list[str], dimensions: list[str]) -> Truth:
    """`client_wai`, or one or more `labels.NAME[=DIM[,DIM…]]` (no DIM: NAME stands for every dimension)."""
    specs = [s.strip() for s in specs if s.strip()]
    if specs == [CLIENT_WAI]:
        return Truth(CLIENT_WAI, {})
    if CLIENT_WAI in specs:
        raise EvaluateError("--truth client_wai cannot be combined with other --truth specs")
    label_of: dict[str, str] = {}
    for spec in specs:
        if not spec.startswith(LABEL_PREFIX) or len(spec) == len(LABEL_PREFIX):
            raise EvaluateError(
                f"--truth takes client_wai or labels.NAME[=DIMENSION], got {spec!r}"
            )
        name, _, dims = spec[len(LABEL_PREFIX) :].partition("=")
        name = name.strip()
        chosen = [d.strip().lower() for d in dims.split(",") if d.strip()] or dimensions
        if not name:
            raise EvaluateError(f"--truth {spec!r}: the label name is empty")
        unknown = [d for d in chosen if d not in dimensions]
        if unknown:
            raise EvaluateError(
                f"--truth {spec!r}: {', '.join(unknown)} is not a dimension ({', '.join(dimensions)})"
            )
        for d in chosen:
            if d in label_of and label_of[d] != name:
                raise EvaluateError(
                    f"--truth: dimension {d!r} is mapped to both labels.{label_of[d]} and labels.{name}"
                )
            label_of[d] = name
    return Truth("labels", {d: label_of[d] for d in dimensions if d in label_of})


@dataclass(frozen=True)
class Scorer:
    """One --scores folder: its rater name, where it is, and its column in pairs.parquet."""

    name: str
    path: str
    column: str
    kind: str = "greedy"  # or "expected": the run's `<dim>_expected` columns (Σ s·p(s))


def parse_scorers(specs: list[str]) -> list[Scorer]:
    """`NAME=PATH` or `PATH` → scorers with unique names: an unnamed first one is "model" (so a
    single-run evaluation reads as before), other unnamed ones take their folder's name. The first
    scorer's predictions are pairs.parquet's `predicted`, each other one's `predicted_NAME`."""
    out: list[Scorer] = []
    for i, spec in enumerate(specs):
        name, sep, path = spec.partition("=")
        if not sep or not _RATER_NAME.match(name.strip()) or is_uri(name):
            name, path = "", spec
        name, path = name.strip(), path.strip()
        if not path:
            raise EvaluateError(f"--scores {spec!r}: no folder")
        if not name:
            name = FIRST_RATER if i == 0 else (path.rstrip("/").rsplit("/", 1)[-1] or path)
        out.append(Scorer(name, path, "predicted" if i == 0 else f"predicted_{name}"))
    names = [s.name for s in out]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise EvaluateError(
            f"--scores: rater name(s) {', '.join(repeated)} given twice (name them NAME=PATH)"
        )
    if "counselor" in names:
        raise EvaluateError("--scores: 'counselor' is the counselor baseline's name; pick another")
    return out


def expected_scorers(
    scorers: list[Scorer], dimensions: list[str], runs: dict | None = None
) -> list[Scorer]:
    """NAME_expected for each scorer whose run kept expected scores (after the given ones, so
    the first scorer, pairs.parquet's `predicted`, stays the decoded score)."""
    taken = {s.name for s in scorers}
    out = []
    for s in scorers:
        name = f"{s.name}_expected"
        if name not in taken and has_expected_scores(s.path, dimensions, runs):
            out.append(Scorer(name, s.path, f"predicted_{name}", "expected"))
    return out


def scores_kind(path: str) -> str:
    """The "kind" in a scores folder's manifest.json ("care-ray baseline scores" for a baseline),
    "scores" when there is none to read."""
    manifest = Path(path) / "manifest.json"
    if is_uri(path) or not manifest.is_file():
        return "scores"
    try:
        kind = json.loads(manifest.read_text(encoding="utf-8")).get("kind")
    except (json.JSONDecodeError, AttributeError, OSError):
        return "scores"
    return str(kind) if kind else "scores"


# ---- reading ----


def _parquet_dataset(folder: Path, partitioning: str | None = None) -> ds.Dataset | None:
    """The Parquet files under `folder`, or None when there are none."""
    if not folder.is_dir():
        return None
    dataset = ds.dataset(folder, format="parquet", partitioning=partitioning)
    return dataset if dataset.files else None


def _session_scores(scores: str | Path, runs: dict | None) -> tuple[pa.Table, str]:
    """read_session_scores, once per folder where `runs` (folder → result) is given: a run is
    read for its decoded and its expected scores alike."""
    from care_ray.scoring.results import read_session_scores

    if runs is None:
        return read_session_scores(scores)
    if str(scores) not in runs:
        runs[str(scores)] = read_session_scores(scores)
    return runs[str(scores)]


def has_expected_scores(
    scores: str | Path, dimensions: list[str], runs: dict | None = None
) -> bool:
    """Whether a run's sessions carry expected scores (`<dim>_expected`, not all null)."""
    from care_ray.scoring.results import NoScores

    try:
        arrow, _ = _session_scores(scores, runs)
    except NoScores:
        return False
    cols = [f"{d}_expected" for d in dimensions if f"{d}_expected" in arrow.schema.names]
    return any(arrow.column(c).null_count < arrow.num_rows for c in cols)


def read_predicted(
    scores: str | Path, dimensions: list[str], kind: str = "greedy", runs: dict | None = None
) -> tuple[pl.DataFrame, str]:
    """Long (session_id, dimension, predicted) from the run's sessions/ table, or from its
    committed items/ by queries/session_scores.sql (the same definition: a dimension needs all of
    its items scored). A local folder or a URI. `kind="expected"` reads `<dim>_expected`."""
    from care_ray.scoring.results import NoScores

    try:
        arrow, origin = _session_scores(scores, runs)
    except NoScores as e:
        raise EvaluateError(str(e)) from None
    folder = f"{scores}/{origin.split()[0].rstrip('/')}"
    if kind == "expected":
        kept = [d for d in dimensions if f"{d}_expected" in arrow.schema.names]
        arrow = arrow.select(["session_id", *[f"{d}_expected" for d in kept]]).rename_columns(
            ["session_id", *kept]
        )
    names = arrow.schema.names
    if "session_id" not in names:
        raise EvaluateError(f"{folder} has no session_id column")
    table = pl.DataFrame(arrow.select(["session_id", *[d for d in dimensions if d in names]]))
    if table.height == 0:
        raise EvaluateError(f"no scored sessions in {folder}")
    duplicated = table["session_id"].is_duplicated().sum()
    if duplicated:
        raise EvaluateError(f"{folder}: {duplicated} rows repeat a session_id")
    present = [d for d in dimensions if d in table.columns]
    if not present:
        raise EvaluateError(f"{folder} has no dimension columns ({', '.join(dimensions)})")
    return ev.long_dimension_frame(
        table["session_id"], {d: table[d] for d in present}, "predicted"
    ), origin


def read_corpus(sessions: str | Path, session_ids: pl.Series, columns: list[str]) -> pa.Table:
    """The corpus rows of `session_ids`, only `columns` (those the corpus has)."""
    from care_ray.corpus.reader import open_sessions

    dataset = open_sessions(sessions, EvaluateError)
    wanted = [
        "session_id",
        *[c for c in columns if c in dataset.schema.names and c != "session_id"],
    ]
    ids = pa.array(session_ids.unique().to_list(), pa.string())
    return dataset.to_table(columns=wanted, filter=pc.field("session_id").isin(ids))


def observed_frame(corpus: pa.Table, truth: Truth, rubric: Rubric) -> pl.DataFrame:
    if truth.kind == CLIENT_WAI:
        if CLIENT_WAI not in corpus.column_names:
            return pl.DataFrame(
                schema={"session_id": pl.String, "dimension": pl.String, "observed": pl.Float64}
            )
        return ev.wai_dimension_frame(corpus["session_id"], corpus[CLIENT_WAI], rubric, "observed")
    labels = (
        corpus["labels"]
        if "labels" in corpus.column_names
        else pa.chunked_array([pa.nulls(corpus.num_rows, pa.map_(pa.string(), pa.float64()))])
    )
    present = {k for chunk in labels.chunks for k in chunk.keys.unique().to_pylist()}
    missing = sorted(set(truth.label_of_dimension.values()) - present)
    if missing:
        have = ", ".join(sorted(k for k in present if k)) or "none"
        raise EvaluateError(
            f"--truth names label(s) {', '.join(missing)} that no scored session has (labels present: {have})"
        )
    return ev.label_dimension_frame(
        corpus["session_id"], labels, truth.label_of_dimension, "observed"
    )


def counselor_frame(corpus: pa.Table, rubric: Rubric) -> pl.DataFrame | None:
    if (
        "counselor_wai" not in corpus.column_names
        or corpus["counselor_wai"].null_count == corpus.num_rows
    ):
        return None
    return ev.wai_dimension_frame(
        corpus["session_id"], corpus["counselor_wai"], rubric, "counselor"
    )


def read_folds(config: EvaluateConfig, corpus: pa.Table) -> tuple[pl.DataFrame | None, str | None]:
    """(session_id, fold) from an sft-data examples file or a metadata key, and where it came from."""
    if config.folds is not None:
        from care_ray.corpus.folds import FoldError, read_folds

        try:
            table, where = read_folds(config.folds)
        except FoldError as err:
            raise EvaluateError(str(err)) from None
        return pl.DataFrame(table).with_columns(pl.col("fold").cast(pl.String)), where
    if config.fold_key is not None:
        values = (
            pc.map_lookup(corpus["metadata"], pa.scalar(config.fold_key, pa.string()), "first")
            if "metadata" in corpus.column_names
            else pa.nulls(corpus.num_rows, pa.string())
        )
        if values.null_count == len(values):
            raise EvaluateError(
                f"--fold-key {config.fold_key!r}: no scored session has that metadata key"
            )
        return pl.DataFrame(
            {
                "session_id": pl.Series(corpus["session_id"], dtype=pl.String),
                "fold": pl.Series(values, dtype=pl.String),
            }
        ), f"metadata:{config.fold_key}"
    return None, None


def read_item_rows(
    scores: str | Path, columns: list[str], session_ids: list[str]
) -> pa.Table | None:
    from care_ray.scoring.results import read_item_rows as read

    return read(scores, columns, session_ids)


def read_items(
    scores: str | Path, session_ids: pl.Series, columns: list[str]
) -> pl.DataFrame | None:
    from care_ray.scoring.results import read_item_rows

    rows = read_item_rows(scores, columns, session_ids.unique().to_list())
    return None if rows is None else pl.DataFrame(rows)


# ---- the summaries in metrics.json ----


def _dimension_metrics(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": row["n"]}
    for s in ev.AGREEMENT_STATS:
        out[s], out[f"{s}_ci"] = row[s], [row[f"{s}_lo"], row[f"{s}_hi"]]
    return out


def _overall_rows(agreement: pl.DataFrame, rater: str) -> dict[str, dict[str, Any]]:
    return {
        r["dimension"]: r
        for r in agreement.filter((pl.col("rater") == rater) & pl.col("fold").is_null()).to_dicts()
    }


def _ratio(model_r: float | None, counselor_r: float | None) -> float:
    gain = ev.relative_gain(
        ev.NAN if model_r is None else model_r, ev.NAN if counselor_r is None else counselor_r
    )
    return gain + 1.0


def counselor_baseline(
    pairs: pl.DataFrame, agreement: pl.DataFrame, dimensions: list[str]
) -> dict[str, Any] | None:
    rows = _overall_rows(agreement, "counselor")
    if not rows:
        return None
    gaps = dict(
        pairs.drop_nulls("counselor")
        .group_by("dimension")
        .agg((pl.col("counselor") - pl.col("observed")).mean())
        .iter_rows()
    )
    return {
        d: {**_dimension_metrics(rows[d]), "mean_gap": gaps.get(d)} for d in dimensions if d in rows
    }


def _fold_mean_r(summary: dict[str, Any], dimension: str) -> float | None:
    return summary.get(dimension, {}).get("pearson", {}).get("mean")


def fold_metrics(
    agreement: pl.DataFrame, dimensions: list[str], source: str, rater: str = FIRST_RATER
) -> dict[str, Any]:
    folds = agreement.filter(pl.col("fold").is_not_null())
    model = ev.fold_agreement_summary(agreement, rater, dimensions)
    has_counselor = folds.filter(pl.col("rater") == "counselor").height > 0
    counselor = (
        ev.fold_agreement_summary(agreement, "counselor", dimensions) if has_counselor else None
    )
    per_fold: dict[str, dict[str, Any]] = {}
    for r in folds.filter(pl.col("rater") == rater).to_dicts():
        per_fold.setdefault(r["fold"], {})[r["dimension"]] = {
            s: r[s] for s in (*ev.AGREEMENT_STATS, "n")
        }
    return {
        "source": source,
        "n_folds": len(per_fold),
        "model": model,
        "counselor": counselor,
        # The paper's way: mean-over-folds model r ÷ mean-over-folds counselor r.
        "model_vs_counselor": {
            d: _ratio(_fold_mean_r(model, d), _fold_mean_r(counselor, d)) for d in dimensions
        }
        if counselor
        else None,
        "per_fold": per_fold,
    }


def rationale_metrics(
    corpus: pa.Table, config: EvaluateConfig, rubric: Rubric
) -> dict[str, Any] | None:
    """ROUGE of the run's rationales against reference rationales in session metadata; None when
    no scored session has one. Pure-Python LCS is slow, so at most rationale_max_pairs pairs."""
    if "metadata" not in corpus.column_names:
        return None
    refs = ev.reference_rationale_frame(
        corpus["session_id"], corpus["metadata"], [i.id for i in rubric.items], config.rationale_key
    )
    if refs.height == 0:
        return None
    items = read_items(
        parse_scorers(config.scores)[0].path,
        refs["session_id"],
        ["session_id", "item_id", "rationale"],
    )
    cands = (
        items.with_columns(pl.col("item_id").cast(pl.Int64))
        if items is not None
        else pl.DataFrame(
            schema={"session_id": pl.String, "item_id": pl.Int64, "rationale": pl.String}
        )
    )
    joined = refs.join(cands, on=["session_id", "item_id"], how="left")
    available = joined.height
    if available > config.rationale_max_pairs:
        joined = joined.sample(config.rationale_max_pairs, seed=config.seed)
    joined = joined.sort("session_id", "item_id")
    out = ev.rationale_overlap(
        joined["reference"].to_list(), joined["rationale"].fill_null("").to_list()
    )
    out["sampled_from"] = available if available > config.rationale_max_pairs else None
    return out


# ---- outputs ----


def calibration_figure(calibration: pl.DataFrame, dimensions: list[str], low: float, high: float):
    """One panel per dimension: observed mean (± SD) against predicted mean per bin, point area ∝ n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1,
        len(dimensions),
        figsize=(3.6 * len(dimensions), 3.6),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    n_max = max(calibration["n"].max() or 1, 1)
    for ax, dim in zip(axes[0], dimensions, strict=True):
        bins = calibration.filter(pl.col("dimension") == dim)
        ax.plot(
            [low, high], [low, high], color="0.6", linestyle="--", linewidth=1, label="identity"
        )
        if bins.height:
            ax.errorbar(
                bins["predicted_mean"],
                bins["observed_mean"],
                yerr=bins["observed_sd"].fill_null(0),
                fmt="none",
                ecolor="0.75",
                linewidth=1,
            )
            ax.scatter(
                bins["predicted_mean"],
                bins["observed_mean"],
                s=20 + 280 * bins["n"].to_numpy() / n_max,
                alpha=0.8,
                zorder=3,
            )
        ax.set_title(f"{dim} (n = {int(bins['n'].sum())})")
        ax.set_xlabel("predicted")
        ax.set_xlim(low - 0.25, high + 0.25)
        ax.set_ylim(low - 0.25, high + 0.25)
        ax.set_aspect("equal")
    axes[0][0].set_ylabel("observed (mean ± SD per bin)")
    fig.tight_layout()
    return fig


def _json_safe(value: Any) -> Any:
    """NaN/inf → None and numpy scalars → Python, so json.dumps(allow_nan=False) holds."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_outputs(
    out: Path, metrics: dict[str, Any], tables: dict[str, pl.DataFrame], figure
) -> None:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.write_parquet(out / f"{name}.parquet")
    figure.savefig(out / "calibration.svg", format="svg", metadata={"Date": None})
    plt.close(figure)
    (out / "metrics.json").write_text(
        json.dumps(_json_safe(metrics), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
        encoding="utf-8",
    )


def _dropped(
    frames: dict[str, pl.DataFrame], observed: pl.DataFrame, pairs: pl.DataFrame, dims: list[str]
) -> dict[str, dict[str, int]]:
    """Per scorer and dimension: the sessions it scored (with a truth) that another scorer did not,
    left out so that every scorer is compared on the same sessions."""
    kept = dict(pairs.group_by("dimension").len().iter_rows())
    out = {}
    for name, frame in frames.items():
        have = dict(
            frame.join(observed, on=["session_id", "dimension"], how="inner")
            .group_by("dimension")
            .len()
            .iter_rows()
        )
        out[name] = {d: int(have.get(d, 0) - kept.get(d, 0)) for d in dims}
    return out


def _difference_text(row: dict[str, Any]) -> str:
    lo, hi = row["difference_lo"], row["difference_hi"]
    if row["difference"] is None or lo is None or hi is None:
        return "no interval"
    return f"{row['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def comparison_summary(comparisons: pl.DataFrame) -> list[dict[str, Any]]:
    """metrics.json's `comparisons`: per pair and dimension r_a − r_b and MSE_a − MSE_b with their
    intervals, and which rater agrees better where the r interval excludes 0 (else null)."""
    out = []
    for r in comparisons.to_dicts():
        lo, hi = r["difference_lo"], r["difference_hi"]
        better = None
        if lo is not None and hi is not None and (lo > 0 or hi < 0):
            better = r["rater_a"] if lo > 0 else r["rater_b"]
        out.append(
            {
                "rater_a": r["rater_a"],
                "rater_b": r["rater_b"],
                "dimension": r["dimension"],
                "n": r["n"],
                "pearson_difference": r["difference"],
                "pearson_difference_ci": [lo, hi],
                "mse_difference": r["mse_difference"],
                "mse_difference_ci": [r["mse_difference_lo"], r["mse_difference_hi"]],
                "better_pearson": better,
                "text": _difference_text(r),
            }
        )
    return out


def evaluate_run(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate one or more scoring runs against one corpus; writes config.out and returns
    metrics.json's content."""
    started = time.monotonic()
    rubric = load_rubric(config.rubric) if config.rubric else load_rubric()
    dimensions = list(rubric.dimensions)
    truth = parse_truth(config.truth, dimensions)
    scorers = parse_scorers(config.scores)
    runs: dict = {}  # each folder read once, for its decoded and expected scores
    if config.expected:
        scorers += expected_scorers(scorers, dimensions, runs)
    first = scorers[0]
    frames: dict[str, pl.DataFrame] = {}
    origins: dict[str, str] = {}
    for scorer in scorers:
        frame, origins[scorer.name] = read_predicted(scorer.path, dimensions, scorer.kind, runs)
        frames[scorer.name] = frame
    predicted, origin = frames[first.name], origins[first.name]
    scored = predicted["session_id"].unique()
    # every scorer's sessions, so that what a later scorer alone scored counts as dropped
    every = pl.concat([f["session_id"] for f in frames.values()]).unique()
    corpus = read_corpus(
        config.sessions, every, [CLIENT_WAI, "counselor_wai", "labels", "metadata"]
    )
    if corpus.num_rows == 0:
        raise EvaluateError(
            f"none of the {scored.len()} scored sessions in {first.path} is in the corpus {config.sessions}"
        )
    observed = observed_frame(corpus, truth, rubric)
    folds, fold_source = read_folds(config, corpus)
    # the first scorer's sessions: its items and rationales are checked on these alone
    own = corpus.filter(pc.field("session_id").isin(pa.array(scored.to_list(), pa.string())))
    others = {s.column: frames[s.name].rename({"predicted": s.column}) for s in scorers[1:]}
    pairs = ev.pairs_table(predicted, observed, counselor_frame(corpus, rubric), folds, others)
    if pairs.height == 0:
        hint = " (try --truth labels.NAME=DIMENSION)" if truth.kind == CLIENT_WAI else ""
        by_all = " from every scorer" if len(scorers) > 1 else ""
        raise EvaluateError(
            f"none of the {corpus.num_rows} scored sessions in the corpus has both a model "
            f"score{by_all} and a {'/'.join(sorted(set(truth.describe(dimensions).values())))} "
            f"value{hint}"
        )
    truth_dims = [d for d in dimensions if d in truth.describe(dimensions)]
    log.info(
        "evaluating %d sessions (%d pairs, %d scorer(s)) against %s",
        pairs["session_id"].n_unique(),
        pairs.height,
        len(scorers),
        truth.kind,
    )
    raters = [(s.name, s.column) for s in scorers]
    agreement = ev.agreement_table(
        pairs,
        truth_dims,
        config.resamples,
        config.seed,
        config.level,
        config.bootstrap_max_n,
        config.fold_intervals,
        raters,
    )
    comparisons = ev.comparison_table(
        pairs,
        raters,
        truth_dims,
        config.resamples,
        config.seed,
        config.level,
        config.bootstrap_max_n,
    )
    model_rows = _overall_rows(agreement, first.name)
    baseline = counselor_baseline(pairs, agreement, truth_dims)
    low, high = float(min(rubric.scale)), float(max(rubric.scale))
    calibration = ev.calibration_table(pairs, low, high, config.bin_width)
    # the first run's expected scores (#30): their own calibration, and error by spread
    kept = next((s for s in scorers[1:] if s.kind == "expected" and s.path == first.path), None)
    uncertainty_tables, uncertainty = expected_checks(
        (kept.name, kept.column) if kept else None,
        first.path,
        pairs,
        truth_dims,
        low,
        high,
        config.bin_width,
    )
    items = read_items(first.path, pairs["session_id"], ["session_id", "dimension", "quote_found"])
    quote_share, quote_by_dim = (
        ev.quote_found_share(items, truth_dims) if items is not None else (None, None)
    )
    subsampled = agreement.filter((pl.col("ci_n") > 0) & (pl.col("ci_n") < pl.col("n"))).height
    ratios = {
        d: _ratio(
            model_rows[d]["pearson"], baseline[d]["pearson"] if baseline and d in baseline else None
        )
        for d in truth_dims
    }
    scale_metrics, scale_tables = scale_checks(
        (first.name, first.path),
        own,
        rubric,
        config.scale_resamples,
        config.seed,
        config.level,
        config.scale_min_sessions,
    )

    metrics: dict[str, Any] = {
        "kind": "care-ray evaluation",
        "corpus_redaction": redaction_summary(config.sessions),
        "truth": {
            "spec": config.truth,
            "kind": truth.kind,
            "dimensions": truth.describe(dimensions),
        },
        "scores": first.path,
        "sessions": str(config.sessions),
        "predicted_from": origin,
        "raters": [
            {
                "name": s.name,
                "path": s.path,
                "column": s.column,
                "kind": scores_kind(s.path),
                "score": s.kind,
                "predicted_from": origins[s.name],
                "n_scored_sessions": frames[s.name]["session_id"].n_unique(),
            }
            for s in scorers
        ],
        "n_sessions": pairs["session_id"].n_unique(),
        "n_scored_sessions": scored.len(),
        "common_sessions": {
            "note": "every scorer is compared on the (session, dimension) pairs all of them "
            "scored; dropped = pairs a scorer had (with a truth) that another scorer lacked",
            "dropped": _dropped(frames, observed, pairs, truth_dims),
        }
        if len(scorers) > 1
        else None,
        "dimensions": {d: _dimension_metrics(model_rows[d]) for d in truth_dims},
        "by_rater": {
            s.name: {
                d: _dimension_metrics(r)
                for d, r in _overall_rows(agreement, s.name).items()
                if d in truth_dims
            }
            for s in scorers
        },
        "comparisons": comparison_summary(comparisons) if len(scorers) > 1 else None,
        "counselor_baseline": baseline,
        "model_vs_counselor": ratios,
        "model_vs_counselor_gain": {d: r - 1.0 for d, r in ratios.items()},
        "folds": fold_metrics(agreement, truth_dims, fold_source, first.name)
        if fold_source and pairs["fold"].is_not_null().any()
        else None,
        "quote_found_share": quote_share,
        "quote_found_by_dimension": quote_by_dim,
        "rationale_overlap": rationale_metrics(own, config, rubric),
        "calibration": {
            "low": low,
            "high": high,
            "bin_width": config.bin_width,
            "fit": ev.calibration_fit(pairs, raters, truth_dims, config.level),
            "fit_note": "observed = intercept + slope · predicted per rater (slope 1 and "
            "intercept 0: calibrated); calibration.parquet bins the first rater's scores"
            + (", calibration_expected.parquet its expected scores" if kept else ""),
        },
        "spread": uncertainty,
        "scale": scale_metrics,
        "bootstrap": {
            "resamples": config.resamples,
            "seed": config.seed,
            "level": config.level,
            "method": "percentile, paired over sessions; resamples with an undefined r "
            "(a constant side) are left out of that interval and counted in ci_degenerate",
            "max_n": config.bootstrap_max_n,
            "fold_intervals": config.fold_intervals,
            "note": (
                f"{subsampled} cell(s) had more than {config.bootstrap_max_n} pairs: their "
                "intervals come from a seeded subsample of "
                f"{config.bootstrap_max_n}, rescaled by sqrt(subsample/n) around the full-sample estimate"
            )
            if subsampled
            else None,
        },
        "tables": {
            "pairs": pairs.height,
            "agreement": agreement.height,
            "calibration": calibration.height,
            **({"comparisons": comparisons.height} if len(scorers) > 1 else {}),
            **{name: t.height for name, t in scale_tables.items()},
            **{name: t.height for name, t in uncertainty_tables.items()},
        },
    }
    if fold_source and metrics["folds"] is None:
        metrics["folds_note"] = f"no evaluated session has a fold in {fold_source}"
    figure = calibration_figure(calibration, truth_dims, low, high)
    metrics["seconds"] = round(time.monotonic() - started, 3)
    tables = {"pairs": pairs, "agreement": agreement, "calibration": calibration}
    if len(scorers) > 1:
        tables["comparisons"] = comparisons
    write_outputs(config.out, metrics, {**tables, **scale_tables, **uncertainty_tables}, figure)
    return _json_safe(metrics)
