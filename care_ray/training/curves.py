"""What a finished fold leaves for a person to look at, beside its metrics.json: the progress rows
as JSON lines (train_log.jsonl), the learning curve as a figure (train loss per step, held-out r
per evaluation: learning_curve.svg), and TensorBoard event files where tensorboardX is installed,
so `tensorboard --logdir OUT` works as Ray users expect."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TRAIN_LOG = "train_log.jsonl"
LEARNING_CURVE = "learning_curve.svg"
TENSORBOARD = "tensorboard"


def write_train_log(fold_dir: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    from care_ray.training.selection import finite_or_none

    path = Path(fold_dir) / TRAIN_LOG
    # NaN (an undefined r) is not JSON: it is written as null
    path.write_text("".join(json.dumps(finite_or_none(dict(r)), default=str) + "\n" for r in rows))
    return path


def write_learning_curve(
    fold_dir: Path, loss_history: Sequence[Sequence[float]], rows: Sequence[Mapping[str, Any]]
) -> Path:
    """Train loss per optimizer step (left axis) and the held-out selection score (mean Pearson r
    over the dimensions where it is defined) at each evaluation (right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.4), layout="constrained")
    ax = fig.subplots()
    if loss_history:
        steps, losses = zip(*[(s, v) for s, v in loss_history], strict=True)
        ax.plot(steps, losses, color="#1f6fb4", linewidth=1.2, label="train loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss")
    evals = [
        (r["step"], r["selection_score"])
        for r in rows
        if r.get("kind") == "heldout" and isinstance(r.get("selection_score"), int | float)
    ]
    if evals:
        kind = next((r.get("selected_on") for r in rows if r.get("selected_on")), "greedy")
        right = ax.twinx()
        right.plot(
            *zip(*evals, strict=True), "o-", color="#e07b16", label=f"held-out r ({kind} score)"
        )
        right.set_ylabel(f"held-out Pearson r, mean ({kind} score)")
        right.set_ylim(-1.05, 1.05)
        fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    path = Path(fold_dir) / LEARNING_CURVE
    fig.savefig(path, format="svg", metadata={"Date": None})
    return path


def write_tensorboard(fold_dir: Path, rows: Sequence[Mapping[str, Any]]) -> Path | None:
    """TensorBoard scalars from the progress rows; None where tensorboardX is not installed."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    folder = Path(fold_dir) / TENSORBOARD
    with SummaryWriter(str(folder)) as writer:
        for r in rows:
            step = r.get("step")
            if not isinstance(step, int):
                continue
            if r.get("kind") == "train":
                writer.add_scalar("train/loss", r["loss"], step)
                writer.add_scalar("train/learning_rate", r["learning_rate"], step)
                writer.add_scalar("train/tokens_per_s", r["tokens_per_s"], step)
            elif r.get("kind") == "heldout":
                for key, tag in (("pearson", "pearson"), ("pearson_expected", "expected_pearson")):
                    for dim, value in (r.get(key) or {}).items():
                        if isinstance(value, int | float) and value == value:
                            writer.add_scalar(f"heldout/{tag}_{dim}", value, step)
    return folder


def write_fold_records(
    fold_dir: Path, loss_history: Sequence[Sequence[float]], rows: Sequence[Mapping[str, Any]]
) -> dict[str, str | None]:
    """All three, each where it can be written; their paths for metrics.json."""
    written: dict[str, str | None] = {
        "train_log": str(write_train_log(fold_dir, rows)),
        "learning_curve": str(write_learning_curve(fold_dir, loss_history, rows)),
    }
    tensorboard = write_tensorboard(fold_dir, rows)
    written["tensorboard"] = str(tensorboard) if tensorboard else None
    return written
