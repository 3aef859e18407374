"""`care-ray report` without a browser: sections follow the tables present, values are escaped by
the templates, the sentences carry numbers that match an independent computation, and bad folders
are one-line errors.

The builders below write evaluate-like and analyze-like folders per the findings contract from
synthetic data, the intervals and tests included (the analysis computes them, the report only
renders them); tests/test_report_browser.py uses them too."""

from __future__ import annotations

import ast
import html
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from matplotlib import rc_context
from scipy import stats
from scipy.stats.contingency import association
from statsmodels.stats.proportion import proportion_confint
from typer.testing import CliRunner

import care_ray.report
from care_ray import report
from care_ray.cli import app
from care_ray.report.blocks import Bullets, Cluster, Details, Paragraph, Table
from care_ray.report.page import environment, render_blocks
from care_ray.report.sections.agreement import truth_name
from care_ray.report.sections.challenges import challenges_section
from care_ray.report.sections.counselors import counselor_section
from care_ray.report.sections.drivers import drivers_section
from care_ray.report.sections.population import population_section

PLANTED = "<script>alert(1)</script>"
DIMENSIONS = ("goal", "task", "bond")
STRATEGIES = ("Question", "Reflection of feelings", "Providing Suggestions", "Self-disclosure")
REACTIONS = ("positive", "neutral", "negative")


def _write(frame: pd.DataFrame, path: Path) -> None:
    frame.to_parquet(path, index=False)


