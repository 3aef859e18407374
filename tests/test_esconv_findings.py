"""The model-free findings on real ESConv stated in the README, each recomputed here from the raw
ESConv JSON with the standard library, numpy, scipy and statsmodels — not through care-ray's ingest,
features or statistics — and compared with what `care-ray analyze` wrote."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from scipy import stats
from typer.testing import CliRunner

from care_ray.cli import app

# FailedESConv.json names some strategies differently from the split files (see its README).
ALIASES = {
    "Questions": "Question",
    "Other": "Others",
    "Restatement": "Restatement or Paraphrasing",
    "Approval and Reassurance": "Affirmation and Reassurance",
}
EMOTION_DROP = "emotion_drop=labels.initial_emotion_intensity-labels.final_emotion_intensity"
README = Path(__file__).resolve().parents[1] / "README.md"


def _conversations(esconv_dir: Path) -> list[tuple[str, dict]]:
    out = []
    for name in ("train", "valid", "test"):
        with open(esconv_dir / f"{name}.json", encoding="utf-8") as f:
            out += [(name, json.loads(line)) for line in f if line.strip()]
    with open(esconv_dir / "FailedESConv.json", encoding="utf-8") as f:
        out += [("failed", obj) for obj in json.load(f)]
    return out


def _rating(seeker: dict, key: str) -> float:
    value = seeker.get(key)
    return float(value) if value not in (None, "") else np.nan


def raw_table(esconv_dir: Path) -> pd.DataFrame:
    """One row per conversation: split, the seeker's ratings and the supporter's turn features."""
    rows = []
    for split, obj in _conversations(esconv_dir):
        seeker = (obj.get("survey_score") or {}).get("seeker") or {}
        supporter_turns, seeker_turns, strategies = [], [], []
        for turn in obj["dialog"]:
            text = turn.get("text", turn.get("content", ""))
            if turn["speaker"] in ("sys", "listener"):
                supporter_turns.append(text)
                strategy = turn.get("strategy", (turn.get("annotation") or {}).get("strategy"))
                if strategy:
                    strategies.append(ALIASES.get(strategy, strategy))
            else:
                seeker_turns.append(text)
        row = {
            "group": "failed" if split == "failed" else "main",
            "empathy": _rating(seeker, "empathy"),
            "relevance": _rating(seeker, "relevance"),
            "emotion_drop": _rating(seeker, "initial_emotion_intensity")
            - _rating(seeker, "final_emotion_intensity"),
            "n_turns": len(obj["dialog"]),
            "client_turns": len(seeker_turns),
            "counselor_turns": len(supporter_turns),
            "client_words": sum(len(t.split()) for t in seeker_turns),
            "counselor_words": sum(len(t.split()) for t in supporter_turns),
            "counselor_words_per_turn": sum(len(t.split()) for t in supporter_turns)
            / len(supporter_turns),
            "client_words_per_turn": sum(len(t.split()) for t in seeker_turns) / len(seeker_turns),
            "counselor_talk_share": sum(len(t.split()) for t in supporter_turns)
            / sum(len(t.split()) for t in supporter_turns + seeker_turns),
            "counselor_question_rate": np.mean(
                [("?" in t) or ("？" in t) for t in supporter_turns]
            ),
        }
        for s in set(strategies):
            row[f"strategy:{s}"] = strategies.count(s) / len(strategies)
        rows.append(row)
    table = pd.DataFrame(rows)
    shares = [c for c in table.columns if c.startswith("strategy:")]
    table[shares] = table[shares].fillna(0.0)
    return table[table[["empathy", "relevance", "emotion_drop"]].notna().any(axis=1)].reset_index(
        drop=True
    )


def hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    pooled = np.sqrt(
        ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    )
    return (a.mean() - b.mean()) / pooled * (1 - 3 / (4 * (len(a) + len(b)) - 9))


@pytest.fixture(scope="module")
def findings(esconv_dir, esconv_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("esconv-analysis")
    args = [
        "analyze",
        "--sessions",
        str(esconv_corpus),
        "--outcome",
        "empathy,relevance",
        "--outcome",
        EMOTION_DROP,
        "--by",
        "failed=metadata.split:failed",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    read = lambda name: pl.read_parquet(out / f"{name}.parquet")  # noqa: E731
    return {
        "raw": raw_table(esconv_dir),
        "manifest": json.loads((out / "manifest.json").read_text()),
        "population": read("population"),
        "contrasts": read("contrasts"),
        "drivers": read("drivers"),
        "features": read("features"),
        "outcome_links": read("outcome_links"),
    }


def _contrast(findings, variable: str) -> dict[str, dict]:
    rows = findings["contrasts"].filter(
        (pl.col("by") == "failed") & (pl.col("variable") == variable)
    )
    return {row["grp"]: row for row in rows.iter_rows(named=True)}


def _groups(raw: pd.DataFrame, variable: str) -> tuple[np.ndarray, np.ndarray]:
    values = raw.dropna(subset=[variable])
    return values.loc[values.group == "failed", variable].to_numpy(), values.loc[
        values.group == "main", variable
    ].to_numpy()


def test_sessions_with_ratings(findings):
    raw = findings["raw"]
    assert findings["manifest"]["n_sessions"] == len(raw)
    counts = raw.group.value_counts()
    population = findings["population"].filter(
        (pl.col("group_by") == "failed") & (pl.col("outcome") == "empathy")
    )
    assert dict(population.select("grp", "n").iter_rows()) == {
        "failed": counts["failed"],
        "other": counts["main"],
    }


@pytest.mark.parametrize(
    "variable",
    [
        "empathy",
        "relevance",
        "emotion_drop",
        "counselor_words_per_turn",
        "client_words_per_turn",
        "n_turns",
        "counselor_question_rate",
        "strategy:Self-disclosure",
    ],
)
def test_failed_vs_main_contrast(findings, variable):
    failed, main = _groups(findings["raw"], variable)
    rows = _contrast(findings, variable)
    assert rows["failed"]["n"] == len(failed) and rows["other"]["n"] == len(main)
    assert rows["failed"]["mean"] == pytest.approx(failed.mean()) and rows["other"][
        "mean"
    ] == pytest.approx(main.mean())
    assert rows["failed"]["sd"] == pytest.approx(failed.std(ddof=1))
    welch = stats.ttest_ind(failed, main, equal_var=False)
    assert rows["failed"]["statistic"] == pytest.approx(welch.statistic)
    assert rows["failed"]["p_value"] == pytest.approx(welch.pvalue, rel=1e-6)
    assert rows["failed"]["effect_size"] == pytest.approx(hedges_g(failed, main))


def test_low_rating_shares(findings):
    population = findings["population"].filter(pl.col("group_by") == "failed")
    for outcome in ("empathy", "relevance"):
        failed, main = _groups(findings["raw"], outcome)
        shares = dict(
            population.filter(pl.col("outcome") == outcome).select("grp", "low_share").iter_rows()
        )
        assert shares["failed"] == pytest.approx(np.mean(failed <= 2)) and shares[
            "other"
        ] == pytest.approx(np.mean(main <= 2))


def test_strategy_mix_of_failed_and_main(findings):
    """Share of each strategy, failed vs main: Welch tests, BH-adjusted over the variables of the contrast."""
    from statsmodels.stats.multitest import multipletests

    raw, contrasts = findings["raw"], findings["contrasts"].filter(pl.col("by") == "failed")
    variables = contrasts.get_column("variable").unique(maintain_order=True).to_list()
    p_values = []
    for variable in variables:
        failed, main = _groups(raw, variable)
        p_values.append(stats.ttest_ind(failed, main, equal_var=False).pvalue)
    adjusted = dict(zip(variables, multipletests(p_values, method="fdr_bh")[1], strict=True))
    strategies = [v for v in variables if v.startswith("strategy:")]
    assert len(strategies) == 9
    for variable in strategies:
        row = _contrast(findings, variable)["failed"]
        assert row["p_adjusted"] == pytest.approx(adjusted[variable], rel=1e-6)
    assert (
        min(adjusted[v] for v in strategies) > 0.05
    )  # no strategy's share differs after adjustment


def test_direct_guidance_only_in_failed(esconv_dir):
    counts = {"failed": 0, "main": 0}
    for split, obj in _conversations(esconv_dir):
        for turn in obj["dialog"]:
            strategy = turn.get("strategy", (turn.get("annotation") or {}).get("strategy"))
            if ALIASES.get(strategy, strategy) == "Direct Guidance":
                counts["failed" if split == "failed" else "main"] += 1
    assert counts["main"] == 0 and counts["failed"] > 0
    assert f"({counts['failed']} turns)" in _readme_section()


def _ols(raw: pd.DataFrame, outcome: str, features: list[str]):
    import statsmodels.api as sm

    data = raw.dropna(subset=[outcome, *features])
    z = lambda x: (x - x.mean()) / x.std(ddof=1)  # noqa: E731
    return sm.OLS(z(data[outcome]), sm.add_constant(data[features].apply(z))).fit(
        cov_type="HC3"
    ), len(data)


def test_drivers_of_the_seekers_ratings(findings):
    """Standardized OLS (HC3) of each rating on the interaction features; BH over every coefficient."""
    from statsmodels.stats.multitest import multipletests

    raw, drivers = findings["raw"], findings["drivers"]
    features = drivers.get_column("feature").unique(maintain_order=True).to_list()
    assert "strategy:Question" not in features and "counselor_words_per_turn" in features
    expected = {}
    for outcome in ("empathy", "relevance", "emotion_drop"):
        fit, n = _ols(raw, outcome, features)
        for feature in features:
            expected[(outcome, feature)] = (
                fit.params[feature],
                fit.bse[feature],
                fit.pvalues[feature],
                n,
                fit.rsquared,
            )
    adjusted = dict(
        zip(
            expected,
            multipletests([v[2] for v in expected.values()], method="fdr_bh")[1],
            strict=True,
        )
    )
    for row in drivers.iter_rows(named=True):
        coef, se, p, n, r2 = expected[(row["outcome"], row["feature"])]
        assert row["coef_std"] == pytest.approx(coef, rel=1e-6, abs=1e-9)
        assert row["std_error"] == pytest.approx(se, rel=1e-6)
        assert row["p_value"] == pytest.approx(p, rel=1e-5)
        assert row["p_adjusted"] == pytest.approx(
            adjusted[(row["outcome"], row["feature"])], rel=1e-5
        )
        assert (row["n"], row["r2"]) == (n, pytest.approx(r2))
    significant = {(o, f) for (o, f), p in adjusted.items() if p < 0.05}
    assert significant == {
        (o, "counselor_words_per_turn") for o in ("empathy", "relevance", "emotion_drop")
    }
    strategies = [key for key in expected if key[1].startswith("strategy:")]
    assert max(abs(expected[key][0]) for key in strategies) < 0.11
    assert min(adjusted[key] for key in strategies) >= 0.30


def _link(raw: pd.DataFrame, rating: str, outcome: str) -> dict[str, float]:
    """r and the partial r given log(n_turns) of a rating and an outcome, from the raw table with
    scipy and two least-squares fits; their Fisher z intervals (k = 0 and 1 covariates)."""
    data = raw.dropna(subset=[rating, outcome])
    x, y = data[rating].to_numpy(), data[outcome].to_numpy()
    design = np.column_stack([np.ones(len(data)), np.log(data["n_turns"].to_numpy(dtype=float))])
    residual = lambda v: v - design @ np.linalg.lstsq(design, v, rcond=None)[0]  # noqa: E731
    r = stats.pearsonr(x, y).statistic
    partial = stats.pearsonr(residual(x), residual(y)).statistic
    n, z = len(data), stats.norm.ppf(0.975)
    fisher = lambda v, k: (  # noqa: E731
        np.tanh(np.arctanh(v) - z / np.sqrt(n - 3 - k)),
        np.tanh(np.arctanh(v) + z / np.sqrt(n - 3 - k)),
    )
    return {
        "n": n,
        "r": r,
        "r_ci": fisher(r, 0),
        "partial_r": partial,
        "partial_ci": fisher(partial, 1),
        "p_value": stats.pearsonr(x, y).pvalue,
    }


@pytest.mark.parametrize("rating", ["empathy", "relevance"])
def test_ratings_and_the_emotion_drop(findings, rating):
    """The seekers' ratings against the drop in emotion intensity (outcome_links, source labels)."""
    expected = _link(findings["raw"], rating, "emotion_drop")
    row = (
        findings["outcome_links"]
        .filter((pl.col("predictor") == rating) & (pl.col("outcome") == "emotion_drop"))
        .row(0, named=True)
    )
    assert (row["source"], row["covariate"]) == ("labels", "log(n_turns)")
    assert row["n"] == expected["n"]
    assert row["r"] == pytest.approx(expected["r"])
    assert (row["r_lo"], row["r_hi"]) == pytest.approx(expected["r_ci"])
    assert row["partial_r"] == pytest.approx(expected["partial_r"])
    assert (row["partial_lo"], row["partial_hi"]) == pytest.approx(expected["partial_ci"])
    assert row["p_value"] == pytest.approx(expected["p_value"], rel=1e-6)
    assert row["p_adjusted"] < 0.001


