"""Device check + micro-benchmark of the training loop's GPU paths, without Ray (one process).

    python benchmarks/finetune_gpu_check.py --model out/tiny-llama --data out/sft/esconv-tiny [--steps 12]

What CPU tests cannot cover: bf16 precision plans on CUDA (LoRA: frozen bf16 base + fp32 adapters;
full: fp32 master weights + bf16 autocast), held-out scoring under autocast, checkpoint state
gathered from the model, and FSDP2 with a bf16 MixedPrecisionPolicy over NCCL (world size 1).
Prints one JSON object with per-path losses, tokens/s and checks; exits 1 if a check fails.
Runs on CPU too (fp32), which is how it is tested before a device run.

    python benchmarks/finetune_gpu_check.py --shape llama-3.1-8b [--tokens 2048,8192] [--steps 5]

Throughput at Llama-3.1-8B shape (random bf16 weights, LoRA r 16 on every linear layer, the
training loop's micro-batch, loss and checkpointing functions, AdamW): tokens/s and the share of
the measured bf16 matmul peak (a large bf16 matmul timed on the same GPU) for the plain path (padded
batch, full logits; checkpointing on and off, as issue 14 measured it) and the new one (packed,
fused loss, checkpointing chosen from memory), plus peak memory against the estimate that chose.
Needs CUDA (exits 2 without); `--shape small` runs the same mechanics on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from care_ray.contracts.rubric import load_rubric  # noqa: E402
from care_ray.scoring.prompts import PromptBuilder, load_tokenizer  # noqa: E402
from care_ray.training import loop  # noqa: E402
from care_ray.training.config import FinetuneConfig, LoraSettings  # noqa: E402
from care_ray.training.sft_data import iter_fold, read_examples  # noqa: E402


def _config(model: str, data: str, method: str, parallel: str = "ddp") -> FinetuneConfig:
    return FinetuneConfig(
        name="gpu-check",
        model=model,
        data=data,
        output_dir="unused",
        storage_path="unused",
        method=method,
        parallel=parallel,
        learning_rate=1e-2 if method == "lora" else 1e-3,
        micro_batch_size=4,
        effective_batch_size=4,
        scaling={"num_workers": 1},
    )


def run_path(
    cfg: FinetuneConfig, train, held_out, tok, device, steps: int, fsdp: bool = False
) -> dict:
    """Train `steps` steps the way the Ray worker does, score the held-out items, save + reload."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plan = loop.precision_plan("auto", cfg.method, device)
    model = loop.build_model(cfg, plan.load_dtype)
    model = loop.shard_fsdp(model, device, plan) if fsdp else model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate)
    pad = tok.pad_token_id
    losses, tokens = [], 0
    model.train()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for step in range(steps):
        batch = loop.collate([train[(step * 4 + i) % len(train)] for i in range(4)], pad)
        with loop.gradient_sync(model, True), loop.autocast(device, plan):
            loss = loop.training_loss(model, batch, device)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 3))
        tokens += int(batch["attention_mask"].sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    prefix, digits = loop.score_digit_ids(tok)
    with loop.autocast(device, plan):
        preds = loop.score_by_first_digit(
            loop.unwrap(model), held_out, prefix, digits, pad, device, 8
        )
    model_state, optim_state = loop.full_state(model, optimizer, cfg.method)
    trainable_dtypes = sorted({str(p.dtype) for p in trainable})
    frozen_dtypes = sorted({str(p.dtype) for p in model.parameters() if not p.requires_grad})
    out = {
        "method": cfg.method,
        "fsdp": fsdp,
        "plan": str(plan),
        "losses": losses,
        "tokens_per_s": round(tokens / seconds),
        "trainable_dtypes": trainable_dtypes,
        "frozen_dtypes": frozen_dtypes,
        "predictions_in_range": all(1 <= p[0] <= 5 for p in preds),
        "n_predictions": len(preds),
        "optimizer_state_tensors": len(optim_state.get("state", {})),
        "model_state_tensors": len(model_state),
    }
    with tempfile.TemporaryDirectory() as tmp:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        loop.save_training_checkpoint(
            Path(tmp),
            model,
            cfg,
            model_state,
            optim_state,
            scheduler,
            {"global_step": steps},
            {},
            tok,
        )
        ids = loop.collate(held_out[:2], pad, with_targets=False)
        mask = ids["attention_mask"].to(device)
        reloaded_base = AutoModelForCausalLM.from_pretrained(
            cfg.model if cfg.method == "lora" else tmp, dtype=plan.load_dtype
        ).to(device)
        reloaded = (
            PeftModel.from_pretrained(reloaded_base, tmp).eval()
            if cfg.method == "lora"
            else reloaded_base.eval()
        )
        with torch.no_grad(), loop.autocast(device, plan):
            live = (
                loop.unwrap(model)
                .eval()(input_ids=ids["input_ids"].to(device), attention_mask=mask)
                .logits.float()
            )
            again = reloaded(
                input_ids=ids["input_ids"].to(device), attention_mask=mask
            ).logits.float()
        diff = ((live - again).abs() * mask[..., None]).max().item()
        # logits can differ by compute path (FSDP's bf16 params vs autocast's fp32 norms), so the
        # check is on the weights: every saved tensor comes back bit for bit
        reloaded_state = {k.replace(".default", ""): v for k, v in reloaded.state_dict().items()}
        saved = {k.replace(".default", ""): v for k, v in model_state.items()}
        out["reload_tensors_equal"] = all(
            torch.equal(v.to(device), reloaded_state[k].to(v.dtype).to(device))
            for k, v in saved.items()
            if k in reloaded_state
        )
        out["reload_tensors_matched"] = sum(k in reloaded_state for k in saved)
        out["reload_max_logit_diff"] = round(diff, 4)
    return out


SHAPES = {
    # meta-llama/Llama-3.1-8B-Instruct's config.json
    "llama-3.1-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
    },
    # the same code paths at a size a CPU runs in seconds
    "small": {
        "hidden_size": 256,
        "intermediate_size": 896,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "vocab_size": 8192,
        "max_position_embeddings": 16384,
        "tie_word_embeddings": False,
    },
}


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """The best of large square matmuls in `dtype`: the peak this GPU reaches in practice."""
    best = 0.0
    sizes = (4096, 8192, 16384) if device.type == "cuda" else (512,)
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        _sync(device)
        iters = 20 if device.type == "cuda" else 3
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12)
        del a, b
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_flops(
    shape: loop.ModelShape, lengths: list[int], targets: int, lora_params: int
) -> float:
    """Useful FLOPs of one LoRA training step on examples of `lengths` tokens with `targets` target
    tokens in all: the frozen base's matmuls forward and backward to their inputs (4 per weight and
    token), the adapters' forward and both backward matmuls (6), causal attention (forward 2·h·L²
    per layer and example, backward twice that), and the LM head on target positions only (what
    the loss needs). Recomputation under checkpointing is not counted: it is overhead."""
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_dim
    per_layer_weights = h * (2 * h + 2 * kv) + 3 * h * i
    tokens = sum(lengths)
    matmuls = 4 * shape.layers * per_layer_weights * tokens + 6 * lora_params * tokens
    attention = 3 * 2 * h * shape.layers * sum(n * n for n in lengths)
    head = 4 * h * shape.vocab * targets
    return float(matmuls + attention + head)


