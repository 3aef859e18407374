"""Rationale-augmented SFT as a Ray Train job: one TorchTrainer run per held-out fold.

Driver (`run_finetune`): per fold, a TorchTrainer with ScalingConfig / RunConfig(storage_path,
name) / FailureConfig(max_failures) / CheckpointConfig(ranked by held-out Pearson r); then the
best checkpoint is exported as a PEFT adapter folder with metrics.json (and merged weights on
request), and the folds are summarised.

Workers (`train_loop_per_worker`): a plain transformers/PEFT loop — AdamW, cosine schedule with
warmup, gradient accumulation (no all-reduce on accumulation steps), loss on the assistant tokens
only — that checkpoints each epoch (or every N steps), scores the held-out fold by the first score
digit, and resumes from `ray.train.get_checkpoint()` after a failure: weights, optimizer,
schedule, RNG and the position inside the epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from care_ray.training.config import FinetuneConfig

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- worker side


def _fold_examples(cfg: FinetuneConfig, fold: int) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows) of one fold, sampled down for smoke runs. The held-out sample
    takes whole sessions, so every sampled session keeps all its items (dimension means need them)."""
    import random

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


def _all_reduce_sum(values: list[float], device) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _all_gather(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _maybe_inject_failure(cfg: FinetuneConfig, rank: int, step: int) -> None:
    """Chaos testing (config.fault_injection): die like a lost node — no exception, no cleanup."""
    fi = cfg.fault_injection
    if fi is None or rank != fi.rank or step != fi.at_step or Path(fi.flag_file).exists():
        return
    Path(fi.flag_file).parent.mkdir(parents=True, exist_ok=True)
    Path(fi.flag_file).write_text(f"worker rank {rank} exited at step {step}\n")
    log.warning("fault injection: worker rank %d exits at step %d", rank, step)
    os._exit(1)


def _equal_shards(items: list, rank: int, world: int) -> tuple[list, int]:
    """This rank's strided share, padded to the common length by repeating an item (FSDP needs
    every rank to run the same number of forward passes); returns (share, how many are real)."""
    real = items[rank::world]
    width = -(-len(items) // world)
    return real + (real or items[:1])[-1:] * (width - len(real)), len(real)


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker entry point. loop_config = {"config": FinetuneConfig as dict, "fold": k}."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray.train
    import ray.train.torch
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from care_ray.contracts.rubric import load_rubric
    from care_ray.scoring.prompts import PromptBuilder, load_tokenizer
    from care_ray.training import loop
    from care_ray.training.selection import finite_or_none, heldout_metrics

    cfg = FinetuneConfig.model_validate(loop_config["config"])
    fold = int(loop_config["fold"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(
            cfg.scaling.threads_per_worker or max(1, int(cfg.scaling.cpus_per_worker))
        )
    plan = loop.precision_plan(cfg.precision, cfg.method, device)
    fsdp = cfg.parallel == "fsdp" and world > 1
    torch.manual_seed(cfg.seed)

    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    builder = PromptBuilder(load_rubric(cfg.rubric) if cfg.rubric else load_rubric(), tokenizer)
    train_rows, eval_rows = _fold_examples(cfg, fold)
    train, dropped_train = loop.encode_examples(
        train_rows, tokenizer, builder.render, cfg.max_seq_len
    )
    held_out, dropped_eval = loop.encode_examples(
        eval_rows, tokenizer, builder.render, cfg.max_seq_len
    )
    prefix_ids, digit_ids = loop.score_digit_ids(tokenizer)

    # Resume: weights first (they shape the model), optimizer and schedule once it exists.
    checkpoint = ray.train.get_checkpoint()
    state: dict[str, Any] = {
        "global_step": 0,
        "epoch": 0,
        "step_in_epoch": 0,
        "loss_history": [],
        "attempts": [],
    }
    saved: dict[str, Any] | None = None
    optimizer_state: dict[str, Any] = {}
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as restored_dir:
        if restored_dir is not None:
            saved = loop.load_trainer_state(restored_dir)
            state.update({k: saved[k] for k in state})
            if rank == 0 or not fsdp:  # under FSDP rank 0 reads it and broadcasts the shards
                optimizer_state = loop.load_trainer_state(restored_dir, loop.OPTIMIZER_FILE)
        model = loop.build_model(
            cfg,
            plan.load_dtype,
            restored_dir,
            device=device,
            compute_dtype=plan.compute_dtype,
            longest_tokens=loop.longest_micro_batch_tokens(
                train, cfg.micro_batch_size, cfg.packing
            ),
            shards=world if fsdp else 1,
        )
    model = (
        loop.shard_fsdp(model, device, plan)
        if fsdp
        else ray.train.torch.prepare_model(model, parallel_strategy="ddp")
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    accum = cfg.grad_accum_steps
    steps_per_epoch = loop.optimizer_steps_per_epoch(len(train), world, cfg.micro_batch_size, accum)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = get_cosine_schedule_with_warmup(
        optimizer,
        num_warmup_steps=int(round(cfg.warmup_ratio * total_steps)),
        num_training_steps=total_steps,
    )
    if saved is not None:
        loop.restore_optimizer(model, optimizer, optimizer_state, from_rank0=fsdp)
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        del optimizer_state
    state["attempts"].append({"start_step": state["global_step"], "world_size": world})
    if rank == 0:
        log.info(
            "fold %d: %d train / %d held-out examples (%d / %d dropped > max_seq_len), %d "
            "steps x %d epochs, accumulation %d, %s (%s) on %s, start step %d",
            fold,
            len(train),
            len(held_out),
            dropped_train,
            dropped_eval,
            steps_per_epoch,
            cfg.epochs,
            accum,
            plan,
            "fsdp" if fsdp else "ddp",
            device,
            state["global_step"],
        )

    my_eval, my_real = _equal_shards(held_out, rank, world)
    window = {"loss_sum": 0.0, "steps": 0, "tokens": 0, "seconds": 0.0}

    def evaluate_and_report(epoch_done: bool) -> None:
        t0 = time.perf_counter()
        with loop.autocast(device, plan):
            preds = loop.score_by_first_digit(
                loop.unwrap(model),
                my_eval,
                prefix_ids,
                digit_ids,
                pad_id,
                device,
                cfg.eval_batch_size,
            )
        mine = [
            (e.session_id, e.item_id, e.dimension, e.score, p)
            for e, p in zip(my_eval[:my_real], preds[:my_real], strict=True)
        ]
        rows = [r for part in _all_gather(mine) for r in part]
        sids, iids, dims, scores, ps = (list(x) for x in zip(*rows, strict=True))
        loss_sum, steps, tokens, seconds = _all_reduce_sum(
            [window["loss_sum"], window["steps"], window["tokens"], window["seconds"]], device
        )
        metrics = heldout_metrics(sids, iids, dims, scores, ps)
        metrics.update(
            {
                "fold": fold,
                "epoch": state["epoch"]
                + (0 if epoch_done else state["step_in_epoch"] / steps_per_epoch),
                "step": state["global_step"],
                "train_loss": loss_sum / steps if steps else float("nan"),
                "train_tokens_per_s": tokens / (seconds / world) if seconds else float("nan"),
                "learning_rate": scheduler.get_last_lr()[0],
                "eval_seconds": time.perf_counter() - t0,
                "train_examples": len(train),
                "dropped_examples": dropped_train + dropped_eval,
                "attempt": len(state["attempts"]),
                "attempt_start_step": state["attempts"][-1]["start_step"],
            }
        )
        metrics = finite_or_none(metrics)
        window.update(loss_sum=0.0, steps=0, tokens=0, seconds=0.0)
        model_state, optim_state = loop.full_state(
            model, optimizer, cfg.method
        )  # collective under FSDP
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
        else:
            with tempfile.TemporaryDirectory(prefix="care-ray-ckpt-") as tmp:
                loop.save_training_checkpoint(
                    Path(tmp),
                    model,
                    cfg,
                    model_state,
                    optim_state,
                    scheduler,
                    state,
                    {"metrics": metrics, "predictions": rows},
                    tokenizer,
                )
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(tmp),
                    checkpoint_dir_name=f"step-{state['global_step']:06d}",
                )
        # The controller registers a reported checkpoint asynchronously; a worker lost before that
        # would restart from the previous one (seen: a kill 3 steps later restarted from zero).
        # Waiting for the commit makes "reported" mean "resumable".
        ray.train.get_all_reported_checkpoints(
            consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED
        )

    model.train()
    while state["epoch"] < cfg.epochs:
        order = loop.rank_order(len(train), world, rank, cfg.seed, state["epoch"])
        micro_batches = [
            order[i : i + cfg.micro_batch_size] for i in range(0, len(order), cfg.micro_batch_size)
        ]
        for step_in_epoch in range(state["step_in_epoch"], steps_per_epoch):
            group = micro_batches[step_in_epoch * accum : (step_in_epoch + 1) * accum]
            t0 = time.perf_counter()
            step_loss = 0.0
            for j, idx in enumerate(group):
                batch = loop.micro_batch([train[i] for i in idx], pad_id, cfg.packing)
                with (
                    loop.gradient_sync(model, enabled=j == len(group) - 1),
                    loop.autocast(device, plan),
                ):
                    loss = loop.training_loss(model, batch, device, fused=cfg.fused_loss)
                    (loss / len(group)).backward()
                step_loss += loss.item() / len(group)
                window["tokens"] += loop.batch_tokens(batch)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            window["seconds"] += time.perf_counter() - t0
            window["loss_sum"] += step_loss
            window["steps"] += 1
            state["global_step"] += 1
            state["step_in_epoch"] = step_in_epoch + 1
            state["loss_history"].append([state["global_step"], step_loss])
            _maybe_inject_failure(cfg, rank, state["global_step"])
            last_of_epoch = step_in_epoch + 1 == steps_per_epoch
            if (
                cfg.eval_every_steps
                and state["global_step"] % cfg.eval_every_steps == 0
                and not last_of_epoch
            ):
                evaluate_and_report(epoch_done=False)
        state["epoch"] += 1
        state["step_in_epoch"] = 0
        evaluate_and_report(epoch_done=True)
    return {
        "loss_history": state["loss_history"],
        "attempts": state["attempts"],
        "steps": state["global_step"],
        "steps_per_epoch": steps_per_epoch,
    }


# ---------------------------------------------------------------- driver side


def check_worker_resources(cfg: FinetuneConfig) -> None:
    """Custom worker resources no alive node offers are one line before training starts, not a
    worker group that waits for its placement group forever."""
    import ray

    from care_ray.cluster.resources import check_custom_resources

    check_custom_resources(
        cfg.scaling.resources_per_worker,
        cfg.scaling.num_workers,
        [n["Resources"] for n in ray.nodes() if n.get("Alive")],
        option="scaling.resources_per_worker",
        replicas_option="scaling.num_workers",
    )


def held_out_folds(cfg: FinetuneConfig) -> list[int]:
    from care_ray.training.sft_data import read_examples

    present = sorted(set(read_examples(cfg.data).column("fold").to_pylist()))
    if cfg.folds == "all":
        return present
    unknown = sorted(set(cfg.folds) - set(present))
    if unknown:
        raise ValueError(f"folds {unknown} are not in {cfg.data} (it has folds {present})")
    return list(cfg.folds)


def with_absolute_paths(cfg: FinetuneConfig) -> FinetuneConfig:
    """Local paths resolved against the driver's working directory: Ray workers need not share it."""
    from care_ray.cluster.storage import is_uri

    update: dict[str, Any] = {
        key: str(Path(getattr(cfg, key)).resolve())
        for key in ("data", "output_dir")
        if not is_uri(getattr(cfg, key))
    }
    if Path(cfg.model).exists():
        update["model"] = str(Path(cfg.model).resolve())
    if cfg.rubric is not None:
        update["rubric"] = Path(cfg.rubric).resolve()
    if "://" not in cfg.storage_path:
        update["storage_path"] = str(Path(cfg.storage_path).resolve())
    return cfg.model_copy(update=update)


def make_trainer(cfg: FinetuneConfig, fold: int):
    """The TorchTrainer of one held-out fold."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **s.resources_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    return TorchTrainer(
        # Ray types the loop as returning None, yet hands rank 0's return value back as
        # Result.return_value, which export_fold reads (loss history, attempts)
        train_loop_per_worker,  # type: ignore[arg-type]
        train_loop_config={"config": cfg.model_dump(mode="json"), "fold": fold},
        scaling_config=ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=f"{cfg.name}-fold{fold}",
            storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.num_to_keep,
                checkpoint_score_attribute=cfg.selection_metric,
                checkpoint_score_order="max",
            ),
        ),
    )


PROMPTS_FILE = "training_prompts.json"  # in an exported model or adapter folder


def export_fold(
    cfg: FinetuneConfig, fold: int, result, data_manifest: dict[str, Any], fit_seconds: float
) -> dict[str, Any]:
    """Best checkpoint of a fold → output_dir/foldK/{adapter|model}/ + metrics.json (+ merged/)."""
    from care_ray.training.selection import (
        best_checkpoint,
        export_checkpoint,
        merge_adapter,
        write_metrics,
    )

    checkpoint, metrics = best_checkpoint(result.best_checkpoints, cfg.selection_metric)
    fold_dir = Path(cfg.output_dir) / f"fold{fold}"
    served = fold_dir / ("adapter" if cfg.method == "lora" else "model")
    with checkpoint.as_directory() as d:
        export_checkpoint(Path(d), served, cfg.method)
    # how its prompts were built, for `score` to match: aligned prefixes or none
    (served / PROMPTS_FILE).write_text(
        json.dumps({"prefix_alignment": data_manifest.get("prefix_alignment")}) + "\n"
    )
    merged = None
    if cfg.merge and cfg.method == "lora":
        merged = merge_adapter(cfg.model, served, fold_dir / "merged", cfg.trust_remote_code)
    run_info = result.return_value or {}
    record = {
        "fold": fold,
        "selected_by": cfg.selection_metric,
        "selected_checkpoint": checkpoint.path,
        "metrics": dict(metrics),
        "candidates": [
            {
                "checkpoint": c.path,
                "step": m.get("step"),
                cfg.selection_metric: m.get(cfg.selection_metric),
                "train_loss": m.get("train_loss"),
                "train_tokens_per_s": m.get("train_tokens_per_s"),
            }
            for c, m in result.best_checkpoints
        ],
        "adapter" if cfg.method == "lora" else "model": str(served),
        "merged": str(merged) if merged else None,
        "base_model": cfg.model,
        "method": cfg.method,
        "target": data_manifest.get("target"),
        "proxy_labels": bool(data_manifest.get("proxy_label_examples")),
        "label_map": data_manifest.get("label_map"),
        "loss_history": run_info.get("loss_history"),
        "attempts": run_info.get("attempts"),
        "run_path": result.path,
        "seconds": round(fit_seconds, 1),
        "config": cfg.model_dump(mode="json"),
    }
    write_metrics(fold_dir / "metrics.json", record)
    return record


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Train every configured held-out fold, export each fold's best checkpoint, write summary.json.
    A rerun with the same name and storage_path resumes each unfinished run where it stopped
    (Ray Train restores its checkpoint manager from storage)."""
    from care_ray.cluster.ray import start_ray
    from care_ray.cluster.storage import is_uri, publish_folder
    from care_ray.evaluation.metrics import fold_summary
    from care_ray.training.selection import finite_or_none, write_metrics
    from care_ray.training.sft_data import read_manifest

    cfg = with_absolute_paths(cfg)
    data_manifest = read_manifest(cfg.data)
    destination = cfg.output_dir
    if is_uri(destination):
        # exports are written on this disk, then copied up once every fold is done
        cfg = cfg.model_copy(update={"output_dir": tempfile.mkdtemp(prefix="care-ray-export-")})
    folds = held_out_folds(cfg)
    start_ray(cfg.ray_address, log_to_driver=True)
    check_worker_resources(cfg)
    records = []
    started = time.time()
    for fold in folds:
        t0 = time.time()
        result = make_trainer(cfg, fold).fit()
        record = export_fold(cfg, fold, result, data_manifest, time.time() - t0)
        records.append(record)
        log.info(
            "fold %d: best %s = %.3f at step %s",
            fold,
            cfg.selection_metric,
            record["metrics"][cfg.selection_metric],
            record["metrics"].get("step"),
        )
    per_fold = [
        {
            k: v
            for k, v in r["metrics"].items()
            if k.startswith("heldout_") and isinstance(v, int | float)
        }
        for r in records
    ]
    summary = {
        "name": cfg.name,
        "folds": folds,
        "proxy_labels": bool(data_manifest.get("proxy_label_examples")),
        "target": data_manifest.get("target"),
        "method": cfg.method,
        "over_folds": fold_summary(per_fold),
        "per_fold": [
            {
                "fold": r["fold"],
                "dir": str(Path(cfg.output_dir) / f"fold{r['fold']}"),
                "seconds": r["seconds"],
                **per_fold[i],
            }
            for i, r in enumerate(records)
        ],
        "seconds": round(time.time() - started, 1),
    }
    write_metrics(Path(cfg.output_dir) / "summary.json", summary)
    if destination != cfg.output_dir:
        summary = _point_at(Path(cfg.output_dir), destination, summary)
        publish_folder(cfg.output_dir, destination)
    return finite_or_none(summary)


def _point_at(staging: Path, destination: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Paths under the local staging folder, in the exported JSON files and the summary, rewritten
    to where the folder is published (the staging path is a unique temporary name)."""
    for path in staging.rglob("*.json"):
        text = path.read_text(encoding="utf-8")
        if str(staging) in text:
            path.write_text(text.replace(str(staging), destination), encoding="utf-8")
    return json.loads(json.dumps(summary, default=str).replace(str(staging), destination))
