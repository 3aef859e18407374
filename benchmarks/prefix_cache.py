"""Prefix cache: prompt tokens vs tokens actually computed per session of 12 items, relative to
one transcript prompt, with and without block-aligned shared prefixes (--align-prefix-blocks;
goals ≤ 1.15× at ~1k tokens, ≤ 1.05× at ~3k). Real ESConv sessions, tiny model, vLLM CPU. Also
prints the greedy score distribution of both prompt sets and a chi-square test of their equality
(the padding must not change what the model answers in any way that matters).

    .venv/bin/python benchmarks/prefix_cache.py [--sessions 40] [--block-sizes 128,32] [--join 1,3]
"""

import argparse
import statistics

from _common import esconv_corpus, tiny_model

from care_ray.contracts.output import output_schema
from care_ray.contracts.rubric import load_rubric
from care_ray.corpus.reader import sessions_dataset
from care_ray.scoring.engines import EngineConfig
from care_ray.scoring.prompts import PromptBuilder, load_tokenizer


def run(block_size: int | None, prompts, n_sessions: int) -> dict:
    import json

    from care_ray.scoring.engines.vllm import VLLMEngine

    cfg = EngineConfig(
        model=str(tiny_model()),
        max_model_len=4096,
        max_new_tokens=48,
        block_size=block_size,
        output_schema=output_schema(max_rationale_chars=40, max_quotes=0),
    )
    engine = VLLMEngine(cfg)  # one engine per prompt set: no cache shared between the two
    try:
        gens = engine.generate(prompts.column("prompt_token_ids").to_pylist(), 48)
    finally:
        engine.shutdown()
    ratios = []
    for s in range(n_sessions):
        g = gens[12 * s : 12 * s + 12]
        computed = sum(x.prompt_tokens - (x.cached_tokens or 0) for x in g)
        ratios.append(computed / g[0].prompt_tokens)
    total = sum(x.prompt_tokens for x in gens)
    cached = sum(x.cached_tokens or 0 for x in gens)
    scores = []
    for g in gens:
        try:
            scores.append(int(json.loads(g.samples[0].text)["score"]))
        except (ValueError, KeyError, TypeError):
            scores.append(0)  # unparsed: its own category
    return {
        "block_size": block_size or "default",
        "prompt_tokens": total,
        "cached": cached,
        "computed_over_one_prompt_median": statistics.median(ratios),
        "computed_over_one_prompt_mean": statistics.fmean(ratios),
        "mean_prompt_tokens": total / len(gens),
        "scores": scores,
    }


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
    a = ap.parse_args()
    rubric = load_rubric()
    import pyarrow as pa

    base = sessions_dataset(esconv_corpus()).to_table(columns=["session_id", "turns"])
    tokenizer = load_tokenizer(str(tiny_model()))
    for join in map(int, a.join.split(",")):
        turns = base.column("turns").to_pylist()[: a.sessions * join]
        joined = [sum(turns[k * join : (k + 1) * join], []) for k in range(a.sessions)]
        sessions = pa.table({"session_id": [f"s{k}" for k in range(a.sessions)], "turns": joined})
        for bs in a.block_sizes.split(","):
            size = None if bs == "default" else int(bs)
            results = {}
            for align in (None, size or 128):
                builder = PromptBuilder(
                    rubric, tokenizer, max_model_len=4096, max_new_tokens=48, align_to=align
                )
                prompts = builder.build_item_prompts(sessions, rubric.items)
                r = results[bool(align)] = run(size, prompts, a.sessions)
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


if __name__ == "__main__":
    main()