def write_evaluation(out: Path, n: int = 120, seed: int = 0, folds: int = 5) -> Path:
    """An evaluate-like folder: metrics.json, agreement, calibration and pairs tables."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    pairs = []
    for dim in DIMENSIONS:
        observed = np.clip(rng.normal(3.6, 0.7, n), 1, 5).round(2)
        pairs.append(
            pd.DataFrame(
                {
                    "session_id": [f"s{i}" for i in range(n)],
                    "dimension": dim,
                    "predicted": np.clip(observed + rng.normal(0, 0.5, n), 1, 5),
                    "observed": observed,
                    "counselor": np.clip(observed + rng.normal(0.3, 0.9, n), 1, 5),
                    "fold": np.arange(n) % folds,
                    "predicted_baseline": np.clip(observed + rng.normal(0, 1.5, n), 1, 5),
                }
            )
        )
    pairs = pd.concat(pairs, ignore_index=True)
    rows = []
    raters = (
        ("model", "predicted"),
        ("baseline", "predicted_baseline"),
        ("counselor", "counselor"),
    )
    for rater, column in raters:
        for dim, g in pairs.groupby("dimension", sort=False):
            for fold, part in [(None, g)] + (
                [(int(k), p) for k, p in g.groupby("fold")] if rater == "model" else []
            ):
                r, rho = (
                    stats.pearsonr(part[column], part["observed"])[0],
                    stats.spearmanr(part[column], part["observed"])[0],
                )
                mse = float(np.mean((part[column] - part["observed"]) ** 2))
                rows.append(
                    {
                        "rater": rater,
                        "dimension": dim,
                        "fold": fold,
                        "n": len(part),
                        "pearson": r,
                        "pearson_lo": r - 0.12,
                        "pearson_hi": min(r + 0.1, 1),
                        "spearman": rho,
                        "spearman_lo": rho - 0.12,
                        "spearman_hi": min(rho + 0.1, 1),
                        "mse": mse,
                        "mse_lo": mse * 0.8,
                        "mse_hi": mse * 1.2,
                    }
                )
    agreement = pd.DataFrame(rows).astype({"fold": "Int64"})
    _write(agreement, out / "agreement.parquet")
    calibration = []
    edges = np.arange(1.0, 5.01, 0.5)
    for dim, g in pairs.groupby("dimension", sort=False):
        bins = pd.cut(g["predicted"], edges, include_lowest=True)
        for interval, b in g.groupby(bins, observed=True):
            calibration.append(
                {
                    "dimension": dim,
                    "bin": f"{interval.left:.1f}–{interval.right:.1f}",
                    "bin_lo": interval.left,
                    "bin_hi": interval.right,
                    "n": len(b),
                    "predicted_mean": b["predicted"].mean(),
                    "observed_mean": b["observed"].mean(),
                    "observed_sd": b["observed"].std(),
                }
            )
    _write(pd.DataFrame(calibration), out / "calibration.parquet")
    _write(pairs, out / "pairs.parquet")
    comparisons = []
    for dim, g in pairs.groupby("dimension", sort=False):
        ra = stats.pearsonr(g["predicted"], g["observed"])[0]
        rb = stats.pearsonr(g["predicted_baseline"], g["observed"])[0]
        mse_a = float(np.mean((g["predicted"] - g["observed"]) ** 2))
        mse_b = float(np.mean((g["predicted_baseline"] - g["observed"]) ** 2))
        comparisons.append(
            {
                "rater_a": "model",
                "rater_b": "baseline",
                "dimension": dim,
                "n": len(g),
                "pearson_a": ra,
                "pearson_b": rb,
                "difference": ra - rb,
                "difference_lo": ra - rb - 0.1,
                "difference_hi": ra - rb + 0.1,
                "mse_a": mse_a,
                "mse_b": mse_b,
                "mse_difference": mse_a - mse_b,
                "mse_difference_lo": mse_a - mse_b - 0.2,
                "mse_difference_hi": mse_a - mse_b + 0.2,
            }
        )
    _write(pd.DataFrame(comparisons), out / "comparisons.parquet")
    scale_rows, models, rest, correlations = [], [], [], []
    for source, alpha, cfi_one in (("predicted", 0.99, 0.995), ("client", 0.85, 0.62)):
        for dim in DIMENSIONS:
            scale_rows.append(
                {
                    "source": source,
                    "dimension": dim,
                    "alpha": alpha,
                    "alpha_lo": alpha - 0.02,
                    "alpha_hi": min(alpha + 0.01, 1.0),
                    "omega": alpha,
                    "omega_lo": alpha - 0.03,
                    "omega_hi": min(alpha + 0.01, 1.0),
                    "n": n,
                }
            )
            rest += [
                {"source": source, "dimension": dim, "item_id": i, "r": alpha - 0.1, "n": n}
                for i in range(1, 5)
            ]
        for model, cfi in (("one", cfi_one), ("two", (cfi_one + 0.998) / 2), ("three", 0.998)):
            models.append(
                {
                    "source": source,
                    "model": model,
                    "cfi": cfi,
                    "rmsea": 0.3 * (1 - cfi),
                    "srmr": 0.2 * (1 - cfi),
                    "chi2": 60 + 900 * (1 - cfi),
                    "df": {"one": 54, "two": 53, "three": 51}[model],
                    "aic": 50.0,
                    "bic": 150.0,
                    "n": n,
                }
            )
        correlations += [
            {"source": source, "dimension_a": a, "dimension_b": b, "r": alpha - 0.05, "n": n}
            for a, b in (("goal", "task"), ("goal", "bond"), ("task", "bond"))
        ]
    _write(pd.DataFrame(scale_rows), out / "scale.parquet")
    _write(pd.DataFrame(models), out / "factor_models.parquet")
    _write(pd.DataFrame(rest), out / "item_rest.parquet")
    _write(pd.DataFrame(correlations), out / "dimension_correlations.parquet")
    overall = agreement[agreement["fold"].isna()]
    model = overall[overall["rater"] == "model"].set_index("dimension")
    counselor = overall[overall["rater"] == "counselor"].set_index("dimension")
    metrics = {
        "kind": "care-ray evaluation",
        "truth": "client_wai",
        "n_sessions": n,
        "raters": [{"name": "model"}, {"name": "baseline"}],
        "scale": {
            "predicted": {
                "n_complete": n,
                "verdict": {"blob": True, "all_alpha_high": True, "text": "nearly interchangeable"},
            },
            "client": {"n_complete": n, "verdict": {"blob": False, "all_alpha_high": False}},
        },
        "dimensions": {
            d: {
                "pearson": model.loc[d, "pearson"],
                "pearson_ci": [model.loc[d, "pearson_lo"], model.loc[d, "pearson_hi"]],
                "spearman": model.loc[d, "spearman"],
                "spearman_ci": [model.loc[d, "spearman_lo"], model.loc[d, "spearman_hi"]],
                "mse": model.loc[d, "mse"],
                "mse_ci": [model.loc[d, "mse_lo"], model.loc[d, "mse_hi"]],
                "n": n,
            }
            for d in DIMENSIONS
        },
        "counselor_baseline": {
            d: {
                "pearson": counselor.loc[d, "pearson"],
                "spearman": counselor.loc[d, "spearman"],
                "mse": counselor.loc[d, "mse"],
                "n": n,
                "mean_gap": float(
                    (
                        pairs.query("dimension == @d")["counselor"]
                        - pairs.query("dimension == @d")["observed"]
                    ).mean()
                ),
            }
            for d in DIMENSIONS
        },
        "model_vs_counselor": {
            d: model.loc[d, "pearson"] / counselor.loc[d, "pearson"] for d in DIMENSIONS
        },
        "folds": None,
        "quote_found_share": 0.87,
        "rationale_overlap": {"rouge1": 0.31, "rougeL": 0.24, "n": 40, "skipped": 2},
        "bootstrap": {"resamples": 1000, "seed": 0, "level": 0.95},
        "model": "models/care-llama-8b",
        "rubric_id": "wai-sr-en",
    }
    (out / "metrics.json").write_text(json.dumps(metrics, default=float))
    return out


def _features(rng: np.random.Generator, n: int, with_counselors: bool) -> pd.DataFrame:
    strategy = rng.dirichlet(np.ones(len(STRATEGIES)), n)
    base = rng.normal(3.7, 0.5, n) + 0.8 * (strategy[:, 1] - 0.25)
    frame = pd.DataFrame(
        {
            "session_id": [f"s{i}" for i in range(n)],
            "source": np.where(np.arange(n) % 5 == 0, "failed", "main"),
            "client_id": [f"c{i // 3}" for i in range(n)]
            if with_counselors
            else [f"s{i}" for i in range(n)],
            "counselor_id": [f"T{i % 23:02d}" for i in range(n)] if with_counselors else None,
            "session_index": (np.arange(n) % 3) + 1 if with_counselors else 1,
            "problem_type": rng.choice(
                ["job crisis", "breakup", "ongoing depression", "academic pressure"], n
            ),
        }
    )
    outcomes = ("goal", "task", "bond") if with_counselors else ("empathy", "relevance")
    for k, outcome in enumerate(outcomes):
        shift = -0.4 if outcome in ("task", "relevance") else 0.1 * k
        frame[outcome] = np.clip(
            np.round(
                (base + shift + rng.normal(0, 0.4, n) - 0.9 * (frame["source"] == "failed")) * 4
            )
            / 4,
            1,
            5,
        )
    frame["n_turns"] = rng.integers(10, 60, n)
    frame["counselor_talk_share"] = rng.uniform(0.3, 0.7, n)
    for j, s in enumerate(STRATEGIES):
        frame[f"strategy:{s}"] = strategy[:, j]
    return frame


def _t_interval(x: pd.Series) -> tuple[float, float]:
    """The 95% t interval of the mean of x (what analyze writes as *_lo, *_hi)."""
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return float(lo), float(hi)


def _population(
    features: pd.DataFrame, outcomes: list[str], by: list[str], low: float = 2.0
) -> pd.DataFrame:
    rows = []
    for group_by in ["all", *by]:
        groups = [("all", features)] if group_by == "all" else list(features.groupby(group_by))
        for grp, g in groups:
            means = {o: g[o].mean() for o in outcomes}
            for o in outcomes:
                x = g[o]
                lo, hi = _t_interval(x)
                rows.append(
                    {
                        "group_by": group_by,
                        "grp": str(grp),
                        "outcome": o,
                        "n": len(x),
                        "mean": x.mean(),
                        "mean_lo": lo,
                        "mean_hi": hi,
                        "sd": x.std(),
                        "q25": x.quantile(0.25),
                        "median": x.median(),
                        "q75": x.quantile(0.75),
                        "low_share": float((x <= low).mean()),
                        "is_weakest": o == min(means, key=means.get),
                    }
                )
    return pd.DataFrame(rows)


def _transitions(rng: np.random.Generator, sources: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The transitions table (cells with their Wilson interval and Pearson residual) and the
    chi-square test of each source's strategy × reaction table."""
    rows, tests = [], []
    for source in sources:
        table = np.array(
            [
                rng.multinomial(
                    60 + 20 * i,
                    [0.6, 0.3, 0.1] if s == "Reflection of feelings" else [0.3, 0.4, 0.3],
                )
                for i, s in enumerate(STRATEGIES)
            ]
        )
        chi2, p, dof, expected = stats.chi2_contingency(table)
        tests.append(
            {
                "source": source,
                "n": int(table.sum()),
                "chi2": chi2,
                "dof": dof,
                "p_value": p,
                "cramers_v": association(table, method="cramer"),
            }
        )
        for i, s in enumerate(STRATEGIES):
            for j, r in enumerate(REACTIONS):
                lo, hi = proportion_confint(table[i, j], table[i].sum(), method="wilson")
                rows.append(
                    {
                        "source": source,
                        "strategy": s,
                        "reaction": r,
                        "n": int(table[i, j]),
                        "share": table[i, j] / table[i].sum(),
                        "share_lo": lo,
                        "share_hi": hi,
                        "residual": (table[i, j] - expected[i, j]) / math.sqrt(expected[i, j]),
                    }
                )
    return pd.DataFrame(rows), pd.DataFrame(tests)


