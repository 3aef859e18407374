"""The statistical building blocks of `care-ray analyze`, checked against independent computations."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm
from scipy import stats
from scipy.stats.contingency import association

from care_ray.analytics.challenges import (
    cluster_rationales,
    distinctive_terms,
    is_chinese,
    log_odds_z,
)
from care_ray.analytics.contrasts import group_contrasts
from care_ray.analytics.drivers import fit_drivers
from care_ray.analytics.features import transition_statistics
from care_ray.analytics.intervals import (
    mean_interval,
    wilson_interval,
    with_mean_interval,
    with_wilson_interval,
)


def zscore(x: np.ndarray) -> np.ndarray:
    return stats.zscore(x, ddof=1)


@pytest.fixture(scope="module")
def sessions() -> pl.DataFrame:
    """Sessions where `challenge` raises goal, `support_negative` lowers it, `noise*` do nothing, and
    four strategy shares sum to one; counselors add a random intercept."""
    rng = np.random.default_rng(7)
    n = 600
    counselor = rng.integers(0, 40, n)
    shares = rng.dirichlet(np.ones(4), n)
    x = {
        "challenge": rng.normal(size=n),
        "support_negative": rng.normal(size=n),
        "noise1": rng.normal(size=n),
        "noise2": rng.normal(size=n),
    }
    goal = (
        3
        + 0.5 * x["challenge"]
        - 0.3 * x["support_negative"]
        + rng.normal(0, 0.4, 40)[counselor]
        + rng.normal(size=n)
    )
    task = goal + rng.normal(size=n)
    task[:25] = np.nan
    frame = {
        "counselor_id": [f"c{i}" for i in counselor],
        "goal": goal,
        "task": task,
        **x,
        **{
            f"strategy:{name}": shares[:, j]
            for j, name in enumerate(["question", "reflection", "advice", "other"])
        },
        "always_two": np.full(n, 2.0),
        "never": [None] * n,
    }
    return pl.DataFrame(frame, schema_overrides={"never": pl.Float64})


FEATURES = ["challenge", "support_negative", "noise1", "noise2"]
SHARES = ["strategy:question", "strategy:reflection", "strategy:advice", "strategy:other"]


def test_drivers_recover_the_planted_effects_and_match_an_independent_fit(sessions):
    table, notes = fit_drivers(sessions, ["goal"], FEATURES)
    rows = {r["feature"]: r for r in table.iter_rows(named=True)}
    assert rows["challenge"]["coef_std"] > 0 and rows["challenge"]["p_adjusted"] < 1e-6
    assert (
        rows["support_negative"]["coef_std"] < 0 and rows["support_negative"]["p_adjusted"] < 1e-3
    )
    assert rows["noise1"]["p_adjusted"] > 0.05 and rows["noise2"]["p_adjusted"] > 0.05
    assert set(table["model"]) == {"ols-hc3"} and set(table["n"]) == {sessions.height}

    y = zscore(sessions["goal"].to_numpy())
    x = np.column_stack([np.ones(len(y)), *(zscore(sessions[f].to_numpy()) for f in FEATURES)])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    bread = np.linalg.inv(x.T @ x)
    leverage = np.einsum("ij,jk,ik->i", x, bread, x)
    resid = y - x @ coef
    hc3 = bread @ (x.T * (resid / (1 - leverage)) ** 2) @ x @ bread
    np.testing.assert_allclose(table["coef_std"].to_numpy(), coef[1:], rtol=1e-8)
    np.testing.assert_allclose(table["std_error"].to_numpy(), np.sqrt(np.diag(hc3))[1:], rtol=1e-8)
    r2 = 1 - (resid**2).sum() / ((y - y.mean()) ** 2).sum()
    assert table["r2"][0] == pytest.approx(r2)
    assert (table["ci_low"] < table["coef_std"]).all() and (
        table["coef_std"] < table["ci_high"]
    ).all()


def test_drivers_adjust_over_every_row_and_drop_null_outcomes_listwise(sessions):
    from statsmodels.stats.multitest import multipletests

    table, notes = fit_drivers(sessions, ["goal", "task"], FEATURES)
    assert table.height == 2 * len(FEATURES)
    np.testing.assert_allclose(
        table["p_adjusted"].to_numpy(),
        multipletests(table["p_value"].to_numpy(), method="fdr_bh")[1],
    )
    assert set(table.filter(pl.col("outcome") == "task")["n"]) == {sessions.height - 25}
    assert any("task" in note and "25" in note for note in notes)


def test_drivers_drop_collinear_constant_and_empty_features_with_a_note(sessions):
    table, notes = fit_drivers(sessions, ["goal"], [*FEATURES, *SHARES, "always_two", "never"])
    kept = set(table["feature"])
    assert kept == {*FEATURES, *SHARES[:3]}
    assert np.isfinite(table["std_error"].to_numpy()).all()
    assert any("strategy:other" in n and "collinear" in n for n in notes)
    assert any("always_two" in n and "constant" in n for n in notes)
    assert any("never" in n and "no values" in n for n in notes)


def test_drivers_with_repeated_groups_fit_a_mixed_model_or_cluster_by_group(sessions):
    mixed, _ = fit_drivers(sessions, ["goal"], FEATURES, group="counselor_id")
    assert set(mixed["model"]) == {"mixedlm:counselor_id"}
    independent = sm.MixedLM(
        zscore(sessions["goal"].to_numpy()),
        np.column_stack(
            [np.ones(sessions.height), *(zscore(sessions[f].to_numpy()) for f in FEATURES)]
        ),
        groups=sessions["counselor_id"].to_numpy(),
    ).fit(reml=True)
    np.testing.assert_allclose(mixed["coef_std"].to_numpy(), independent.fe_params[1:], rtol=1e-4)
    assert 0 < mixed["r2"][0] < 1

    clustered, _ = fit_drivers(
        sessions, ["goal"], FEATURES, group="counselor_id", max_mixed_rows=100
    )
    assert set(clustered["model"]) == {"ols-cluster:counselor_id"}
    y = zscore(sessions["goal"].to_numpy())
    x = np.column_stack([np.ones(len(y)), *(zscore(sessions[f].to_numpy()) for f in FEATURES)])
    codes = np.unique(sessions["counselor_id"].to_numpy(), return_inverse=True)[1]
    reference = sm.OLS(y, x).fit(cov_type="cluster", cov_kwds={"groups": codes})
    np.testing.assert_allclose(clustered["std_error"].to_numpy(), reference.bse[1:], rtol=1e-8)
    assert clustered.filter(pl.col("feature") == "challenge")["p_adjusted"][0] < 1e-6


def test_drivers_skip_an_outcome_with_too_few_rows_and_reject_unknown_columns(sessions):
    table, notes = fit_drivers(sessions.head(12), ["goal"], FEATURES)
    assert table.is_empty() and table.columns[:3] == ["outcome", "feature", "coef_std"]
    assert any("skipped goal" in n for n in notes)
    with pytest.raises(ValueError, match="no column"):
        fit_drivers(sessions, ["goal"], ["no_such_feature"])


@pytest.fixture(scope="module")
def grouped() -> pl.DataFrame:
    rng = np.random.default_rng(3)
    n = 240
    source = rng.choice(["esconv", "failed", "other"], n, p=[0.5, 0.45, 0.05])
    gender = rng.choice(["f", "m"], n).astype(object)
    gender[:10] = None
    bond = rng.normal(3.5, 0.6, n) + np.where(gender == "f", 0.4, 0.0)
    return pl.DataFrame(
        {
            "source": source,
            "gender": list(gender),
            "bond": bond,
            "task": rng.normal(3, 0.5, n),
            "goal": np.where(source == "failed", 2.5, 3.5) + rng.normal(0, 0.5, n),
        }
    )


def test_two_group_contrasts_match_scipy_welch_and_hedges_g(grouped):
    table, notes = group_contrasts(grouped, "gender", ["bond", "task"])
    assert any("10 row(s) with no gender" in n for n in notes)
    present = grouped.filter(pl.col("gender").is_not_null())
    p_values = []
    for variable in ["bond", "task"]:
        f = present.filter(pl.col("gender") == "f")[variable].to_numpy()
        m = present.filter(pl.col("gender") == "m")[variable].to_numpy()
        rows = table.filter(pl.col("variable") == variable).sort("grp")
        assert rows["grp"].to_list() == ["f", "m"] and rows["n"].to_list() == [len(f), len(m)]
        np.testing.assert_allclose(rows["mean"].to_numpy(), [f.mean(), m.mean()])
        np.testing.assert_allclose(rows["sd"].to_numpy(), [f.std(ddof=1), m.std(ddof=1)])
        welch = stats.ttest_ind(f, m, equal_var=False)
        assert rows["statistic"].to_list() == pytest.approx([welch.statistic] * 2)
        assert rows["p_value"].to_list() == pytest.approx([welch.pvalue] * 2)
        pooled = math.sqrt(
            ((len(f) - 1) * f.var(ddof=1) + (len(m) - 1) * m.var(ddof=1)) / (len(f) + len(m) - 2)
        )
        hedges = (f.mean() - m.mean()) / pooled * (1 - 3 / (4 * (len(f) + len(m)) - 9))
        assert rows["effect_size"].to_list() == pytest.approx([hedges] * 2)
        assert set(rows["effect_measure"]) == {"hedges_g (f − m)"} and set(rows["test"]) == {
            "welch_t"
        }
        for row, x in zip(rows.iter_rows(named=True), (f, m), strict=True):
            ci = stats.ttest_1samp(x, 0).confidence_interval(0.95)
            assert (row["mean_lo"], row["mean_hi"]) == pytest.approx((ci.low, ci.high))
        p_values.append(welch.pvalue)
    bond_p, task_p = p_values
    expected_bond = min(1.0, min(bond_p * 2, max(bond_p, task_p)))  # BH over two tests
    assert table.filter(pl.col("variable") == "bond")["p_adjusted"][0] == pytest.approx(
        expected_bond
    )
    assert table.filter(pl.col("variable") == "bond")["p_adjusted"][0] < 0.05


def test_many_group_contrasts_use_kruskal_wallis_and_drop_small_groups(grouped):
    table, notes = group_contrasts(grouped, "source", ["goal"], min_group=20)
    small = grouped.filter(pl.col("source") == "other").height
    assert small < 20 and "other" not in table["grp"].to_list()
    assert any("dropped 1 group" in n for n in notes)
    table, notes = group_contrasts(grouped, "source", ["goal"], min_group=5)
    samples = [
        grouped.filter(pl.col("source") == s)["goal"].to_numpy()
        for s in ["esconv", "failed", "other"]
    ]
    h = stats.kruskal(*samples)
    assert table["grp"].to_list() == ["esconv", "failed", "other"]
    assert table["statistic"][0] == pytest.approx(h.statistic) and table["p_value"][
        0
    ] == pytest.approx(h.pvalue)
    assert table["effect_size"][0] == pytest.approx(h.statistic / (grouped.height - 1))
    assert table["effect_measure"][0] == "epsilon_squared" and table["p_adjusted"][0] < 1e-6


def test_log_odds_z_matches_the_monroe_formula_by_hand():
    docs = pl.DataFrame(
        {
            "dimension": ["a", "b"],
            "rationale": ["apple apple banana", "banana cherry"],
            "language": ["en", "en"],
        }
    )
    table = distinctive_terms(docs, top_k=10)
    apple = table.filter((pl.col("dimension") == "a") & (pl.col("term") == "apple")).row(
        0, named=True
    )
    # a's terms: apple ×2, banana, "apple apple", "apple banana" (5); b's: banana, cherry, "banana cherry" (3).
    # apple: y = 2 in a, 0 in b; prior α = 1 × 2; α0 = 8 (all terms).
    y, r, n_a, n_b, a, a0 = 2, 0, 5, 3, 2, 8
    delta = math.log((y + a) / (n_a + a0 - y - a)) - math.log((r + a) / (n_b + a0 - r - a))
    assert apple["count"] == 2
    assert apple["log_odds"] == pytest.approx(delta)
    assert apple["z"] == pytest.approx(delta / math.sqrt(1 / (y + a) + 1 / (r + a)))
    assert table.filter(pl.col("dimension") == "a")["term"][0] == "apple"
    lo, z = log_odds_z(np.array([[2.0, 1.0], [0.0, 1.0]]), prior_scale=0.5)
    assert z[0, 0] > 0 > z[1, 0]


def test_distinctive_terms_put_a_planted_word_first_in_its_group():
    rng = np.random.default_rng(1)
    filler = (
        "client counselor session feeling week talk plan family stress sleep friend job".split()
    )
    rows = []
    for i in range(400):
        dimension = ["task", "bond", "goal"][i % 3]
        words = list(rng.choice(filler, 10))
        if dimension == "task" and rng.random() < 0.6:
            words.insert(int(rng.integers(0, 10)), "homework")
        rows.append((dimension, " ".join(words)))
    docs = pl.DataFrame(rows, schema=["dimension", "rationale"], orient="row")
    table = distinctive_terms(docs, language_col=None, top_k=5)
    assert table.filter(pl.col("dimension") == "task")["term"][0] == "homework"
    assert table.filter(pl.col("dimension") == "task")["z"][0] > 5
    assert "homework" not in table.filter(pl.col("dimension") != "task")["term"].to_list()
    assert table.group_by("dimension").len()["len"].max() <= 5


def test_chinese_rationales_are_counted_by_characters():
    rows = [
        ("task", "咨询师布置的作业和目标不一致。"),
        ("task", "作业太多，来访者没有完成 homework。"),
    ] * 5
    rows += [("bond", "来访者觉得咨询师的回应很机械。"), ("bond", "咨询师没有修复关系。")] * 5
    docs = pl.DataFrame(rows, schema=["dimension", "rationale"], orient="row").with_columns(
        language=pl.lit("zh-CN")
    )
    table = distinctive_terms(docs, top_k=5)
    terms = table["term"].to_list()
    assert all(1 <= len(t) <= 2 and all("\u4e00" <= ch <= "\u9fff" for ch in t) for t in terms)
    assert "作业" in table.filter(pl.col("dimension") == "task")["term"].to_list()
    by_share = pl.DataFrame(
        {
            "rationale": ["咨询师没有回应", "The counselor never asked", "他说 OK"],
            "language": [None, "zh", None],
        }
    )
    assert is_chinese(by_share, "rationale", "language").tolist() == [True, False, True]


def themed_docs() -> pl.DataFrame:
    rng = np.random.default_rng(5)
    filler = "client counselor session week today".split()
    themes = {
        "homework": "homework assignment practice exercise worksheet".split(),
        "sleep": "sleep insomnia night tired bedtime".split(),
    }
    rows = []
    for i in range(60):
        theme = "homework" if i % 2 else "sleep"
        words = list(rng.choice(themes[theme], 4)) + list(rng.choice(filler, 3))
        rows.append(
            {
                "dimension": "task",
                "rationale": " ".join(rng.permutation(words)),
                "quotes": [f"{theme} quote {i}", "second"],
                "theme": theme,
            }
        )
    rows += [
        {
            "dimension": "bond",
            "rationale": f"mechanical reply number {i}",
            "quotes": [],
            "theme": "bond",
        }
        for i in range(4)
    ]
    return pl.DataFrame(rows)


def test_cluster_rationales_separate_two_planted_themes_deterministically():
    docs = themed_docs()
    clusters = cluster_rationales(docs, language_col=None)
    assert clusters.columns == [
        "dimension",
        "cluster",
        "size",
        "top_terms",
        "example_rationale",
        "example_quote",
    ]
    task = clusters.filter(pl.col("dimension") == "task").sort("cluster")
    assert task["size"].to_list() == [30, 30]
    theme_of = dict(zip(docs["rationale"], docs["theme"], strict=False))
    themes = [theme_of[text] for text in task["example_rationale"]]
    assert sorted(themes) == ["homework", "sleep"]
    for row, theme in zip(task.iter_rows(named=True), themes, strict=True):
        assert (
            theme in row["top_terms"].split(", ")
            or theme == "sleep"
            and "insomnia" in row["top_terms"]
        )
        assert row["example_quote"].startswith(theme)
    bond = clusters.filter(pl.col("dimension") == "bond")
    assert bond.height == 1 and bond["size"][0] == 4 and bond["example_quote"][0] is None
    assert cluster_rationales(docs, language_col=None).equals(clusters)


def test_cluster_sizes_scale_back_when_a_group_is_sampled():
    docs = themed_docs().filter(pl.col("dimension") == "task")
    clusters = cluster_rationales(docs, language_col=None, quote_col=None, max_docs=40, k=2)
    assert clusters["size"].sum() == pytest.approx(docs.height, abs=1)
    assert clusters["example_quote"].null_count() == clusters.height


def test_mean_interval_is_the_t_interval_and_null_where_it_cannot_be_formed():
    rng = np.random.default_rng(5)
    samples = [rng.normal(3, 1, k) for k in (2, 5, 40)]
    mean = pl.Series([x.mean() for x in samples] + [3.0, 3.0, 3.0, None])
    sd = pl.Series([x.std(ddof=1) for x in samples] + [0.0, 1.0, None, 1.0])
    n = pl.Series([len(x) for x in samples] + [7, 1, 9, 9])
    lo, hi = mean_interval(mean, sd, n, alpha=0.1)
    for i, x in enumerate(samples):
        ci = stats.ttest_1samp(x, 0).confidence_interval(0.9)
        assert (lo[i], hi[i]) == pytest.approx((ci.low, ci.high))
    assert (lo[3], hi[3]) == (3.0, 3.0)  # no spread: the mean is the interval
    assert lo[4:].to_list() == hi[4:].to_list() == [None, None, None]  # n = 1, no sd, no mean


def test_wilson_interval_matches_the_formula_by_hand():
    z = stats.norm.ppf(0.975)

    def wilson(k: int, n: int) -> tuple[float, float]:
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return centre - half, centre + half

    lo, hi = wilson_interval(pl.Series([7, 0, 20, 3, None]), pl.Series([20, 12, 20, 0, 5]), 0.05)
    for i, (k, n) in enumerate([(7, 20), (0, 12), (20, 20)]):
        assert (lo[i], hi[i]) == pytest.approx(wilson(k, n))
    assert lo[1] == pytest.approx(0.0) and hi[2] == pytest.approx(1.0)
    assert lo[3:].to_list() == hi[3:].to_list() == [None, None]  # no trials, no count


def test_interval_columns_land_next_to_their_estimate():
    frame = pl.DataFrame({"g": ["a", "b"], "mean": [1.0, 2.0], "sd": [1.0, 2.0], "n": [10, 20]})
    with_ci = with_mean_interval(frame, 0.05)
    assert with_ci.columns == ["g", "mean", "mean_lo", "mean_hi", "sd", "n"]
    shares = frame.with_columns(share=pl.Series([0.5, 0.25]))
    with_ci = with_wilson_interval(
        shares, 0.05, share="share", successes=pl.Series([5, 5]), trials=pl.Series([10, 20])
    )
    assert with_ci.columns[-3:] == ["share", "share_lo", "share_hi"]
    assert with_ci["share_lo"][1] < 0.25 < with_ci["share_hi"][1]


def test_a_source_with_one_reaction_gets_cell_intervals_but_no_test():
    transitions = pl.DataFrame(
        {
            "source": ["a", "a", "a", "a", "b", "b"],
            "strategy": ["q", "q", "r", "r", "q", "r"],
            "reaction": ["+", "-", "+", "-", "+", "+"],
            "n": [30, 10, 5, 25, 4, 6],
            "share": [0.75, 0.25, 5 / 30, 25 / 30, 1.0, 1.0],
        }
    )
    cells, tests, notes = transition_statistics(transitions, alpha=0.05)
    assert tests["source"].to_list() == ["a"] and any("b: no test" in n for n in notes)
    table = np.array([[30, 10], [5, 25]])
    chi2, p, dof, expected = stats.chi2_contingency(table)  # df = 1: with Yates' correction
    v = association(table, method="cramer")
    assert tests.row(0) == pytest.approx(("a", 70, chi2, dof, p, v))
    a = cells.filter(pl.col("source") == "a")
    residuals = (table - expected) / np.sqrt(expected)
    assert a["residual"].to_list() == pytest.approx(residuals.ravel().tolist())
    b = cells.filter(pl.col("source") == "b")
    assert b["residual"].to_list() == pytest.approx([0.0, 0.0])  # one reaction: as expected
    assert b["share_hi"].to_list() == pytest.approx([1.0, 1.0]) and b["share_lo"][0] < 1