def _readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Findings on ESConv (model-free)")
    return text[start : text.index("\n## ", start + 1)]


def test_readme_states_the_recomputed_figures(findings):
    """The README's numbers are these, rounded as printed there."""
    section = _readme_section().replace("\u2212", "-")
    raw = findings["raw"]
    figures = [
        f"{len(raw):,}",
        f"{(raw.group == 'failed').sum()}",
        f"{(raw.group == 'main').sum():,}",
    ]
    for variable in ("empathy", "relevance", "emotion_drop", "counselor_words_per_turn"):
        failed, main = _groups(raw, variable)
        figures += [f"{failed.mean():.2f}", f"{main.mean():.2f}", f"{hedges_g(failed, main):.2f}"]
    for outcome in ("empathy", "relevance"):
        failed, main = _groups(raw, outcome)
        figures += [f"{100 * np.mean(failed <= 2):.0f}%", f"{100 * np.mean(main <= 2):.1f}%"]
    features = findings["drivers"].get_column("feature").unique(maintain_order=True).to_list()
    for outcome in ("empathy", "relevance", "emotion_drop"):
        fit, _ = _ols(raw, outcome, features)
        lo, hi = fit.conf_int().loc["counselor_words_per_turn"]
        figures += [f"{fit.params['counselor_words_per_turn']:+.2f} [{lo:.2f}, {hi:.2f}]"]
    for rating in ("empathy", "relevance"):
        link = _link(raw, rating, "emotion_drop")
        figures += [
            f"r = {link['r']:.2f} [{link['r_ci'][0]:.2f}, {link['r_ci'][1]:.2f}]",
            f"partial r = {link['partial_r']:.2f} "
            f"[{link['partial_ci'][0]:.2f}, {link['partial_ci'][1]:.2f}]",
        ]
    missing = [f for f in figures if f not in section]
    assert not missing, f"README figures not found: {missing}"
    assert re.search(r"care-ray analyze --sessions \S+ --outcome empathy,relevance", section)
