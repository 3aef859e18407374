"""What an analysis is asked for: outcomes (`--outcome`: a score, a label, or NAME=TERM-TERM) and
groups (`--by`), parsed against the corpus's label and metadata keys into the frame columns they
read; a mistake is one AnalysisError line naming the option."""

from __future__ import annotations

import re
from dataclasses import dataclass

import polars as pl

from care_ray.analytics.features import BASE_FEATURES
from care_ray.common.errors import UserError

BASE_BY = ("source", "language")
ID_COLUMNS = ["session_id", "source", "client_id", "counselor_id", "session_index"]


class AnalysisError(UserError):
    """A mistake in what was asked of the analysis (printed as one line by the CLI)."""


@dataclass(frozen=True)
class Term:
    sign: float
    column: str  # a column of the session frame: a score column or labels.KEY


@dataclass(frozen=True)
class Outcome:
    name: str
    terms: tuple[Term, ...]

    def expr(self) -> pl.Expr:
        total = pl.lit(0.0)
        for term in self.terms:
            total = total + term.sign * pl.col(term.column).cast(pl.Float64)
        return total.alias(self.name)


@dataclass(frozen=True)
class GroupBy:
    name: str  # the column in the session frame and the `group_by` / `by` value in the tables
    column: str  # source | language | labels.KEY | metadata.KEY
    values: tuple[str, ...] | None = None  # a two-group split: these values vs "other"


# --- parsing what was asked ------------------------------------------------------------------------


def _split_list(specs: list[str]) -> list[str]:
    return [part.strip() for spec in specs for part in spec.split(",") if part.strip()]


def _resolve_ref(ref: str, score_columns: tuple[str, ...], labels: list[str]) -> tuple[str, str]:
    """(default outcome name, frame column) for one outcome term."""
    if ref.startswith("labels."):
        key = ref[len("labels.") :]
        if key not in labels:
            raise AnalysisError(
                f"unknown label {key!r} in --outcome; the corpus has labels: {', '.join(labels) or 'none'}"
            )
        return key, f"labels.{key}"
    if ref.startswith("scores."):
        ref = ref[len("scores.") :]
    if ref in score_columns:
        return ref, ref
    if ref in labels:
        return ref, f"labels.{ref}"
    have = [f"scores: {', '.join(score_columns)}"] if score_columns else ["no --scores given"]
    raise AnalysisError(
        f"unknown outcome {ref!r}; {have[0]}; labels: {', '.join(labels) or 'none'}"
    )


def parse_outcomes(
    specs: list[str], score_columns: tuple[str, ...], labels: list[str]
) -> list[Outcome]:
    """Outcome specs (see OUTCOME_HELP) → outcomes; defaults: the scores' dimensions, else every label."""
    parts = _split_list(specs)
    if not parts:
        if score_columns:
            parts = list(score_columns)
        elif labels:
            parts = [f"labels.{key}" for key in labels]
        else:  # nothing to score sessions by: the analysis is of the features alone
            return []
    outcomes = []
    for part in parts:
        if "=" in part:
            name, expr = (s.strip() for s in part.split("=", 1))
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise AnalysisError(
                    f"--outcome {part!r}: the name before '=' must be a plain identifier"
                )
            tokens = [t for t in re.split(r"\s*([+-])\s*", expr) if t != ""]
            if tokens and tokens[0] not in "+-":
                tokens.insert(0, "+")
            if (
                len(tokens) < 2
                or len(tokens) % 2
                or any(tokens[i] not in "+-" for i in range(0, len(tokens), 2))
            ):
                raise AnalysisError(
                    f"--outcome {part!r}: expected NAME=TERM-TERM (terms: goal, task, bond, labels.KEY)"
                )
            terms = tuple(
                Term(1.0 if sign == "+" else -1.0, _resolve_ref(ref, score_columns, labels)[1])
                for sign, ref in zip(tokens[::2], tokens[1::2], strict=True)
            )
            outcomes.append(Outcome(name, terms))
        else:
            name, column = _resolve_ref(part, score_columns, labels)
            outcomes.append(Outcome(name, (Term(1.0, column),)))
    names = [o.name for o in outcomes]
    reserved = set(ID_COLUMNS) | set(BASE_FEATURES) | {"started_at", "language"}
    clash = sorted({n for n in names if names.count(n) > 1 or n in reserved})
    if clash:
        raise AnalysisError(
            f"outcome name(s) {', '.join(clash)} repeat or clash with a column name; name them with NAME=…"
        )
    return outcomes


def _resolve_column(ref: str, metadata: list[str], labels: list[str]) -> str:
    if ref in BASE_BY:
        return ref
    for kind, keys in (("metadata", metadata), ("labels", labels)):
        if ref.startswith(kind + "."):
            if ref[len(kind) + 1 :] not in keys:
                raise AnalysisError(
                    f"unknown --by column {ref!r}; the corpus has {kind} keys: {', '.join(keys) or 'none'}"
                )
            return ref
    if ref in metadata:
        return f"metadata.{ref}"
    if ref in labels:
        return f"labels.{ref}"
    raise AnalysisError(
        f"unknown --by column {ref!r}; choose {', '.join(BASE_BY)}, metadata keys "
        f"({', '.join(metadata) or 'none'}) or labels ({', '.join(labels) or 'none'})"
    )


def parse_by(specs: list[str], metadata: list[str], labels: list[str]) -> list[GroupBy]:
    groups: list[GroupBy] = []
    for spec in specs:
        parts = [spec.strip()] if "=" in spec else _split_list([spec])
        for part in parts:
            if "=" in part:
                name, rest = (s.strip() for s in part.split("=", 1))
                ref, _, values = rest.partition(":")
                vals = tuple(v.strip() for v in values.split(",") if v.strip())
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or not vals:
                    raise AnalysisError(
                        f"--by {part!r}: expected NAME=COLUMN:VALUE[,VALUE…], e.g. failed=metadata.split:failed"
                    )
                groups.append(GroupBy(name, _resolve_column(ref.strip(), metadata, labels), vals))
            else:
                column = _resolve_column(part, metadata, labels)
                groups.append(GroupBy(column, column))
    names = [g.name for g in groups]
    if len(set(names)) < len(names):
        raise AnalysisError(f"--by names repeat: {', '.join(names)}")
    return groups
