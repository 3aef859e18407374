"""Prompt building + tokenisation throughput, one core: sessions/s (goal ≥ 500).

    .venv/bin/python benchmarks/preprocessing.py
"""

import os
import time

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["RAYON_NUM_THREADS"] = "1"  # the Rust tokenizer's thread pool: one core means one

from _common import esconv_corpus, tiny_model  # noqa: E402

from care_ray.corpus import sessions_dataset  # noqa: E402
from care_ray.prompts import PromptBuilder, load_tokenizer  # noqa: E402
from care_ray.rubric import load_rubric  # noqa: E402


def main() -> None:
    sessions = sessions_dataset(esconv_corpus()).to_table(columns=["session_id", "turns"])
    rubric = load_rubric()
    builder = PromptBuilder(rubric, load_tokenizer(str(tiny_model())), max_model_len=2048, max_new_tokens=256)
    builder.build_item_prompts(sessions.slice(0, 20), rubric.items)  # warm-up
    t = time.perf_counter()
    prompts = builder.build_item_prompts(sessions, rubric.items)
    dt = time.perf_counter() - t
    # tokenisation the engine will do for each prompt, so the figure covers what the engine is spared
    t2 = time.perf_counter()
    tok = builder.tokenizer(prompts.column("prompt").to_pylist()[: 12 * 200], add_special_tokens=False)
    dt_tok = (time.perf_counter() - t2) * sessions.num_rows / 200
    n = sessions.num_rows
    print(f"sessions={n} prompts={prompts.num_rows} truncated={sum(prompts.column('truncated').to_pylist()) // 12}")
    print(f"prompt building (incl. budget tokenisation): {n / dt:.0f} sessions/s/core")
    print(f"prompt building + full prompt tokenisation: {n / (dt + dt_tok):.0f} sessions/s/core  (goal >= 500)")
    assert len(tok["input_ids"]) == 12 * 200


if __name__ == "__main__":
    main()
