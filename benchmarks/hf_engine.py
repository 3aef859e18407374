"""The transformers fallback engine before and after issue 14 part 4, in one run: sessions/s and
the prompt tokens it computes ÷ the prompt tokens it was given, on real ESConv sessions × 12 items.

- old: what the engine did before: batches of 8 prompts in arrival order, left-padded,
  transformers' generate(), every prompt token computed, every sequence run to its budget;
- new: care_ray.scoring.engines.hf.HFEngine: token-budget batches sorted by length, each session's shared
  prefix computed once, a sequence stops at the end of its JSON object.

Random weights never write JSON, so every sequence runs to --max-new-tokens in both: the JSON stop
is not part of these figures (a trained model's answers end at ~100-200 tokens).

    .venv/bin/python benchmarks/hf_engine.py                       # CPU, the tiny model
    python benchmarks/hf_engine.py --device cuda --shape 8b        # Llama-3.1-8B shape, bf16
"""

from __future__ import annotations

import argparse
import time

from _common import esconv_corpus, tiny_model

from care_ray.contracts.rubric import load_rubric
from care_ray.corpus.reader import sessions_dataset
from care_ray.scoring.engines import EngineConfig
from care_ray.scoring.engines.hf import HFEngine
from care_ray.scoring.prompts import PromptBuilder, load_tokenizer


def build_8b_shape(tokenizer, device: str):
    """Llama-3.1-8B's architecture with random bf16 weights, built on the GPU (no download).
    The tiny tokenizer's ids are all < 128,256, so its prompts feed this model as they are."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(  # type: ignore[call-arg]
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="bfloat16",
    )
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    return model.eval()


def old_generate(model, tokenizer, prompts, max_new_tokens: int, batch: int = 8) -> list[int]:
    """The engine before this change: fixed batches in arrival order, left padding, generate().
    Returns each prompt's output token count."""
    import torch

    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    counts = []
    for start in range(0, len(prompts), batch):
        enc = tokenizer.pad(
            {"input_ids": prompts[start : start + batch]}, return_tensors="pt", padding=True
        ).to(device)
        with torch.inference_mode():
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row in gen[:, enc["input_ids"].shape[1] :]:
            counts.append(int((row != tokenizer.pad_token_id).sum()))
    return counts


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--shape", choices=["tiny", "8b"], default="tiny")
    ap.add_argument("--sessions", type=int, default=None, help="default: 4 on CPU, 16 on CUDA")
    ap.add_argument(
        "--old-sessions",
        type=int,
        default=None,
        help="sessions the old behaviour runs (its rate is per session); default: all on CPU, 2 on CUDA",
    )
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: 32 CPU, 160 CUDA")
    ap.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="new engine's batch budget (EngineConfig)",
    )
    ap.add_argument("--max-model-len", type=int, default=4096)
    a = ap.parse_args()
    cuda = a.device == "cuda"
    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(
                "--device cuda: no CUDA device is visible to torch "
                f"(torch {torch.__version__}, cuda build {torch.version.cuda}); run it on a GPU machine"
            )
    if a.shape == "8b" and not cuda:
        raise SystemExit("--shape 8b needs --device cuda (16 GB of bf16 weights)")
    n_sessions = a.sessions or (16 if cuda else 4)
    new_tokens = a.max_new_tokens or (160 if cuda else 32)

    tiny = tiny_model()
    tokenizer = load_tokenizer(str(tiny))
    rubric = load_rubric()
    sessions = sessions_dataset(esconv_corpus()).head(n_sessions, columns=["session_id", "turns"])
    builder = PromptBuilder(
        rubric, tokenizer, max_model_len=a.max_model_len, max_new_tokens=new_tokens
    )
    prompts = builder.build_item_prompts(sessions, rubric.items).column("prompt_token_ids")
    prompts = prompts.to_pylist()
    per_session = len(rubric.items)

    cfg = EngineConfig(
        model=str(tiny),
        kind="hf",
        gpus_per_engine=1 if cuda else 0,
        max_model_len=a.max_model_len,
        max_new_tokens=new_tokens,
        max_batch_tokens=a.max_batch_tokens,
    )
    if a.shape == "8b":
        model = build_8b_shape(tokenizer, "cuda")
        engine = HFEngine(cfg, model=model, tokenizer=tokenizer)
    else:
        engine = HFEngine(cfg)
        model = engine.model
    device = engine.device
    prompt_total = sum(map(len, prompts))
    print(
        f"{a.shape} model on {device}: {n_sessions} ESConv sessions × {per_session} items, "
        f"{prompt_total / len(prompts):.0f} prompt tokens on average, {new_tokens} new tokens each"
    )
    engine.generate(prompts[:2], 2)  # warm-up: kernels, allocator
    sync(device)

    n_old = min(n_sessions, a.old_sessions or (2 if cuda else n_sessions))
    old_prompts = prompts[: n_old * per_session]
    # CPU seconds beside wall time: on a shared machine the wall time follows the load
    t, cpu = time.perf_counter(), time.process_time()
    old_counts = old_generate(model, engine.tokenizer, old_prompts, new_tokens)
    sync(device)
    old_s, old_cpu = time.perf_counter() - t, time.process_time() - cpu
    old_rate = n_old / old_s
    print(
        f"old (batches of 8, no prefix reuse, no JSON stop): {n_old} sessions in {old_s:.1f} s = "
        f"{old_rate:.3f} sessions/s ({old_cpu / n_old:.1f} CPU s per session); prompt tokens "
        f"computed / given = 1.00; {sum(old_counts)} output tokens"
    )

    t, cpu = time.perf_counter(), time.process_time()
    gens = engine.generate(prompts, new_tokens)
    sync(device)
    new_s, new_cpu = time.perf_counter() - t, time.process_time() - cpu
    computed = sum(g.prompt_tokens - (g.cached_tokens or 0) for g in gens)
    new_rate = n_sessions / new_s
    print(
        f"new (token-budget batches of {engine.max_batch_tokens} tokens, prefix reuse, JSON stop): "
        f"{n_sessions} sessions in {new_s:.1f} s = {new_rate:.3f} sessions/s "
        f"({new_cpu / n_sessions:.1f} CPU s per session); "
        f"prompt tokens computed / given = {computed / prompt_total:.2f}; "
        f"{sum(s.output_tokens for g in gens for s in g.samples)} output tokens"
    )
    print(f"speed-up new / old: {new_rate / old_rate:.1f}x")
    if cuda:
        import torch

        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
