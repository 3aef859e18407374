"""Pipeline overhead: the same prompts through the bare engine loop vs the full Ray Data path
(goal: ratio ≤ 1.3 at ≥ 2,000 items). Steady-state items/s, engine start-up excluded on both
sides (the bare loop gets its prompts pre-built, off the clock); total wall time reported too.

    .venv/bin/python benchmarks/pipeline_overhead.py [--sessions 200]
"""

import argparse
import shutil
import time

from _common import esconv_corpus, steady_rate, tiny_model, workdir

BOUNDS = dict(
    max_model_len=2048, max_new_tokens=64, max_rationale_chars=60, max_quotes=1, max_quote_chars=30
)


def bare(sessions: int, per_call: int) -> tuple[float, float, int]:
    from care_ray.contracts.output import output_schema, parse_item_output
    from care_ray.contracts.rubric import load_rubric
    from care_ray.corpus.reader import sessions_dataset
    from care_ray.scoring.config import ScoreConfig
    from care_ray.scoring.engines.vllm import VLLMEngine
    from care_ray.scoring.prompts import PromptBuilder, load_tokenizer

    cfg = ScoreConfig(
        sessions=esconv_corpus(), model=str(tiny_model()), out=workdir() / "unused", **BOUNDS
    ).engine_config()
    rubric = load_rubric()
    t0 = time.perf_counter()
    engine = VLLMEngine(cfg)
    t_ready = time.perf_counter()
    table = (
        sessions_dataset(esconv_corpus())
        .to_table(columns=["session_id", "turns"])
        .slice(0, sessions)
    )
    builder = PromptBuilder(
        rubric, load_tokenizer(str(tiny_model())), cfg.max_model_len, cfg.max_new_tokens
    )
    # prompts built before the clock starts: the baseline is the engine alone
    chunks = [
        builder.build_item_prompts(table.slice(start, per_call), rubric.items)
        for start in range(0, sessions, per_call)
    ]
    t_gen = time.perf_counter()
    n = 0
    first_done = None
    try:
        for prompts in chunks:
            for g in engine.generate(
                prompts.column("prompt_token_ids").to_pylist(), cfg.max_new_tokens
            ):
                try:
                    parse_item_output(
                        g.samples[0].text, output_schema(), g.samples[0].finish_reason
                    )
                except ValueError:
                    pass
            if first_done is None:
                first_done, n_first = time.perf_counter(), prompts.num_rows
            n += prompts.num_rows
    finally:
        engine.shutdown()
    t_end = time.perf_counter()
    steady = (n - n_first) / (t_end - first_done)
    return steady, t_end - t0 - (t_gen - t_ready), n


def full(sessions: int, per_call: int) -> tuple[float, float, int]:
    from care_ray.scoring.config import ScoreConfig
    from care_ray.scoring.pipeline import score_corpus

    out = workdir() / "overhead-out"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    m = score_corpus(
        ScoreConfig(
            sessions=esconv_corpus(),
            model=str(tiny_model()),
            out=out,
            limit=sessions,
            sessions_per_block=per_call,
            progress=False,
            ray_address="local",
            **BOUNDS,
        )
    )
    wall = time.perf_counter() - t0
    _, steady = steady_rate(out / "items")
    return steady, wall, m["items_in"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument(
        "--per-call", type=int, default=8, help="sessions per engine call (= Ray Data block)"
    )
    a = ap.parse_args()
    b_rate, b_wall, n = bare(a.sessions, a.per_call)
    f_rate, f_wall, n2 = full(a.sessions, a.per_call)
    print(
        f"items={n} (ray path {n2}); bare engine loop: {b_rate:.1f} items/s steady, "
        f"{b_wall:.0f} s wall incl. engine start"
    )
    print(
        f"Ray Data path: {f_rate:.1f} items/s steady, {f_wall:.0f} s wall incl. Ray + actor + engine start"
    )
    print(
        f"overhead ratio (bare steady rate / Ray steady rate) = {b_rate / f_rate:.2f}  (goal "
        f"<= 1.3); wall ratio = {f_wall / b_wall:.2f}"
    )


if __name__ == "__main__":
    main()
