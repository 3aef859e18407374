"""The fine-tuning memory plan against the measured peak per worker (issue #29).

For the tiny model and SmolLM2-135M-Instruct (LoRA r 16, 2 Ray Train workers x 1 CPU,
max_seq_len 2048, SFT data of ESConv item 3 as in smollm2_expected_scores.py), each combination
of packed micro-batches of 2 / unpacked micro-batches of 1, LoRA dropout 0.05 / 0 and gradient
checkpointing on / off runs one short epoch through `care-ray finetune` and prints the plan's
memory per worker (training/memory.py, the line the driver logs before Ray Train starts) beside
the peak the workers measured (each metric row's `peak_memory_gib_per_worker`: the worker
process's peak RSS). A row the plan refuses (it would not fit) is printed as refused.

    .venv/bin/python benchmarks/memory_plan.py [--models tiny,smollm2] [--train-examples 8]
        [--rows packed:0.05:0,packed:0.05:1]

The plan bounds the longest micro-batch of the sampled training set; unpacked micro-batches of 1
meet that bound exactly once per epoch, packed ones only when the two longest examples share a
micro-batch. About 3 minutes per SmolLM2 row and 1 minute per tiny row on 2 cores. `--replan`
plans the finished rows again (after a change to the plan) against the peaks they measured.
One short epoch does not grow glibc's heap the way a long CPU run does, so the rows compare the
measured peak with the plan less its `heap growth` part (printed beside it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _common import esconv_corpus, tiny_model, workdir

REPO = Path(__file__).resolve().parents[1]


def sft_data(model: Path, work: Path) -> Path:
    from care_ray.training.sft_data import SFTOptions, make_sft_data

    data = work / f"sft-item3-{model.name}"
    if not (data / "examples.parquet").exists():
        make_sft_data(
            esconv_corpus(),
            data,
            SFTOptions(target="score", items="3", folds=3, max_sessions=300),
            tokenizer_path=str(model),
            max_model_len=2048,
        )
    return data


def run_row(
    model: Path, data: Path, work: Path, packed: bool, dropout: float, ckpt: bool, n: int
) -> dict:
    name = f"mem-{model.name}-{'packed' if packed else 'unpacked'}-d{dropout}-c{int(ckpt)}-{int(time.time())}"
    micro = 2 if packed else 1
    config = {
        "name": name,
        "model": str(model),
        "data": str(data),
        "output_dir": str(work / name),
        "storage_path": str(work / "ray-results"),
        "folds": [0],
        "method": "lora",
        "lora": {"r": 16, "alpha": 32, "dropout": dropout},
        "epochs": 1,
        "micro_batch_size": micro,
        "effective_batch_size": 2 * micro,
        "max_seq_len": 2048,
        "packing": packed,
        "gradient_checkpointing": ckpt,
        "max_train_examples": n,
        "max_eval_examples": 4,
        "scaling": {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1},
    }
    config_file = work / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    log_file = work / f"{name}.log"
    with open(log_file, "w") as log:
        code = subprocess.call(
            [sys.executable, "-m", "care_ray", "finetune", "--config", str(config_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    text = log_file.read_text()
    plan = next((line for line in text.splitlines() if "memory per worker" in line), "")
    planned = float(plan.split("~", 1)[1].split(" GiB", 1)[0]) if "~" in plan else None
    growth = (
        float(plan.split("heap growth ", 1)[1].split(" GiB", 1)[0]) if "heap growth" in plan else 0
    )
    if planned is not None:
        planned = round(planned - growth, 2)
    row = {
        "model": model.name,
        "micro-batches": f"packed x{micro}" if packed else "unpacked x1",
        "dropout": dropout,
        "checkpointing": ckpt,
        "planned_gib": planned,
        "heap_growth_gib": growth,
        "tokens": int(plan.split("(", 2)[1].split(" tokens")[0]) if "tokens)" in plan else None,
    }
    metrics = work / name / "fold0" / "metrics.json"
    if code or not metrics.exists():
        row["measured_gib"] = None
        row["note"] = (
            "refused by the plan" if "does not fit" in text else f"failed ({code}), see {log_file}"
        )
        return row
    peaks = json.loads(metrics.read_text())["metrics"]["peak_memory_gib_per_worker"]
    row["measured_gib"] = max(peaks)
    row["plan_vs_measured"] = round(planned / max(peaks), 2) if planned else None
    return row


def replan(work: Path) -> list[dict]:
    """The plan of every finished row, made again by `finetune --dry-run` from its saved config
    (the plan is a function of the config and the data; the peaks were measured by its run)."""
    rows = []
    for config_file in sorted(work.glob("mem-*.yaml")):
        cfg = yaml.safe_load(config_file.read_text())
        metrics = work / cfg["name"] / "fold0" / "metrics.json"
        if not metrics.exists():
            continue
        peak = max(json.loads(metrics.read_text())["metrics"]["peak_memory_gib_per_worker"])
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "care_ray",
                "finetune",
                "--config",
                str(config_file),
                "--dry-run",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        ).stdout
        plan = json.loads(out[out.index("{") :])["folds"][0]
        key = "heap_growth_checkpointed" if plan["gradient_checkpointing"] else "heap_growth"
        growth = plan["parts_gib"].get(key, 0)
        planned = round(plan["memory_per_worker_gib"] - growth, 2)
        rows.append(
            {
                "model": Path(cfg["model"]).name,
                "micro-batches": "packed x2" if cfg["packing"] else "unpacked x1",
                "dropout": cfg["lora"]["dropout"],
                "checkpointing": cfg["gradient_checkpointing"],
                "tokens": plan["longest_micro_batch_tokens"],
                "planned_gib": planned,
                "heap_growth_gib": growth,
                "measured_gib": peak,
                "plan_vs_measured": round(planned / peak, 2),
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--train-examples", type=int, default=8)
    ap.add_argument(
        "--replan", action="store_true", help="no training: plan the finished rows again"
    )
    ap.add_argument(
        "--rows",
        default=None,
        help="only these rows: packed|unpacked:DROPOUT:CKPT(0|1), comma-separated "
        "(e.g. packed:0.05:0,packed:0.05:1)",
    )
    a = ap.parse_args()
    work = workdir() / "memory-plan"
    work.mkdir(parents=True, exist_ok=True)
    if a.replan:
        print_table(replan(work))
        return 0
    models = {"tiny": tiny_model(), "smollm2": workdir() / "smollm2"}
    if "smollm2" in a.models and not (models["smollm2"] / "model.safetensors").exists():
        subprocess.check_call(
            [
                sys.executable,
                "-m",
                "care_ray",
                "import-model",
                "--smollm2",
                "--out",
                str(models["smollm2"]),
            ]
        )
    rows = []
    for key in a.models.split(","):
        model = models[key]
        data = sft_data(model, work)
        for packed, dropout, ckpt in itertools.product((False, True), (0.0, 0.05), (False, True)):
            name = f"{'packed' if packed else 'unpacked'}:{dropout}:{int(ckpt)}"
            if a.rows and name not in a.rows.split(","):
                continue
            row = run_row(model, data, work, packed, dropout, ckpt, a.train_examples)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print_table(rows)
    return 0


def print_table(rows: list[dict]) -> None:
    print(
        "\n| model | micro-batches | dropout | checkpointing | tokens | plan GiB | peak GiB | plan / peak |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['model']} | {r['micro-batches']} | {r['dropout']} | {'on' if r['checkpointing'] else 'off'} "
            f"| {r['tokens']} | {r['planned_gib']} | {r['measured_gib'] or r.get('note')} "
            f"| {r.get('plan_vs_measured', '–')} |"
        )


if __name__ == "__main__":
    sys.exit(main())
