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
TIMELINE = ("timeline_sessions", "ruptures", "timeline_summary", "timeline_precedents")
TIMELINE += ("timeline_links", "timeline_curve")


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
        "out": out,
        **{name: read(name) for name in TIMELINE},
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


# ---------------------------------------------------------------- the timeline of per-turn ratings


def raw_curves(esconv_dir: Path) -> list[dict]:
    """FailedESConv conversations from the raw JSON: their (turn, rating) points, the strategies
    of each turn and the post-chat survey."""
    with open(esconv_dir / "FailedESConv.json", encoding="utf-8") as f:
        conversations = json.load(f)
    out = []
    for obj in conversations:
        annotations = [turn.get("annotation") or {} for turn in obj["dialog"]]
        points = [(i, float(a["feedback"])) for i, a in enumerate(annotations) if a.get("feedback")]
        strategies = [ALIASES.get(a.get("strategy"), a.get("strategy")) for a in annotations]
        seeker = (obj.get("survey_score") or {}).get("seeker") or {}
        out.append(
            {
                "points": points,
                "n_turns": len(obj["dialog"]),
                "strategies": strategies,
                "empathy": _rating(seeker, "empathy"),
                "relevance": _rating(seeker, "relevance"),
            }
        )
    return out


def raw_segments(curves: list[dict]) -> list[dict]:
    segments = []
    for c in curves:
        for (t0, v0), (t1, v1) in zip(c["points"], c["points"][1:], strict=False):
            between = {s for s in c["strategies"][t0 + 1 : t1] if s}
            later = [v for t, v in c["points"] if t > t1]
            repaired = v1 - v0 <= -2 and any(v >= v0 - 1 for v in later)
            segments.append({"change": v1 - v0, "strategies": between, "repaired": repaired})
    return segments


def _fisher_ci(r: float, n: int) -> tuple[float, float]:
    half = stats.norm.ppf(0.975) / np.sqrt(n - 3)
    return float(np.tanh(np.arctanh(r) - half)), float(np.tanh(np.arctanh(r) + half))


def test_timeline_of_failed_esconv_recomputed_from_the_raw_json(esconv_dir, findings):
    from statsmodels.stats.proportion import proportion_confint

    curves = raw_curves(esconv_dir)
    with_curve = [c for c in curves if len(c["points"]) >= 2]
    segments = raw_segments(with_curve)
    drops = [s for s in segments if s["change"] <= -2]
    sessions = findings["timeline_sessions"]
    assert sessions.height == len(with_curve)
    assert int(sessions["n_points"].sum()) - sessions.height == len(segments)
    assert findings["ruptures"].height == len(drops)
    assert int(findings["ruptures"]["repaired"].sum()) == sum(s["repaired"] for s in drops)
    overall = findings["timeline_summary"].filter(pl.col("group_by") == "all").to_dicts()[0]
    with_drop = sum(
        any(b - a <= -2 for (_, a), (_, b) in zip(c["points"], c["points"][1:], strict=False))
        for c in with_curve
    )
    assert overall["sessions_with_rupture"] == with_drop
    lo, hi = proportion_confint(with_drop, len(with_curve), alpha=0.05, method="wilson")
    assert (overall["rupture_share_lo"], overall["rupture_share_hi"]) == pytest.approx((lo, hi))


