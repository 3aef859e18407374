"""What `care-ray evaluate` checks beyond agreement: whether the first run's item ratings behave
like the WAI scale (reliability, item-rest correlations, factor models: care_ray.evaluation.scale),
and, where the run kept the score token's distribution, the calibration of its expected scores and
whether its uncertain scores are the ones that miss."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from care_ray.contracts.rubric import Rubric
from care_ray.corpus.ratings import CLIENT_WAI
from care_ray.evaluation import metrics as ev


def expected_checks(
    kept: tuple[str, str] | None,
    path: str,
    pairs: pl.DataFrame,
    dimensions: list[str],
    low: float,
    high: float,
    bin_width: float,
) -> tuple[dict[str, pl.DataFrame], dict[str, Any] | None]:
    """With the first run's expected scores: calibration_expected (their calibration bins) and
    spread (error by decile of the score distribution's SD: are the uncertain scores the ones
    that miss?). The spread of a (session, dimension) is the mean of its items' `score_sd`."""
    from care_ray.scoring.results import read_item_rows

    if kept is None:
        return {}, None
    name, column = kept
    tables = {"calibration_expected": ev.calibration_table(pairs, low, high, bin_width, column)}
    rows = read_item_rows(
        path, ["session_id", "dimension", "score_sd"], pairs["session_id"].unique().to_list()
    )
    if rows is None:
        return tables, {"skipped": "the run's items carry no score_sd"}
    spread = (
        pl.DataFrame(rows)
        .filter(pl.col("score_sd").is_not_null())
        .group_by("session_id", "dimension")
        .agg(pl.col("score_sd").mean().alias("spread"))
    )
    table, by_dimension = ev.spread_table(pairs, spread, column, dimensions)
    tables["spread"] = table
    return tables, {
        "score": name,
        "note": "rows cut into ten equal-count groups by the spread (the mean SD of the score "
        "token's distribution over the dimension's items); spearman: ρ between spread and the "
        "expected score's absolute error; top_over_bottom: the top group's mean absolute error "
        "over the bottom group's",
        "by_dimension": by_dimension,
    }


SCALE_SCHEMAS: dict[str, dict[str, Any]] = {
    "scale": {
        "source": pl.String,
        "dimension": pl.String,
        **{f"{s}{x}": pl.Float64 for s in ("alpha", "omega") for x in ("", "_lo", "_hi")},
        "n": pl.Int64,
    },
    "item_rest": {
        "source": pl.String,
        "dimension": pl.String,
        "item_id": pl.Int64,
        "r": pl.Float64,
        "n": pl.Int64,
    },
    "dimension_correlations": {
        "source": pl.String,
        "dimension_a": pl.String,
        "dimension_b": pl.String,
        "r": pl.Float64,
        "n": pl.Int64,
    },
    "factor_models": {
        "source": pl.String,
        "model": pl.String,
        **{k: pl.Float64 for k in ("cfi", "rmsea", "srmr", "chi2", "df", "aic", "bic")},
        "n": pl.Int64,
    },
}


def scale_matrices(
    first: tuple[str, str], corpus: pa.Table, rubric: Rubric
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Sessions × items matrices per source: "predicted" (the first scorer's items/ scores) and
    "client" (the corpus's client_wai), and a note for each source that has none."""
    from care_ray.evaluation.scale import long_item_matrix

    n_items = max(i.id for i in rubric.items)
    matrices: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    from care_ray.scoring.results import read_item_rows

    name, path = first
    rows = read_item_rows(
        path, ["session_id", "item_id", "score"], corpus["session_id"].to_pylist()
    )
    if rows is None or rows.num_rows == 0:
        notes["predicted"] = (
            f"{name} has no item scores (items/ with session_id, item_id, score): "
            "a baseline predicts dimensions only"
        )
    else:
        matrices["predicted"] = long_item_matrix(
            rows["session_id"].to_pylist(),
            rows["item_id"].to_pylist(),
            rows["score"].to_pylist(),
            n_items,
        )[1]
    if CLIENT_WAI in corpus.column_names and corpus[CLIENT_WAI].null_count < corpus.num_rows:
        lists = pl.Series("wai", corpus[CLIENT_WAI], dtype=pl.List(pl.Float64))
        matrices["client"] = (
            pl.DataFrame(lists)
            .select(
                pl.col("wai").list.get(i - 1, null_on_oob=True).alias(str(i))
                for i in range(1, n_items + 1)
            )
            .to_numpy()
            .astype(float)
        )
    else:
        notes["client"] = "the corpus has no client_wai ratings for the scored sessions"
    return matrices, notes


def scale_checks(
    first: tuple[str, str],
    corpus: pa.Table,
    rubric: Rubric,
    resamples: int,
    seed: int,
    level: float,
    min_sessions: int,
) -> tuple[dict[str, Any] | None, dict[str, pl.DataFrame]]:
    """Does each source of item ratings behave like the WAI scale (care_ray.evaluation.scale)?
    `first`: the first scorer's (name, run folder). Returns metrics.json's `scale` summary and
    the tables scale, item_rest, dimension_correlations, factor_models (only when some source
    was checked)."""
    from care_ray.evaluation import scale

    item_dims = ev.item_dimensions(rubric)
    matrices, notes = scale_matrices(first, corpus, rubric)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in SCALE_SCHEMAS}
    summary: dict[str, Any] = {}
    for source, matrix in matrices.items():
        checks = scale.scale_checks(
            matrix,
            item_dims,
            resamples,
            seed,
            level,
            min_sessions,
        )
        if "skipped" in checks:
            summary[source] = {"skipped": checks["skipped"], "n_complete": checks["n_complete"]}
            continue
        rows["scale"] += [{"source": source, **r} for r in checks["reliability"]]
        rows["item_rest"] += [{"source": source, **r} for r in checks["item_rest"]]
        rows["dimension_correlations"] += [
            {"source": source, **r} for r in checks["dimension_correlations"]
        ]
        rows["factor_models"] += [{"source": source, **r} for r in checks["factor_models"]]
        summary[source] = {
            "n_complete": checks["n_complete"],
            "verdict": checks["verdict"],
            "alpha": {r["dimension"]: r["alpha"] for r in checks["reliability"]},
            "omega": {r["dimension"]: r["omega"] for r in checks["reliability"]},
            "factor_models": {
                r["model"]: {k: v for k, v in r.items() if k != "model"}
                for r in checks["factor_models"]
            },
        }
    for source, note in notes.items():
        summary[source] = {"skipped": note}
    if not summary:
        return None, {}
    summary["predicted_rater"] = first[0]
    tables = {
        name: pl.DataFrame(
            [{c: r.get(c) for c in schema} for r in rows[name]], schema=schema, orient="row"
        ).with_columns(pl.col(pl.Float64).fill_nan(None))
        for name, schema in SCALE_SCHEMAS.items()
        if rows[name]
    }
    return summary, tables
