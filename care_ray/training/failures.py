"""A failed fine-tune ends in one line: what ran out, or the worker's own first error line; the
fold and the last step it got to; the setting to change; and the path of a log file that keeps
Ray's whole report (worker tracebacks, the memory monitor's statistics)."""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterator
from pathlib import Path

from care_ray.common.errors import UserError

FAILURE_LOG = "failure-fold{fold}.log"
# Ray's memory monitor (its OutOfMemoryError and the text it puts in an actor's death cause)
HOST_OOM = ("OutOfMemoryError", "running low on memory", "memory usage threshold")
GPU_OOM = ("CUDA out of memory", "torch.OutOfMemoryError", "OutOfMemoryError: CUDA")
MEMORY_KNOBS = (
    "gradient_checkpointing=true, or a smaller micro_batch_size or max_seq_len, or fewer "
    "scaling.num_workers per node"
)
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): ?(.*)$")


class FinetuneFailed(UserError):
    """Training stopped for good (after Ray Train's retries): one line, the full report in a file."""


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error, its causes and contexts, and the per-worker errors of a WorkerGroupError."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
        todo += list((getattr(e, "worker_failures", None) or {}).values())
        for attr in ("controller_failure", "cause"):
            inner = getattr(e, attr, None)
            if isinstance(inner, BaseException):
                todo.append(inner)


def report_text(error: BaseException) -> str:
    """Everything Ray said: each error of the chain with its traceback."""
    parts = []
    for e in _chain(error):
        parts.append("".join(traceback.format_exception(type(e), e, e.__traceback__)))
    return "\n".join(parts)


def raised_line(text: str) -> str | None:
    """The last `SomeError: message` line of a traceback text (the error that was raised, under
    its causes), or None."""
    found = None
    for line in text.splitlines():
        m = _ERROR_LINE.match(line.strip())
        if m and not m.group(1).startswith(("ray.", "Ray")):
            found = f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}".strip().rstrip(":")
    return found


def worker_line(error: BaseException) -> str:
    """The failing worker's own error (the lowest rank's) in one line. Ray hands a worker's
    exception back with its traceback as the message: its last error line is the one raised."""
    failures = getattr(error, "worker_failures", None) or {}
    inner = getattr(error, "controller_failure", None)
    e = (
        failures[min(failures)]
        if failures
        else inner
        if isinstance(inner, BaseException)
        else error
    )
    text = str(e)
    line = raised_line(text) if "\n" in text else None
    return line or f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def last_checkpoint_step(storage_path: str, run_name: str) -> int | None:
    """The step of the newest checkpoint folder (step-NNNNNN) of a run on a local disk."""
    folder = Path(storage_path) / run_name
    if "://" in storage_path or not folder.is_dir():
        return None
    steps = [int(p.name[5:]) for p in folder.glob("step-*") if p.name[5:].isdigit()]
    return max(steps, default=None)


def failure_line(
    error: BaseException, fold: int, step: int | None, log_path: Path, plan: str | None = None
) -> str:
    """The one line a failed fold ends with; `plan`: the memory plan's estimate vs the limit,
    said where a worker ran out of memory."""
    text = report_text(error)
    where = f"fold {fold} failed " + (
        f"after step {step} (its last checkpoint)" if step else "before its first checkpoint"
    )
    planned = f" (the plan: {plan})" if plan else ""
    if any(marker in text for marker in GPU_OOM):
        what = f"a training worker ran out of GPU memory{planned}. Try {MEMORY_KNOBS}"
    elif any(marker in text for marker in HOST_OOM):
        what = (
            "Ray's memory monitor killed a training worker: the node ran out of host "
            f"RAM{planned}. Try {MEMORY_KNOBS}"
        )
    else:
        what = worker_line(error)
    return f"{where}: {what}. Ray's full report: {log_path}"


def fold_failure(
    error: BaseException,
    fold: int,
    output_dir: str,
    storage_path: str,
    run_name: str,
    plan: str | None = None,
) -> FinetuneFailed:
    """Write Ray's report under output_dir (a local folder) and make the one-line error."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / FAILURE_LOG.format(fold=fold)
    log_path.write_text(report_text(error), encoding="utf-8")
    step = last_checkpoint_step(storage_path, run_name)
    return FinetuneFailed(failure_line(error, fold, step, log_path, plan))
