"""ESConv (Liu et al., ACL 2021): the JSON-lines split files and FailedESConv.json, whose turns
have another shape. Survey ratings become labels; supporter strategies stay on their turns."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from care_ray.contracts.session import ContractError, Reason
from care_ray.corpus.ingest.records import RawRecord, iter_json_any

SOURCE = "esconv"
# usr/sys in the split files, speaker/listener in FailedESConv.json
ROLE_OF_SPEAKER = {
    "usr": "client",
    "sys": "counselor",
    "speaker": "client",
    "listener": "counselor",
}
# FailedESConv.json spells some strategies differently from strategy.json
STRATEGY_ALIASES = {
    "Questions": "Question",
    "Other": "Others",
    "Restatement": "Restatement or Paraphrasing",
    "Approval and Reassurance": "Affirmation and Reassurance",
}
SEEKER_LABELS = ("empathy", "relevance", "initial_emotion_intensity", "final_emotion_intensity")
METADATA_KEYS = (
    "experience_type",
    "emotion_type",
    "problem_type",
    "situation",
    "seeker_question1",
    "seeker_question2",
    "supporter_question1",
    "supporter_question2",
)


def _rating(value: Any, what: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ContractError(Reason.BAD_VALUE, f"{what} = {value!r} is not a number") from None
    if not 1 <= f <= 5:
        raise ContractError(Reason.RATING_OUT_OF_RANGE, f"{what} = {value!r} outside 1..5")
    return f


def _turn(t: Any, i: int) -> dict:
    if not isinstance(t, dict):
        raise ContractError(Reason.MALFORMED_RECORD, f"turn {i} is not an object")
    speaker = t.get("speaker")
    annotation = t.get("annotation") or {}
    if "content" in t:  # FailedESConv.json
        text, strategy = t.get("content"), annotation.get("strategy")
        rating = _rating(annotation.get("feedback"), f"turn {i} feedback")
    else:
        text, strategy, rating = t.get("text"), t.get("strategy"), None
    if isinstance(strategy, str):  # anything else is the contract's to reject, not a crash here
        strategy = STRATEGY_ALIASES.get(strategy, strategy)
    if isinstance(text, str):
        text = text.strip()
    return {
        "role": ROLE_OF_SPEAKER.get(speaker, speaker) if isinstance(speaker, str) else speaker,
        "text": text,
        "strategy": strategy,
        "rating": rating,
    }


def esconv_session_id(dialog: Any) -> str:
    """Content-addressed, so ids are stable across file order and a repeated conversation is a duplicate."""
    return (
        "esconv-"
        + hashlib.sha1(
            json.dumps(dialog, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
        ).hexdigest()[:16]
    )


def esconv_to_session(obj: dict, split: str) -> dict:
    dialog = obj.get("dialog")
    if dialog is None:
        raise ContractError(Reason.MISSING_FIELD, "conversation has no 'dialog'")
    if not isinstance(dialog, list):
        raise ContractError(Reason.MALFORMED_RECORD, "'dialog' is not a list")
    session_id = esconv_session_id(dialog)
    seeker = ((obj.get("survey_score") or {}).get("seeker")) or {}
    supporter = ((obj.get("survey_score") or {}).get("supporter")) or {}
    labels = {k: _rating(seeker.get(k), f"seeker {k}") for k in SEEKER_LABELS}
    # Four supporter surveys say relevance "0": the supporter skipped the question, not a rating.
    if str(supporter.get("relevance", "")).strip() not in ("", "0"):
        labels["supporter_relevance"] = _rating(supporter.get("relevance"), "supporter relevance")
    metadata = {k: obj[k] for k in METADATA_KEYS if isinstance(obj.get(k), str) and obj[k].strip()}
    metadata["split"] = split
    return {
        "session_id": session_id,
        "client_id": session_id,  # each ESConv seeker appears once
        "counselor_id": None,
        "session_index": 1,
        "language": "en",
        "source": SOURCE,
        "turns": [_turn(t, i) for i, t in enumerate(dialog)],
        "labels": {k: v for k, v in labels.items() if v is not None} or None,
        "metadata": metadata,
    }


def split_name(path: Path) -> str:
    stem = path.stem.lower()
    return "failed" if stem.startswith("failed") else stem


def read_esconv(paths: list[Path]) -> Iterator[tuple[RawRecord, dict | None]]:
    """(raw record, session dict) pairs; the session is None when the record was rejected
    (its error is set on the raw record)."""
    for path in paths:
        split = split_name(path)
        for rec in iter_json_any(path):
            if rec.error is not None:
                yield rec, None
                continue
            try:
                yield rec, esconv_to_session(rec.value, split)
            except ContractError as err:
                rec.error = err
                yield rec, None


def esconv_files(directory: Path) -> list[Path]:
    """The four conversation files of an ESConv folder (strategy.json is a vocabulary, not data)."""
    names = ["train.json", "valid.json", "test.json", "FailedESConv.json"]
    found = [directory / n for n in names if (directory / n).exists()]
    if not found:
        raise FileNotFoundError(f"no ESConv files ({', '.join(names)}) in {directory}")
    return found