def _weakest_outcome(features: pd.DataFrame, outcomes: list[str]) -> pd.DataFrame:
    """The paired test of the lowest-mean outcome against the next-lowest."""
    weakest, runner_up = features[outcomes].mean().sort_values().index[:2]
    difference = features[weakest] - features[runner_up]
    test = stats.wilcoxon(difference)
    return pd.DataFrame(
        [
            {
                "outcome": weakest,
                "runner_up": runner_up,
                "n": len(difference),
                "mean_difference": difference.mean(),
                "test": "wilcoxon_signed_rank",
                "statistic": test.statistic,
                "p_value": test.pvalue,
            }
        ]
    )


def _contrasts(features: pd.DataFrame, outcomes: list[str]) -> pd.DataFrame:
    rows = []
    for o in outcomes:
        a, b = (
            features.loc[features["source"] == "failed", o],
            features.loc[features["source"] == "main", o],
        )
        t = stats.ttest_ind(a, b, equal_var=False)
        d = (a.mean() - b.mean()) / math.sqrt((a.var() + b.var()) / 2)
        for grp, x in (("failed", a), ("main", b)):
            lo, hi = _t_interval(x)
            rows.append(
                {
                    "by": "source",
                    "variable": o,
                    "grp": grp,
                    "n": len(x),
                    "mean": x.mean(),
                    "mean_lo": lo,
                    "mean_hi": hi,
                    "sd": x.std(),
                    "effect_size": d,
                    "effect_measure": "cohen_d",
                    "test": "welch_t",
                    "statistic": t.statistic,
                    "p_value": t.pvalue,
                    "p_adjusted": min(1.0, t.pvalue * len(outcomes)),
                }
            )
        groups = dict(list(features.groupby("problem_type")[o]))
        h = stats.kruskal(*groups.values())
        for grp, x in groups.items():
            lo, hi = _t_interval(x)
            rows.append(
                {
                    "by": "problem_type",
                    "variable": o,
                    "grp": grp,
                    "n": len(x),
                    "mean": x.mean(),
                    "mean_lo": lo,
                    "mean_hi": hi,
                    "sd": x.std(),
                    "effect_size": 0.02,
                    "effect_measure": "epsilon_squared",
                    "test": "kruskal_wallis",
                    "statistic": h.statistic,
                    "p_value": h.pvalue,
                    "p_adjusted": min(1.0, h.pvalue * len(outcomes)),
                }
            )
    return pd.DataFrame(rows)


