"""One worker's part of fine-tuning one held-out fold: the step loop, held-out evaluation and
checkpointing, as a class that takes what Ray Train provides as arguments (`WorkerEnv`: rank,
world size, device, the checkpoint to resume from, how to report, how to wrap the model for
data parallelism). Under Ray Train, care_ray.training.trainer builds the env from
`ray.train.get_context()`; a test builds one for a single in-process worker and drives the same
code without a cluster.

The loop: AdamW, cosine schedule with warmup, gradient accumulation (no all-reduce on accumulation
micro-batches), loss on the assistant tokens only; after each epoch (or every N steps) the held-out
fold is scored by the first score digit, the metrics and a checkpoint are reported, and a run
resumes from a checkpoint with weights, optimizer, schedule, RNG and its position in the epoch."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from care_ray.training import loop
from care_ray.training.config import FinetuneConfig

log = logging.getLogger(__name__)

# (metrics, a folder holding the checkpoint or None, the checkpoint's name) → reported
Report = Callable[[dict[str, Any], Path | None, str], None]


@dataclass
class WorkerEnv:
    """What the cluster gives one training worker."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    resume_from: str | None = None  # a checkpoint folder to resume from
    report: Report = field(default=lambda metrics, checkpoint, name: None)
    # wraps the model for data parallelism (Ray Train's prepare_model); identity in-process
    prepare_ddp: Callable[[Any], Any] = field(default=lambda model: model)


