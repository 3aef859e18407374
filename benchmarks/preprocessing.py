"""Prompt building + tokenisation throughput, one core: sessions/s (goal ≥ 500).

.venv/bin/python benchmarks/preprocessing.py
"""

import os
import time

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["RAYON_NUM_THREADS"] = "1"  # the Rust tokenizer's thread pool: one core means one

from _common import esconv_corpus, tiny_model  # noqa: E402

from care_ray.contracts.rubric import load_rubric  # noqa: E402
from care_ray.corpus.reader import sessions_dataset  # noqa: E402
from care_ray.scoring.prompts import PromptBuilder, load_tokenizer  # noqa: E402


def main() -> None:
    sessions = sessions_dataset(esconv_corpus()).to_table(columns=["session_id", "turns"])
    rubric = load_rubric()
    builder = PromptBuilder(
        rubric, load_tokenizer(str(tiny_model())), max_model_len=2048, max_new_tokens=256
    )
    builder.build_item_prompts(sessions.slice(0, 20), rubric.items)  # warm-up
    t = time.perf_counter()
    prompts = builder.build_item_prompts(sessions, rubric.items)
    dt = time.perf_counter() - t
    n = sessions.num_rows
    tokens = sum(len(x) for x in prompts.column("prompt_token_ids").to_pylist())
    print(
        f"sessions={n} prompts={prompts.num_rows} prompt tokens={tokens} sessions "
        f"truncated={sum(prompts.column('truncated').to_pylist()) // 12}"
    )
    print(
        f"prompt building + tokenisation (the engine gets token ids): {n / dt:.0f} sessions/s "
        "on one core  (goal >= 500)"
    )


if __name__ == "__main__":
    main()