def test_timeline_links_and_precedents_recomputed(esconv_dir, findings):
    from statsmodels.stats.multitest import multipletests

    with_curve = [c for c in raw_curves(esconv_dir) if len(c["points"]) >= 2]
    links = {(r["predictor"], r["outcome"]): r for r in findings["timeline_links"].to_dicts()}
    for outcome in ("empathy", "relevance"):
        rows = [c for c in with_curve if np.isfinite(c[outcome])]
        means = [np.mean([v for _, v in c["points"]]) for c in rows]
        r = stats.pearsonr(means, [c[outcome] for c in rows]).statistic
        got = links[("turn_rating_mean", outcome)]
        assert got["n"] == len(rows) and got["r"] == pytest.approx(r)
        assert (got["r_lo"], got["r_hi"]) == pytest.approx(_fisher_ci(r, len(rows)))
    segments = raw_segments(with_curve)
    kinds = {
        "drop": [s for s in segments if s["change"] <= -2],
        "rise": [s for s in segments if s["change"] >= 2],
        "steady": [s for s in segments if s["change"] == 0],
    }
    strategies = sorted({x for s in segments for x in s["strategies"]})
    expected = {}
    for strategy in strategies:
        steady = sum(strategy in s["strategies"] for s in kinds["steady"])
        for kind in ("drop", "rise"):
            hit = sum(strategy in s["strategies"] for s in kinds[kind])
            table = [[hit, len(kinds[kind]) - hit], [steady, len(kinds["steady"]) - steady]]
            expected[(strategy, kind)] = stats.fisher_exact(table)[1]
    got = {(r["strategy"], r["segment"]): r for r in findings["timeline_precedents"].to_dicts()}
    assert set(got) == set(expected)
    keys = sorted(expected)
    adjusted = multipletests([expected[k] for k in keys], method="fdr_bh")[1]
    for key, p_adj in zip(keys, adjusted, strict=True):
        assert got[key]["p_value"] == pytest.approx(expected[key])
        assert got[key]["p_adjusted"] == pytest.approx(p_adj)


def test_readme_states_the_timeline_figures(esconv_dir, findings):
    text = README.read_text(encoding="utf-8")
    block = text[text.index("<!-- timeline-findings") :]
    block = block[: block.index("\n\n")]
    curves = raw_curves(esconv_dir)
    with_curve = [c for c in curves if len(c["points"]) >= 2]
    segments = raw_segments(with_curve)
    drops = [s for s in segments if s["change"] <= -2]
    with_drop = sum(
        any(b - a <= -2 for (_, a), (_, b) in zip(c["points"], c["points"][1:], strict=False))
        for c in with_curve
    )
    first = [v for c in with_curve for t, v in c["points"] if t / (c["n_turns"] - 1) < 0.2]
    rest = [v for c in with_curve for t, v in c["points"] if t / (c["n_turns"] - 1) >= 0.2]
    precedents = findings["timeline_precedents"].sort("p_adjusted")
    figures = [
        f"{sum(bool(c['points']) for c in curves)} of FailedESConv's {len(curves)} conversations",
        f"({sum(len(c['points']) for c in curves)} ratings)",
        f"{len(with_curve)} have two",
        f"{len(segments)} consecutive pairs",
        f"{len(drops)} drops",
        f"{sum(s['change'] >= 2 for s in segments)} rises",
        f"{sum(s['change'] == 0 for s in segments)} with no change",
        f"{with_drop} of {len(with_curve)} conversations",
        f"{sum(s['repaired'] for s in drops)} of the {len(drops)} ruptures",
        f"({np.mean(first):.1f}, over {len(first)} ratings)",
        f"about {np.mean(rest):.1f} after it ({len(rest)} ratings)",
        f"none of {precedents.height} strategy comparisons",
        f"p {precedents['p_adjusted'][0]:.2f}",
    ]
    for row in findings["timeline_links"].to_dicts():
        figures.append(f"{row['r']:.2f} [{row['r_lo']:.2f}, {row['r_hi']:.2f}]")
    missing = [f for f in figures if f not in " ".join(block.split())]
    assert not missing, f"README timeline figures not found: {missing}"
    assert (precedents["p_adjusted"] >= 0.05).all()


def test_the_timeline_section_renders_in_chromium(findings, tmp_path):
    from browser import chromium_page

    result = CliRunner().invoke(
        app, ["report", "--analysis", str(findings["out"]), "--out", str(tmp_path / "report")]
    )
    assert result.exit_code == 0, result.output
    with chromium_page(tmp_path) as (page, log):
        page.goto((tmp_path / "report" / "report.html").as_uri())
        section = page.locator("section", has_text="Alliance over the session").last
        text = section.inner_text()
        assert "have at least one rupture" in text and "were repaired" in text
        assert section.locator("svg").count() == 1
        summary = section.locator("details summary").first
        assert "Drop 1 of turn_rating: 5.0 → 1.0" in summary.inner_text()
        summary.click()
        assert section.locator("details table").first.is_visible()
        section.screenshot(path=str(tmp_path / "timeline.png"))
    assert log.errors == [] and all(u.startswith("file://") for u in log.requests)