def fold_examples(cfg: FinetuneConfig, fold: int) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows) of one fold, sampled down for smoke runs. The held-out sample
    takes whole sessions, so every sampled session keeps all its items (dimension means need them)."""
    from care_ray.training.sft_data import iter_fold, read_examples

    table = read_examples(cfg.data)
    train = list(iter_fold(table, fold, held_out=False))
    held_out = list(iter_fold(table, fold, held_out=True))
    if not train or not held_out:
        raise ValueError(
            f"fold {fold} leaves {len(train)} training and {len(held_out)} held-out examples; "
            "check `folds` against the data's folds"
        )
    rng = random.Random(cfg.seed)
    if cfg.max_train_examples and len(train) > cfg.max_train_examples:
        train = [train[i] for i in sorted(rng.sample(range(len(train)), cfg.max_train_examples))]
    if cfg.max_eval_examples and len(held_out) > cfg.max_eval_examples:
        sizes = Counter(r["session_id"] for r in held_out)
        sessions = sorted(sizes)
        rng.shuffle(sessions)
        keep: set[str] = set()
        n = 0
        for s in sessions:
            if n + sizes[s] > cfg.max_eval_examples and keep:
                break
            keep.add(s)
            n += sizes[s]
        held_out = [r for r in held_out if r["session_id"] in keep]
    return train, held_out


def peak_memory_bytes(device: torch.device) -> int:
    """This worker's peak so far: its process's peak RSS on CPU, torch's peak allocation on CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def all_gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def equal_shards(items: list, rank: int, world: int) -> tuple[list, int]:
    """This rank's strided share, padded to the common length by repeating an item (FSDP needs
    every rank to run the same number of forward passes); returns (share, how many are real)."""
    real = items[rank::world]
    width = -(-len(items) // world)
    return real + (real or items[:1])[-1:] * (width - len(real)), len(real)


class FoldTraining:
    """Fine-tune one held-out fold on one worker (see the module docstring)."""

    def __init__(self, cfg: FinetuneConfig, fold: int, env: WorkerEnv):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from care_ray.contracts.rubric import load_rubric
        from care_ray.scoring.prompts import PromptBuilder, load_tokenizer

        self.cfg, self.fold, self.env = cfg, fold, env
        self.rank, self.world, self.device = env.rank, env.world_size, env.device
        if self.device.type == "cpu":
            threads = cfg.scaling.threads_per_worker or max(1, int(cfg.scaling.cpus_per_worker))
            torch.set_num_threads(threads)
        self.plan = loop.precision_plan(cfg.precision, cfg.method, self.device)
        self.fsdp = cfg.parallel == "fsdp" and self.world > 1
        torch.manual_seed(cfg.seed)

        self.tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        builder = PromptBuilder(load_rubric(cfg.rubric) if cfg.rubric else load_rubric(), tok)
        train_rows, eval_rows = fold_examples(cfg, fold)
        self.train, dropped_train = loop.encode_examples(
            train_rows, tok, builder.render, cfg.max_seq_len
        )
        self.held_out, dropped_eval = loop.encode_examples(
            eval_rows, tok, builder.render, cfg.max_seq_len
        )
        self.dropped = (dropped_train, dropped_eval)
        self.prefix_ids, self.digit_ids = loop.score_digit_ids(tok)
        self.state: dict[str, Any] = {
            "global_step": 0,
            "epoch": 0,
            "step_in_epoch": 0,
            "loss_history": [],
            "log": [],  # one row per progress line and per held-out evaluation (train_log.jsonl)
            "attempts": [],
        }
        self._build(env.resume_from)
        self.state["attempts"].append(
            {"start_step": self.state["global_step"], "world_size": self.world}
        )
        self.my_eval, self.my_real = equal_shards(self.held_out, self.rank, self.world)
        self.window = {"loss_sum": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}
        self.longest_micro = 0.0  # seconds: the progress lines' wait for their next chance
        self.progress = Progress(self, started_step=self.state["global_step"])
        if self.rank == 0:
            log.info(
                "fold %d: %d train / %d held-out examples (%d / %d dropped > max_seq_len), %d "
                "steps x %d epochs, accumulation %d, %s (%s) on %s, start step %d",
                fold,
                len(self.train),
                len(self.held_out),
                dropped_train,
                dropped_eval,
                self.steps_per_epoch,
                cfg.epochs,
                cfg.grad_accum_steps,
                self.plan,
                "fsdp" if self.fsdp else "ddp",
                self.device,
                self.state["global_step"],
            )

    # --- set-up -------------------------------------------------------------------------------

    def _build(self, resume_from: str | None) -> None:
        """Model, optimizer and schedule; from `resume_from`: weights first (they shape the
        model), optimizer and schedule once it exists."""
        from transformers import get_cosine_schedule_with_warmup

        cfg = self.cfg
        saved: dict[str, Any] | None = None
        optimizer_state: dict[str, Any] = {}
        if resume_from is not None:
            saved = loop.load_trainer_state(resume_from)
            self.state.update({k: saved[k] for k in self.state if k in saved})
            if self.rank == 0 or not self.fsdp:  # under FSDP rank 0 reads it and broadcasts
                optimizer_state = loop.load_trainer_state(resume_from, loop.OPTIMIZER_FILE)
        model = loop.build_model(
            cfg,
            self.plan.load_dtype,
            resume_from,
            device=self.device,
            compute_dtype=self.plan.compute_dtype,
            longest_tokens=loop.longest_micro_batch_tokens(
                self.train, cfg.micro_batch_size, cfg.packing
            ),
            shards=self.world if self.fsdp else 1,
        )
        self.model = (
            loop.shard_fsdp(model, self.device, self.plan)
            if self.fsdp
            else self.env.prepare_ddp(model.to(self.device))
        )
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        self.steps_per_epoch = loop.optimizer_steps_per_epoch(
            len(self.train), self.world, cfg.micro_batch_size, cfg.grad_accum_steps
        )
        total = self.steps_per_epoch * cfg.epochs
        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer,
            num_warmup_steps=int(round(cfg.warmup_ratio * total)),
            num_training_steps=total,
        )
        if saved is not None:
            loop.restore_optimizer(
                self.model, self.optimizer, optimizer_state, from_rank0=self.fsdp
            )
            self.scheduler.load_state_dict(saved["scheduler"])
            torch.set_rng_state(saved["rng"])

    # --- one optimizer step -------------------------------------------------------------------

    def step(self, micro_batches: list[list[int]]) -> float:
        """One optimizer step over the given micro-batches (indices into the training examples);
        returns the step's mean loss. Gradients sync on the last micro-batch only."""
        started = time.perf_counter()
        step_loss = 0.0
        for j, idx in enumerate(micro_batches):
            micro_started = time.perf_counter()
            batch = loop.micro_batch([self.train[i] for i in idx], self.pad_id, self.cfg.packing)
            with (
                loop.gradient_sync(self.model, enabled=j == len(micro_batches) - 1),
                loop.autocast(self.device, self.plan),
            ):
                loss = loop.training_loss(self.model, batch, self.device, fused=self.cfg.fused_loss)
                (loss / len(micro_batches)).backward()
            step_loss += loss.item() / len(micro_batches)
            self.window["tokens"] += loop.batch_tokens(batch)
            self.longest_micro = max(self.longest_micro, time.perf_counter() - micro_started)
            if j + 1 < len(micro_batches):
                self.progress.within_step(
                    j + 1, len(micro_batches), step_loss, time.perf_counter() - started
                )
        if self.cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.window["seconds"] += time.perf_counter() - started
        self.window["loss_sum"] += step_loss
        self.window["steps"] += 1
        self.state["global_step"] += 1
        self.state["loss_history"].append([self.state["global_step"], step_loss])
        return step_loss

    # --- held-out evaluation and checkpoint ---------------------------------------------------

    def evaluate(self) -> list[tuple]:
        """Every held-out example's (session, item, dimension, target, (argmax, expected)),
        gathered from all ranks."""
        with loop.autocast(self.device, self.plan):
            preds = loop.score_by_first_digit(
                loop.unwrap(self.model),
                self.my_eval,
                self.prefix_ids,
                self.digit_ids,
                self.pad_id,
                self.device,
                self.cfg.eval_batch_size,
                on_batch=self.progress.within_evaluation(),
            )
        mine = [
            (e.session_id, e.item_id, e.dimension, e.score, p)
            for e, p in zip(self.my_eval[: self.my_real], preds[: self.my_real], strict=True)
        ]
        return [r for part in all_gather(mine) for r in part]

    def evaluate_and_report(self, epoch_done: bool) -> dict[str, Any]:
        from care_ray.training.selection import finite_or_none, heldout_metrics

        started = time.perf_counter()
        rows = self.evaluate()
        sids, iids, dims, scores, ps = (list(x) for x in zip(*rows, strict=True))
        w = self.window
        loss_sum, steps, tokens, seconds = all_reduce_sum(
            [w["loss_sum"], w["steps"], w["tokens"], w["seconds"]], self.device
        )
        state = self.state
        metrics: dict[str, Any] = dict(
            heldout_metrics(sids, iids, dims, scores, ps, select_on=self.cfg.select_on)
        )
        metrics.update(
            {
                "fold": self.fold,
                "epoch": state["epoch"]
                + (0 if epoch_done else state["step_in_epoch"] / self.steps_per_epoch),
                "step": state["global_step"],
                "train_loss": loss_sum / steps if steps else float("nan"),
                "train_tokens_per_s": tokens / (seconds / self.world) if seconds else float("nan"),
                "learning_rate": self.scheduler.get_last_lr()[0],
                "eval_seconds": time.perf_counter() - started,
                "train_examples": len(self.train),
                "dropped_examples": sum(self.dropped),
                "attempt": len(state["attempts"]),
                "attempt_start_step": state["attempts"][-1]["start_step"],
            }
        )
        peaks = [round(b / 2**30, 3) for b in all_gather(peak_memory_bytes(self.device))]
        metrics.update(peak_memory_gib=max(peaks), peak_memory_gib_per_worker=peaks)
        metrics = finite_or_none(metrics)
        self.window.update(loss_sum=0.0, steps=0, tokens=0, seconds=0.0)
        self.progress.after_evaluation(metrics)
        model_state, optim_state = loop.full_state(self.model, self.optimizer, self.cfg.method)
        name = f"step-{state['global_step']:06d}"
        if self.rank != 0:
            self.env.report(metrics, None, name)
            return metrics
        with tempfile.TemporaryDirectory(prefix="care-ray-ckpt-") as tmp:
            loop.save_training_checkpoint(
                Path(tmp),
                self.model,
                self.cfg,
                model_state,
                optim_state,
                self.scheduler,
                state,
                {"metrics": metrics, "predictions": rows},
                self.tokenizer,
            )
            self.env.report(metrics, Path(tmp), name)
        return metrics

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train to the configured epochs from wherever the state stands; returns the loss
        history, the attempts (resumes) and the step counts."""
        cfg, state = self.cfg, self.state
        accum = cfg.grad_accum_steps
        self.model.train()
        while state["epoch"] < cfg.epochs:
            order = loop.rank_order(
                len(self.train), self.world, self.rank, cfg.seed, state["epoch"]
            )
            micro = [
                order[i : i + cfg.micro_batch_size]
                for i in range(0, len(order), cfg.micro_batch_size)
            ]
            for step_in_epoch in range(state["step_in_epoch"], self.steps_per_epoch):
                self.step(micro[step_in_epoch * accum : (step_in_epoch + 1) * accum])
                state["step_in_epoch"] = step_in_epoch + 1
                self.progress.after_step()
                maybe_inject_failure(cfg, self.rank, state["global_step"])
                last_of_epoch = step_in_epoch + 1 == self.steps_per_epoch
                if (
                    cfg.eval_every_steps
                    and state["global_step"] % cfg.eval_every_steps == 0
                    and not last_of_epoch
                ):
                    self.evaluate_and_report(epoch_done=False)
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            self.evaluate_and_report(epoch_done=True)
        return {
            "loss_history": state["loss_history"],
            "log": state["log"],
            "attempts": state["attempts"],
            "steps": state["global_step"],
            "steps_per_epoch": self.steps_per_epoch,
        }


class Progress:
    """What a person watching a fine-tune sees: rank 0 logs one line every `log_every_steps`
    optimizer steps (and at least every `log_every_seconds`) with the fold, epoch, step of total,
    running loss, learning rate, tokens/s, elapsed and time left, and one line per held-out
    evaluation; the same rows are kept in the training state (so a resumed run keeps its history)
    and written to train_log.jsonl when the fold is exported."""

    def __init__(self, training: FoldTraining, started_step: int):
        self.t = training
        self.started = time.monotonic()
        self.started_step = started_step
        self.last_line = self.started
        self.losses: list[float] = []
        self.best: float | None = None

    def _due(self, now: float, wait: float) -> bool:
        """A line is due when the silence would pass log_every_seconds before the next chance
        to print, `wait` seconds away at most (the longest micro-batch or held-out batch seen:
        lengths vary)."""
        return now - self.last_line + wait >= self.t.cfg.log_every_seconds

    def after_step(self) -> None:
        t, cfg = self.t, self.t.cfg
        self.losses.append(t.state["loss_history"][-1][1])
        step = t.state["global_step"]
        now = time.monotonic()
        if step % cfg.log_every_steps and not self._due(now, t.longest_micro):
            return
        self.last_line = now
        total = t.steps_per_epoch * cfg.epochs
        elapsed = now - self.started
        done = step - self.started_step
        left = elapsed / done * (total - step) if done else float("nan")
        row = {
            "kind": "train",
            "fold": t.fold,
            "epoch": round(step / t.steps_per_epoch, 3),
            "step": step,
            "steps": total,
            "loss": sum(self.losses) / len(self.losses),
            "learning_rate": t.scheduler.get_last_lr()[0],
            "tokens_per_s": t.window["tokens"] / t.window["seconds"]
            if t.window["seconds"]
            else 0.0,
            "elapsed_s": round(elapsed, 1),
            "left_s": None if left != left else round(left, 1),
        }
        self.losses = []
        t.state["log"].append(row)
        if t.rank == 0:
            log.info(
                "fold %d | epoch %.2f | step %d/%d | loss %.4f | lr %.2e | %.0f tokens/s | "
                "%s elapsed, %s left",
                t.fold,
                row["epoch"],
                step,
                total,
                row["loss"],
                row["learning_rate"],
                row["tokens_per_s"] * t.world,
                _clock(elapsed),
                _clock(left),
            )

    def within_step(self, done: int, of: int, loss_so_far: float, seconds: float) -> None:
        """Inside a long optimizer step (many accumulated micro-batches on a CPU), a line before
        the silence would pass `log_every_seconds` at the next micro-batch: the micro-batch of the step,
        the step's loss so far, tokens/s and time left counted in micro-batches."""
        t, cfg = self.t, self.t.cfg
        now = time.monotonic()
        if not self._due(now, t.longest_micro):
            return
        self.last_line = now
        step = t.state["global_step"]  # steps finished; this one is step + 1
        total = t.steps_per_epoch * cfg.epochs
        elapsed = now - self.started
        micro_done = (step - self.started_step) * of + done
        left = elapsed / micro_done * ((total - step) * of - done)
        window_seconds = t.window["seconds"] + seconds
        row = {
            "kind": "train_micro",
            "fold": t.fold,
            "epoch": round((step + done / of) / t.steps_per_epoch, 3),
            "step": step + 1,
            "steps": total,
            "micro_batch": done,
            "micro_batches": of,
            "loss": loss_so_far * of / done,  # the mean over this step's micro-batches so far
            "tokens_per_s": t.window["tokens"] / window_seconds if window_seconds else 0.0,
            "elapsed_s": round(elapsed, 1),
            "left_s": round(left, 1),
        }
        t.state["log"].append(row)
        if t.rank == 0:
            log.info(
                "fold %d | epoch %.2f | step %d/%d, micro-batch %d/%d | loss %.4f | %.0f tokens/s "
                "| %s elapsed, %s left",
                t.fold,
                row["epoch"],
                row["step"],
                total,
                done,
                of,
                row["loss"],
                row["tokens_per_s"] * t.world,
                _clock(elapsed),
                _clock(left),
            )

    def within_evaluation(self) -> Callable[[int, int], None]:
        """The held-out pass's progress: a line (rank 0's share) before the silence would pass
        `log_every_seconds` at its next batch — an evaluation on a CPU can take minutes."""
        t = self.t
        began = time.monotonic()
        chance = [began, 0.0]  # the last chance to print, the longest batch

        def on_batch(done: int, of: int) -> None:
            now = time.monotonic()
            chance[1] = max(chance[1], now - chance[0])
            chance[0] = now
            if not self._due(now, chance[1]):
                return
            self.last_line = now
            if t.rank == 0:
                log.info(
                    "fold %d | held-out evaluation at step %d | %d/%d prompts | %s elapsed, %s left",
                    t.fold,
                    t.state["global_step"],
                    done,
                    of,
                    _clock(now - self.started),
                    _clock((now - began) / done * (of - done)),
                )

        return on_batch

    def after_evaluation(self, metrics: dict[str, Any]) -> None:
        t = self.t
        self.last_line = time.monotonic()
        score = metrics.get("heldout_selection_score")
        if isinstance(score, int | float) and (self.best is None or score > self.best):
            self.best = float(score)
        dims = [d for d in ("goal", "task", "bond") if f"heldout_pearson_{d}" in metrics]
        per_dim = {d: metrics.get(f"heldout_pearson_{d}") for d in dims}
        expected = {d: metrics.get(f"heldout_expected_pearson_{d}") for d in dims}
        row = {
            "kind": "heldout",
            "fold": t.fold,
            "step": metrics.get("step"),
            "epoch": metrics.get("epoch"),
            "pearson": per_dim,
            "pearson_expected": expected,
            "mse_mean": metrics.get("heldout_mse_mean"),
            "selected_on": metrics.get("heldout_selected_on"),
            "selection_score": score,
            "best_selection_score": self.best,
        }
        t.state["log"].append(row)
        if t.rank == 0:

            def shown(rs: dict[str, Any]) -> str:
                return ", ".join(f"{d} {_fmt(r)}" for d, r in rs.items()) or "–"

            log.info(
                "fold %d | held-out at step %s: r greedy %s; expected %s | MSE %s | "
                "selection (%s) %s, best %s",
                t.fold,
                metrics.get("step"),
                shown(per_dim),
                shown(expected),
                _fmt(metrics.get("heldout_mse_mean")),
                metrics.get("heldout_selected_on"),
                _fmt(score),
                _fmt(self.best),
            )


