"""The cost of keeping the score token's distribution (issue #30): items/s of the scoring core
(`score_item_prompts`: generate, parse, validate, read p(1..5)) with `score_logprobs=20` vs 0, on one
vLLM engine in one run. Chunks of sessions alternate between the two settings (different sessions
each, so neither side gets the other's prefix cache), so drift in machine load hits both alike.
Goal: ≤ 5% slower.

    .venv/bin/python benchmarks/score_logprobs_cost.py [--sessions 96] [--model DIR]
"""

import argparse
import time

from _common import esconv_corpus, tiny_model, workdir

BOUNDS = dict(
    max_model_len=2048, max_new_tokens=64, max_rationale_chars=60, max_quotes=1, max_quote_chars=30
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=96)
    ap.add_argument("--per-call", type=int, default=8)
    ap.add_argument("--model", default=None, help="model folder (default: the tiny random Llama)")
    a = ap.parse_args()

    from care_ray.contracts.rubric import load_rubric
    from care_ray.corpus.reader import sessions_dataset
    from care_ray.scoring.config import ScoreConfig
    from care_ray.scoring.engines.vllm import VLLMEngine
    from care_ray.scoring.items import score_item_prompts
    from care_ray.scoring.prompts import PromptBuilder, load_tokenizer

    model = a.model or str(tiny_model())
    with_lp = ScoreConfig(
        sessions=esconv_corpus(), model=model, out=workdir() / "unused", score_logprobs=20, **BOUNDS
    ).engine_config()
    without = with_lp.model_copy(update={"score_logprobs": 0})
    rubric = load_rubric()
    table = sessions_dataset(esconv_corpus()).to_table(columns=["session_id", "turns"])
    builder = PromptBuilder(
        rubric, load_tokenizer(model), with_lp.max_model_len, with_lp.max_new_tokens
    )
    chunks = [
        builder.build_item_prompts(table.slice(s, a.per_call), rubric.items)
        for s in range(0, a.sessions, a.per_call)
    ]
    meta = {
        "n_items_selected": 12,
        "model": model,
        "adapter": None,
        "engine": "vllm",
        "run_fingerprint": "bench",
    }
    unseen: list[float] = []
    sds: list[float] = []
    engine = VLLMEngine(with_lp)
    score_item_prompts(chunks[0], engine, with_lp, meta)  # warm-up, off the clock
    seconds, items, tokens, read = (
        {True: 0.0, False: 0.0},
        {True: 0, False: 0},
        {True: 0, False: 0},
        0,
    )
    try:
        for i, prompts in enumerate(chunks[1:]):
            on = i % 2 == 0
            engine.config = with_lp if on else without
            t = time.perf_counter()
            out = score_item_prompts(prompts, engine, engine.config, meta)
            seconds[on] += time.perf_counter() - t
            items[on] += out.num_rows
            tokens[on] += sum(x or 0 for x in out.column("output_tokens").to_pylist())
            if on:
                read += out.num_rows - out.column("expected_score").null_count
                unseen += [x for x in out.column("score_unseen_max").to_pylist() if x is not None]
                sds += [x for x in out.column("score_sd").to_pylist() if x is not None]
    finally:
        engine.shutdown()
    rate = {k: items[k] / seconds[k] for k in seconds}
    print(
        f"model {model}; {sum(items.values())} items in {len(chunks) - 1} alternating chunks of {a.per_call} sessions"
    )
    for k, name in ((False, "decoded score only"), (True, "with score_logprobs=20")):
        print(
            f"  {name}: {items[k]} items, {tokens[k]} output tokens, {rate[k]:.1f} items/s, "
            f"{tokens[k] / seconds[k]:.0f} tokens/s"
        )
    print(
        f"  items with a distribution: {read} of {items[True]}; mean SD {sum(sds) / max(len(sds), 1):.3f}; "
        f"unseen mass bound: mean {sum(unseen) / max(len(unseen), 1):.4f}, max {max(unseen, default=0):.4f}"
    )
    print(
        f"cost: items/s without ÷ with = {rate[False] / rate[True]:.3f}  (goal <= 1.05); "
        f"tokens/s ratio {(tokens[False] / seconds[False]) / (tokens[True] / seconds[True]):.3f}"
    )


if __name__ == "__main__":
    main()
