"""The torch side of fine-tuning: encoding chat examples, the model (LoRA or full), one training
step, held-out scoring by the first score digit, and checkpoint files. Imported by Ray Train
workers (care_ray.training.trainer) and by tests; nothing here knows about Ray."""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import logging
import math
import random
from collections.abc import Callable, Mapping, Sequence
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
IGNORE = -100  # the label of a position with no loss (prompt tokens, padding)
GiB = 2**30

log = logging.getLogger(__name__)


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
    # sft-data's own token ids where it built them (aligned prefixes: padding a tokenizer would
    # merge), else the rendered messages tokenized here
    prompt_ids: list[list[int]] = [list(r.get("prompt_token_ids") or []) for r in rows]
    todo = [i for i, r in enumerate(rows) if r.get("prompt_token_ids") is None]
    if todo:
        texts = [render([dict(m) for m in rows[i]["messages"]]) for i in todo]
        for i, ids in zip(
            todo, tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True
        ):
            prompt_ids[i] = ids
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


def collate_packed(batch: Sequence[Encoded]) -> dict[str, Any]:
    """The micro-batch as one row without padding: the examples concatenated, position ids
    restarting at 0 for each, labels on target tokens only. No attention mask: from position ids
    that restart, any transformers attention keeps attention within each example (sdpa/eager with
    a block-diagonal causal mask); the examples' boundaries (`cu_seq_lens_*`, `max_length_*`, as
    transformers' flattening collator names them) let flash attention and PACKED_ATTENTION run
    each example on its own instead. A target's last token is followed by the next example's
    first prompt token, whose label is -100, so no position learns across a boundary."""
    input_ids: list[int] = []
    positions: list[int] = []
    labels: list[int] = []
    for e in batch:
        input_ids += e.prompt_ids + e.target_ids
        positions += range(e.length)
        labels += [IGNORE] * len(e.prompt_ids) + e.target_ids
    bounds = torch.tensor([0, *itertools.accumulate(e.length for e in batch)], dtype=torch.int32)
    longest = max((e.length for e in batch), default=0)
    return {
        "input_ids": torch.tensor([input_ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
        "cu_seq_lens_q": bounds,
        "cu_seq_lens_k": bounds,
        "max_length_q": longest,
        "max_length_k": longest,
    }


PACKED_ATTENTION = "care_packed_sdpa"


def packed_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa, except on a packed row: there each example's causal attention is its
    own sdpa call (is_causal, no mask), so an example never costs the packed row's full
    length² as it does under the block-diagonal mask, and sdpa keeps its fastest kernels (flash
    on GPU and CPU; a mask forces the slower ones). Exactly the same values as the masked path."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.pop("cu_seq_lens_q", None)
    if bounds is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    edges = bounds.tolist()
    parts = [
        sdpa_attention_forward(
            module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, **kwargs
        )[0]
        for a, b in itertools.pairwise(edges)
    ]
    return torch.cat(parts, dim=1), None


def register_packed_attention() -> str:
    """Make PACKED_ATTENTION an attn_implementation transformers accepts; its masks are sdpa's
    (padded batches, e.g. held-out scoring, still need them)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    return PACKED_ATTENTION


def micro_batch(batch: Sequence[Encoded], pad_id: int, packing: bool) -> dict[str, Any]:
    """The training tensors of one micro-batch: packed into one row, or right-padded."""
    return collate_packed(batch) if packing else collate(batch, pad_id)


def batch_tokens(batch: Mapping[str, Any]) -> int:
    """Real (non-padding) tokens in a micro-batch."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def longest_micro_batch_tokens(
    examples: Sequence[Encoded], micro_batch_size: int, packing: bool
) -> int:
    """An upper bound on the tokens of any micro-batch, whatever the shuffle: the longest examples
    together (packed) or the longest example times the rows (padded)."""
    lengths = sorted((e.length for e in examples), reverse=True)[:micro_batch_size]
    if not lengths:
        return 0
    return sum(lengths) if packing else lengths[0] * micro_batch_size


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


def attention_implementation(device: torch.device | None) -> str:
    """flash_attention_2 on CUDA where flash-attn is installed (packed rows run as its
    variable-length attention); elsewhere sdpa, one call per packed example."""
    if device is not None and device.type == "cuda" and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return register_packed_attention()


def load_base_model(
    cfg: FinetuneConfig,
    dtype: torch.dtype,
    weights_dir: str | None = None,
    attn_implementation: str | None = None,
):
    """The base model from safetensors (or, resuming full fine-tuning, the checkpoint's weights)."""
    from transformers import AutoModelForCausalLM

    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForCausalLM.from_pretrained(
        weights_dir or cfg.model,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=cfg.trust_remote_code,
        **extra,
    )


def with_lora(cfg: FinetuneConfig, base):
    """The base model with fresh LoRA adapters on cfg.lora.target_modules."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        base,
        LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules),
            task_type="CAUSAL_LM",
        ),
    )


def build_model(
    cfg: FinetuneConfig,
    dtype: torch.dtype,
    checkpoint_dir: str | None = None,
    *,
    device: torch.device | None = None,
    compute_dtype: torch.dtype | None = None,
    longest_tokens: int | None = None,
    shards: int = 1,
):
    """LoRA (default) or full fine-tuning, restored from `checkpoint_dir` when resuming, with
    gradient checkpointing as `cfg.gradient_checkpointing` decides (see setup_checkpointing):
    `device`, `compute_dtype`, `longest_tokens` (micro-batch) and `shards` (FSDP world) feed the
    `auto` estimate; without a device, `auto` is off."""
    attn = attention_implementation(device)
    if cfg.method == "full":
        model = load_base_model(cfg, dtype, checkpoint_dir, attn)
    else:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        model = with_lora(cfg, load_base_model(cfg, dtype, attn_implementation=attn))
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
    setup_checkpointing(
        model,
        cfg,
        device=device,
        activation_dtype=compute_dtype or dtype,
        longest_tokens=longest_tokens,
        shards=shards,
    )
    return model


@dataclass(frozen=True)
class ModelShape:
    """What the activation memory of a Llama-type decoder depends on."""

    layers: int
    hidden: int
    intermediate: int
    kv_dim: int  # key/value heads × head size (grouped-query attention)
    vocab: int

    @classmethod
    def of(cls, config) -> ModelShape:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            intermediate=config.intermediate_size,
            kv_dim=(getattr(config, "num_key_value_heads", None) or heads) * head_dim,
            vocab=config.vocab_size,
        )


# Counted with saved_tensors_hooks on small Llama shapes (hidden 256-512, MLP 896-1792, 2-8 KV
# heads; tests/test_packing.py checks it): per token and layer, without checkpointing, backward
# keeps 8·hidden + 4·MLP + 2·kv elements (norm inputs and outputs, q/k/v, attention output, the
# four MLP tensors); each LoRA dropout keeps its own copy of its module's input: 10·hidden + MLP
# more. RMSNorm upcasts its input to fp32, two hidden-sized tensors a layer.
def activation_bytes(
    shape: ModelShape, tokens: int, dtype_bytes: int, lora_dropout: bool = False
) -> int:
    """Bytes the forward pass keeps for backward over `tokens` tokens, without checkpointing."""
    h, i = shape.hidden, shape.intermediate
    elements = 8 * h + 4 * i + 2 * shape.kv_dim + (10 * h + i if lora_dropout else 0)
    per_token_layer = dtype_bytes * elements + max(0, 4 - dtype_bytes) * 2 * h
    return tokens * shape.layers * per_token_layer


def checkpointed_activation_bytes(
    shape: ModelShape, tokens: int, dtype_bytes: int, lora_dropout: bool = False
) -> int:
    """With checkpointing: each layer's input, plus one layer's activations while it is recomputed."""
    one_layer = activation_bytes(shape, tokens, dtype_bytes, lora_dropout) // shape.layers
    return tokens * shape.layers * shape.hidden * dtype_bytes + one_layer


def loss_bytes(shape: ModelShape, tokens: int, dtype_bytes: int, fused: bool) -> int:
    """Peak memory of the LM head + cross-entropy: logits in the compute dtype, their fp32 copy,
    log-softmax and its gradient for every token; fused, one chunk of target positions."""
    rows = min(tokens, fused_chunk_rows(shape.vocab)) if fused else tokens
    return rows * shape.vocab * (dtype_bytes + 12)


def checkpointing_needed(
    shape: ModelShape,
    tokens: int,
    *,
    dtype_bytes: int,
    weights_bytes: int,
    trainable_params: int,
    free_bytes: int,
    shards: int = 1,
    lora_dropout: bool = False,
    fused_loss: bool = True,
) -> tuple[bool, str]:
    """Whether a micro-batch of `tokens` tokens needs gradient checkpointing to fit `free_bytes`,
    and why, in one line. Counted: the weights and, per trainable parameter, an fp32 gradient and
    AdamW's two fp32 moments (divided over FSDP shards), the activations, the loss; kept free: 10%
    of the device plus 2 GiB for the CUDA context, kernels' workspaces and fragmentation."""
    state = (weights_bytes + 12 * trainable_params) // shards
    activations = activation_bytes(shape, tokens, dtype_bytes, lora_dropout)
    need = state + activations + loss_bytes(shape, tokens, dtype_bytes, fused_loss)
    usable = int(free_bytes * 0.9) - 2 * GiB
    on = need > usable
    return on, (
        f"{tokens} tokens: ~{need / GiB:.1f} GiB (weights + optimizer state "
        f"{state / GiB:.1f}, activations {activations / GiB:.1f}) vs {usable / GiB:.1f} GiB usable "
        f"of {free_bytes / GiB:.1f} free -> gradient checkpointing {'on' if on else 'off'}"
    )


def setup_checkpointing(
    model,
    cfg: FinetuneConfig,
    *,
    device: torch.device | None,
    activation_dtype: torch.dtype,
    longest_tokens: int | None,
    shards: int = 1,
) -> bool:
    """Turn gradient checkpointing on where the config says so; `auto` estimates the memory of the
    longest micro-batch against the device's free memory (recomputing every layer costs about a
    third more compute, so only where it is needed). On CPU `auto` is off. Logs the decision."""
    setting = cfg.gradient_checkpointing
    if setting != "auto":
        on, why = bool(setting), "set in the config, or decided by the driver's memory plan"
    elif device is None or device.type != "cuda" or not longest_tokens:
        on, why = False, "auto: on CPU the driver's memory plan decides; none was made"
    else:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        on, why = checkpointing_needed(
            ModelShape.of(base.config),
            longest_tokens,
            dtype_bytes=torch.finfo(activation_dtype).bits // 8,
            weights_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
            trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
            free_bytes=torch.cuda.mem_get_info(device)[0],
            shards=shards,
            lora_dropout=cfg.method == "lora" and cfg.lora.dropout > 0,
            fused_loss=cfg.fused_loss,
        )
        why = f"auto: {why}"
    log.info("gradient checkpointing %s (%s)", "on" if on else "off", why)
    if on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.method == "lora":
            model.enable_input_require_grads()
    return on


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


def training_loss(
    model, batch: Mapping[str, Any], device: torch.device, fused: bool = False
) -> torch.Tensor:
    """Mean cross-entropy over the target tokens of the micro-batch (padded or packed).

    Plain: transformers computes logits for every position and shifts the labels. Fused: only
    the positions whose next token is a target reach the LM head (`logits_to_keep`), and the head
    computes the loss there in chunks (linear_cross_entropy), so the [tokens x vocab] logits
    (2 GiB in bf16 for 8k tokens of a 128k vocabulary, ~5x that with the fp32 loss tensors) are
    never built. Same loss and gradients; falls back to plain where the head is not a bias-free
    nn.Linear (a LoRA-adapted or otherwise wrapped head)."""
    inputs = {
        k: v.to(device) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
        if k != "labels"
    }
    labels = batch["labels"].to(device)
    head = _plain_output_head(model) if fused else None
    if head is None:
        return model(**inputs, labels=labels, use_cache=False).loss
    next_labels = labels[:, 1:]
    positions = (next_labels != IGNORE).any(dim=0).nonzero().squeeze(1)
    with _head_computes_loss(head, next_labels[:, positions]):
        return model(**inputs, logits_to_keep=positions, use_cache=False).logits


def _plain_output_head(model) -> torch.nn.Linear | None:
    inner = unwrap(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if type(head) is torch.nn.Linear and head.bias is None:
        return head
    return None


@contextlib.contextmanager
def _head_computes_loss(head: torch.nn.Linear, targets: torch.Tensor):
    """For one forward pass, the LM head returns the loss on `targets` instead of logits. The
    head is replaced on the instance, not called from outside, because only inside the model's
    own forward are FSDP's parameters gathered and DDP's gradient hooks armed."""
    saved = head.__dict__.get("forward")

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]), head.weight, targets.reshape(-1)
        )

    head.forward = forward  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        if saved is None:
            del head.forward
        else:
            head.forward = saved  # type: ignore[method-assign]


