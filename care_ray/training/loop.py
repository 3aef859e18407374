"""The torch side of fine-tuning: encoding chat examples, the model (LoRA or full), one training
step, held-out scoring by the first score digit, and checkpoint files. Imported by Ray Train
workers (care_ray.training.trainer) and by tests; nothing here knows about Ray."""

from __future__ import annotations

import contextlib
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from care_ray.training.config import FinetuneConfig
from care_ray.training.sft_data import SCORE_PREFIX

TRAINER_STATE_FILE = "trainer_state.pt"  # step, epoch, schedule, RNG, loss history: small
OPTIMIZER_FILE = "optimizer.pt"  # the full (unsharded) optimizer state: large for full fine-tuning
HELDOUT_FILE = "heldout.json"
SCORE_DIGITS = ("1", "2", "3", "4", "5")


@dataclass
class Encoded:
    """One tokenized example: prompt ids (exactly what scoring feeds the engine) + target ids."""

    prompt_ids: list[int]
    target_ids: list[int]
    session_id: str
    item_id: int
    dimension: str
    score: int

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)


@dataclass(frozen=True)
class Precision:
    """How weights are stored and computed. LoRA on GPU: the frozen base in bf16, adapters in fp32
    (PEFT keeps them there). Full fine-tuning on GPU: fp32 master weights with bf16 compute, as the
    paper's DeepSpeed bf16 run — pure bf16 weights would round away updates at lr 5e-7. CPU: fp32."""

    load_dtype: torch.dtype
    compute_dtype: torch.dtype | None  # autocast / FSDP param dtype; None = the weights' own dtype


def precision_plan(precision: str, method: str, device: torch.device) -> Precision:
    low = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not low:
        return Precision(torch.float32, None)
    if method == "lora":
        return Precision(torch.bfloat16, None)
    return Precision(torch.float32, torch.bfloat16)


def autocast(device: torch.device, plan: Precision):
    """bf16 autocast where the plan computes in a lower dtype than it stores, else a no-op."""
    if plan.compute_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=plan.compute_dtype)


def encode_examples(
    rows: Sequence[Mapping[str, Any]], tokenizer, render, max_seq_len: int
) -> tuple[list[Encoded], int]:
    """Rows of the example table → Encoded, and how many were dropped for exceeding max_seq_len.

    The prompt is rendered by `render` (PromptBuilder.render: the chat template with the
    generation prompt, as scoring does) and tokenized without added special tokens (the template
    holds them). The target is tokenized on its own, as the model will produce it after the
    prompt, and ends with the end-of-turn token so the model learns to stop."""
    eos = tokenizer.eos_token or ""
    prompts = [render([dict(m) for m in r["messages"]]) for r in rows]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if rows else []
    target_ids = (
        tokenizer([r["target"] + eos for r in rows], add_special_tokens=False)["input_ids"]
        if rows
        else []
    )
    out, dropped = [], 0
    for r, p, t in zip(rows, prompt_ids, target_ids, strict=True):
        if len(p) + len(t) > max_seq_len:
            dropped += 1
            continue
        out.append(
            Encoded(p, t, r["session_id"], int(r["item_id"]), r["dimension"], int(r["score"]))
        )
    return out, dropped


def score_digit_ids(tokenizer) -> tuple[list[int], list[int]]:
    """The token ids of the target prefix `{"score":` and of the digits 1..5 that follow it, checked
    against how a whole target tokenizes: the held-out score is the argmax over exactly the tokens
    that greedy decoding chooses between at that point."""
    prefix = tokenizer(SCORE_PREFIX, add_special_tokens=False)["input_ids"]
    digits = []
    for d in SCORE_DIGITS:
        ids = tokenizer(f'{SCORE_PREFIX}{d},"rationale":', add_special_tokens=False)["input_ids"]
        if (
            ids[: len(prefix)] != prefix
            or len(ids) <= len(prefix)
            or tokenizer.decode(ids[len(prefix)]).strip() != d
        ):
            raise ValueError(
                f"the tokenizer does not give score digit {d} a token of its own after "
                f"{SCORE_PREFIX!r}; held-out scoring by digit logits needs one"
            )
        digits.append(ids[len(prefix)])
    return prefix, digits


