"""Expert review of drafted rationales: a review file out (`export`), decisions back (`import`).

The review file (JSON lines or CSV, by its suffix) has one row per draft: the item, the rating it
explains, the draft, its flags and the dialogue around each quote, then the reviewer's columns —
decision (accept | edit | reject), edited_text, reviewer, and optional 1-5 ratings of the draft's
faithfulness, relevance and informativeness (the paper's cross-check), and a comment. A second
reviewer fills only the ratings, on a sample, and the agreement between reviewers is reported.

Import checks every row before writing anything, then keeps, in the draft folder:

    reviews.parquet           the latest decision per draft, with its text, quotes and reviewer
    quality_ratings.parquet   the latest ratings per (draft, reviewer)
    review.json               counts per reviewer, pending drafts, ratings and their agreement

`rationale_table` joins drafts and decisions into the table `sft-data --rationales` reads."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from care_ray.cluster.storage import location
from care_ray.common.errors import UserError
from care_ray.contracts.output import normalize_quote
from care_ray.rationales.tables import (
    CRITERIA,
    DECISIONS,
    RATING_SCHEMA,
    RATINGS_FILE,
    REVIEW_SCHEMA,
    REVIEWS_FILE,
    SUMMARY_FILE,
    attach_review_summary,
    read_drafts,
    read_reviews,
    review_summary,
    stored_table,
)

REVIEWER_COLUMNS = ("decision", "edited_text", "reviewer", *CRITERIA, "comment")
REVIEW_FILE_COLUMNS = (
    "review_id",
    "session_id",
    "item_id",
    "dimension",
    "statement",
    "rating",
    "rating_label",
    "draft",
    "quotes",
    "flags",
    "excerpt",
    *REVIEWER_COLUMNS,
)
RATIONALE_SCHEMA = pa.schema(
    [
        ("session_id", pa.string()),
        ("item_id", pa.int32()),
        ("dimension", pa.string()),
        ("rating", pa.int8()),
        ("status", pa.string()),  # reviewed | draft | rejected
        ("text", pa.string()),
        ("quotes", pa.list_(pa.string())),
        ("flags", pa.list_(pa.string())),
        ("decision", pa.string()),
        ("reviewer", pa.string()),
    ]
)
_EXCERPT_CONTEXT = 1  # turns before and after the one holding a quote


class ReviewError(UserError):
    """A review file the import cannot take; nothing was written."""


def review_id(session_id: str, item_id: int) -> str:
    return f"{session_id}#{item_id}"


def quote_excerpt(turns: Sequence[Mapping[str, Any]], quote: str, labels: Mapping[str, str]) -> str:
    """The turns around the one that holds `quote`, speaker-labelled; a note when none does."""
    wanted = normalize_quote(quote)
    for i, turn in enumerate(turns):
        if wanted and wanted in normalize_quote(turn["text"]):
            lo, hi = max(0, i - _EXCERPT_CONTEXT), min(len(turns), i + _EXCERPT_CONTEXT + 1)
            return "\n".join(
                f"{labels.get(t['role'], t['role'])}: {' '.join(str(t['text']).split())}"
                for t in turns[lo:hi]
            )
    return f'[not in the transcript: "{quote}"]'


def _drafted_sessions(corpus: str, session_ids: set[str]) -> dict[str, dict[str, Any]]:
    """session_id → {turns, language} for the drafted sessions (the transcript is read once)."""
    from care_ray.corpus.reader import sessions_dataset

    found: dict[str, dict[str, Any]] = {}
    dataset = sessions_dataset(corpus)
    for batch in dataset.to_batches(columns=["session_id", "turns", "language"], batch_size=512):
        ids = batch.column(0)
        mask = pc.is_in(ids, value_set=pa.array(sorted(session_ids), pa.string()))
        for row in batch.filter(mask).to_pylist():
            found[row["session_id"]] = row
    return found


def _draft_corpus(drafts_dir: str, sessions: str | None) -> str:
    if sessions:
        return sessions
    text = location(drafts_dir).join("manifest.json").read_text()
    if text is None:
        raise ReviewError(f"{drafts_dir} has no manifest.json; pass --sessions")
    return str(json.loads(text)["config"]["sessions"])


def review_rows(
    drafts: pa.Table,
    corpus: str,
    only_flagged: bool = False,
    sample: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The review file's rows: every draft (or the flagged ones, or a seeded sample of them)."""
    from care_ray.contracts.rubric import rubric_for_language

    rows = drafts.to_pylist()
    if only_flagged:
        rows = [r for r in rows if r["flags"]]
    if sample is not None and sample < len(rows):
        rows = sorted(
            random.Random(seed).sample(rows, sample), key=lambda r: (r["session_id"], r["item_id"])
        )
    sessions = _drafted_sessions(corpus, {r["session_id"] for r in rows})
    out = []
    for r in rows:
        session = sessions.get(r["session_id"])
        if session is None:
            raise ReviewError(f"session {r['session_id']} is not in the corpus {corpus}")
        rubric = rubric_for_language(r["language"])
        labels = {"client": rubric.prompt.client_label, "counselor": rubric.prompt.counselor_label}
        excerpts = [quote_excerpt(session["turns"], q, labels) for q in r["quotes"]]
        out.append(
            {
                "review_id": review_id(r["session_id"], r["item_id"]),
                "session_id": r["session_id"],
                "item_id": r["item_id"],
                "dimension": r["dimension"],
                "statement": rubric.item(r["item_id"]).text,
                "rating": r["rating"],
                "rating_label": r["rating_label"],
                "draft": r["rationale"],
                "quotes": list(r["quotes"]),
                "flags": list(r["flags"]),
                "excerpt": "\n---\n".join(excerpts) if excerpts else "[the draft quotes nothing]",
                **{c: "" for c in REVIEWER_COLUMNS},
            }
        )
    return out