def _fmt(value: Any) -> str:
    defined = isinstance(value, int | float) and value == value  # NaN: r undefined
    return f"{value:.3f}" if defined else "–"


def _clock(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing done yet to extrapolate from
        return "?"
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes}m{s:02d}s"


def maybe_inject_failure(cfg: FinetuneConfig, rank: int, step: int) -> None:
    """Chaos testing (config.fault_injection): die like a lost node — no exception, no cleanup."""
    fi = cfg.fault_injection
    if fi is None or rank != fi.rank or step != fi.at_step or Path(fi.flag_file).exists():
        return
    Path(fi.flag_file).parent.mkdir(parents=True, exist_ok=True)
    Path(fi.flag_file).write_text(f"worker rank {rank} failed ({fi.kind}) at step {step}\n")
    log.warning("fault injection: worker rank %d fails (%s) at step %d", rank, fi.kind, step)
    if fi.kind == "oom":
        from ray.exceptions import OutOfMemoryError

        raise OutOfMemoryError(
            "Task was killed due to the node running low on memory (injected at step "
            f"{step}): memory usage threshold exceeded"
        )
    if fi.kind == "raise":
        raise RuntimeError(f"injected failure at step {step}")
    os._exit(1)


def ray_train_env() -> tuple[WorkerEnv, contextlib.AbstractContextManager]:
    """The env of a Ray Train worker, and a context that keeps its restored checkpoint folder
    on disk while the model is built from it."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()

    def report(metrics: dict[str, Any], folder: Path | None, name: str) -> None:
        if folder is None:
            ray.train.report(metrics, checkpoint=None)
        else:
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                checkpoint_dir_name=name,
            )
        # The controller registers a reported checkpoint asynchronously; a worker lost before
        # that would restart from the previous one (seen: a kill 3 steps later restarted from
        # zero). Waiting for the commit makes "reported" mean "resumable".
        ray.train.get_all_reported_checkpoints(
            consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED
        )

    env = WorkerEnv(
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        device=ray.train.torch.get_device(),
        report=report,
        prepare_ddp=lambda model: ray.train.torch.prepare_model(model, parallel_strategy="ddp"),
    )
    return env, (checkpoint.as_directory() if checkpoint else contextlib.nullcontext())


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker entry point. loop_config = {"config": FinetuneConfig as dict, "fold": k}."""
    cfg = FinetuneConfig.model_validate(loop_config["config"])
    env, restored = ray_train_env()
    with restored as folder:
        env.resume_from = folder
        training = FoldTraining(cfg, int(loop_config["fold"]), env)
    return training.run()
