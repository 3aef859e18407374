"""Prefix cache: prompt tokens vs tokens actually computed per session of 12 items, relative to
one transcript prompt, with and without block-aligned shared prefixes (--align-prefix-blocks;
goals ≤ 1.15× at ~1k tokens, ≤ 1.05× at ~3k). Real ESConv sessions, vLLM CPU. Also prints what
the padding does to the answers: the greedy score distribution of both prompt sets and a
chi-square test of their equality, and, with the score distribution captured, how the two layouts'
expected scores agree and how each correlates with the clients' own ratings (ESConv's proxy
truths: empathy for Bond, relevance for Goal and Task), with a paired bootstrap of the difference.

    .venv/bin/python benchmarks/prefix_cache.py [--sessions 40] [--block-sizes 128,32] [--join 1,3]
    .venv/bin/python benchmarks/prefix_cache.py --model smollm2 --sessions 100 --block-sizes 32 --join 1

`--model tiny` (the default) measures the tokens on random weights; `--model smollm2` (imported
under the work folder when missing) or a model folder asks whether a real model answers the same.
"""

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from _common import esconv_corpus, tiny_model, workdir

from care_ray.contracts.output import output_schema
from care_ray.contracts.rubric import load_rubric
from care_ray.corpus.reader import sessions_dataset
from care_ray.scoring.engines import EngineConfig
from care_ray.scoring.prompts import PromptBuilder, load_tokenizer


def resolve_model(name: str) -> Path:
    if name == "tiny":
        return tiny_model()
    if name == "smollm2":
        model = workdir() / "smollm2"
        if not (model / "model.safetensors").exists():
            subprocess.check_call(
                [sys.executable, "-m", "care_ray", "import-model", "--smollm2", "--out", str(model)]
            )
        return model
    return Path(name)


def run(model: Path, block_size: int | None, prompts, n_sessions: int, score_only: bool) -> dict:
    from care_ray.scoring.engines.vllm import VLLMEngine
    from care_ray.scoring.items import score_item_prompts

    cfg = EngineConfig(
        model=str(model),
        max_model_len=4096,
        max_new_tokens=16 if score_only else 48,
        block_size=block_size,
        score_only=score_only,
        score_logprobs=20,  # the score token's distribution: expected scores, not just the mode
        output_schema=output_schema(score_only=score_only, max_rationale_chars=40, max_quotes=0),
    )
    engine = VLLMEngine(cfg)  # one engine per prompt set: no cache shared between the two
    try:
        rows = score_item_prompts(
            prompts, engine, cfg, {"n_items_selected": 12, "engine": "vllm", "model": str(model)}
        ).to_pylist()
    finally:
        engine.shutdown()
    ratios = []
    for s in range(n_sessions):
        g = rows[12 * s : 12 * s + 12]
        computed = sum(x["prompt_tokens"] - (x["cached_tokens"] or 0) for x in g)
        ratios.append(computed / g[0]["prompt_tokens"])
    total = sum(x["prompt_tokens"] for x in rows)
    return {
        "block_size": block_size or "default",
        "prompt_tokens": total,
        "cached": sum(x["cached_tokens"] or 0 for x in rows),
        "computed_over_one_prompt_median": statistics.median(ratios),
        "computed_over_one_prompt_mean": statistics.fmean(ratios),
        "mean_prompt_tokens": total / len(rows),
        # unparsed answers are a category of their own (0)
        "scores": [int(x["score"]) if x["status"] == "ok" else 0 for x in rows],
        "rows": rows,
    }