def collate(
    batch: Sequence[Encoded], pad_id: int, with_targets: bool = True
) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask, and labels that are -100 except on target tokens
    (the loss is on the assistant's answer only)."""
    seqs = [e.prompt_ids + e.target_ids if with_targets else e.prompt_ids for e in batch]
    width = max(map(len, seqs))
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (e, s) in enumerate(zip(batch, seqs, strict=True)):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention[i, : len(s)] = 1
        if with_targets:
            labels[i, len(e.prompt_ids) : len(s)] = torch.tensor(e.target_ids)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def rank_order(n: int, world_size: int, rank: int, seed: int, epoch: int) -> list[int]:
    """This rank's example indices for an epoch: one seeded shuffle shared by all ranks, strided,
    padded by wrap-around so every rank runs the same number of steps (DDP needs that)."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    per_rank = math.ceil(n / world_size)
    order += order[: per_rank * world_size - n]
    return order[rank::world_size]


def optimizer_steps_per_epoch(
    n_train: int, world_size: int, micro_batch_size: int, grad_accum: int
) -> int:
    micro_batches = math.ceil(math.ceil(n_train / world_size) / micro_batch_size)
    return math.ceil(micro_batches / grad_accum)


def load_base_model(cfg: FinetuneConfig, dtype: torch.dtype, weights_dir: str | None = None):
    """The base model from safetensors (or, resuming full fine-tuning, the checkpoint's weights)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        weights_dir or cfg.model,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=cfg.trust_remote_code,
    )


def build_model(cfg: FinetuneConfig, dtype: torch.dtype, checkpoint_dir: str | None = None):
    """LoRA (default) or full fine-tuning, restored from `checkpoint_dir` when resuming."""
    if cfg.method == "full":
        model = load_base_model(cfg, dtype, checkpoint_dir)
    else:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
        from safetensors.torch import load_file

        model = get_peft_model(
            load_base_model(cfg, dtype),
            LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=list(cfg.lora.target_modules),
                task_type="CAUSAL_LM",
            ),
        )
        if checkpoint_dir is not None:
            result = set_peft_model_state_dict(
                model, load_file(str(Path(checkpoint_dir) / "adapter_model.safetensors"))
            )
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise RuntimeError(
                    "checkpoint adapter does not fit the configured LoRA: unexpected keys "
                    f"{unexpected[:3]}"
                )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method == "lora":
            model.enable_input_require_grads()
    return model


def shard_fsdp(model, device: torch.device, plan: Precision):
    """FSDP2: each transformer block (the model's `_no_split_modules`) is a unit, then the root.
    Works on CPU (gloo) as on GPU (NCCL); in place, so `unwrap` is the model itself."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model = model.to(device)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    block_names = set(getattr(base, "_no_split_modules", None) or [])
    if not block_names:
        raise ValueError(
            f"{type(base).__name__} names no transformer blocks (_no_split_modules); use parallel: ddp"
        )
    mp = (
        MixedPrecisionPolicy(param_dtype=plan.compute_dtype, reduce_dtype=torch.float32)
        if plan.compute_dtype
        else MixedPrecisionPolicy()
    )
    for module in list(model.modules()):
        if type(module).__name__ in block_names:
            fully_shard(module, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def unwrap(model):
    """The module inside DistributedDataParallel, if wrapped."""
    return getattr(model, "module", model)


def gradient_sync(model, enabled: bool):
    """Skip the gradient all-reduce / reduce-scatter on accumulation micro-batches (DDP no_sync,
    FSDP2 set_requires_gradient_sync); the last micro-batch of a step syncs."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
    if not enabled and hasattr(model, "no_sync"):
        return model.no_sync()
    return contextlib.nullcontext()


