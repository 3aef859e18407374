"""Benchmark: `care-ray finetune --config configs/finetune-tiny-cpu.yaml`, end to end, as a user runs it.

    .venv/bin/python benchmarks/finetune_cpu.py [--work out/bench-finetune] [--folds 0,1]

Prepares what the config needs (ESConv corpus, tiny model, SFT examples: 80 sessions, 2 folds,
score+rationale, whole transcripts) unless already there, writes a copy of the config pointing at
them under a fresh run name, runs the CLI as a child process and prints one JSON object: wall
time of the command, peak RSS of its whole process tree (the CLI, the local Ray it starts, the
training workers; sampled every 0.2 s, RSS summed — shared pages count once per process, so an
upper bound), and the training loop's tokens/s (tokens through forward + backward over the time
spent in optimizer steps, all workers together; held-out scoring and checkpointing excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakRSS  # noqa: E402


def prepare(work: Path) -> dict[str, Path]:
    """The corpus, model and SFT examples the tiny config names, built once under `work`."""
    from care_ray.common.paths import esconv_dir
    from care_ray.corpus.ingest import ingest_files
    from care_ray.models.tiny import build_tiny_model
    from care_ray.training.sft_data import SFTOptions, make_sft_data

    paths = {
        "corpus": work / "esconv",
        "model": work / "tiny-llama",
        "data": work / "sft-esconv-tiny",
    }
    if not (paths["corpus"] / "manifest.json").exists():
        ingest_files("esconv", [esconv_dir()], paths["corpus"])
    if not (paths["model"] / "config.json").exists():
        build_tiny_model(paths["model"])
    if not (paths["data"] / "examples.parquet").exists():
        make_sft_data(
            paths["corpus"],
            paths["data"],
            SFTOptions(
                target="score+rationale", folds=2, max_sessions=80, missing_rationale="template"
            ),
        )
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "out" / "bench-finetune")
    parser.add_argument("--folds", default="0,1")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "finetune-tiny-cpu.yaml")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    import yaml

    t0 = time.perf_counter()
    paths = prepare(args.work)
    prep_s = time.perf_counter() - t0
    name = f"bench-{int(time.time())}"  # fresh: the same name would resume the earlier run
    config = yaml.safe_load(args.config.read_text())
    config.update(
        name=name,
        model=str(paths["model"]),
        data=str(paths["data"]),
        output_dir=str(args.work / "finetune" / name),
        storage_path=str(args.work / "ray-results"),
        folds=[int(f) for f in args.folds.split(",")],
    )
    config_file = args.work / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "care_ray", "finetune", "--config", str(config_file)]
    t1 = time.perf_counter()
    log_file = args.work / f"{name}.log"
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cli, stdout=log, stderr=subprocess.STDOUT)
        with PeakRSS(proc.pid) as rss:
            proc.wait()
    wall = time.perf_counter() - t1
    if proc.returncode != 0:
        print(
            f"care-ray finetune failed with exit code {proc.returncode}; see {log_file}",
            file=sys.stderr,
        )
        return proc.returncode
    output_dir = Path(config["output_dir"])
    summary = json.loads((output_dir / "summary.json").read_text())
    folds = []
    for fold in config["folds"]:
        rec = json.loads((output_dir / f"fold{fold}" / "metrics.json").read_text())
        rates = [c["train_tokens_per_s"] for c in rec["candidates"] if c.get("train_tokens_per_s")]
        losses = [loss for _, loss in rec["loss_history"]]
        folds.append(
            {
                "fold": fold,
                "seconds": rec.get("seconds"),
                "steps": len(losses),
                "loss_first_last": [round(losses[0], 3), round(losses[-1], 3)],
                "train_tokens_per_s_by_checkpoint": [round(r) for r in rates],
                "selected_step": rec["metrics"]["step"],
                "heldout_pearson_mean": rec["metrics"]["heldout_pearson_mean"],
                "train_examples": rec["metrics"]["train_examples"],
                "heldout_items": rec["metrics"]["heldout_items"],
            }
        )
    all_rates = [r for f in folds for r in f["train_tokens_per_s_by_checkpoint"]]
    result = {
        "benchmark": "finetune_cpu",
        "command": "python benchmarks/finetune_cpu.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
        },
        "config": {
            k: config[k]
            for k in (
                "method",
                "epochs",
                "micro_batch_size",
                "effective_batch_size",
                "learning_rate",
                "max_train_examples",
                "max_eval_examples",
                "folds",
            )
        }
        | {
            "workers": config["scaling"]["num_workers"],
            "cpus_per_worker": config["scaling"]["cpus_per_worker"],
        },
        "finetune_command": " ".join(cli[1:]),
        "log": str(log_file),
        "prepare_seconds": round(prep_s, 1),
        "finetune_wall_seconds": round(wall, 1),
        "peak_tree_rss_gib": round(rss.peak / 2**30, 2),
        "train_tokens_per_s_mean": round(sum(all_rates) / len(all_rates)) if all_rates else None,
        "folds": folds,
        "summary_seconds": summary["seconds"],
    }
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
