"""Greedy vs expected scores after a real fine-tune (issue #30), and the first validity table
from a real model (issue #27): SmolLM2-135M-Instruct, LoRA, on ESConv item 3 with the seeker's
empathy rating as its target; the held-out sessions of fold 0.

The product's own steps: `import-model --smollm2`, `sft-data --target score --items 3 --folds 3
--max-sessions 300 --max-model-len 2048`, `care-ray finetune` (2 Ray Train workers x 1 CPU, packed
micro-batches of 2, max_seq_len 2048, LoRA dropout 0.05, gradient checkpointing on, merged weights
written), then the scoring core (`score_item_prompts`, what the engine actors run) through vLLM on
the held-out sessions, for the fine-tuned model and for SmolLM2 zero-shot: the guided greedy score
and the expected score Σ s·p(s) of item 3. Beside them the lexical baseline (`care-ray baseline`,
TF-IDF ridge) fitted on the same training folds. Prints each scorer's Pearson r with its bootstrap
interval against the ratings and the paired bootstrap intervals of their differences
(`evaluation.metrics`, what `care-ray evaluate` writes).

    .venv/bin/python benchmarks/smollm2_expected_scores.py [--epochs 2] [--work DIR] [--reuse RUN]

`--reuse RUN`: an earlier run's output folder (with fold0/merged): no training. About 30 minutes
per epoch of training on 2 quiet cores, plus a few minutes of scoring.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import esconv_corpus, workdir

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--model", type=Path, default=None, help="default: SmolLM2 under the work dir")
    ap.add_argument("--smoke", action="store_true", help="8 examples each way: checks the script")
    ap.add_argument("--reuse", type=Path, default=None, help="a finished run's output folder")
    a = ap.parse_args()
    work = a.work or workdir() / "smollm2-expected"
    work.mkdir(parents=True, exist_ok=True)

    import polars as pl
    import yaml

    from care_ray.contracts.rubric import load_rubric
    from care_ray.corpus.reader import sessions_dataset
    from care_ray.evaluation.baseline import BaselineConfig, run_baseline
    from care_ray.evaluation.metrics import agreement_table, comparison_table
    from care_ray.scoring.config import ScoreConfig
    from care_ray.scoring.engines.vllm import VLLMEngine
    from care_ray.scoring.items import score_item_prompts
    from care_ray.scoring.prompts import PromptBuilder, load_tokenizer
    from care_ray.training.sft_data import SFTOptions, make_sft_data

    corpus = esconv_corpus()
    model = a.model or workdir() / "smollm2"
    if not (model / "model.safetensors").exists():
        subprocess.check_call(
            [sys.executable, "-m", "care_ray", "import-model", "--smollm2", "--out", str(model)]
        )
    data = work / "sft-item3"
    if not (data / "examples.parquet").exists():
        make_sft_data(
            corpus,
            data,
            SFTOptions(target="score", items="3", folds=3, max_sessions=300),
            tokenizer_path=str(model),
            max_model_len=2048,
        )
    name = f"smollm2-item3-{int(time.time())}"
    out = work / name
    config = {
        "name": name,
        "model": str(model),
        "data": str(data),
        "output_dir": str(out),
        "storage_path": str(work / "ray-results"),
        "folds": [0],
        "method": "lora",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "epochs": a.epochs,
        "micro_batch_size": 2,
        "effective_batch_size": 8,
        "max_seq_len": 2048,
        "packing": True,
        "gradient_checkpointing": True,  # #29: without it both workers outgrow 23 GiB
        "select_on": "expected",
        "merge": True,
        "scaling": {"num_workers": 2, "use_gpu": False, "cpus_per_worker": 1},
    }
    if a.smoke:
        config.update(max_train_examples=16, max_eval_examples=8, learning_rate=1e-2)
    config_file = work / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    train_s = 0.0
    if a.reuse:
        out = a.reuse
    else:
        started = time.perf_counter()
        with open(work / f"{name}.log", "w") as log:
            code = subprocess.call(
                [sys.executable, "-m", "care_ray", "finetune", "--config", str(config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        train_s = time.perf_counter() - started
        if code:
            print(f"finetune failed ({code}); see {work / f'{name}.log'}", file=sys.stderr)
            return code
    record = json.loads((out / "fold0" / "metrics.json").read_text())

    # the held-out sessions of fold 0, scored by the merged model through vLLM
    folds = pl.read_parquet(data / "folds.parquet")
    held = folds.filter(pl.col("fold") == 0)["session_id"].to_list()[: 8 if a.smoke else None]
    table = sessions_dataset(corpus).to_table(columns=["session_id", "turns", "labels"])
    table = table.filter(pl.Series(table.column("session_id").to_pylist()).is_in(held).to_arrow())
    truth = {
        r["session_id"]: dict(r["labels"] or []).get("empathy")
        for r in table.select(["session_id", "labels"]).to_pylist()
    }
    rubric = load_rubric()
    meta = {"n_items_selected": 1, "adapter": None, "engine": "vllm", "run_fingerprint": "bench"}

    def score(model_dir: str) -> tuple[dict[str, dict], float]:
        cfg = ScoreConfig(
            sessions=corpus,
            model=model_dir,
            out=work / "unused",
            max_model_len=2048,
            score_only=True,
        ).engine_config()
        prompts = PromptBuilder(
            rubric, load_tokenizer(model_dir), cfg.max_model_len, cfg.max_new_tokens
        ).build_item_prompts(table.select(["session_id", "turns"]), [rubric.item(3)])
        engine = VLLMEngine(cfg)
        t0 = time.perf_counter()
        try:
            rows = score_item_prompts(prompts, engine, cfg, {**meta, "model": model_dir})
        finally:
            engine.shutdown()
        return {r["session_id"]: r for r in rows.to_pylist()}, time.perf_counter() - t0

    tuned, score_s = score(str(out / "fold0" / "merged"))
    zero, zero_s = score(str(model))
    # the baseline learns from the same training folds: a corpus of the sampled sessions alone
    sample = work / "esconv-sft-sample"
    if not (sample / "manifest.json").exists():
        from care_ray.corpus.ingest import ingest_files
        from care_ray.corpus.reader import iter_sessions

        sampled = set(folds["session_id"].to_list())
        jsonl = work / "esconv-sft-sample.jsonl"
        with open(jsonl, "w", encoding="utf-8") as f:
            for sess in iter_sessions(corpus):
                if sess["session_id"] in sampled:
                    f.write(json.dumps(sess, ensure_ascii=False, default=str) + "\n")
        ingest_files("sessions-jsonl", [jsonl], sample)
    baseline_dir = work / f"baseline-{name}"
    run_baseline(
        BaselineConfig(
            sessions=sample,
            out=baseline_dir,
            truth=["labels.empathy=bond"],
            folds=str(data / "folds.parquet"),
        )
    )
    base = dict(pl.read_parquet(baseline_dir / "sessions").select("session_id", "bond").iter_rows())

    def num(row: dict | None, key: str) -> float | None:
        v = (row or {}).get(key)
        return None if v is None else float(v)

    pairs = pl.DataFrame(
        [
            {
                "session_id": sid,
                "dimension": "bond",
                "observed": float(truth[sid]),
                "predicted": num(tuned.get(sid), "expected_score"),
                "predicted_tuned_greedy": num(tuned.get(sid), "score"),
                "predicted_zero_expected": num(zero.get(sid), "expected_score"),
                "predicted_zero_greedy": num(zero.get(sid), "score"),
                "predicted_baseline": base.get(sid),
            }
            for sid in held
            if truth.get(sid) is not None
        ]
    )
    raters = [
        ("fine-tuned, expected", "predicted"),
        ("fine-tuned, greedy", "predicted_tuned_greedy"),
        ("zero-shot, expected", "predicted_zero_expected"),
        ("zero-shot, greedy", "predicted_zero_greedy"),
        ("TF-IDF ridge baseline", "predicted_baseline"),
    ]
    complete = pairs.drop_nulls().with_columns(  # no counselor rating, one held-out fold
        pl.lit(None, pl.Float64).alias("counselor"), pl.lit(None, pl.String).alias("fold")
    )
    agreement = agreement_table(
        complete, ["bond"], a.resamples, 0, 0.95, None, False, raters
    ).filter(pl.col("fold").is_null())
    cmp = comparison_table(complete, raters, ["bond"], resamples=a.resamples, seed=0)
    m = record["metrics"]
    print(
        f"held-out sessions of fold 0: {len(held)}; with every score and a rating: {complete.height}"
    )
    print("| scorer | Pearson r [95% CI] | Spearman ρ | MSE | distinct greedy values |")
    print("| --- | --- | --- | --- | --- |")
    for name_, column in raters:
        r = agreement.filter(pl.col("rater") == name_).row(0, named=True)
        distinct = sorted(set(complete[column].to_list())) if "greedy" in name_ else "–"
        print(
            f"| {name_} | {_f(r['pearson'])} [{_f(r['pearson_lo'])}, {_f(r['pearson_hi'])}] | "
            f"{_f(r['spearman'])} | {_f(r['mse'])} | {distinct} |"
        )
    print("| a − b | r difference [95% CI] | MSE difference [95% CI] |")
    print("| --- | --- | --- |")
    for r in cmp.iter_rows(named=True):
        print(
            f"| {r['rater_a']} − {r['rater_b']} | {_f(r['difference'])} "
            f"[{_f(r['difference_lo'])}, {_f(r['difference_hi'])}] | "
            f"{_f(r['mse_difference'])} [{_f(r['mse_difference_lo'])}, "
            f"{_f(r['mse_difference_hi'])}] |"
        )
    print(
        json.dumps(
            {
                "benchmark": "smollm2_expected_scores",
                "epochs": a.epochs,
                "run": str(out),
                "train_examples": m.get("train_examples"),
                "selected_step": m.get("step"),
                "training_heldout": {
                    k: m.get(k)
                    for k in (
                        "heldout_pearson_bond",
                        "heldout_expected_pearson_bond",
                        "heldout_selected_on",
                    )
                },
                "candidates": record["candidates"],
                "train_seconds": round(train_s),
                "score_seconds": {"fine-tuned": round(score_s), "zero-shot": round(zero_s)},
                "cpus": os.cpu_count(),
            },
            indent=1,
            default=str,
        )
    )
    return 0


def _f(v: float | None) -> str:
    return "–" if v is None or v != v else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
