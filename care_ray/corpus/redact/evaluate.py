"""How a data owner measures recall on real data: a hand-labelled sample (JSON lines {"text",
"entities": [{"start", "end", "type"}]}) against what the redactor would redact in it, per entity
type, by exact span and by overlap. Recall is the number that matters (a missed name travels);
precision says how much dialogue was lost to over-redaction."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from care_ray.common.errors import UserError
from care_ray.corpus.redact.core import RedactionPolicy, find_in_session


def load_labels(path: Path) -> list[dict[str, Any]]:
    """The labelled sample; a malformed line is the user's mistake, named by its line number."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--evaluate: cannot read {path} ({type(e).__name__})") from None
    examples = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
            text = ex["text"]
            spans = [(int(e["start"]), int(e["end"]), str(e["type"])) for e in ex["entities"]]
        except (ValueError, KeyError, TypeError):
            raise UserError(
                f"--evaluate: {path} line {i} is not "
                '{"text": ..., "entities": [{"start": i, "end": j, "type": T}]}'
            ) from None
        if not isinstance(text, str) or any(not 0 <= s < e <= len(text) for s, e, _ in spans):
            raise UserError(f"--evaluate: {path} line {i} has a span outside its text")
        examples.append({"text": text, "spans": spans})
    return examples


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def score_spans(
    gold: list[tuple[int, int, str]], predicted: list[tuple[int, int, str]]
) -> dict[str, Counter]:
    """Per entity type: gold, predicted, and hits (a gold span recalled / a predicted span
    correct), exact (same start, end and type) and overlap (same type, sharing a character)."""
    tally: dict[str, Counter] = {}
    for s, e, t in gold:
        c = tally.setdefault(t, Counter())
        c["gold"] += 1
        c["recalled_exact"] += (s, e, t) in predicted
        c["recalled_overlap"] += any(t == pt and s < pe and ps < e for ps, pe, pt in predicted)
    for s, e, t in predicted:
        c = tally.setdefault(t, Counter())
        c["predicted"] += 1
        c["correct_exact"] += (s, e, t) in gold
        c["correct_overlap"] += any(t == gt and s < ge and gs < e for gs, ge, gt in gold)
    return tally


def evaluate_labels(path: Path, analyzer: Any, policy: RedactionPolicy) -> dict[str, Any]:
    """Per-entity recall and precision of the redactor on the labelled sample."""
    examples = load_labels(path)
    total: dict[str, Counter] = {}
    for ex in examples:
        (kept,) = find_in_session([ex["text"]], analyzer, policy, Counter())
        predicted = [(r.start, r.end, r.entity_type) for r in kept]
        for t, c in score_spans(ex["spans"], predicted).items():
            total.setdefault(t, Counter()).update(c)
    per_entity = {
        t: {
            "gold": c["gold"],
            "predicted": c["predicted"],
            "recall_exact": _ratio(c["recalled_exact"], c["gold"]),
            "recall_overlap": _ratio(c["recalled_overlap"], c["gold"]),
            "precision_exact": _ratio(c["correct_exact"], c["predicted"]),
            "precision_overlap": _ratio(c["correct_overlap"], c["predicted"]),
        }
        for t, c in sorted(total.items())
    }
    return {"examples": len(examples), "per_entity": per_entity}


def evaluation_table(report: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.0%}"

    lines = [
        f"{report['examples']} labelled examples",
        f"{'entity':<16}{'gold':>6}{'pred':>6}  recall exact/overlap  precision exact/overlap",
    ]
    for t, m in report["per_entity"].items():
        lines.append(
            f"{t:<16}{m['gold']:>6}{m['predicted']:>6}  "
            f"{pct(m['recall_exact']):>6} / {pct(m['recall_overlap']):<12}"
            f"{pct(m['precision_exact']):>6} / {pct(m['precision_overlap'])}"
        )
    return "\n".join(lines)