def training_loss(model, batch: Mapping[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Mean cross-entropy over the target tokens of the micro-batch (transformers shifts labels)."""
    out = model(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        labels=batch["labels"].to(device),
        use_cache=False,
    )
    return out.loss


@torch.no_grad()
def score_by_first_digit(
    model,
    examples: Sequence[Encoded],
    prefix_ids: list[int],
    digit_ids: list[int],
    pad_id: int,
    device: torch.device,
    batch_size: int = 4,
) -> list[tuple[int, float]]:
    """For each example: (argmax score, expected score) from the next-token logits after the
    prompt + `{"score":`, restricted to the digits 1..5. The argmax is the score greedy guided
    decoding writes; the expectation is a smoother signal for diagnostics. Batches are sorted by
    length (less padding) and only the last real position goes through the LM head."""
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    out: list[tuple[int, float] | None] = [None] * len(examples)
    digits = torch.tensor(digit_ids, device=device)
    values = torch.arange(1, 6, device=device, dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = [Encoded(examples[i].prompt_ids + prefix_ids, [], "", 0, "", 0) for i in idx]
        enc = collate(batch, pad_id, with_targets=False)
        last = enc["attention_mask"].sum(dim=1) - 1
        # logits_to_keep with a tensor keeps those positions in every row: a b×b block, tiny next to b×T×V
        logits = model(
            input_ids=enc["input_ids"].to(device),
            attention_mask=enc["attention_mask"].to(device),
            logits_to_keep=last.to(device),
            use_cache=False,
        ).logits
        rows = logits[torch.arange(len(idx), device=device), torch.arange(len(idx), device=device)]
        digit_logits = rows[:, digits].float()
        probs = torch.softmax(digit_logits, dim=-1)
        for j, i in enumerate(idx):
            out[i] = (
                int(digit_logits[j].argmax().item()) + 1,
                float((probs[j] * values).sum().item()),
            )
    model.train()
    return out  # type: ignore[return-value]


def full_state(model, optimizer, method: str) -> tuple[dict, dict]:
    """(model state, optimizer state), unsharded, on CPU, on rank 0 (others get empty dicts under
    FSDP). Collective under FSDP: every rank must call it. LoRA keeps only the trainable
    (adapter) parameters, so an 8B base is never copied for a checkpoint."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    inner = unwrap(model)
    options = StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=method == "lora"
    )
    return get_model_state_dict(inner, options=options), get_optimizer_state_dict(
        inner, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def restore_optimizer(model, optimizer, state: dict, from_rank0: bool) -> None:
    """Load a full optimizer state (from full_state). Under FSDP only rank 0 passes it and it is
    broadcast and sharded; otherwise every rank loads the same copy."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        unwrap(model),
        optimizer,
        state,
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=from_rank0),
    )


def save_training_checkpoint(
    directory: Path,
    model,
    cfg: FinetuneConfig,
    model_state: dict,
    optimizer_state: dict,
    scheduler,
    state: Mapping[str, Any],
    heldout: Mapping[str, Any],
    tokenizer=None,
) -> Path:
    """A checkpoint folder that is at once a standard PEFT adapter folder (LoRA) or model folder
    (full; + tokenizer), loadable by transformers and vLLM as it is, plus trainer_state.pt
    (schedule, step, RNG, history) and optimizer.pt for resuming, and heldout.json (its held-out
    metrics and predictions)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    unwrap(model).save_pretrained(directory, state_dict=model_state, safe_serialization=True)
    if cfg.method == "full" and tokenizer is not None:
        tokenizer.save_pretrained(directory)
    torch.save(
        {"scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(), **dict(state)},
        directory / TRAINER_STATE_FILE,
    )
    torch.save(optimizer_state, directory / OPTIMIZER_FILE)
    (directory / HELDOUT_FILE).write_text(
        json.dumps(heldout, indent=2, default=_json_safe) + "\n", encoding="utf-8"
    )
    return directory


def load_trainer_state(directory: str | Path, name: str = TRAINER_STATE_FILE) -> dict[str, Any]:
    # weights_only: the files hold tensors, numbers, strings, lists and dicts only
    return torch.load(Path(directory) / name, map_location="cpu", weights_only=True)


def _json_safe(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist()
    raise TypeError(type(v).__name__)
