"""What the model believed at the score token: p(value) over the rubric's allowed values, read from
the top-k log-probabilities the engine returns for each generated token (G-Eval's
probability-weighted score; CARE decodes the integer alone).

The answer starts `{"score":` (schemas/output.schema.json puts the score first), so the score is the
first token after that text. The engine's log-probabilities are raw (before the guided-decoding
mask), so they are renormalized over the allowed values. An allowed value outside the top-k has a
probability no larger than the smallest top-k one: that bound, renormalized, is recorded as
`unseen_max` instead of pretending the value had none. Pure: no engine, no Ray."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

SCORE_WITHIN = 16  # generated positions where the score token is looked for: it follows `{"score":`
_BEFORE_SCORE = re.compile(r'^\s*\{\s*"score"\s*:\s*$')
_LEADING_INT = re.compile(r"^\s*(\d+)")


@dataclass(frozen=True)
class ScoreDistribution:
    values: tuple[int, ...]
    probs: tuple[float, ...]  # over `values`, summing to 1
    unseen_max: float  # the most renormalized mass allowed values outside the top-k could hold

    @property
    def expected(self) -> float:
        return sum(v * p for v, p in zip(self.values, self.probs, strict=True))

    @property
    def sd(self) -> float:
        m = self.expected
        return math.sqrt(
            max(0.0, sum(p * (v - m) ** 2 for v, p in zip(self.values, self.probs, strict=True)))
        )


def allowed_scores(schema: dict) -> tuple[int, ...] | None:
    """The score values an output schema allows (its enum, or minimum..maximum), else None."""
    score = schema.get("properties", {}).get("score", {})
    if "enum" in score:
        return tuple(sorted(int(v) for v in score["enum"]))
    if "minimum" in score and "maximum" in score:
        return tuple(range(int(score["minimum"]), int(score["maximum"]) + 1))
    return None


def score_position(chosen: Sequence[str]) -> int | None:
    """The index of the generated token that carries the score: the first one after `{"score":`
    whose text starts with a digit; None when the answer does not start that way."""
    text = ""
    for i, piece in enumerate(chosen):
        if _BEFORE_SCORE.match(text) and _LEADING_INT.match(piece):
            return i
        text += piece
        if len(text) > 32 and not _BEFORE_SCORE.match(text):
            return None
    return None


def read_score_distribution(
    chosen: Sequence[str],
    candidates: Sequence[Sequence[tuple[str, float]]],
    allowed: Sequence[int],
) -> ScoreDistribution | None:
    """`chosen[i]`: the text of generated token i; `candidates[i]`: (token text, log-probability)
    of the top-k tokens at position i (the chosen one included). None where the score token is not
    found, or the rubric has values of two digits or more (a first digit would not tell 1 from
    10), or no allowed value is among the top-k."""
    values = tuple(sorted(allowed))
    if not values or values[0] < 0 or values[-1] > 9:
        return None
    pos = score_position(chosen)
    if pos is None or pos >= len(candidates):
        return None
    mass = dict.fromkeys(values, 0.0)
    seen: set[int] = set()
    smallest = math.inf
    # the chosen token may be listed twice (as the chosen one and by its top-k rank)
    for text, logprob in set(candidates[pos]):
        p = math.exp(logprob)
        smallest = min(smallest, p)
        m = _LEADING_INT.match(text)
        if m and int(m.group(1)) in mass:
            mass[int(m.group(1))] += p
            seen.add(int(m.group(1)))
    total = sum(mass.values())
    if not seen or total <= 0:
        return None
    bound = (len(values) - len(seen)) * smallest
    return ScoreDistribution(
        values=values,
        probs=tuple(mass[v] / total for v in values),
        unseen_max=bound / (total + bound),
    )


def mean_distribution(dists: Sequence[ScoreDistribution]) -> ScoreDistribution | None:
    """Several samples' distributions for one item, averaged (they share the prompt, so they are
    the same but for numerical noise)."""
    if not dists:
        return None
    n = len(dists)
    return ScoreDistribution(
        values=dists[0].values,
        probs=tuple(sum(d.probs[j] for d in dists) / n for j in range(len(dists[0].values))),
        unseen_max=max(d.unseen_max for d in dists),
    )
