"""Device check + micro-benchmark of the training loop's GPU paths, without Ray (one process).

    python benchmarks/finetune_gpu_check.py --model out/tiny-llama --data out/sft/esconv-tiny [--steps 12]

What CPU tests cannot cover: bf16 precision plans on CUDA (LoRA: frozen bf16 base + fp32 adapters;
full: fp32 master weights + bf16 autocast), held-out scoring under autocast, checkpoint state
gathered from the model, and FSDP2 with a bf16 MixedPrecisionPolicy over NCCL (world size 1).
Prints one JSON object with per-path losses, tokens/s and checks; exits 1 if a check fails.
Runs on CPU too (fp32), which is how it is tested before a device run.
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

from care_ray.prompts import PromptBuilder, load_tokenizer  # noqa: E402
from care_ray.rubric import load_rubric  # noqa: E402
from care_ray.training import loop  # noqa: E402
from care_ray.training.config import FinetuneConfig  # noqa: E402
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=12)
    args = p.parse_args(argv)
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
