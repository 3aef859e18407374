"""Reading p(value) at the score token from top-k log-probabilities (pure; the real engine's
output is checked in test_scoring)."""

import math

import pytest

from care_ray.contracts.output import output_schema
from care_ray.scoring.distribution import (
    allowed_scores,
    mean_distribution,
    read_score_distribution,
    score_position,
)

LN = math.log


def test_the_score_token_is_the_first_digit_after_the_score_key():
    assert score_position(['{"', "score", '":', "4", ',"', "rationale"]) == 3
    assert score_position(["{", '"score"', ":", "2"]) == 3
    assert score_position(['{"rationale":"', "3"]) is None
    assert score_position(["x" * 40, "3"]) is None


def test_probabilities_are_renormalized_over_allowed_values_and_unseen_mass_is_bounded():
    chosen = ['{"score":', "4", ","]
    top = [
        [('{"score":', LN(0.9))],
        [("4", LN(0.5)), ("5", LN(0.2)), ("3", LN(0.1)), ("The", LN(0.1)), ("4", LN(0.5))],
        [(",", 0.0)],
    ]
    d = read_score_distribution(chosen, top, [1, 2, 3, 4, 5])
    assert d is not None and d.values == (1, 2, 3, 4, 5)
    assert d.probs == pytest.approx((0, 0, 0.125, 0.625, 0.25))
    assert d.expected == pytest.approx(3 * 0.125 + 4 * 0.625 + 5 * 0.25)
    assert d.sd == pytest.approx(
        math.sqrt(sum(p * (v - d.expected) ** 2 for v, p in zip(d.values, d.probs, strict=True)))
    )
    # 1 and 2 are outside the top-k: each at most the smallest listed probability (0.1)
    assert d.unseen_max == pytest.approx(0.2 / (0.8 + 0.2))


def test_a_rubric_of_its_own_values_is_read_on_its_own_scale():
    chosen = ['{"score":', "2"]
    top = [[('{"score":', 0.0)], [("2", LN(0.6)), ("0", LN(0.3)), ("4", LN(0.1))]]
    d = read_score_distribution(chosen, top, [0, 1, 2])
    assert d is not None and d.probs == pytest.approx((1 / 3, 0, 2 / 3))
    assert read_score_distribution(chosen, top, list(range(1, 11))) is None  # 1 vs 10: unreadable
    assert allowed_scores(output_schema()) == (1, 2, 3, 4, 5)
    assert allowed_scores({"properties": {"score": {"minimum": 0, "maximum": 3}}}) == (0, 1, 2, 3)


def test_no_allowed_value_in_the_top_k_gives_no_distribution():
    top = [[('{"score":', 0.0)], [("x", LN(0.9)), ("y", LN(0.1))]]
    assert read_score_distribution(['{"score":', "x"], top, [1, 2, 3, 4, 5]) is None


def test_samples_average():
    chosen = ['{"score":', "4"]
    a = read_score_distribution(chosen, [[], [("4", LN(0.8)), ("5", LN(0.2))]], [4, 5])
    b = read_score_distribution(chosen, [[], [("4", LN(0.4)), ("5", LN(0.6))]], [4, 5])
    assert a is not None and b is not None
    m = mean_distribution([a, b])
    assert (
        m is not None and m.probs == pytest.approx((0.6, 0.4)) and m.expected == pytest.approx(4.4)
    )
