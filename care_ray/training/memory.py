"""The memory plan of a fine-tuning worker: what one worker will hold — the weights, the trainable
state (gradients and AdamW's two moments, in fp32), the activations of its longest micro-batch
(with and without gradient checkpointing), the LM head and loss, and the runtime's own footprint —
against what that worker really has: free GPU memory on CUDA (read on the worker), on CPU the
host's available RAM shared among the training workers on it, or `memory_limit_gib` when set.

The plan is made on the driver before Ray Train starts, from the model's config.json and
safetensors headers (no weights are loaded) and the fold's encoded examples: `gradient_checkpointing:
auto` is decided from it on CPU; a config that cannot fit even with checkpointing is refused with
settings that would fit; `care-ray finetune --dry-run` prints it and stops."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from care_ray.common.errors import UserError

if TYPE_CHECKING:
    from care_ray.training.config import FinetuneConfig

log = logging.getLogger(__name__)

GiB = 1024**3
# What a CPU training worker holds before its model: Python with torch, transformers, PEFT and
# Ray Train imported, gloo, the data: 0.6 GiB for the imports alone (measured), which the
# tiny-model rows of benchmarks/memory_plan.py bear out.
CPU_RUNTIME_BYTES = int(0.6 * GiB)
# On CUDA: the context and kernels' workspaces (not in the free memory torch reports).
CUDA_RUNTIME_BYTES = 2 * GiB
HEADROOM = 0.9  # of what the device has: the allocator's fragmentation, the other processes
# CPU workers on glibc's default allocator: the heap keeps freed activation blocks of
# micro-batches of varying length (its mmap threshold moves up), so the peak outgrows what the
# parts hold by a share of the activations a step passes through the allocator — every layer's,
# with checkpointing too (recomputed one layer at a time). Measured, as a share of the
# activations without checkpointing: off, +0.16 in the SmolLM2 run (9.8 GiB against
# 8.8), +0.24 and +0.6 in two runs of benchmarks/cpu_allocator.py; on, +0.16 and +0.31 in the
# short packed SmolLM2 rows of benchmarks/memory_plan.py, and over the whole run +0.33
# after its first epoch and +0.39 at its end (5.4 GiB against 3.0). The largest of each, rounded
# up, is counted. A pinned threshold (`cpu_mmap_threshold_kib`) returns those blocks instead:
# nothing is added then.
CPU_HEAP_GROWTH = {False: 0.6, True: 0.4}  # checkpointing off / on


class MemoryPlanError(UserError):
    """A configuration whose workers cannot fit in the memory they have."""


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one worker needs, by part, and what it has."""

    fold: int
    device: str  # "cpu" | "cuda"
    tokens: int  # the longest micro-batch's tokens
    weights: int
    trainable_state: int
    activations: int  # without gradient checkpointing
    activations_checkpointed: int
    loss: int
    evaluation: (
        int  # the held-out pass's padded batch, on top: the allocator keeps what training freed
    )
    runtime: int
    limit: int | None  # None on CUDA without memory_limit_gib: each worker reads its GPU
    limit_source: str
    heap_growth: bool = False  # CPU_HEAP_GROWTH applies (a CPU worker on glibc's default)

    def acts(self, checkpointing: bool) -> int:
        return self.activations_checkpointed if checkpointing else self.activations

    def heap_growth_bytes(self, checkpointing: bool) -> int:
        return int(CPU_HEAP_GROWTH[checkpointing] * self.activations) if self.heap_growth else 0

    def need(self, checkpointing: bool) -> int:
        return (
            self.weights
            + self.trainable_state
            + self.acts(checkpointing)
            + self.heap_growth_bytes(checkpointing)
            + self.loss
            + self.evaluation
            + self.runtime
        )

    def decide(self, setting: str | bool) -> tuple[bool, bool, str]:
        """(checkpointing on, fits, why) for the config's `gradient_checkpointing`."""
        off, on = self.need(False), self.need(True)
        if self.limit is None:
            return bool(setting) if setting != "auto" else False, True, "decided on each GPU worker"
        if setting != "auto":
            fits = self.need(bool(setting)) <= self.limit
            return bool(setting), fits, "set in the config"
        if off <= self.limit:
            return False, True, f"auto: fits without ({gib(off)} ≤ {gib(self.limit)})"
        return True, on <= self.limit, f"auto: needed ({gib(off)} without > {gib(self.limit)})"

    def line(self, setting: str | bool) -> str:
        checkpointing, fits, why = self.decide(setting)
        limit = f"{gib(self.limit)} ({self.limit_source})" if self.limit else self.limit_source
        return (
            f"fold {self.fold} memory per worker: ~{gib(self.need(checkpointing))} = weights "
            f"{gib(self.weights)} + trainable state {gib(self.trainable_state)} + activations "
            f"{gib(self.activations_checkpointed if checkpointing else self.activations)} "
            f"({self.tokens} tokens) + "
            + (
                f"heap growth {gib(self.heap_growth_bytes(checkpointing))} + "
                if self.heap_growth
                else ""
            )
            + f"loss {gib(self.loss)} + evaluation {gib(self.evaluation)} "
            f"+ runtime {gib(self.runtime)}; has "
            f"{limit}; gradient checkpointing {'on' if checkpointing else 'off'} ({why})"
            + ("" if fits else " — does not fit")
        )


def gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GiB:.1f} GiB"


def weight_shapes(model_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape from the safetensors headers (nothing is loaded)."""
    from safetensors import safe_open

    folder = Path(model_dir)
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else [p.name for p in sorted(folder.glob("*.safetensors"))]
    )
    shapes: dict[str, tuple[int, ...]] = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def trainable_params(cfg: FinetuneConfig, shapes: dict[str, tuple[int, ...]]) -> int:
    """Every weight (full), or r·(in + out) per targeted linear layer (LoRA)."""
    if cfg.method == "full":
        return sum(math.prod(s) for s in shapes.values())
    targets = set(cfg.lora.target_modules)
    return sum(
        cfg.lora.r * (s[0] + s[1])
        for name, s in shapes.items()
        if len(s) == 2 and name.endswith(".weight") and name.rsplit(".", 2)[-2] in targets
    )


def workers_per_node(cfg: FinetuneConfig) -> int:
    """How many training workers share one node's RAM: all of them on one machine; on a cluster,
    as many as the busiest node's CPUs hold (an upper bound: Ray may spread them)."""
    try:
        import ray

        if ray.is_initialized():
            cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
            fit = max((int(c // cfg.scaling.cpus_per_worker) for c in cpus), default=1)
            return max(1, min(cfg.scaling.num_workers, fit))
    except Exception:  # noqa: BLE001 (a plan without Ray: every worker on this host)
        log.debug("cluster not readable; planning every worker on this host", exc_info=True)
    return cfg.scaling.num_workers


def worker_limit(cfg: FinetuneConfig, device: str) -> tuple[int | None, str]:
    if cfg.memory_limit_gib:
        return int(cfg.memory_limit_gib * GiB), "memory_limit_gib"
    if device == "cuda":
        return None, "free GPU memory, read on each worker"
    import psutil

    available = psutil.virtual_memory().available
    n = workers_per_node(cfg)
    return int(
        available * HEADROOM / n
    ), f"{HEADROOM:.0%} of the host's {gib(available)} available / {n} workers"


def evaluation_bytes(config, rows: int, tokens: int, dtype_bytes: int) -> int:
    """The held-out pass (score_by_first_digit): `rows` right-padded prompts of `tokens` tokens,
    one layer at a time: the attention scores sdpa's masked kernel materializes (fp32) and the
    layer's hidden and MLP tensors. Measured on SmolLM2, 4 x 1,900 tokens: +0.79 GiB of peak RSS
    after training (benchmarks/memory_plan.py)."""
    per_token = 4 * config.hidden_size + 2 * config.intermediate_size
    scores = rows * config.num_attention_heads * tokens * tokens * 4
    return scores + rows * tokens * per_token * dtype_bytes


def plan_fold(cfg: FinetuneConfig, fold: int, tokens: int, eval_tokens: int = 0) -> MemoryPlan:
    """The plan of one fold whose longest micro-batch holds `tokens` tokens and whose longest
    held-out prompt `eval_tokens`."""
    import torch
    from transformers import AutoConfig

    from care_ray.training.loop import (
        ModelShape,
        activation_bytes,
        checkpointed_activation_bytes,
        loss_bytes,
        precision_plan,
    )

    device = "cuda" if cfg.scaling.use_gpu else "cpu"
    precision = precision_plan(cfg.precision, cfg.method, torch.device(device))
    load_bytes = torch.finfo(precision.load_dtype).bits // 8
    compute_bytes = torch.finfo(precision.compute_dtype or precision.load_dtype).bits // 8
    config = AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    shape = ModelShape.of(config)
    shapes = weight_shapes(cfg.model)
    params = sum(math.prod(s) for s in shapes.values())
    trainable = trainable_params(cfg, shapes)
    shards = (
        cfg.scaling.num_workers if cfg.parallel == "fsdp" and cfg.scaling.num_workers > 1 else 1
    )
    # fp32 gradient + AdamW's two moments per trainable parameter; DDP keeps a bucket copy of the
    # gradients too; FSDP divides weights and state over its shards
    ddp_buckets = 4 * trainable if shards == 1 and cfg.scaling.num_workers > 1 else 0
    dropout = cfg.method == "lora" and cfg.lora.dropout > 0
    limit, source = worker_limit(cfg, device)
    return MemoryPlan(
        fold=fold,
        device=device,
        tokens=tokens,
        weights=params * load_bytes // shards,
        trainable_state=(12 * trainable) // shards + ddp_buckets,
        activations=activation_bytes(shape, tokens, compute_bytes, dropout),
        activations_checkpointed=checkpointed_activation_bytes(
            shape, tokens, compute_bytes, dropout
        ),
        loss=loss_bytes(shape, tokens, compute_bytes, cfg.fused_loss),
        evaluation=evaluation_bytes(config, cfg.eval_batch_size, eval_tokens, compute_bytes),
        runtime=CUDA_RUNTIME_BYTES if device == "cuda" else CPU_RUNTIME_BYTES,
        limit=limit,
        limit_source=source,
        heap_growth=device == "cpu" and cfg.cpu_mmap_threshold_kib is None,
    )


def fold_tokens(cfg: FinetuneConfig, fold: int) -> tuple[int, int, int, int]:
    """(longest micro-batch tokens, training examples, tokens of the whole training set, longest
    held-out prompt) of a fold, encoded as the workers will encode it."""
    from care_ray.contracts.rubric import load_rubric
    from care_ray.scoring.prompts import PromptBuilder, load_tokenizer
    from care_ray.training.loop import (
        encode_examples,
        longest_micro_batch_tokens,
        score_digit_ids,
    )
    from care_ray.training.worker import fold_examples

    tok = load_tokenizer(cfg.model, cfg.trust_remote_code)
    builder = PromptBuilder(load_rubric(cfg.rubric) if cfg.rubric else load_rubric(), tok)
    train_rows, eval_rows = fold_examples(cfg, fold)
    encoded, _ = encode_examples(train_rows, tok, builder.render, cfg.max_seq_len)
    held_out, _ = encode_examples(eval_rows, tok, builder.render, cfg.max_seq_len)
    longest = longest_micro_batch_tokens(encoded, cfg.micro_batch_size, cfg.packing)
    prefix, _ = score_digit_ids(tok)  # the evaluation reads the score after prompt + `{"score":`
    longest_prompt = max((len(e.prompt_ids) for e in held_out), default=0) + len(prefix)
    return longest, len(encoded), sum(e.length for e in encoded), longest_prompt


def what_would_fit(cfg: FinetuneConfig, plan: MemoryPlan) -> list[str]:
    """Settings that bring the plan under its limit (with checkpointing on), the first of each."""
    assert plan.limit is not None
    fits: list[str] = []
    per_token_part = plan.acts(True) + plan.heap_growth_bytes(True) + plan.loss
    base = plan.need(True) - per_token_part
    per_token = per_token_part / max(plan.tokens, 1)
    room_tokens = int((plan.limit - base) / per_token) if plan.limit > base else 0
    if room_tokens > 0:
        if cfg.micro_batch_size > 1:
            fits.append(
                f"micro_batch_size ≤ {max(1, cfg.micro_batch_size * room_tokens // plan.tokens)}"
            )
        fits.append(f"max_seq_len ≤ {room_tokens // max(1, cfg.micro_batch_size)}")
    if cfg.scaling.num_workers > 1 and not cfg.memory_limit_gib:
        for n in range(cfg.scaling.num_workers - 1, 0, -1):
            if plan.need(True) <= plan.limit * cfg.scaling.num_workers / n:
                fits.append(f"scaling.num_workers = {n}")
                break
    if cfg.method == "full":
        fits.append("method = lora")
    return fits


def check_fits(cfg: FinetuneConfig, plan: MemoryPlan) -> bool:
    """Checkpointing on or off as the plan decides; a plan that cannot fit is refused in one line."""
    checkpointing, fits, _ = plan.decide(cfg.gradient_checkpointing)
    if not fits:
        assert plan.limit is not None
        others = what_would_fit(cfg, plan)
        raise MemoryPlanError(
            f"fold {plan.fold} does not fit: one worker needs ~{gib(plan.need(True))} even with "
            f"gradient checkpointing ({plan.tokens} tokens in its longest micro-batch) and has "
            f"{gib(plan.limit)} ({plan.limit_source}); it would fit with "
            + (" or ".join(others) if others else "a machine with more memory")
        )
    return checkpointing


def resolved(cfg: FinetuneConfig, plan: MemoryPlan) -> FinetuneConfig:
    """`cfg` with `gradient_checkpointing: auto` decided by the plan where the driver can (CPU or a
    set memory_limit_gib); on CUDA each worker decides from its own free memory."""
    checkpointing = check_fits(cfg, plan)
    if cfg.gradient_checkpointing != "auto" or plan.limit is None:
        return cfg
    return cfg.model_copy(update={"gradient_checkpointing": checkpointing})


def plan_folds(
    cfg: FinetuneConfig, folds: list[int]
) -> tuple[dict[int, FinetuneConfig], list[dict]]:
    """Each fold's config with checkpointing decided, and its plan as a row (logged one line per
    fold); a fold that cannot fit is refused here, before Ray Train starts."""
    from care_ray.training.loop import optimizer_steps_per_epoch

    configs, rows = {}, []
    for fold in folds:
        longest, n_train, train_tokens, eval_tokens = fold_tokens(cfg, fold)
        plan = plan_fold(cfg, fold, longest, eval_tokens)
        log.info(plan.line(cfg.gradient_checkpointing))
        configs[fold] = resolved(cfg, plan)
        steps = optimizer_steps_per_epoch(
            n_train, cfg.scaling.num_workers, cfg.micro_batch_size, cfg.grad_accum_steps
        )
        checkpointing, _, why = plan.decide(cfg.gradient_checkpointing)
        rows.append(
            {
                "fold": fold,
                "train_examples": n_train,
                "steps_per_epoch": steps,
                "steps": steps * cfg.epochs,
                "tokens_per_step": round(train_tokens / steps) if steps else 0,
                "longest_micro_batch_tokens": longest,
                "memory_per_worker_gib": round(plan.need(checkpointing) / GiB, 2),
                "memory_limit_gib": None if plan.limit is None else round(plan.limit / GiB, 2),
                "memory_limit_source": plan.limit_source,
                "gradient_checkpointing": checkpointing,
                "why": why,
                "parts_gib": {
                    **{
                        k: round(getattr(plan, k) / GiB, 3)
                        for k in (
                            "weights",
                            "trainable_state",
                            "activations",
                            "activations_checkpointed",
                            "loss",
                            "evaluation",
                            "runtime",
                        )
                    },
                    "heap_growth": round(plan.heap_growth_bytes(False) / GiB, 3),
                    "heap_growth_checkpointed": round(plan.heap_growth_bytes(True) / GiB, 3),
                },
            }
        )
    return configs, rows