def _drivers(rng: np.random.Generator, outcomes: list[str], n: int) -> pd.DataFrame:
    feats = [
        "n_turns",
        "counselor_talk_share",
        *[f"strategy:{s}" for s in STRATEGIES[1:]],
        "strategy:Reflection of feelings × reaction:positive",
    ]
    rows = []
    for o in outcomes:
        for j, f in enumerate(feats):
            coef = 0.3 if "Reflection" in f else rng.normal(0, 0.05)
            se = 0.06
            p = float(2 * stats.norm.sf(abs(coef / se)))
            rows.append(
                {
                    "outcome": o,
                    "feature": f,
                    "coef_std": coef,
                    "std_error": se,
                    "ci_low": coef - 1.96 * se,
                    "ci_high": coef + 1.96 * se,
                    "p_value": p,
                    "p_adjusted": min(1.0, p * len(feats)),
                    "n": n,
                    "model": "OLS (HC3)",
                    "r2": 0.21 + 0.01 * j,
                }
            )
    return pd.DataFrame(rows)


def _counselor_profiles(features: pd.DataFrame, outcomes: list[str]) -> pd.DataFrame:
    rows = []
    for o in outcomes:
        grand = features[o].mean()
        for cid, g in features.groupby("counselor_id"):
            weight = len(g) / (len(g) + 4)
            pooled = weight * g[o].mean() + (1 - weight) * grand
            half = 1.0 / math.sqrt(len(g) + 4)
            rows.append(
                {
                    "counselor_id": cid,
                    "outcome": o,
                    "n_sessions": len(g),
                    "raw_mean": g[o].mean(),
                    "pooled_mean": pooled,
                    "pooled_lo": pooled - half,
                    "pooled_hi": pooled + half,
                }
            )
    frame = pd.DataFrame(rows)
    frame["rank"] = (
        frame.groupby("outcome")["pooled_mean"].rank(ascending=False, method="first").astype(int)
    )
    best = frame.groupby("counselor_id")["pooled_mean"].transform("max")
    worst = frame.groupby("counselor_id")["pooled_mean"].transform("min")
    frame["is_strength"] = frame["pooled_mean"] == best
    frame["is_weakest"] = frame["pooled_mean"] == worst
    return frame


