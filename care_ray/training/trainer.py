"""Rationale-augmented SFT as a Ray Train job: one TorchTrainer run per held-out fold.

Per fold, a TorchTrainer with ScalingConfig / RunConfig(storage_path, name) /
FailureConfig(max_failures) / CheckpointConfig(ranked by held-out Pearson r) runs
care_ray.training.worker on each worker; then the best checkpoint is exported as a PEFT adapter
folder with metrics.json (and merged weights on request), and the folds are summarised.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from care_ray.training.config import FinetuneConfig

log = logging.getLogger(__name__)


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


def worker_runtime_env(cfg: FinetuneConfig) -> dict[str, Any]:
    """The training workers' own runtime_env: on CPU, glibc's mmap threshold pinned at
    `cpu_mmap_threshold_kib` (read once, when a process starts: it has to be in the worker's
    environment). Left out where the user or the submitted job already set it."""
    from care_ray.cluster.offline import job_env_vars

    key = "MALLOC_MMAP_THRESHOLD_"
    if cfg.scaling.use_gpu or cfg.cpu_mmap_threshold_kib is None:
        return {}
    if key in os.environ or key in job_env_vars():
        return {}
    return {"env_vars": {key: str(cfg.cpu_mmap_threshold_kib * 1024)}}


def make_trainer(cfg: FinetuneConfig, fold: int):
    """The TorchTrainer of one held-out fold."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **s.resources_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    from care_ray.training.worker import train_loop_per_worker

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
            # Ray Train v2's RunConfig (the one `ray.train` gives at run time); the stubs see v1's
            worker_runtime_env=worker_runtime_env(cfg),  # type: ignore[call-arg]
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
    from care_ray.training.curves import write_fold_records
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
        "selected_on": metrics.get("heldout_selected_on", cfg.select_on),
        "selected_checkpoint": checkpoint.path,
        "metrics": dict(metrics),
        "candidates": [
            {
                "checkpoint": c.path,
                "step": m.get("step"),
                cfg.selection_metric: m.get(cfg.selection_metric),
                "heldout_pearson_mean": m.get("heldout_pearson_mean"),
                "heldout_expected_pearson_mean": m.get("heldout_expected_pearson_mean"),
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
        "progress": write_fold_records(
            fold_dir, run_info.get("loss_history") or [], run_info.get("log") or []
        ),
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
    from care_ray.common.guard import refuse_in_fast_tests
    from care_ray.evaluation.metrics import fold_summary
    from care_ray.training.memory import plan_folds
    from care_ray.training.selection import finite_or_none, write_metrics
    from care_ray.training.sft_data import read_manifest

    cfg = with_absolute_paths(cfg)
    data_manifest = read_manifest(cfg.data)
    destination = cfg.output_dir
    if is_uri(destination):
        # exports are written on this disk, then copied up once every fold is done
        cfg = cfg.model_copy(update={"output_dir": tempfile.mkdtemp(prefix="care-ray-export-")})
    folds = held_out_folds(cfg)
    fold_configs, plans = plan_folds(cfg, folds)  # a fold that cannot fit ends here, before Ray
    if cfg.dry_run:
        return {"name": cfg.name, "dry_run": True, "folds": plans}
    refuse_in_fast_tests("a Ray Train run")
    start_ray(cfg.ray_address, log_to_driver=True)
    check_worker_resources(cfg)
    records = []
    started = time.time()
    for fold in folds:
        t0 = time.time()
        trainer = make_trainer(fold_configs[fold], fold)
        try:
            result = trainer.fit()
        except Exception as e:  # Ray Train gave up (after max_failures restarts): one line
            from care_ray.training.failures import fold_failure

            plan = next(p for p in plans if p["fold"] == fold)
            estimate = (
                f"~{plan['memory_per_worker_gib']} GiB per worker of "
                f"{plan['memory_limit_gib'] or '?'} GiB, {plan['memory_limit_source']}"
            )
            raise fold_failure(
                e, fold, cfg.output_dir, cfg.storage_path, f"{cfg.name}-fold{fold}", estimate
            ) from None
        record = export_fold(cfg, fold, result, data_manifest, time.time() - t0)
        records.append(record)
        log.info(
            "fold %d: best %s (%s) = %.3f at step %s",
            fold,
            cfg.selection_metric,
            cfg.select_on,
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
