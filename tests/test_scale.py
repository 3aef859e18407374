"""Scale checks (care_ray.evaluation.scale): α and ω against their formulas and pingouin, SRMR
against a hand computation, and the factor models on data with a planted structure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pingouin as pg
import pytest

from care_ray.evaluation import scale

# WAI-SR item → dimension, written out here so the test does not share the code's mapping.
ITEMS = {"goal": [4, 6, 8, 11], "task": [1, 2, 10, 12], "bond": [3, 5, 7, 9]}
ITEM_DIMS = {i: d for d, items in ITEMS.items() for i in items}


def _simulate(factor_corr: np.ndarray, n: int = 300, noise: float = 0.6, seed: int = 0):
    """Sessions × 12 items: each item = 0.8 × its dimension's factor + noise."""
    rng = np.random.default_rng(seed)
    factors = rng.multivariate_normal(np.zeros(3), factor_corr, n)
    matrix = np.zeros((n, 12))
    for k, items in enumerate(ITEMS.values()):
        for i in items:
            matrix[:, i - 1] = 0.8 * factors[:, k] + noise * rng.normal(size=n)
    return matrix


def test_alpha_matches_the_formula_and_pingouin():
    block = np.array(
        [[1, 2, 2, 1], [3, 3, 4, 3], [4, 5, 4, 4], [2, 2, 3, 2], [5, 4, 5, 5], [3, 4, 3, 3]],
        dtype=float,
    )
    k = block.shape[1]
    by_hand = k / (k - 1) * (1 - block.var(axis=0, ddof=1).sum() / block.sum(axis=1).var(ddof=1))
    alpha, lo, hi = scale.cronbach_alpha(block)
    assert alpha == pytest.approx(by_hand)
    want, ci = pg.cronbach_alpha(data=pd.DataFrame(block))
    assert alpha == pytest.approx(want) and (lo, hi) == pytest.approx(tuple(ci))


def test_omega_is_the_formula_of_the_loadings():
    lam = np.array([0.9, 0.8, 0.7, 0.6])
    assert scale.omega_from_loadings(lam) == pytest.approx(
        lam.sum() ** 2 / (lam.sum() ** 2 + np.sum(1 - lam**2))
    )
    block = _simulate(np.eye(3), n=400)[:, [i - 1 for i in ITEMS["bond"]]]
    loadings = scale.one_factor_loadings(block)
    assert scale.omega(block) == pytest.approx(scale.omega_from_loadings(loadings))
    # items = 0.8 f + N(0, 0.6²): standardized loading 0.8 / 1.0 = 0.8
    assert loadings == pytest.approx(np.full(4, 0.8), abs=0.06)


def test_srmr_is_zero_for_a_perfect_fit_and_matches_a_hand_computation():
    s = np.array([[1.0, 0.5, 0.3], [0.5, 2.0, 0.4], [0.3, 0.4, 1.5]])
    assert scale.srmr(s, s) == 0
    sigma = np.array([[1.0, 0.4, 0.3], [0.4, 2.0, 0.6], [0.3, 0.6, 1.5]])
    rs = s / np.sqrt(np.outer(np.diag(s), np.diag(s)))
    rsig = sigma / np.sqrt(np.outer(np.diag(sigma), np.diag(sigma)))
    residuals = [rs[i, j] - rsig[i, j] for i in range(3) for j in range(i + 1)]
    assert scale.srmr(s, sigma) == pytest.approx(math.sqrt(np.mean(np.square(residuals))))


def test_three_planted_factors_fit_better_than_one():
    corr = np.array([[1, 0.5, 0.4], [0.5, 1, 0.3], [0.4, 0.3, 1]])
    checks = scale.scale_checks(_simulate(corr), ITEM_DIMS, resamples=30)
    fits = {m["model"]: m for m in checks["factor_models"]}
    assert fits["three"]["cfi"] > fits["one"]["cfi"] + 0.1
    assert fits["three"]["rmsea"] < fits["one"]["rmsea"]
    assert fits["three"]["srmr"] < fits["one"]["srmr"]
    assert fits["three"]["df"] == 51 and fits["one"]["df"] == 54
    assert not checks["verdict"]["blob"]
    reliability = {r["dimension"]: r for r in checks["reliability"]}
    assert list(reliability) == ["goal", "task", "bond"]
    for r in reliability.values():
        assert r["omega_lo"] <= r["omega"] <= r["omega_hi"] and r["n"] == 300
    dims = {(r["dimension_a"], r["dimension_b"]): r["r"] for r in checks["dimension_correlations"]}
    assert max(dims.values()) < 0.6
    assert all(0.5 < r["r"] < 0.9 for r in checks["item_rest"])


def test_one_factor_data_is_called_a_blob():
    checks = scale.scale_checks(_simulate(np.ones((3, 3)), noise=0.1), ITEM_DIMS, resamples=0)
    assert checks["verdict"]["blob"]
    assert "nearly interchangeable" in checks["verdict"]["text"]
    assert all(r["alpha"] >= 0.98 for r in checks["reliability"])


def test_too_few_complete_sessions_are_skipped_with_a_reason():
    matrix = _simulate(np.eye(3), n=40)
    matrix[:15, 0] = np.nan
    checks = scale.scale_checks(matrix, ITEM_DIMS)
    assert checks["n_complete"] == 25 and "at least 30" in checks["skipped"]


def test_long_rows_become_a_session_by_item_matrix():
    sessions, matrix = scale.long_item_matrix(["b", "a", "a"], [2, 1, 12], [4, 3, None], 12)
    assert sessions == ["a", "b"] and matrix.shape == (2, 12)
    assert matrix[0, 0] == 3 and matrix[1, 1] == 4 and np.isnan(matrix[0, 11])