def write_review_file(rows: list[dict[str, Any]], path: Path) -> None:
    """JSON lines (lists stay lists) or CSV (lists joined by ' | ', UTF-8 with a BOM so that
    spreadsheet programs read Chinese text right), by the file's suffix."""
    import polars as pl

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    flat = [
        {k: " | ".join(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows
    ]
    frame = pl.DataFrame(flat, schema={c: pl.String for c in REVIEW_FILE_COLUMNS}, strict=False)
    frame.write_csv(path, include_bom=True)


def export_review(
    drafts_dir: str,
    out_file: Path,
    sessions: str | None = None,
    only_flagged: bool = False,
    sample: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """`care-ray rationales export`: the review file for a draft folder."""
    if out_file.suffix not in (".jsonl", ".csv"):
        raise ReviewError(f"--out {out_file}: the review file is .jsonl or .csv")
    drafts = read_drafts(drafts_dir)
    rows = review_rows(drafts, _draft_corpus(drafts_dir, sessions), only_flagged, sample, seed)
    write_review_file(rows, out_file)
    return {
        "review_file": str(out_file),
        "rows": len(rows),
        "flagged": sum(1 for r in rows if r["flags"]),
    }


def read_review_file(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) pairs of a review file, every value as text ('' when empty)."""
    import polars as pl

    if not path.exists():
        raise ReviewError(f"review file not found: {path}")
    if path.suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ReviewError(f"{path}:{n}: not JSON ({e.msg})") from None
                if not isinstance(value, dict):
                    raise ReviewError(f"{path}:{n}: a row is a JSON object")
                rows.append((n, {k: _text(v) for k, v in value.items()}))
        return rows
    if path.suffix == ".csv":
        try:
            frame = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")
        except pl.exceptions.PolarsError as e:
            raise ReviewError(f"{path}: not a readable CSV ({e})") from None
        # line numbers as a spreadsheet shows them: the header is line 1
        return [
            (i + 2, {k: _text(v) for k, v in row.items()})
            for i, row in enumerate(frame.iter_rows(named=True))
        ]
    raise ReviewError(f"{path}: a review file is .jsonl or .csv")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " | ".join(map(str, value))
    return str(value).strip()


def _found_quotes(text: str, candidates: Sequence[str], dialogue: str) -> list[str]:
    """Quotes for a reviewed text: the draft's quotes it still contains and quoted spans of it,
    each only if it occurs in the transcript."""
    from care_ray.contracts.output import quotes_in_rationale

    hay = normalize_quote(dialogue)
    kept = [
        q
        for q in candidates
        if normalize_quote(q) in normalize_quote(text) and normalize_quote(q) in hay
    ]
    return list(dict.fromkeys(kept + quotes_in_rationale(text, dialogue)))[:5]


def _parse_rating(value: str, column: str, where: str, problems: list[str]) -> int | None:
    if value == "":
        return None
    try:
        number: float | None = float(value)
    except ValueError:
        number = None
    if number is None or not number.is_integer() or not 1 <= number <= 5:
        problems.append(f"{where}: {column} must be an integer 1-5 or empty, got {value!r}")
        return None
    return int(number)


def check_review_rows(
    files: Sequence[Path], drafts: pa.Table
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every row of every file, checked: (decisions, quality ratings). Raises ReviewError listing
    the problems (up to 20) when there is any, so a bad file changes nothing."""
    known = {
        review_id(s, i): (s, i)
        for s, i in zip(
            drafts.column("session_id").to_pylist(),
            drafts.column("item_id").to_pylist(),
            strict=True,
        )
    }
    problems: list[str] = []
    decisions: dict[str, dict[str, Any]] = {}
    ratings: dict[tuple[str, str], dict[str, Any]] = {}
    for path in files:
        for line, row in read_review_file(path):
            where = f"{path.name}:{line}"
            rid = row.get("review_id", "")
            if rid not in known:
                problems.append(
                    f"{where}: review_id {rid!r} is not a draft of this folder"
                    if rid
                    else f"{where}: no review_id"
                )
                continue
            decision = row.get("decision", "").lower()
            edited = row.get("edited_text", "")
            reviewer = row.get("reviewer", "")
            scores = {c: _parse_rating(row.get(c, ""), c, where, problems) for c in CRITERIA}
            if decision and decision not in DECISIONS:
                problems.append(
                    f"{where}: decision must be accept, edit or reject (or empty), got {decision!r}"
                )
                continue
            if decision == "edit" and not edited:
                problems.append(f"{where}: decision edit needs the edited_text")
            if decision in ("accept", "reject") and edited:
                problems.append(
                    f"{where}: edited_text is given but the decision is {decision}; "
                    "use decision edit"
                )
            if (decision or any(v is not None for v in scores.values())) and not reviewer:
                problems.append(f"{where}: a decision or rating needs the reviewer column")
            if decision:
                earlier = decisions.get(rid)
                if earlier and (earlier["decision"], earlier["edited"]) != (decision, edited):
                    problems.append(
                        f"{where}: {rid} is decided differently in {earlier['source_file']}"
                    )
                session_id, item_id = known[rid]
                decisions[rid] = {
                    "review_id": rid,
                    "session_id": session_id,
                    "item_id": item_id,
                    "decision": decision,
                    "edited": edited,
                    "reviewer": reviewer,
                    "comment": row.get("comment", ""),
                    "source_file": path.name,
                }
            if any(v is not None for v in scores.values()):
                ratings[(rid, reviewer)] = {
                    "review_id": rid,
                    "reviewer": reviewer,
                    **scores,
                    "source_file": path.name,
                }
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ReviewError(
            f"{len(problems)} problem(s) in the review file(s); nothing was imported:\n  "
            f"{shown}{more}"
        )
    return list(decisions.values()), list(ratings.values())


def _merge(folder: Any, name: str, schema: pa.Schema, new: pa.Table, key: list[str]) -> pa.Table:
    """The stored table with `new` rows replacing those of the same key."""
    old = stored_table(folder, name, schema)
    if new.num_rows == 0:
        return old
    new_keys = set(zip(*(new.column(k).to_pylist() for k in key), strict=True))
    keep = [k not in new_keys for k in zip(*(old.column(k).to_pylist() for k in key), strict=True)]
    return pa.concat_tables([old.filter(pa.array(keep, pa.bool_())), new])


def import_reviews(
    drafts_dir: str, files: Sequence[Path], sessions: str | None = None
) -> dict[str, Any]:
    """`care-ray rationales import`: check the files, merge their decisions and ratings into the
    draft folder (a later import of the same draft replaces the earlier one), summarise."""
    drafts = read_drafts(drafts_dir)
    decisions, ratings = check_review_rows(files, drafts)
    by_pair = {(r["session_id"], r["item_id"]): r for r in drafts.to_pylist()}
    corpus = _draft_corpus(drafts_dir, sessions)
    dialogues = {
        sid: "\n".join(str(t["text"]) for t in s["turns"])
        for sid, s in _drafted_sessions(corpus, {d["session_id"] for d in decisions}).items()
    }
    review_rows_: list[dict[str, Any]] = []
    for d in decisions:
        draft = by_pair[(d["session_id"], d["item_id"])]
        text = {"accept": draft["rationale"], "edit": d["edited"], "reject": None}[d["decision"]]
        quotes = (
            _found_quotes(text, draft["quotes"], dialogues.get(d["session_id"], "")) if text else []
        )
        review_rows_.append(
            {
                k: d[k]
                for k in (
                    "review_id",
                    "session_id",
                    "item_id",
                    "decision",
                    "reviewer",
                    "comment",
                    "source_file",
                )
            }
            | {"text": text, "quotes": quotes}
        )
    folder = location(drafts_dir)
    reviews = _merge(
        folder,
        REVIEWS_FILE,
        REVIEW_SCHEMA,
        pa.Table.from_pylist(review_rows_, schema=REVIEW_SCHEMA),
        ["review_id"],
    )
    quality = _merge(
        folder,
        RATINGS_FILE,
        RATING_SCHEMA,
        pa.Table.from_pylist(ratings, schema=RATING_SCHEMA),
        ["review_id", "reviewer"],
    )
    folder.join(REVIEWS_FILE).write_parquet(reviews)
    folder.join(RATINGS_FILE).write_parquet(quality)
    summary = review_summary(drafts, reviews, quality)
    summary["imported"] = {
        "files": [str(f) for f in files],
        "decisions": len(decisions),
        "ratings": len(ratings),
    }
    folder.join(SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    attach_review_summary(folder, summary)
    return summary


def rationale_table(drafts: pa.Table, reviews: pa.Table) -> pa.Table:
    """One row per draft: its reviewed text where decided (rejected: no text), else the draft."""
    decided = {(r["session_id"], r["item_id"]): r for r in reviews.to_pylist()}
    rows = []
    for d in drafts.to_pylist():
        r = decided.get((d["session_id"], d["item_id"]))
        status = "draft" if r is None else ("rejected" if r["decision"] == "reject" else "reviewed")
        rows.append(
            {
                "session_id": d["session_id"],
                "item_id": d["item_id"],
                "dimension": d["dimension"],
                "rating": d["rating"],
                "status": status,
                "text": d["rationale"] if r is None else r["text"],
                "quotes": d["quotes"] if r is None else r["quotes"],
                "flags": d["flags"],
                "decision": None if r is None else r["decision"],
                "reviewer": None if r is None else r["reviewer"],
            }
        )
    return pa.Table.from_pylist(rows, schema=RATIONALE_SCHEMA)


def rationale_lookup(drafts_dir: str | Path) -> dict[tuple[str, int], dict[str, Any]]:
    """(session_id, item_id) → its rationale-table row, for `sft-data --rationales`."""
    table = rationale_table(read_drafts(str(drafts_dir)), read_reviews(str(drafts_dir)))
    return {(r["session_id"], r["item_id"]): r for r in table.to_pylist()}