def _trajectories(
    features: pd.DataFrame, outcomes: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    per_client, summary = [], []
    for o in outcomes:
        for cid, g in features.groupby("client_id"):
            if len(g) > 1:
                g = g.sort_values("session_index")
                slope = stats.linregress(g["session_index"], g[o]).slope
                per_client.append(
                    {
                        "client_id": cid,
                        "outcome": o,
                        "n_sessions": len(g),
                        "first": g[o].iloc[0],
                        "last": g[o].iloc[-1],
                        "slope": slope,
                        "rises": bool(g[o].iloc[-1] > g[o].iloc[0]),
                    }
                )
        for idx, g in features.groupby("session_index"):
            summary.append(
                {"outcome": o, "session_index": int(idx), "n": len(g), "mean": g[o].mean()}
            )
    per_client = pd.DataFrame(per_client)
    clients = (
        per_client.groupby("outcome", sort=False)
        .agg(
            n_clients=("client_id", "size"),
            share_rising=("rises", "mean"),
            mean_slope=("slope", "mean"),
        )
        .reset_index()
    )
    slopes = per_client.groupby("outcome", sort=False)["slope"]
    clients[["mean_slope_lo", "mean_slope_hi"]] = [
        _t_interval(slopes.get_group(o)) for o in clients["outcome"]
    ]
    rising = per_client.groupby("outcome", sort=False)["rises"].sum()
    clients["share_rising_lo"], clients["share_rising_hi"] = proportion_confint(
        rising[clients["outcome"]].to_numpy(), clients["n_clients"].to_numpy(), method="wilson"
    )
    return per_client, pd.DataFrame(summary), clients


def write_analysis(out: Path, full: bool = True, n: int = 150, seed: int = 1) -> Path:
    """An analyze-like folder. full=True: a scores-mode analysis with every table; full=False: an
    ESConv-like labels analysis (no counselors, no challenges, no trajectories)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    features = _features(rng, n, with_counselors=full)
    outcomes = list(DIMENSIONS) if full else ["empathy", "relevance"]
    transitions, transition_tests = _transitions(rng, ["main"] if full else ["esconv"])
    tables = {
        "features": features,
        "population": _population(features, outcomes, ["problem_type"]),
        "transitions": transitions,
        "transition_tests": transition_tests,
        "drivers": _drivers(rng, outcomes, n),
        "contrasts": _contrasts(features, outcomes),
    }
    if full:  # model scores share one scale: the weakest outcome is tested
        tables["weakest_outcome"] = _weakest_outcome(features, outcomes)
        tables["counselor_profiles"] = _counselor_profiles(features, outcomes)
        tables["challenge_terms"] = pd.DataFrame(
            [
                {
                    "dimension": d,
                    "term": t,
                    "count": 10 + k,
                    "log_odds": 1.5 - 0.2 * k,
                    "z": 4.0 - 0.5 * k,
                }
                for d in DIMENSIONS
                for k, t in enumerate(
                    ["vague", "goal unclear", "mechanical", "no plan", "generic advice", "polite"]
                )
            ]
        )
        tables["challenge_clusters"] = pd.DataFrame(
            [
                {
                    "dimension": "task",
                    "cluster": 0,
                    "size": 14,
                    "top_terms": ["vague", "suggestions"],
                    "example_rationale": "The counselor offered vague suggestions & no plan.",
                    "example_quote": f"maybe try to relax {PLANTED}",
                },
                {
                    "dimension": "task",
                    "cluster": 1,
                    "size": 6,
                    "top_terms": ["mechanical"],
                    "example_rationale": "Responses felt mechanical.",
                    "example_quote": "ok. ok. I see.",
                },
                {
                    "dimension": "goal",
                    "cluster": 0,
                    "size": 9,
                    "top_terms": ["goal", "unclear"],
                    "example_rationale": "Goals were never made concrete.",
                    "example_quote": "what do you want?",
                },
            ]
        )
        trajectories, summary, clients = _trajectories(features, outcomes)
        tables |= {
            "trajectories": trajectories,
            "trajectory_summary": summary,
            "trajectory_clients": clients,
        }
    for name, frame in tables.items():
        _write(frame, out / f"{name}.parquet")
    notes = (
        []
        if full
        else [
            "counselor_profiles: no counselor ids",
            "challenges: needs model scores",
            "trajectories: no client has two sessions",
        ]
    )
    manifest = {
        "kind": "care-ray analysis",
        "mode": "scores" if full else "labels",
        "score_kind": "expected" if full else None,
        "outcomes": outcomes,
        "by": ["problem_type", "source"],
        "n_sessions": n,
        "tables": {k: len(v) for k, v in tables.items()},
        "notes": notes,
        "seconds": 0.5,
        "low_threshold": 2.0,
        "alpha": 0.05,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


SECTION_TITLES = (
    "Agreement",
    "Scale checks",
    "Population",
    "Counselor profiles",
    "Drivers",
    "Group contrasts",
    "Strategy × reaction transitions",
    "Challenges",
    "Trajectories",
)


def _headings(page: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", h) for h in re.findall(r"<h[23][^>]*>(.*?)</h[23]>", page)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report-inputs")
    return {
        "evaluation": write_evaluation(root / "eval"),
        "analysis": write_analysis(root / "scores-analysis"),
        "labels": write_analysis(root / "esconv-analysis", full=False),
    }


def _load(path: Path) -> report.Findings:
    kind = report.folder_kind(path)[0]
    return report.load_findings(path, kind)


@pytest.fixture(scope="module")
def pages(folders) -> dict[str, str]:
    """Each page is built once: matplotlib takes a few seconds per page on a shared CPU."""
    ev, an, labels = (
        _load(folders["evaluation"]),
        _load(folders["analysis"]),
        _load(folders["labels"]),
    )
    return {
        "full": report.build_report(ev, [an]),
        "labels": report.build_report(None, [labels]),
        "evaluation": report.build_report(ev, []),
    }


def _text(page: str) -> str:
    """The page as a reader sees its text: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<svg.*?</svg>", "", page, flags=re.S)))


def test_full_report_has_every_section_and_no_external_or_script_content(pages):
    page = pages["full"]
    headings = _headings(page)
    for title in SECTION_TITLES:
        assert title in headings, title
    assert "<script" not in page.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:|//)""", page), "external resource"
    assert PLANTED not in page and html.escape(PLANTED) in page
    assert PLANTED in _text(page)
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "duplicate ids across inline SVGs"
    assert page.count("<svg") >= 10
    # which score the analysis read (#30)
    assert "from model scores: expected scores, Σ s·p(s)" in _text(page)


def test_sections_follow_the_tables_present(pages):
    labels_only = _headings(pages["labels"])
    assert (
        "Population" in labels_only
        and "Group contrasts" in labels_only
        and "Strategy × reaction transitions" in labels_only
    )
    for absent in ("Agreement", "Counselor profiles", "Challenges", "Trajectories"):
        assert absent not in labels_only
    evaluation_only = _headings(pages["evaluation"])
    assert "Agreement" in evaluation_only and "Population" not in evaluation_only
    assert (
        "no counselor ids" in pages["labels"]
    )  # the analysis's notes say why a section is missing


def test_dropping_a_table_drops_its_section(folders):
    an = _load(folders["analysis"])
    without = report.Findings(
        an.kind,
        an.path,
        an.meta,
        {
            k: v
            for k, v in an.tables.items()
            if k not in ("drivers", "challenge_clusters", "trajectory_summary")
        },
    )
    with rc_context({"svg.hashsalt": "t"}):
        assert drivers_section(an, "d") is not None and drivers_section(without, "d") is None
        challenges = challenges_section(without, "c")
    assert challenges is not None and "Recurring challenges" not in render_blocks(
        challenges.blocks
    )  # challenge_terms alone still make the section
    assert counselor_section(report.Findings(an.kind, an.path, an.meta, {}), "p") is None


def test_agreement_sentence_reports_the_tables_numbers(folders, pages):
    text = _text(pages["evaluation"])
    agreement = pd.read_parquet(folders["evaluation"] / "agreement.parquet")
    pairs = pd.read_parquet(folders["evaluation"] / "pairs.parquet")
    for dim in DIMENSIONS:
        p = pairs[pairs["dimension"] == dim]
        r = np.corrcoef(p["predicted"], p["observed"])[0, 1]
        row = agreement[
            (agreement["rater"] == "model")
            & (agreement["dimension"] == dim)
            & agreement["fold"].isna()
        ].iloc[0]
        assert f"{dim} {r:.2f} [{row['pearson_lo']:.2f}, {row['pearson_hi']:.2f}] (n = 120)" in text
    assert "bootstrap intervals over 1,000 resamples" in text
    assert "87% of the quotes" in text


def test_every_scorer_is_shown_with_a_sentence_per_comparison(folders, pages):
    text = _text(pages["evaluation"])
    comparisons = pd.read_parquet(folders["evaluation"] / "comparisons.parquet")
    assert "Scorers side by side" in text
    for r in comparisons.itertuples():
        lo, hi = r.difference - 0.1, r.difference + 0.1
        if lo > 0:
            want = (
                f"model beats baseline on {r.dimension} by {r.difference:.2f} [{lo:.2f}, {hi:.2f}]"
            )
        else:
            want = f"model and baseline do not differ detectably on {r.dimension}"
        assert want in text, want
    for rater in ("model", "baseline", "counselor"):
        assert f"{rater} goal" in re.sub(r"\s+", " ", text), rater  # a table row per rater


def test_scale_checks_make_a_blob_visible(pages):
    text = re.sub(r"\s+", " ", _text(pages["evaluation"]))
    assert "Scale checks" in _headings(pages["evaluation"])
    assert (
        "Predicted items are nearly interchangeable: α 0.99–0.99 on every dimension, three "
        "factors fit no better than one (CFI 0.998 vs 0.995)." in text
    )
    assert (
        "The clients' own ratings separate into dimensions: three factors fit better than one "
        "(CFI 0.998 vs 0.620)" in text
    )
    assert "0.85 [0.83, 0.86]" in text  # α with its interval, client rows


def test_a_point_without_an_interval_says_why():
    from care_ray.report.sections.agreement import stat_cell

    meta = {"bootstrap": {"resamples": 1000}}
    row = {"n": 2, "pearson": 0.41, "pearson_lo": None, "pearson_hi": None}
    assert stat_cell(row, "pearson", meta) == "0.41 (no interval: n = 2)"
    row = {"n": 14, "pearson": 0.41, "pearson_lo": None, "pearson_hi": None, "ci_degenerate": 700}
    assert stat_cell(row, "pearson", meta) == (
        "0.41 (no interval: 700 resamples had a constant side)"
    )
    assert stat_cell({"n": 14, "mse": 0.5, "mse_lo": 0.3, "mse_hi": 0.7}, "mse", meta) == (
        "0.50 [0.30, 0.70]"
    )


def test_population_names_the_weakest_outcome_with_its_ci(folders, pages):
    text = _text(pages["full"])
    features = pd.read_parquet(folders["analysis"] / "features.parquet")
    means = features[list(DIMENSIONS)].mean()
    weakest = means.idxmin()
    lo, hi = stats.ttest_1samp(features[weakest], 0).confidence_interval(0.95)
    assert (
        f"{weakest} has the lowest mean of the 3 outcomes: {means[weakest]:.2f} [{lo:.2f}, {hi:.2f}]"
        in text
    )
    runner_up = means.drop(weakest).idxmin()
    p = stats.wilcoxon(features[weakest] - features[runner_up]).pvalue
    assert (
        f"{weakest} is lower than {runner_up} by {means[runner_up] - means[weakest]:.2f} on "
        "average (Wilcoxon signed-rank " + ("p < 0.001" if p < 0.001 else f"p = {p:.3f}") in text
    )


def test_transition_dependence_matches_an_independent_chi_square(folders, pages):
    t = pd.read_parquet(folders["analysis"] / "transitions.parquet")
    table = t.pivot_table(
        index="strategy", columns="reaction", values="n", aggfunc="sum"
    ).to_numpy()
    chi2, p, dof, expected = stats.chi2_contingency(table)
    text = _text(pages["full"])
    # the Cramér's V of the table written out: sqrt(chi² without correction / (n (min dim − 1)))
    uncorrected = ((table - expected) ** 2 / expected).sum()
    v = math.sqrt(uncorrected / (table.sum() * (min(table.shape) - 1)))
    assert f"χ² = {chi2:.1f}, df = {dof}, " in text and f"Cramér's V = {v:.2f}" in text
    assert ("The reaction depends on the strategy" in text) == (p < 0.05)
    # the cell most above independence, with its share's Wilson interval over the strategy's turns
    counts = t.pivot_table(index="strategy", columns="reaction", values="n", aggfunc="sum")
    residuals = (counts - expected) / np.sqrt(expected)
    strategy, reaction = residuals.stack().idxmax()
    assert residuals.loc[strategy, reaction] > 2
    k, n = counts.loc[strategy, reaction], counts.loc[strategy].sum()
    z = stats.norm.ppf(0.975)
    centre = (k / n + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(k / n * (1 - k / n) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (
        f"{reaction} after {strategy} ({k / n:.0%}, 95% CI {centre - half:.0%}–"
        f"{centre + half:.0%}, of {n:,} turns)" in text
    )


def test_counselor_intervals_are_counted_against_the_overall_mean(folders, pages):
    text = _text(pages["full"])
    profiles = pd.read_parquet(folders["analysis"] / "counselor_profiles.parquet")
    features = pd.read_parquet(folders["analysis"] / "features.parquet")
    for dim in DIMENSIONS:
        p, overall = profiles[profiles["outcome"] == dim], features[dim].mean()
        above, below = int((p["pooled_lo"] > overall).sum()), int((p["pooled_hi"] < overall).sum())
        assert (
            f"{dim}: {above} counselor(s) have intervals entirely above the overall mean "
            f"({overall:.2f}) and {below} entirely below" in text
        )


def test_trajectory_slope_interval_matches_scipy(folders, pages):
    per_client = pd.read_parquet(folders["analysis"] / "trajectories.parquet")
    slopes = per_client.loc[per_client["outcome"] == "bond", "slope"]
    lo, hi = stats.ttest_1samp(slopes, 0).confidence_interval(0.95)
    text = _text(pages["full"])
    assert f"{slopes.mean():.3f} [{lo:.3f}, {hi:.3f}]" in text
    rises = per_client.loc[per_client["outcome"] == "bond", "rises"]
    lo, hi = proportion_confint(rises.sum(), len(rises), method="wilson")
    assert f"{rises.mean():.0%} [{lo:.0%}, {hi:.0%}] of clients rise" in text


def _without_intervals(an: report.Findings) -> report.Findings:
    """The analysis as an older `care-ray analyze` wrote it: no interval columns, no test tables."""
    added = {
        "mean_lo",
        "mean_hi",
        "share_lo",
        "share_hi",
        "residual",
        "mean_slope_lo",
        "mean_slope_hi",
        "share_rising_lo",
        "share_rising_hi",
    }
    tables = {
        name: frame.drop([c for c in frame.columns if c in added])
        for name, frame in an.tables.items()
        if name not in ("transition_tests", "weakest_outcome")
    }
    meta = {k: v for k, v in an.meta.items() if k != "alpha"}
    return report.Findings(an.kind, an.path, meta, tables)


def test_an_analysis_without_interval_columns_shows_the_estimates_alone(folders):
    page = report.build_report(None, [_without_intervals(_load(folders["analysis"]))])
    text = _text(page)
    features = pd.read_parquet(folders["analysis"] / "features.parquet")
    means = features[list(DIMENSIONS)].mean().sort_values()
    weakest, runner_up = means.index[:2]
    assert (
        f"{weakest} has the lowest mean of the 3 outcomes: {means[weakest]:.2f}, against "
        f"{runner_up} {means[runner_up]:.2f}" in text
    )
    assert "CI of the mean" not in text and "Wilcoxon" not in text and "χ²" not in text
    assert "More often than independence predicts" not in text
    slopes = pd.read_parquet(folders["analysis"] / "trajectories.parquet").query(
        "outcome == 'bond'"
    )["slope"]
    assert f"the mean change per session is {slopes.mean():.3f}, and" in text
    assert set(SECTION_TITLES) - {"Agreement", "Scale checks"} <= set(_headings(page))


def test_the_templates_escape_every_value():
    blocks = [
        Paragraph(PLANTED),
        Bullets([PLANTED]),
        Table([PLANTED], [[PLANTED]], caption=PLANTED),
        Details(PLANTED, [Paragraph(PLANTED)]),
        Cluster(PLANTED, "1", "5%", PLANTED, PLANTED, PLANTED),
    ]
    escaped = html.escape(PLANTED)
    for block in blocks:
        out = str(render_blocks([block]))
        assert "<script>" not in out and escaped in out, block
    macros = environment().get_template("blocks.html.j2").module
    out = str(macros.paragraph(Paragraph(PLANTED)))
    assert out == f'<p class="finding">{escaped}</p>'


def test_a_planted_script_in_the_title_and_a_quote_is_text_on_the_page(folders):
    page = report.build_report(None, [_load(folders["analysis"])], title=PLANTED)
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3  # title, heading, quote
    quote = re.search(r'<blockquote class="quote">(.*?)</blockquote>', page, flags=re.S)
    assert quote is not None and html.unescape(quote.group(1)) == f"maybe try to relax {PLANTED}"


def test_the_report_renders_and_computes_nothing_itself():
    """The report package imports no statistics library and makes no HTML outside its templates:
    no html.escape, and Markup only for matplotlib's SVG (figures.py)."""
    root = Path(care_ray.report.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
        }
        assert not imported & {"scipy", "statsmodels", "html"}, path
        calls = {
            node.func.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        if path.name != "figures.py":
            assert "Markup" not in calls, path
    templates = {p.name for p in (root / "templates").iterdir()}
    assert {"blocks.html.j2", "page.html.j2", "report.css"} <= templates


def test_labels_are_not_ranked_and_contrasts_name_extreme_groups(folders, pages):
    text = _text(pages["labels"])
    assert "so none is named the weakest" in text and "lowest mean of the" not in text
    features = pd.read_parquet(folders["labels"] / "features.parquet")
    table = re.search(
        r"All \d+ contrasts \(table\)</summary>(.*?)</details>", pages["labels"], flags=re.S
    ).group(1)
    cells = [_text(row).split() for row in re.findall(r"<tr>(.*?)</tr>", table)]
    for outcome in ("empathy", "relevance"):
        means = features.groupby("problem_type")[outcome].mean()
        row = " ".join(next(c for c in cells if c[:2] == ["problem_type", outcome]))
        assert (
            f"{means.idxmin()} {means.min():.2f} {means.idxmax()} {means.max():.2f}" in row
        )  # lowest, then highest group mean
        p = stats.kruskal(*[g for _, g in features.groupby("problem_type")[outcome]]).pvalue
        assert ("< 0.001" if p < 0.001 else f"{p:.3f}") in row


def test_small_groups_stay_out_of_the_extremes(folders):
    an = _load(folders["analysis"])
    pop = an.tables["population"]
    tiny = pop.filter((pop["group_by"] == "problem_type") & (pop["grp"] == "breakup")).with_columns(
        grp=pl.lit("tiny"), n=pl.lit(2), mean=pl.lit(1.0)
    )
    small = report.Findings(
        an.kind, an.path, an.meta, {"population": pl.concat([pop, tiny], how="vertical_relaxed")}
    )
    with rc_context({"svg.hashsalt": "t"}):
        section = population_section(small, "p")
    assert section is not None
    text = _text(render_blocks(section.blocks))
    assert "lowest in tiny" not in text and "fewer than 10 sessions" in text
    assert "tiny" in text  # still listed in the table


def _null_row(columns: tuple[str, ...]) -> pl.DataFrame:
    """One row per contract table: text columns "x", flags and numbers null (nothing can be computed)."""

    def column(name: str) -> pl.Series:
        if name == "group_by":
            return pl.Series(name, ["all"])
        if name.startswith("is_") or name == "rises":
            return pl.Series(name, [None], dtype=pl.Boolean)
        numeric = name in {
            "n",
            "fold",
            "cluster",
            "size",
            "count",
            "rank",
            "session_index",
            "n_sessions",
            "n_clients",
            "chi2",
            "dof",
            "cramers_v",
            "residual",
        } or any(
            k in name
            for k in (
                "mean",
                "sd",
                "q25",
                "q75",
                "median",
                "share",
                "pearson",
                "spearman",
                "mse",
                "bin_",
                "coef",
                "error",
                "ci_",
                "p_",
                "r2",
                "effect_size",
                "statistic",
                "log_odds",
                "z",
                "first",
                "last",
                "slope",
                "predicted",
                "observed",
                "counselor",
                "raw_",
                "pooled_",
            )
        )
        return (
            pl.Series(name, [None], dtype=pl.Float64)
            if numeric and name not in ("counselor_id",)
            else pl.Series(name, ["x"])
        )

    return pl.DataFrame([column(c) for c in columns])


def test_tables_with_nothing_computable_still_render():
    ev = report.Findings(
        report.EVALUATION_KIND,
        Path("ev"),
        {"kind": report.EVALUATION_KIND},
        {k: _null_row(c) for k, c in report.EVALUATION_TABLES.items()},
    )
    an = report.Findings(
        report.ANALYSIS_KIND,
        Path("an"),
        {"kind": report.ANALYSIS_KIND},
        {k: _null_row(c) for k, c in report.ANALYSIS_TABLES.items()},
    )
    page = report.build_report(ev, [an])
    assert set(SECTION_TITLES) <= set(_headings(page))


def test_truth_may_be_a_name_or_a_spec():
    assert truth_name({"truth": "client_wai"}) == "client_wai"
    assert (
        truth_name(
            {
                "truth": {
                    "kind": "labels",
                    "dimensions": {"goal": "labels.relevance", "bond": "labels.empathy"},
                }
            }
        )
        == "labels.empathy, labels.relevance"
    )
    assert truth_name({}) == "the reference ratings"


def test_cli_writes_report_and_prints_its_path(folders, tmp_path):
    small = write_analysis(tmp_path / "small-analysis", full=False, n=30)
    result = CliRunner().invoke(
        app,
        [
            "report",
            "--analysis",
            str(folders["labels"]),
            "--analysis",
            str(small),
            "--out",
            str(tmp_path / "rep"),
            "--title",
            "Pilot <A&B>",
        ],
    )
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip().splitlines()[-1])
    assert path == tmp_path / "rep" / "report.html" and path.is_file()
    page = path.read_text(encoding="utf-8")
    assert "<title>Pilot &lt;A&amp;B&gt;</title>" in page
    assert "Analysis 1: esconv-analysis" in page and "Analysis 2: small-analysis" in page


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to report"),
        (["--evaluation", "{missing}"], "--evaluation folder not found"),
        (
            ["--analysis", "{evaluation}"],
            "is a 'care-ray evaluation' folder, not a care-ray analysis (pass it with --evaluation)",
        ),
        (["--evaluation", "{analysis}"], "not a care-ray evaluation (pass it with --analysis)"),
        (["--analysis", "{plain}"], "is neither a care-ray evaluation nor an analysis"),
        (["--analysis", "{other_kind}"], "is a 'care-ray scores' folder, not a care-ray analysis"),
        (["--analysis", "{broken}"], "drivers table lacks column(s) p_adjusted"),
    ],
)
def test_bad_folders_are_one_line_errors(folders, tmp_path, args, message):
    plain = tmp_path / "plain"
    plain.mkdir()
    other = tmp_path / "scores"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"kind": "care-ray scores"}))
    broken = write_analysis(tmp_path / "broken", n=40)
    pd.read_parquet(broken / "drivers.parquet").drop(columns="p_adjusted").to_parquet(
        broken / "drivers.parquet"
    )
    names = {
        "missing": tmp_path / "nope",
        "evaluation": folders["evaluation"],
        "analysis": folders["analysis"],
        "plain": plain,
        "other_kind": other,
        "broken": broken,
    }
    result = CliRunner().invoke(
        app, ["report", *[a.format(**names) for a in args], "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_expected_scores_are_named_and_their_spread_is_reported(tmp_path):
    """#30: an evaluation with an expected-score rater says what it is, and reports whether the
    uncertain scores are the ones that miss, with the numbers metrics.json holds."""
    folder = write_evaluation(tmp_path / "ev")
    meta = json.loads((folder / "metrics.json").read_text())
    meta["raters"] = [
        {"name": "model", "score": "greedy"},
        {"name": "model_expected", "score": "expected"},
    ]
    meta["spread"] = {
        "by_dimension": {
            "bond": {"n": 120, "spearman": 0.4123, "p": 0.001, "top_over_bottom": 2.345},
            "goal": {"n": 3, "spearman": None, "p": None, "top_over_bottom": None},
        }
    }
    (folder / "metrics.json").write_text(json.dumps(meta))
    page = _text(report.build_report(_load(folder), []))
    assert "model_expected: expected scores, Σ s·p(s)" in page
    assert "bond: Spearman ρ 0.41 between the spread" in page and "2.35× the narrowest" in page
    assert "goal: Spearman" not in page  # too few sessions: no line
    meta["raters"] = [{"name": "model", "score": "greedy"}]
    meta.pop("spread")
    (folder / "metrics.json").write_text(json.dumps(meta))
    assert "expected scores" not in _text(report.build_report(_load(folder), []))
