"""outcome_links: a planted alliance–outcome association with a session-length confounder, each
figure recomputed here with scipy (r), an independent residual regression and pingouin (partial r)
and the Fisher z formula (intervals)."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from care_ray.analytics.analyze import AnalyzeConfig, analyze
from care_ray.analytics.outcomes import fisher_interval, link

N = 160
DIMENSIONS = ("goal", "task", "bond")


def planted(seed: int = 3) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """Sessions whose length drives both the alliance scores and the outcome label, and whose
    outcome also follows the bond: outcome = bond + length + noise."""
    rng = np.random.default_rng(seed)
    sessions, scores = [], {}
    for i in range(N):
        exchanges = int(rng.integers(2, 25))
        length = math.log(2 * exchanges)
        bond = 2.0 + 0.4 * length + rng.normal(0, 0.6)
        dims = {
            "goal": 2.5 + 0.5 * length + rng.normal(0, 0.5),  # tied to outcome by length alone
            "task": float(rng.normal(3, 0.7)),  # unrelated
            "bond": bond,
        }
        turns = []
        for _ in range(exchanges):
            turns += [
                {"role": "counselor", "text": "How are you feeling today?"},
                {"role": "client", "text": "Tired but better."},
            ]
        sid = f"s{i}"
        sessions.append(
            {
                "session_id": sid,
                "client_id": f"client{i}",
                "source": "planted",
                "language": "en",
                "turns": turns,
                "labels": {
                    "outcome": 1.0 * bond + 0.8 * length + rng.normal(0, 0.5),
                    "rating": float(rng.integers(1, 6)) if i % 7 else None,
                    "before": float(rng.integers(3, 8)),
                    "after": float(rng.integers(1, 5)),
                },
            }
        )
        scores[sid] = dims
    for s in sessions:
        s["labels"] = {k: v for k, v in s["labels"].items() if v is not None}
    return sessions, scores


@pytest.fixture(scope="module")
def linked(tmp_path_factory):
    from care_ray.corpus.ingest import ingest_files

    root = tmp_path_factory.mktemp("outcomes")
    sessions, scores = planted()
    jsonl = root / "sessions.jsonl"
    jsonl.write_text("".join(json.dumps(s) + "\n" for s in sessions), encoding="utf-8")
    ingest_files("sessions-jsonl", [jsonl], root / "corpus")
    run = root / "scores"
    (run / "sessions").mkdir(parents=True)
    pl.DataFrame([{"session_id": sid, **dims} for sid, dims in scores.items()]).write_parquet(
        run / "sessions" / "part-0.parquet"
    )
    out = root / "analysis"
    manifest = analyze(
        AnalyzeConfig(
            sessions=root / "corpus",
            scores=run,
            out=out,
            outcome_labels=["outcome", "change=labels.before-labels.after"],
        )
    )
    return {
        "sessions": sessions,
        "scores": scores,
        "corpus": root / "corpus",
        "manifest": manifest,
        "links": pl.read_parquet(out / "outcome_links.parquet"),
    }


def residual_partial(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """The partial correlation of x and y given z, from two least-squares fits."""
    design = np.column_stack([np.ones_like(z), z])
    rx = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    ry = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    return float(stats.pearsonr(rx, ry).statistic)


def fisher(r: float, n: int, k: int) -> tuple[float, float]:
    half = 1.959963984540054 / math.sqrt(n - 3 - k)
    return math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)


def _raw(linked, outcome: str) -> dict[str, np.ndarray]:
    rows = [
        (
            linked["scores"][s["session_id"]],
            s["labels"]["outcome"]
            if outcome == "outcome"
            else s["labels"]["before"] - s["labels"]["after"],
            len(s["turns"]),
        )
        for s in linked["sessions"]
    ]
    return {
        **{d: np.array([r[0][d] for r in rows]) for d in DIMENSIONS},
        "y": np.array([r[1] for r in rows]),
        "length": np.log(np.array([r[2] for r in rows], dtype=float)),
    }


def test_table_columns_and_rows(linked):
    links = linked["links"]
    assert links.columns == [
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
        "partial_p_value",
        "p_adjusted",
    ]
    assert set(links["source"]) == {"scores"} and set(links["covariate"]) == {"log(n_turns)"}
    assert set(zip(links["predictor"], links["outcome"], strict=True)) == {
        (d, o) for d in DIMENSIONS for o in ("outcome", "change")
    }
    assert linked["manifest"]["outcome_labels"] == ["outcome", "change"]
    assert linked["manifest"]["tables"]["outcome_links"] == 6


@pytest.mark.parametrize("outcome", ["outcome", "change"])
def test_r_partial_r_and_intervals_match_scipy_and_residuals(linked, outcome):
    raw = _raw(linked, outcome)
    links = linked["links"].filter(pl.col("outcome") == outcome)
    for row in links.iter_rows(named=True):
        x, y = raw[row["predictor"]], raw["y"]
        r = stats.pearsonr(x, y)
        partial = residual_partial(x, y, raw["length"])
        assert row["n"] == N
        assert row["r"] == pytest.approx(r.statistic)
        assert row["p_value"] == pytest.approx(r.pvalue, rel=1e-6, abs=1e-300)
        assert (row["r_lo"], row["r_hi"]) == pytest.approx(fisher(r.statistic, N, 0))
        lo, hi = r.confidence_interval(0.95)  # scipy's own Fisher z interval of r
        assert (row["r_lo"], row["r_hi"]) == pytest.approx((lo, hi))
        assert row["partial_r"] == pytest.approx(partial)
        assert (row["partial_lo"], row["partial_hi"]) == pytest.approx(fisher(partial, N, 1))
        t = partial * math.sqrt((N - 3) / (1 - partial**2))
        assert row["partial_p_value"] == pytest.approx(
            2 * stats.t.sf(abs(t), N - 3), rel=1e-6, abs=1e-300
        )


def test_partial_r_matches_pingouin(linked):
    pingouin = pytest.importorskip("pingouin")
    import pandas as pd

    raw = _raw(linked, "outcome")
    data = pd.DataFrame({"bond": raw["bond"], "y": raw["y"], "length": raw["length"]})
    expected = pingouin.partial_corr(data, x="bond", y="y", covar="length")
    row = linked["links"].filter((pl.col("predictor") == "bond") & (pl.col("outcome") == "outcome"))
    assert row["partial_r"].item() == pytest.approx(float(expected["r"].iloc[0]))
    assert row["partial_p_value"].item() == pytest.approx(
        float(expected["p_val"].iloc[0]), rel=1e-6, abs=1e-300
    )


def test_the_planted_association_survives_the_length_control_and_the_confounded_one_does_not(
    linked,
):
    links = {
        row["predictor"]: row
        for row in linked["links"].filter(pl.col("outcome") == "outcome").iter_rows(named=True)
    }
    assert links["bond"]["partial_lo"] > 0.3  # outcome follows the bond beyond length
    assert links["goal"]["r_lo"] > 0.1  # goal goes with the outcome only through length …
    assert links["goal"]["partial_lo"] < 0 < links["goal"]["partial_hi"]  # … and not beyond it
    assert abs(links["task"]["r"]) < 0.2


def test_p_adjusted_is_benjamini_hochberg_over_the_table(linked):
    links = linked["links"]
    expected = multipletests(links["p_value"].to_numpy(), method="fdr_bh")[1]
    assert links["p_adjusted"].to_list() == pytest.approx(list(expected))


def test_fisher_interval_needs_room_for_the_covariates():
    assert all(math.isnan(v) for v in fisher_interval(0.5, 4, 1, 0.05))
    row = link(np.arange(10.0), np.arange(10.0) ** 2, np.arange(1.0, 11.0), 0.05)
    assert row["n"] == 10 and -1 <= row["partial_lo"] <= row["partial_r"] <= row["partial_hi"]


def test_model_free_links_relate_ratings_to_the_other_labels_once(linked, tmp_path):
    manifest = analyze(
        AnalyzeConfig(
            sessions=linked["corpus"],
            out=tmp_path / "labels",
            outcomes=["rating", "change=labels.before-labels.after"],
        )
    )
    links = pl.read_parquet(tmp_path / "labels" / "outcome_links.parquet")
    assert set(links["source"]) == {"labels"}
    pairs = list(zip(links["predictor"], links["outcome"], strict=True))
    # the default outcome labels: every label and the derived change; a pair sharing a label
    # (change ~ before) or already related the other way round (change ~ rating) is not repeated
    assert sorted(pairs) == sorted(
        [("rating", "after"), ("rating", "before"), ("rating", "outcome"), ("rating", "change")]
        + [("change", "outcome")]
    )
    rated = [s for s in linked["sessions"] if "rating" in s["labels"]]
    row = links.filter(pl.col("outcome") == "change").row(0, named=True)
    x = np.array([s["labels"]["rating"] for s in rated])
    y = np.array([s["labels"]["before"] - s["labels"]["after"] for s in rated])
    assert row["n"] == len(rated) and row["r"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert manifest["outcome_labels"] == ["after", "before", "outcome", "rating", "change"]


def test_the_report_states_each_pair_with_its_n_and_intervals(linked, tmp_path):
    from typer.testing import CliRunner

    from care_ray.cli import app

    out = linked["manifest"]
    analysis = tmp_path / "an"
    analyze(
        AnalyzeConfig(
            sessions=linked["corpus"],
            scores=out["scores"],
            out=analysis,
            outcome_labels=["outcome"],
        )
    )
    result = CliRunner().invoke(
        app, ["report", "--analysis", str(analysis), "--out", str(tmp_path / "report")]
    )
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "Alliance and outcomes" in page and "r ≈ .28" in page
    links = pl.read_parquet(analysis / "outcome_links.parquet")
    for row in links.iter_rows(named=True):
        assert (
            f"{row['predictor']} and {row['outcome']} (n = {row['n']} sessions): "
            f"r = {row['r']:.2f} [{row['r_lo']:.2f}, {row['r_hi']:.2f}] (95% CI)"
        ) in page
        assert (
            f"partial r = {row['partial_r']:.2f} [{row['partial_lo']:.2f}, {row['partial_hi']:.2f}]"
        ) in page
    assert "not effects" in page
