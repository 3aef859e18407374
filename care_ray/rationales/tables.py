"""The tables a draft folder keeps, read and summarised in one place for drafting and review.

drafts.parquet            one row per drafted (session, item): rating, draft, quotes, flags
reviews.parquet           the latest decision per draft, with its text, quotes and reviewer
quality_ratings.parquet   the latest 1-5 ratings per (draft, reviewer)
manifest.json             the draft run's counts, and the review's ("review")"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from care_ray.cluster.storage import location

DECISIONS = ("accept", "edit", "reject")
CRITERIA = ("faithfulness", "relevance", "informativeness")
DRAFTS_FILE = "drafts.parquet"
FLAGS = ("score_mismatch", "quote_not_found", "no_quotes")
DRAFT_SCHEMA = pa.schema(
    [
        ("session_id", pa.string()),
        ("item_id", pa.int32()),
        ("dimension", pa.string()),
        ("language", pa.string()),
        ("rubric_id", pa.string()),
        ("rating", pa.int8()),  # the rating the teacher was asked to explain
        ("rating_label", pa.string()),  # client_wai, or the proxy label it came from
        ("teacher_score", pa.int8()),  # the score the teacher answered
        ("rationale", pa.string()),
        ("quotes", pa.list_(pa.string())),
        ("quote_found", pa.float64()),  # share of quotes found in the transcript
        ("flags", pa.list_(pa.string())),  # FLAGS that apply; [] = nothing to look at first
    ]
)
REVIEWS_FILE = "reviews.parquet"
RATINGS_FILE = "quality_ratings.parquet"
SUMMARY_FILE = "review.json"
REVIEW_SCHEMA = pa.schema(
    [
        ("review_id", pa.string()),
        ("session_id", pa.string()),
        ("item_id", pa.int32()),
        ("decision", pa.string()),
        ("text", pa.string()),  # what training uses: the draft (accept), the edit, or null (reject)
        ("quotes", pa.list_(pa.string())),  # quotes of that text found in the transcript
        ("reviewer", pa.string()),
        ("comment", pa.string()),
        ("source_file", pa.string()),
    ]
)
RATING_SCHEMA = pa.schema(
    [("review_id", pa.string()), ("reviewer", pa.string())]
    + [(c, pa.int8()) for c in CRITERIA]
    + [("source_file", pa.string())]
)


def read_drafts(folder: str) -> pa.Table:
    """A draft folder's drafts.parquet (local path or URI)."""
    import pyarrow.parquet as pq

    from care_ray.cluster.storage import location

    path = location(folder).join(DRAFTS_FILE)
    if not path.exists():
        raise FileNotFoundError(
            f"no {DRAFTS_FILE} in {folder}: run `care-ray rationales draft --out {folder}` first"
        )
    return pq.read_table(path.path, filesystem=path.fs, schema=DRAFT_SCHEMA)


def read_reviews(drafts_dir: str) -> pa.Table:
    return stored_table(location(drafts_dir), REVIEWS_FILE, REVIEW_SCHEMA)


def attach_review_summary(folder: Any, summary: dict[str, Any] | None = None) -> None:
    """The draft folder's manifest.json carries the review's counts too (per reviewer, pending)."""
    if summary is None:
        if not folder.join(REVIEWS_FILE).exists():
            return
        summary = review_summary(
            read_drafts(folder.uri),
            read_reviews(folder.uri),
            stored_table(folder, RATINGS_FILE, RATING_SCHEMA),
        )
    text = folder.join("manifest.json").read_text()
    manifest = json.loads(text) if text else {}
    manifest["review"] = {k: v for k, v in summary.items() if k != "imported"}
    folder.join("manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    )


def stored_table(folder: Any, name: str, schema: pa.Schema) -> pa.Table:
    """A table the review keeps in the draft folder (empty when there is none yet)."""
    path = folder.join(name)
    if not path.exists():
        return schema.empty_table()
    return pq.read_table(path.path, filesystem=path.fs, schema=schema)


def review_summary(drafts: pa.Table, reviews: pa.Table, quality: pa.Table) -> dict[str, Any]:
    """Counts per reviewer, pending drafts, reviewed text lengths, mean ratings, and agreement."""
    from care_ray.rationales.stats import length_summary

    per_reviewer: dict[str, dict[str, int]] = {}
    for reviewer, decision in zip(
        reviews.column("reviewer").to_pylist(), reviews.column("decision").to_pylist(), strict=True
    ):
        counts = per_reviewer.setdefault(reviewer, {d: 0 for d in DECISIONS})
        counts[decision] += 1
    dims = {
        (s, i): d
        for s, i, d in zip(
            drafts.column("session_id").to_pylist(),
            drafts.column("item_id").to_pylist(),
            drafts.column("dimension").to_pylist(),
            strict=True,
        )
    }
    kept = reviews.filter(pc.is_valid(reviews.column("text"))).to_pylist()
    return {
        "drafts": drafts.num_rows,
        "decided": reviews.num_rows,
        "pending": drafts.num_rows - reviews.num_rows,
        "by_decision": {d: sum(c[d] for c in per_reviewer.values()) for d in DECISIONS},
        "by_reviewer": per_reviewer,
        "reviewed_length_chars_by_dimension": length_summary(
            [(dims[(r["session_id"], r["item_id"])], len(r["text"])) for r in kept]
        ),
        "quality_ratings": quality_summary(quality),
    }


def quality_summary(quality: pa.Table) -> dict[str, Any]:
    """Mean rating per criterion and reviewer, and for each pair of reviewers who rated the same
    drafts: how many, exact agreement, agreement within one point and quadratic-weighted Cohen's
    kappa (scikit-learn) per criterion."""
    from sklearn.metrics import cohen_kappa_score

    rows = quality.to_pylist()
    reviewers = sorted({r["reviewer"] for r in rows})
    means = {
        reviewer: {
            c: _mean([r[c] for r in rows if r["reviewer"] == reviewer and r[c] is not None])
            for c in CRITERIA
        }
        for reviewer in reviewers
    }
    by_key = {(r["review_id"], r["reviewer"]): r for r in rows}
    agreement = []
    for a, b in itertools.combinations(reviewers, 2):
        shared = sorted({r for r, who in by_key if who == a} & {r for r, who in by_key if who == b})
        pair: dict[str, Any] = {"reviewers": [a, b], "drafts": len(shared)}
        for c in CRITERIA:
            x = [by_key[(r, a)][c] for r in shared]
            y = [by_key[(r, b)][c] for r in shared]
            both = [(u, v) for u, v in zip(x, y, strict=True) if u is not None and v is not None]
            if not both:
                continue
            u, v = zip(*both, strict=True)
            kappa = cohen_kappa_score(u, v, weights="quadratic", labels=[1, 2, 3, 4, 5])
            pair[c] = {
                "n": len(both),
                "exact": round(sum(p == q for p, q in both) / len(both), 3),
                "within_one": round(sum(abs(p - q) <= 1 for p, q in both) / len(both), 3),
                "weighted_kappa": None if kappa != kappa else round(float(kappa), 3),
            }
        agreement.append(pair)
    return {"ratings": len(rows), "mean_by_reviewer": means, "agreement": agreement}


def _mean(values: Sequence[int]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None