def agreement(plain: list[dict], aligned: list[dict], truth: dict) -> str:
    """How the two layouts' expected scores agree item by item, and each layout's Pearson r with
    the clients' ratings (session means per dimension), with a paired bootstrap of the r
    difference over sessions."""
    import numpy as np
    from scipy.stats import bootstrap, pearsonr

    pairs = [
        (p["expected_score"], a["expected_score"])
        for p, a in zip(plain, aligned, strict=True)
        if p["expected_score"] is not None and a["expected_score"] is not None
    ]
    if len(pairs) < 3:
        return "no score distributions captured"
    x, y = np.array(pairs).T
    lines = [
        f"expected scores, {len(pairs)} items: r(plain, aligned) = {pearsonr(x, y)[0]:.3f}, "
        f"mean |difference| = {np.abs(x - y).mean():.3f}, mean plain {x.mean():.2f} vs "
        f"aligned {y.mean():.2f}"
    ]
    for dim, label in (("bond", "empathy"), ("goal", "relevance"), ("task", "relevance")):
        per_session: dict[str, list] = {}
        for p, a in zip(plain, aligned, strict=True):
            t = truth.get(p["session_id"], {}).get(label)
            if p["dimension"] != dim or t is None:
                continue
            if p["expected_score"] is None or a["expected_score"] is None:
                continue
            per_session.setdefault(p["session_id"], [float(t), [], []])
            per_session[p["session_id"]][1].append(p["expected_score"])
            per_session[p["session_id"]][2].append(a["expected_score"])
        values = list(per_session.values())
        t = np.array([v[0] for v in values])
        ps = np.array([np.mean(v[1]) for v in values])
        al = np.array([np.mean(v[2]) for v in values])
        if len(t) < 4 or t.std() == 0 or ps.std() == 0 or al.std() == 0:
            lines.append(f"{dim} vs {label}: too few or constant values")
            continue
        diff = bootstrap(
            (ps, al, t),
            lambda a, b, c: pearsonr(a, c)[0] - pearsonr(b, c)[0],
            paired=True,
            vectorized=False,
            n_resamples=2000,
            method="percentile",
            random_state=0,
        ).confidence_interval
        lines.append(
            f"{dim} vs {label} ({len(t)} sessions): r plain {pearsonr(ps, t)[0]:.3f}, aligned "
            f"{pearsonr(al, t)[0]:.3f}, difference [95% CI] [{diff.low:.3f}, {diff.high:.3f}]"
        )
    return "\n  ".join(lines)


def same_distribution(a: list[int], b: list[int]) -> str:
    """Counts per score and the chi-square test of one distribution for both prompt sets."""
    from scipy.stats import chi2_contingency

    values = sorted(set(a) | set(b))
    table = [[a.count(v) for v in values], [b.count(v) for v in values]]
    keep = [i for i in range(len(values)) if table[0][i] + table[1][i] > 0]
    counts = ", ".join(f"{v}: {table[0][i]} vs {table[1][i]}" for i, v in enumerate(values))
    if len(keep) < 2:
        return f"scores {counts} (one category: identical)"
    p = chi2_contingency([[row[i] for i in keep] for row in table]).pvalue
    same = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    return f"scores {counts}; chi-square p = {p:.2f}; same answer for {same:.0%} of items"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=40)
    ap.add_argument(
        "--block-sizes", default="128,32", help="16 is not supported by the CPU attention backend"
    )
    ap.add_argument(
        "--join",
        default="1,3",
        help="also measure longer transcripts: N consecutive real sessions' turns joined",
    )
    ap.add_argument("--model", default="tiny", help="tiny | smollm2 | a model folder")
    ap.add_argument(
        "--score-only", action="store_true", help="score-only answers (default for a real model)"
    )
    a = ap.parse_args()
    model = resolve_model(a.model)
    score_only = a.score_only or a.model != "tiny"
    rubric = load_rubric()
    import pyarrow as pa

    base = sessions_dataset(esconv_corpus()).to_table(columns=["session_id", "turns", "labels"])
    labels = base.column("labels").to_pylist()
    tokenizer = load_tokenizer(str(model))
    for join in map(int, a.join.split(",")):
        turns = base.column("turns").to_pylist()[: a.sessions * join]
        joined = [sum(turns[k * join : (k + 1) * join], []) for k in range(a.sessions)]
        sessions = pa.table({"session_id": [f"s{k}" for k in range(a.sessions)], "turns": joined})
        # a joined session's truth is its first part's (only join=1 is a real session)
        truth = {f"s{k}": dict(labels[k * join] or []) for k in range(a.sessions)}
        for bs in a.block_sizes.split(","):
            size = None if bs == "default" else int(bs)
            results = {}
            for align in (None, size or 128):
                builder = PromptBuilder(
                    rubric, tokenizer, max_model_len=4096, max_new_tokens=48, align_to=align
                )
                prompts = builder.build_item_prompts(sessions, rubric.items)
                r = results[bool(align)] = run(model, size, prompts, a.sessions, score_only)
                print(
                    f"sessions joined={join} block_size={r['block_size']} "
                    f"aligned={'yes' if align else 'no'}: mean prompt "
                    f"{r['mean_prompt_tokens']:.0f} tokens, cached "
                    f"{r['cached'] / r['prompt_tokens']:.1%} of prompt tokens; "
                    "computed per session / one prompt = "
                    f"{r['computed_over_one_prompt_median']:.2f}x median, "
                    f"{r['computed_over_one_prompt_mean']:.2f}x mean",
                    flush=True,
                )
            print(
                f"  aligned vs not, block_size={bs}: "
                + same_distribution(results[False]["scores"], results[True]["scores"]),
                flush=True,
            )
            if join == 1:
                print(
                    "  " + agreement(results[False]["rows"], results[True]["rows"], truth),
                    flush=True,
                )


if __name__ == "__main__":
    main()
