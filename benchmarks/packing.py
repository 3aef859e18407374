"""Benchmark: padding-free packing and the fused loss on CPU, on ESConv SFT examples.

    .venv/bin/python benchmarks/packing.py [--steps 24] [--threads 1] [--micro-batch-sizes 2,4,8]

The examples are the tiny-CPU fine-tune's (benchmarks/finetune_cpu.py's preparation: 80 ESConv
sessions, score+rationale targets with template rationales, whole transcripts), encoded exactly as
the Ray Train worker encodes them. Two figures, one JSON object:

- padding: over one epoch of fold 0's training examples in the worker's shuffled order, the share
  of the tokens in each micro-batch that are padding, right-padded (before) and packed (after), per
  micro-batch size;
- throughput: forward + backward + AdamW steps of the training loop (LoRA r 8 on the tiny model,
  one process, no Ray) on the same micro-batches, padded + plain loss (before), packed + plain
  loss, packed + fused loss (after): real (non-padding) tokens per second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from _common import workdir  # noqa: E402
from finetune_cpu import prepare  # noqa: E402

from care_ray.training import loop  # noqa: E402


def encoded_training_examples(paths: dict[str, Path], max_seq_len: int) -> list[loop.Encoded]:
    from care_ray.contracts.rubric import load_rubric
    from care_ray.scoring.prompts import PromptBuilder, load_tokenizer
    from care_ray.training.sft_data import iter_fold, read_examples

    tokenizer = load_tokenizer(str(paths["model"]))
    builder = PromptBuilder(load_rubric(), tokenizer)
    rows = list(iter_fold(read_examples(str(paths["data"])), 0, held_out=False))
    examples, _ = loop.encode_examples(rows, tokenizer, builder.render, max_seq_len)
    return examples


def epoch_micro_batches(examples: list[loop.Encoded], size: int, seed: int = 123):
    order = loop.rank_order(len(examples), 1, 0, seed, 0)
    return [[examples[i] for i in order[s : s + size]] for s in range(0, len(order), size)]


def padding_shares(batches, pad_id: int, packing: bool) -> list[float]:
    shares = []
    for batch in batches:
        tensors = loop.micro_batch(batch, pad_id, packing)
        total = tensors["input_ids"].numel()
        shares.append(1 - loop.batch_tokens(tensors) / total)
    return shares


def throughput(cfg, batches, pad_id: int, packing: bool, fused: bool, steps: int) -> dict:
    """Real tokens/s over `steps` optimizer steps (one micro-batch each), after one warm-up step."""
    torch.manual_seed(0)
    model = loop.build_model(cfg, torch.float32, device=torch.device("cpu"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate)
    model.train()
    device = torch.device("cpu")
    tokens, seconds, cpu_seconds, losses = 0, 0.0, 0.0, []
    for step in range(steps + 1):
        batch = loop.micro_batch(batches[step % len(batches)], pad_id, packing)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = loop.training_loss(model, batch, device, fused=fused)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step pays for lazy initialisation
            seconds += time.perf_counter() - t0
            cpu_seconds += time.process_time() - c0
            tokens += loop.batch_tokens(batch)
        losses.append(loss.item())
    return {
        "packing": packing,
        "fused_loss": fused,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds),
        # CPU time: the cores are shared, and wall time counts other jobs' turns on them
        "tokens_per_cpu_s": round(tokens / cpu_seconds),
        "first_loss": round(losses[0], 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=workdir() / "bench-finetune")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "finetune-tiny-cpu.yaml")
    parser.add_argument("--micro-batch-sizes", default="2,4,8")
    parser.add_argument("--steps", type=int, default=24, help="timed steps per variant")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from care_ray.scoring.prompts import load_tokenizer
    from care_ray.training.config import load_finetune_config

    paths = prepare(args.work)
    cfg = load_finetune_config(
        args.config,
        {"model": str(paths["model"]), "data": str(paths["data"]), "gradient_checkpointing": False},
    )
    tokenizer = load_tokenizer(str(paths["model"]))
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    examples = encoded_training_examples(paths, cfg.max_seq_len)
    lengths = [e.length for e in examples]

    padding = []
    for size in [int(s) for s in args.micro_batch_sizes.split(",")]:
        batches = epoch_micro_batches(examples, size)
        before = padding_shares(batches, pad_id, packing=False)
        after = padding_shares(batches, pad_id, packing=True)
        padding.append(
            {
                "micro_batch_size": size,
                "steps": len(batches),
                "padding_share_padded_mean": round(statistics.fmean(before), 4),
                "padding_share_padded_max": round(max(before), 4),
                "padding_share_packed_mean": round(statistics.fmean(after), 4),
                "padded_tokens_per_real_token": round(
                    sum(len(b) * max(e.length for e in b) for b in batches) / sum(lengths), 3
                ),
            }
        )

    batches = epoch_micro_batches(examples, cfg.micro_batch_size)
    variants = [
        throughput(cfg, batches, pad_id, packing=False, fused=False, steps=args.steps),
        throughput(cfg, batches, pad_id, packing=True, fused=False, steps=args.steps),
        throughput(cfg, batches, pad_id, packing=True, fused=True, steps=args.steps),
    ]
    result = {
        "benchmark": "packing",
        "command": "python benchmarks/packing.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "load_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "examples": {
            "n": len(examples),
            "tokens_min_median_max": [min(lengths), int(statistics.median(lengths)), max(lengths)],
            "target_tokens_mean": round(statistics.fmean(len(e.target_ids) for e in examples), 1),
        },
        "padding_per_step": padding,
        "throughput": {
            "micro_batch_size": cfg.micro_batch_size,
            "lora_r": cfg.lora.r,
            "variants": variants,
            "packed_fused_vs_padded": round(
                variants[2]["tokens_per_s"] / variants[0]["tokens_per_s"], 2
            ),
            "packed_fused_vs_padded_by_cpu_time": round(
                variants[2]["tokens_per_cpu_s"] / variants[0]["tokens_per_cpu_s"], 2
            ),
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