def throughput_variant(
    base_cfg: FinetuneConfig,
    model_config,
    device: torch.device,
    lengths: list[int],
    target_tokens: int,
    *,
    packing: bool,
    fused: bool,
    checkpointing,
    steps: int,
    peak_tflops: float,
) -> dict:
    """Train `steps` steps on one micro-batch of random examples of `lengths` tokens, timed after
    two warm-up steps, the way the Ray worker does (loop.micro_batch, loop.training_loss)."""
    from transformers import LlamaForCausalLM

    cfg = base_cfg.model_copy(
        update={"gradient_checkpointing": checkpointing, "packing": packing, "fused_loss": fused}
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM._from_config(model_config, dtype=dtype)
    model = loop.with_lora(cfg, model)
    longest = loop.longest_micro_batch_tokens(
        [
            loop.Encoded([0] * (n - target_tokens), [0] * target_tokens, "", 0, "", 0)
            for n in lengths
        ],
        len(lengths),
        packing,
    )
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    checkpointed = loop.setup_checkpointing(
        model, cfg, device=device, activation_dtype=dtype, longest_tokens=longest
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    g = torch.Generator().manual_seed(1)
    examples = []
    for n in lengths:
        ids = torch.randint(0, model_config.vocab_size, (n,), generator=g).tolist()
        examples.append(
            loop.Encoded(ids[: n - target_tokens], ids[n - target_tokens :], "", 0, "", 0)
        )
    batch = loop.micro_batch(examples, pad_id=0, packing=packing)
    model.train()
    seconds = 0.0
    for step in range(steps + 2):
        _sync(device)
        t0 = time.perf_counter()
        loss = loop.training_loss(model, batch, device, fused=fused)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step >= 2:
            seconds += time.perf_counter() - t0
    shape = loop.ModelShape.of(model_config)
    lora_params = sum(p.numel() for p in trainable)
    flops = training_flops(shape, lengths, target_tokens * len(lengths), lora_params) * steps
    tokens = loop.batch_tokens(batch) * steps
    out = {
        "examples": lengths,
        "packing": packing,
        "fused_loss": fused,
        "gradient_checkpointing": checkpointing,
        "checkpointed": checkpointed,
        "loss": round(loss.item(), 3),
        "tokens_per_s": round(tokens / seconds),
        "model_tflops": round(flops / seconds / 1e12, 1),
        "share_of_matmul_peak": round(flops / seconds / 1e12 / peak_tflops, 3),
    }
    if device.type == "cuda":
        estimate = (
            sum(p.numel() * p.element_size() for p in model.parameters())
            + 12 * lora_params
            + (
                loop.checkpointed_activation_bytes(shape, longest, 2, cfg.lora.dropout > 0)
                if checkpointed
                else loop.activation_bytes(shape, longest, 2, cfg.lora.dropout > 0)
            )
            + loop.loss_bytes(shape, longest, 2, fused)
        )
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
        out["estimated_memory_gib"] = round(estimate / 2**30, 1)
    del model, optimizer, batch, loss
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def throughput_main(args) -> int:
    from transformers import LlamaConfig

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and args.shape != "small":
        print(
            f"error: --shape {args.shape} needs a CUDA GPU and torch.cuda.is_available() is False "
            f"(torch {torch.__version__}); --shape small runs the same code on CPU",
            file=sys.stderr,
        )
        return 2
    model_config = LlamaConfig(**SHAPES[args.shape])
    cfg = _config("unused", "unused", "lora").model_copy(
        update={"lora": LoraSettings(r=16, alpha=32, dropout=0.05)}
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak_tflops(device, dtype)
    target = args.target_tokens
    runs = []
    for tokens in [int(t) for t in args.tokens.split(",")]:
        variants = [
            # issue 14's measurements: padded, full logits, checkpointing on / off
            ([tokens], False, False, True),
            ([tokens], False, False, False),
            # the new path: fused loss, checkpointing from memory; several examples packed
            ([tokens], True, True, "auto"),
            ([tokens // 4] * 4, True, True, "auto"),
        ]
        for lengths, packing, fused, ckpt in variants:
            try:
                runs.append(
                    throughput_variant(
                        cfg,
                        model_config,
                        device,
                        lengths,
                        target,
                        packing=packing,
                        fused=fused,
                        checkpointing=ckpt,
                        steps=args.steps,
                        peak_tflops=peak,
                    )
                )
            except torch.OutOfMemoryError as e:
                runs.append(
                    {"examples": lengths, "gradient_checkpointing": ckpt, "oom": str(e)[:200]}
                )
                torch.cuda.empty_cache()
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    best_2k = max(
        (r.get("share_of_matmul_peak", 0) for r in runs if sum(r["examples"]) == 2048), default=None
    )
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                "torch": torch.__version__,
                "shape": args.shape,
                "attention": loop.attention_implementation(device) or "sdpa",
                "bf16_matmul_peak_tflops": round(peak, 1),
                "target_tokens_per_example": target,
                "steps": args.steps,
                "runs": runs,
                "best_share_at_2048_tokens": best_2k,
                "goal_share_at_2048_tokens": 0.45,
            },
            indent=2,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--data")
    p.add_argument("--steps", type=int, help="default 12; with --shape, timed steps per run: 5")
    p.add_argument("--shape", choices=sorted(SHAPES), help="throughput at this model shape")
    p.add_argument("--tokens", default="2048,8192", help="--shape: micro-batch sizes in tokens")
    p.add_argument("--target-tokens", type=int, default=128, help="--shape: per example")
    args = p.parse_args(argv)
    if args.shape:
        args.steps = args.steps or 5
        return throughput_main(args)
    args.steps = args.steps or 12
    if not (args.model and args.data):
        p.error("--model and --data are required (or --shape for the throughput benchmark)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(args.model)
    builder = PromptBuilder(load_rubric(), tok)
    table = read_examples(args.data)
    train, _ = loop.encode_examples(
        list(iter_fold(table, 0, held_out=False))[:64], tok, builder.render, 4096
    )
    held_out, _ = loop.encode_examples(
        list(iter_fold(table, 0, held_out=True))[:48], tok, builder.render, 4096
    )
    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "paths": [],
    }
    checks = []
    for method in ("lora", "full"):
        r = run_path(
            _config(args.model, args.data, method), train, held_out, tok, device, args.steps
        )
        results["paths"].append(r)
        checks.append((f"{method}: loss falls", r["losses"][-1] < r["losses"][0]))
        checks.append((f"{method}: predictions 1..5", r["predictions_in_range"]))
        checks.append(
            (
                f"{method}: reloaded checkpoint matches",
                r["reload_tensors_equal"]
                and r["reload_tensors_matched"] >= r["model_state_tensors"] - 1
                and r["reload_max_logit_diff"] < 1e-2,
            )
        )
        if device.type == "cuda":
            checks.append(
                (f"{method}: trainable weights fp32", r["trainable_dtypes"] == ["torch.float32"])
            )
            if method == "lora":
                checks.append(("lora: frozen base bf16", r["frozen_dtypes"] == ["torch.bfloat16"]))
    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=os.environ.get("MASTER_PORT", "29561"),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
    )
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        r = run_path(
            _config(args.model, args.data, "full", "fsdp"),
            train,
            held_out,
            tok,
            device,
            args.steps,
            fsdp=True,
        )
    finally:
        dist.destroy_process_group()
    results["paths"].append(r)
    checks.append(("fsdp full: loss falls", r["losses"][-1] < r["losses"][0]))
    checks.append(
        (
            "fsdp full: checkpoint reloads bit for bit",
            r["reload_tensors_equal"]
            and r["reload_tensors_matched"] >= r["model_state_tensors"] - 1,
        )
    )
    results["checks"] = {name: bool(ok) for name, ok in checks}
    print(json.dumps(results, indent=2))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