def fused_chunk_rows(vocab: int) -> int:
    """Target positions per chunk of the fused loss: ~64 M logits (256 MiB in fp32) at a time."""
    return max(1, (1 << 26) // vocab)


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int | None = None
) -> torch.Tensor:
    """mean over targets != -100 of cross_entropy(hidden @ weight.T, targets), computed and
    differentiated chunk by chunk: at most `chunk_rows` rows of logits exist at once. The matmuls
    run in the autocast dtype where autocast is on (as the LM head would), the softmax in fp32."""
    device_type = hidden.device.type
    dtype = (
        torch.get_autocast_dtype(device_type)
        if torch.is_autocast_enabled(device_type)
        else hidden.dtype
    )
    rows = chunk_rows or fused_chunk_rows(weight.shape[0])
    return _LinearCrossEntropy.apply(hidden, weight, targets, rows, dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    """The gradients are computed in the forward pass, chunk by chunk, and only scaled in
    backward: keeping each chunk's logits for backward would add them all up again."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows: int, dtype: torch.dtype):
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        valid = targets != IGNORE
        count = max(int(valid.sum()), 1)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if want_weight
            else None
        )
        w = weight.to(dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk_rows):
                stop = start + chunk_rows
                h = hidden[start:stop].to(dtype)
                t, ok = targets[start:stop], valid[start:stop]
                logits = (h @ w.T).float()
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, t.clamp(min=0)[:, None]).squeeze(1)
                loss += ((lse - picked) * ok).sum()
                if not (want_hidden or want_weight):
                    continue
                # d loss / d logits = (softmax - onehot) / count on counted rows, 0 elsewhere
                g = torch.exp(logits - lse[:, None], out=logits)
                g[torch.arange(len(t), device=g.device), t.clamp(min=0)] -= 1
                g *= ok[:, None] / count
                g = g.to(dtype)
                if grad_hidden is not None:
                    grad_hidden[start:stop] = (g @ w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight += (g.T @ h).float()
        ctx.save_for_backward(
            grad_hidden if want_hidden else None,
            None if grad_weight is None else grad_weight.to(weight.dtype),
        )
        return loss / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            None if grad_hidden is None else grad_hidden * grad_loss.to(grad_hidden.dtype),
            None if grad_weight is None else grad_weight * grad_loss.to(grad_weight.dtype),
            None,
            None,
            None,
        )


@torch.no_grad()
def score_by_first_digit(
    model,
    examples: Sequence[Encoded],
    prefix_ids: list[int],
    digit_ids: list[int],
    pad_id: int,
    device: torch.device,
    batch_size: int = 4,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[tuple[int, float]]:
    """For each example: (argmax score, expected score) from the next-token logits after the
    prompt + `{"score":`, restricted to the digits 1..5. The argmax is the score greedy guided
    decoding writes; the expectation is a smoother signal for diagnostics. Batches are sorted by
    length (less padding) and only the last real position goes through the LM head. `on_batch`
    hears (examples done, examples) after each batch (progress)."""
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
        if on_batch is not None:
            on_batch(start + len(idx), len(order))
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
