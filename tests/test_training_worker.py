"""The training loop in-process: care_ray.training.worker.FoldTraining driven with one worker and a
recording reporter, no Ray. What Ray Train adds (several workers, a killed worker's group
restarted, checkpoints ranked by the controller) stays in tests/test_training.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from care_ray.training.config import FinetuneConfig, load_finetune_config
from care_ray.training.sft_data import SFTOptions, make_sft_data
from care_ray.training.worker import FoldTraining, WorkerEnv

REPO = Path(__file__).resolve().parents[1]


class Recorder:
    """Keeps every report: the metrics, and a copy of each checkpoint folder (the worker's own
    folder is temporary, as Ray Train's upload source is)."""

    def __init__(self, root: Path):
        self.root = root
        self.reports: list[tuple[dict, Path | None]] = []

    def __call__(self, metrics: dict, folder: Path | None, name: str) -> None:
        kept = None
        if folder is not None:
            kept = self.root / name
            shutil.copytree(folder, kept)
        self.reports.append((metrics, kept))


@pytest.fixture(scope="module")
def sft_data(esconv_corpus, tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("worker-sft")
    make_sft_data(
        esconv_corpus,
        out,
        SFTOptions(folds=2, max_sessions=40, seed=5, missing_rationale="template"),
        tokenizer_path=str(tiny_model),
        max_model_len=640,
        max_new_tokens=128,
    )
    return out


def _config(tiny_model, data: Path, work: Path, **overrides) -> FinetuneConfig:
    settings = {
        "name": "in-process",
        "model": str(tiny_model),
        "data": str(data),
        "output_dir": str(work / "out"),
        "storage_path": str(work / "unused"),
        "max_train_examples": 32,
        "max_eval_examples": 48,
        "scaling": {"num_workers": 1},
        "effective_batch_size": 4,
        **overrides,
    }
    return load_finetune_config(REPO / "configs" / "finetune-tiny-cpu.yaml", settings)


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def straight_run(sft_data, tiny_model, tmp_path_factory):

    work = tmp_path_factory.mktemp("worker-run")
    cfg = _config(tiny_model, sft_data, work, log_every_steps=3)
    recorder = Recorder(work / "reports")
    result, lines = _run_with_lines(cfg, recorder)
    return {"cfg": cfg, "result": result, "reports": recorder.reports, "work": work, "lines": lines}


def _run_with_lines(cfg: FinetuneConfig, recorder: Recorder) -> tuple[dict, list[str]]:
    """Fold 0 trained in-process, with the progress lines its logger printed."""
    import logging

    lines: list[str] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Lines(level=logging.INFO)
    logger = logging.getLogger("care_ray.training.worker")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        result = FoldTraining(cfg, 0, WorkerEnv(report=recorder)).run()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return result, lines


def test_one_in_process_worker_trains_and_reports_each_epoch(straight_run):
    cfg, result, reports = straight_run["cfg"], straight_run["result"], straight_run["reports"]
    steps_per_epoch = result["steps_per_epoch"]
    assert steps_per_epoch == 32 // 4  # 32 examples, 4 per optimizer step on one worker
    assert [s for s, _ in result["loss_history"]] == list(range(1, 2 * steps_per_epoch + 1))
    losses = [loss for _, loss in result["loss_history"]]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3  # the loss falls
    assert [m["step"] for m, _ in reports] == [steps_per_epoch, 2 * steps_per_epoch]
    for metrics, folder in reports:
        assert metrics["fold"] == 0 and metrics["train_examples"] == 32
        assert metrics["heldout_items"] > 0 and metrics["heldout_sessions"] > 0
        assert "heldout_selection_score" in metrics and metrics["learning_rate"] >= 0
        assert folder is not None
        assert {"adapter_config.json", "adapter_model.safetensors", "heldout.json"} <= {
            p.name for p in folder.iterdir()
        }
    assert result["attempts"] == [{"start_step": 0, "world_size": 1}]
    assert cfg.epochs == 2


def test_a_resumed_run_ends_where_the_straight_run_ends(straight_run, sft_data, tiny_model):
    """Resuming from the first epoch's checkpoint restores weights, optimizer, schedule, RNG and
    the position in the data: the adapter after epoch 2 is the straight run's, to float noise."""
    cfg, reports, work = straight_run["cfg"], straight_run["reports"], straight_run["work"]
    first_epoch = reports[0][1]
    recorder = Recorder(work / "resumed-reports")
    resumed = FoldTraining(cfg, 0, WorkerEnv(report=recorder, resume_from=str(first_epoch)))
    assert resumed.state["global_step"] == reports[0][0]["step"] and resumed.state["epoch"] == 1
    result = resumed.run()
    assert result["attempts"][-1]["start_step"] == reports[0][0]["step"]
    straight, again = _adapter(reports[-1][1]), _adapter(recorder.reports[-1][1])
    assert straight.keys() == again.keys()
    for name in straight:
        assert torch.allclose(straight[name], again[name], atol=1e-5), name
    # and the first epoch's weights are not the last's: the check above compares trained weights
    assert any(
        not torch.allclose(_adapter(first_epoch)[n], straight[n], atol=1e-4) for n in straight
    )


def test_eval_every_steps_reports_inside_an_epoch(sft_data, tiny_model, tmp_path):
    cfg = _config(tiny_model, sft_data, tmp_path, epochs=1, eval_every_steps=3)
    recorder = Recorder(tmp_path / "reports")
    result = FoldTraining(cfg, 1, WorkerEnv(report=recorder)).run()
    steps = [m["step"] for m, _ in recorder.reports]
    assert steps == [3, 6, result["steps_per_epoch"]]
    assert recorder.reports[0][0]["epoch"] == pytest.approx(3 / result["steps_per_epoch"])


def test_progress_lines_and_rows_a_person_can_watch(straight_run):
    """A line every log_every_steps steps (fold, epoch, step of total, loss, learning rate,
    tokens/s, elapsed, time left) and one per held-out evaluation; the same rows in the result,
    written as train_log.jsonl, a learning curve and TensorBoard events."""
    import json

    from care_ray.training.curves import write_fold_records
    from care_ray.training.selection import finite_or_none

    result, lines = straight_run["result"], straight_run["lines"]
    total = 2 * result["steps_per_epoch"]
    step_lines = [x for x in lines if "| step " in x]
    assert [int(x.split("| step ")[1].split("/")[0]) for x in step_lines] == list(
        range(3, total + 1, 3)
    )
    assert all(f"/{total} |" in x and "tokens/s" in x and "left" in x for x in step_lines)
    held = [x for x in lines if "held-out at step" in x]
    # both scores' r, and which one ranks the checkpoints (#30)
    assert len(held) == 2 and all(
        "r greedy goal" in x and "; expected goal" in x and "selection (expected)" in x
        for x in held
    )
    train_rows = [r for r in result["log"] if r["kind"] == "train"]
    eval_rows = [r for r in result["log"] if r["kind"] == "heldout"]
    assert [r["step"] for r in train_rows] == list(range(3, total + 1, 3))
    assert [r["step"] for r in eval_rows] == [total // 2, total]
    losses = dict(map(tuple, result["loss_history"]))
    assert train_rows[0]["loss"] == pytest.approx(sum(losses[s] for s in (1, 2, 3)) / 3)
    fold_dir = straight_run["work"] / "fold0"
    fold_dir.mkdir()
    written = write_fold_records(fold_dir, result["loss_history"], result["log"])
    rows = [json.loads(x) for x in (fold_dir / "train_log.jsonl").read_text().splitlines()]
    assert rows == json.loads(json.dumps(finite_or_none(result["log"])))  # NaN (no r): null
    assert all(set(r["pearson_expected"]) == set(r["pearson"]) for r in eval_rows)
    assert (fold_dir / "learning_curve.svg").read_text().startswith("<?xml")
    assert written["tensorboard"] and any((fold_dir / "tensorboard").iterdir())


def test_a_long_optimizer_step_still_prints_within_it(sft_data, tiny_model, tmp_path):
    """On a CPU one optimizer step can be many minutes of accumulated micro-batches: a line comes
    once log_every_seconds have passed inside a step too (here: after every micro-batch)."""

    cfg = _config(
        tiny_model,
        sft_data,
        tmp_path,
        max_train_examples=16,
        max_eval_examples=8,
        effective_batch_size=8,  # 4 micro-batches of 2 per step on one worker
        epochs=1,
        log_every_steps=1000,
        log_every_seconds=1e-6,
    )
    result, lines = _run_with_lines(cfg, Recorder(tmp_path / "r"))
    assert result["steps_per_epoch"] == 2
    within = [x for x in lines if "micro-batch" in x]
    assert [x.split("| step ")[1].split(" |")[0] for x in within] == [
        f"{s}/2, micro-batch {m}/4" for s in (1, 2) for m in (1, 2, 3)
    ]
    assert all("tokens/s" in x and "left" in x for x in within)
    rows = [r for r in result["log"] if r["kind"] == "train_micro"]
    assert [(r["step"], r["micro_batch"]) for r in rows] == [
        (s, m) for s in (1, 2) for m in (1, 2, 3)
    ]
    assert rows[-1]["left_s"] < rows[0]["left_s"] and rows[0]["loss"] > 0
    # the step lines still come at the end of each step
    assert [r["step"] for r in result["log"] if r["kind"] == "train"] == [1, 2]
    # and the held-out pass (batches of 4) says where it is
    shares = [
        tuple(map(int, x.split("| ")[2].split(" prompts")[0].split("/")))
        for x in lines
        if "held-out evaluation at step" in x
    ]
    assert shares and [d for d, _ in shares] == list(range(4, shares[0][1] + 1, 4))


def test_progress_lines_never_leave_a_longer_silence_than_asked(monkeypatch):
    """The rule alone, on a simulated clock: micro-batches of 12-40 s (packed lengths vary),
    accumulation 16, a held-out pass between epochs; no silence between lines passes 60 s."""
    import random
    from types import SimpleNamespace

    from care_ray.training import worker

    clock = [0.0]
    monkeypatch.setattr(worker.time, "monotonic", lambda: clock[0])
    cfg = SimpleNamespace(
        log_every_steps=1000,
        log_every_seconds=60.0,
        epochs=2,
        grad_accum_steps=16,
        eval_batch_size=4,
    )
    t = SimpleNamespace(
        cfg=cfg,
        fold=0,
        rank=0,
        world=1,
        steps_per_epoch=3,
        longest_micro=0.0,
        state={"global_step": 0, "loss_history": [], "log": []},
        window={"tokens": 0, "seconds": 0.0},
        scheduler=SimpleNamespace(get_last_lr=lambda: [1e-4]),
    )
    progress = worker.Progress(t, started_step=0)
    printed = [0.0]
    monkeypatch.setattr(worker.log, "info", lambda *args: printed.append(clock[0]))
    rng = random.Random(3)
    for _epoch in range(cfg.epochs):
        for _step in range(t.steps_per_epoch):
            for j in range(16):
                dt = rng.uniform(12, 40)
                clock[0] += dt
                t.longest_micro = max(t.longest_micro, dt)
                t.window["tokens"] += 1000
                if j < 15:
                    progress.within_step(j + 1, 16, 1.0, dt)
            t.state["global_step"] += 1
            t.state["loss_history"].append([t.state["global_step"], 1.0])
            progress.after_step()
        on_batch = progress.within_evaluation()
        for done in range(4, 45, 4):
            clock[0] += rng.uniform(5, 15)
            on_batch(min(done, 44), 44)
        clock[0] += 10  # metrics and the checkpoint's report
        progress.after_evaluation({"step": t.state["global_step"]})
    gaps = [b - a for a, b in zip(printed, printed[1:], strict=False)]
    assert max(gaps) <= 60 and len(printed) < clock[0] / 20  # and not a line per micro-batch
