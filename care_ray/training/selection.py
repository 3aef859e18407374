"""Which checkpoint to keep: held-out agreement (Pearson r per dimension, the paper's criterion)
from per-item predicted scores, and the export of the best checkpoint as a standard PEFT adapter
folder (+ metrics.json, + optionally merged weights)."""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from care_ray.contracts.rubric import DIMENSIONS
from care_ray.evaluation.metrics import dimension_agreement, dimension_means, flat_metrics

log = logging.getLogger(__name__)

MEAN_RULE = "mean over the dimensions where the statistic is defined (STAT_n_defined of them); null when none is"
NO_DEFINED_SCORE = -2.0  # selection score with no defined Pearson r: below any mean of r in [-1, 1]
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
NOT_EXPORTED = ("trainer_state.pt", "optimizer.pt")  # for resuming, not for serving


SCORE_KINDS = ("expected", "greedy")


def heldout_metrics(
    session_ids: Sequence[str],
    item_ids: Sequence[int],
    dimensions: Sequence[str],
    true_scores: Sequence[int],
    predictions: Sequence[tuple[int, float]],
    prefix: str = "heldout_",
    select_on: str = "expected",
) -> dict[str, float | str]:
    """Per-item (argmax, expected) predictions → per-dimension Pearson/Spearman/MSE of dimension
    means against the targets, for the decoded score (`{prefix}pearson_goal`, …) and the expected
    one (`{prefix}expected_pearson_goal`, …), item-level exact accuracy, and
    `{prefix}selection_score` from the kind named by `select_on`.

    One rule for every mean (MEAN_RULE, also written into the metrics): a mean is over the
    dimensions where the statistic is defined, `{prefix}STAT_n_defined` counts them, and a mean
    with none defined is null. A dimension with a constant predictor (common early in training)
    has no r and is left out, never counted as 0. Ray Train ranks checkpoints by a finite number,
    so `{prefix}selection_score` is the Pearson mean, or NO_DEFINED_SCORE (below any mean of r)
    when no dimension has one: such a checkpoint ranks last. The expected score (Σ s·p(s)) is the
    default: a checkpoint that puts its mass on the mode decodes a constant (no r) yet may rank
    sessions well, and `care-ray score --score-logprobs` reports that score."""
    if select_on not in SCORE_KINDS:
        raise ValueError(f"select_on must be one of {SCORE_KINDS}, not {select_on!r}")
    dims = dict(zip(item_ids, dimensions, strict=True))
    truth = dimension_means(session_ids, item_ids, list(true_scores), dims)
    argmax = dimension_means(session_ids, item_ids, [p[0] for p in predictions], dims)
    expected = dimension_means(session_ids, item_ids, [p[1] for p in predictions], dims)
    present = [d for d in DIMENSIONS if d in truth] + sorted(set(truth) - set(DIMENSIONS))
    metrics: dict[str, float | str] = {
        **flat_metrics(dimension_agreement(argmax, truth, present), prefix),
        **flat_metrics(dimension_agreement(expected, truth, present), f"{prefix}expected_"),
    }
    mean = metrics[f"{prefix}{'expected_' if select_on == 'expected' else ''}pearson_mean"]
    assert isinstance(mean, float)
    metrics[f"{prefix}selection_score"] = NO_DEFINED_SCORE if math.isnan(mean) else mean
    metrics[f"{prefix}selected_on"] = select_on
    metrics[f"{prefix}mean_rule"] = MEAN_RULE
    metrics[f"{prefix}item_accuracy"] = float(
        sum(p[0] == t for p, t in zip(predictions, true_scores, strict=True))
        / max(len(predictions), 1)
    )
    metrics[f"{prefix}sessions"] = len(set(session_ids))
    metrics[f"{prefix}items"] = len(predictions)
    return metrics


def finite_or_none(value: Any) -> Any:
    """NaN/inf → None (recursively), so metrics survive JSON round trips (Ray's snapshot,
    metrics.json) unchanged and stay valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def best_checkpoint(
    best_checkpoints: Sequence[tuple[Any, Mapping[str, Any]]], metric: str
) -> tuple[Any, Mapping[str, Any]]:
    """The (checkpoint, metrics) with the highest `metric`; the later one on ties (more training).
    A checkpoint whose metric is missing or undefined (null, NaN) ranks below every defined one."""
    if not best_checkpoints:
        raise RuntimeError(f"no checkpoint reported {metric!r}; nothing to select")

    def rank(im: tuple[int, tuple[Any, Mapping[str, Any]]]) -> tuple:
        value = im[1][1].get(metric)
        defined = isinstance(value, int | float) and not math.isnan(value)
        return (defined, value if defined else 0.0, im[1][1].get("step") or 0, im[0])

    return max(enumerate(best_checkpoints), key=rank)[1]


def export_checkpoint(checkpoint_dir: Path, out_dir: Path, method: str) -> Path:
    """Copy a checkpoint's servable files (adapter or model folder) to out_dir, leaving the
    optimizer state behind."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(checkpoint_dir, out_dir, ignore=shutil.ignore_patterns(*NOT_EXPORTED))
    if method == "lora":
        missing = [f for f in ADAPTER_FILES if not (out_dir / f).exists()]
        if missing:
            raise RuntimeError(
                f"checkpoint {checkpoint_dir} is not a PEFT adapter folder (missing {missing})"
            )
    return out_dir


def merge_adapter(
    base_model: str, adapter_dir: Path, out_dir: Path, trust_remote_code: bool = False
) -> Path:
    """Base + LoRA adapter → one model folder (safetensors + tokenizer) that needs no PEFT to load."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(
        base_model, dtype=torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    out_dir = Path(out_dir)
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code).save_pretrained(
        out_dir
    )
    return out_dir


def write_metrics(path: Path, metrics: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            finite_or_none(metrics), indent=2, ensure_ascii=False, default=str, allow_nan=False
        )
        + "\n",
        encoding="utf-8",
    )
    return path
