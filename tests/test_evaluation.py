"""Agreement statistics, dimension means, the counselor baseline, fold summaries, ROUGE."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from care_ray.contracts.rubric import load_rubric
from care_ray.evaluation.metrics import (
    agreement,
    counselor_gap,
    dimension_means,
    fold_summary,
    lcs_length,
    long_scores_agreement,
    rationale_overlap,
    relative_gain,
    rouge_l,
    rouge_n,
    wide_dimension_scores,
)


@pytest.fixture(scope="module")
def rubric():
    return load_rubric()


def test_agreement_matches_scipy_and_numpy():
    rng = np.random.default_rng(0)
    t = rng.uniform(1, 5, 50)
    p = t + rng.normal(0, 1, 50)
    a = agreement(p, t)
    assert a["pearson"] == pytest.approx(np.corrcoef(p, t)[0, 1])
    assert a["spearman"] == pytest.approx(stats.spearmanr(p, t).statistic)
    assert a["mse"] == pytest.approx(np.mean((p - t) ** 2))
    assert a["n"] == 50


def test_undefined_correlations_are_nan_not_zero():
    a = agreement([4, 4, 4], [1, 2, 5])
    assert (
        math.isnan(a["pearson"])
        and math.isnan(a["spearman"])
        and a["mse"] == pytest.approx((9 + 4 + 1) / 3)
    )
    b = agreement([1.0, float("nan"), 3.0], [1.0, 2.0, float("nan")])
    assert b["n"] == 1 and math.isnan(b["pearson"])


def test_dimension_means_are_means_of_the_scored_items(rubric):
    dims = {i.id: i.dimension for i in rubric.items}
    sids = ["a"] * 12 + ["b"] * 3
    iids = list(range(1, 13)) + [3, 5, 7]
    scores = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, None] + [5, 4, None]
    m = dimension_means(sids, iids, scores, dims)
    # goal = items 4, 6, 8, 11; task = 1, 2, 10, 12 (12 missing); bond = 3, 5, 7, 9
    assert m["goal"]["a"] == pytest.approx((4 + 1 + 3 + 1) / 4)
    assert m["task"]["a"] == pytest.approx((1 + 2 + 5) / 3)
    assert m["bond"]["a"] == pytest.approx((3 + 5 + 2 + 4) / 4)
    assert m["bond"]["b"] == pytest.approx(4.5) and "b" not in m["goal"]


def test_long_tables_agree_per_dimension(rubric):
    rng = np.random.default_rng(1)
    truth_rows, pred_rows = [], []
    for s in range(40):
        level = rng.integers(1, 6)
        for i in range(1, 13):
            t = int(np.clip(level + rng.integers(-1, 2), 1, 5))
            truth_rows.append({"session_id": f"s{s}", "item_id": i, "score": t})
            pred_rows.append({"session_id": f"s{s}", "item_id": i, "score": t if i % 3 else 3})
    res = long_scores_agreement(
        pa.Table.from_pylist(pred_rows), pa.Table.from_pylist(truth_rows), rubric
    )
    assert set(res) == {"goal", "task", "bond"}
    for m in res.values():
        assert m["n"] == 40 and 0.5 < m["pearson"] <= 1.0


def test_counselor_gap_and_the_papers_headline_ratio(rubric):
    client = np.array([[5] * 12, [4] * 12, [2] * 12, [1] * 12], dtype=float)
    counselor = client + 1
    counselor[3] = np.nan  # the counselor did not rate this session
    gap = counselor_gap(counselor, client, rubric)
    for dim in ("goal", "task", "bond"):
        assert gap[dim]["n"] == 3
        assert gap[dim]["pearson"] == pytest.approx(1.0)
        assert gap[dim]["mean_gap"] == pytest.approx(1.0)
        assert gap[dim]["mse"] == pytest.approx(1.0)
    assert relative_gain(0.52, 0.30) == pytest.approx(0.7333, abs=1e-4)  # the paper's +73% for Goal
    assert math.isnan(relative_gain(0.5, 0.0))
    w = wide_dimension_scores(np.array([[np.nan] * 12]), {i.id: i.dimension for i in rubric.items})
    assert all(math.isnan(v[0]) for v in w.values())


def test_fold_summary_mean_and_sd():
    s = fold_summary([{"r": 0.5, "x": float("nan")}, {"r": 0.7, "x": 1.0}, {"r": 0.6}])
    assert (
        s["r"]["mean"] == pytest.approx(0.6)
        and s["r"]["sd"] == pytest.approx(0.1)
        and s["r"]["n"] == 3
    )
    assert s["x"]["n"] == 1 and math.isnan(s["x"]["sd"])


def test_rouge_by_hand():
    assert lcs_length("a b c d e".split(), "a c e f".split()) == 3
    # ROUGE-1: 5 shared unigrams (the, cat, on, the, mat); P = 5/5, R = 5/6
    assert rouge_n("The cat sat on the mat", "the cat on the mat") == pytest.approx(
        2 * 1 * (5 / 6) / (1 + 5 / 6)
    )
    assert rouge_l("a b c d", "a c d") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert rouge_n("x y", "z w") == 0.0 and rouge_l("", "a") == 0.0
    # Chinese is compared character by character
    assert rouge_n("咨询师关心我", "咨询师很关心我") == pytest.approx(2 * (6 / 7) * 1 / (6 / 7 + 1))
    res = rationale_overlap(
        ["I felt heard", None, "we set goals"], ["I felt heard", "x", "no goals"]
    )
    assert (
        res["n"] == 2 and res["skipped"] == 1 and res["rouge1"] == pytest.approx((1.0 + 0.4) / 2)
    )  # P 1/2, R 1/3 → F 0.4
