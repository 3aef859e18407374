"""Training efficiency without changing what is learned: padding-free packing, the fused LM head +
cross-entropy, and gradient checkpointing chosen from memory. Small random Llamas in fp32 on CPU:
packed and fused paths must give the plain padded path's loss and gradients."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from care_ray.training import loop
from care_ray.training.config import FinetuneConfig
from care_ray.training.loop import Encoded, ModelShape

LLAMA_31_8B = ModelShape(layers=32, hidden=4096, intermediate=14336, kv_dim=8 * 128, vocab=128256)
LLAMA_31_8B_PARAMS = 8_030_261_248
LORA_R16_ALL_LINEAR_PARAMS = 41_943_040  # r 16 on q/k/v/o/gate/up/down of 32 blocks
GB = 10**9


def _cfg(**overrides) -> FinetuneConfig:
    settings = {
        "name": "t",
        "model": "unused",
        "data": "unused",
        "output_dir": "unused",
        "storage_path": "unused",
        "micro_batch_size": 1,
        "effective_batch_size": 1,
        "scaling": {"num_workers": 1},
        **overrides,
    }
    return FinetuneConfig.model_validate(settings)


def _model(method: str, attn: str = "sdpa", tie: bool = False, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    loop.register_packed_attention()
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=160,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        vocab_size=300,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        attn_implementation=attn,
    )
    model = LlamaForCausalLM(config).float()
    if method == "lora":
        cfg = _cfg(lora={"r": 4, "alpha": 8, "dropout": 0.0})
        model = loop.with_lora(cfg, model)
        # PEFT starts B at zero: every A gradient would be zero and prove nothing
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
    return model.train()


def _examples(n: int, seed: int = 1) -> list[Encoded]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rng.randrange(300) for _ in range(rng.randint(5, 40))]
        target = [rng.randrange(300) for _ in range(rng.randint(2, 9))]
        out.append(Encoded(prompt, target, f"s{i}", i, "bond", 3))
    return out


def _loss_and_grads(model, batch, fused: bool = False) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loop.training_loss(model, batch, torch.device("cpu"), fused=fused)
    loss.backward()
    grads = {
        name: p.grad.clone()
        for name, p in model.named_parameters()
        if p.grad is not None
        and any(
            k in name
            # embed_tokens: where the head is tied to it, the head's gradient lands there
            for k in (
                "layers.0.self_attn.q_proj",
                "layers.1.mlp.down_proj",
                "lm_head",
                "embed_tokens",
            )
        )
    }
    return loss.item(), grads


def _assert_same(a: tuple[float, dict], b: tuple[float, dict], tol: float = 1e-5) -> None:
    assert a[0] == pytest.approx(b[0], abs=tol)
    assert a[1].keys() == b[1].keys() and a[1]
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], atol=tol, rtol=1e-4, msg=name)


def test_packed_row_restarts_positions_and_labels_only_targets():
    examples = _examples(3)
    packed = loop.collate_packed(examples)
    assert packed.keys() >= {"input_ids", "position_ids", "labels", "cu_seq_lens_q"}
    assert "attention_mask" not in packed
    assert packed["cu_seq_lens_q"].tolist() == [
        0,
        *itertools.accumulate(e.length for e in examples),
    ]
    assert packed["max_length_q"] == max(e.length for e in examples)
    assert packed["input_ids"].shape == (1, sum(e.length for e in examples))
    assert loop.batch_tokens(packed) == sum(e.length for e in examples)
    positions = packed["position_ids"][0].tolist()
    labels = packed["labels"][0].tolist()
    start = 0
    for e in examples:
        assert positions[start : start + e.length] == list(range(e.length))
        assert labels[start : start + len(e.prompt_ids)] == [-100] * len(e.prompt_ids)
        assert labels[start + len(e.prompt_ids) : start + e.length] == e.target_ids
        start += e.length
    padded = loop.collate(examples, pad_id=0)
    assert loop.batch_tokens(padded) == sum(e.length for e in examples)
    assert loop.longest_micro_batch_tokens(examples, 2, packing=True) == sum(
        sorted((e.length for e in examples), reverse=True)[:2]
    )
    assert loop.longest_micro_batch_tokens(examples, 2, packing=False) == 2 * max(
        e.length for e in examples
    )


@pytest.mark.parametrize(
    ("method", "attn"), [("lora", loop.PACKED_ATTENTION), ("lora", "sdpa"), ("full", "eager")]
)
def test_packed_micro_batch_equals_the_same_examples_unpacked(method, attn, monkeypatch):
    model = _model(method, attn)
    examples = _examples(4)
    segments = []
    if attn == loop.PACKED_ATTENTION:  # each example runs as its own attention call
        from transformers.integrations import sdpa_attention

        real = sdpa_attention.sdpa_attention_forward

        def spy(module, query, key, value, attention_mask, **kwargs):
            segments.append((query.shape[2], attention_mask is None))
            return real(module, query, key, value, attention_mask, **kwargs)

        monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", spy)
    packed = _loss_and_grads(model, loop.collate_packed(examples))
    if attn == loop.PACKED_ATTENTION:
        assert segments == [(e.length, True) for e in examples] * 2  # 2 layers
    padded = _loss_and_grads(model, loop.collate(examples, pad_id=0))
    _assert_same(packed, padded)
    # and the micro-batch loss is the mean over all target tokens of the examples run one by one
    one_by_one = [_loss_and_grads(model, loop.collate([e], pad_id=0)) for e in examples]
    weights = [len(e.target_ids) / sum(len(x.target_ids) for x in examples) for e in examples]
    mean = (
        sum(w * loss for w, (loss, _) in zip(weights, one_by_one, strict=True)),
        {
            name: sum(w * g[name] for w, (_, g) in zip(weights, one_by_one, strict=True))
            for name in packed[1]
        },
    )
    _assert_same(packed, mean)


@pytest.mark.parametrize(
    ("method", "tie", "packing"),
    [("lora", False, True), ("full", False, False), ("full", True, True)],
)
def test_fused_loss_equals_the_plain_loss_and_gradients(method, tie, packing):
    model = _model(method, tie=tie)
    examples = _examples(3, seed=7)
    batch = loop.micro_batch(examples, pad_id=0, packing=packing)
    fused = _loss_and_grads(model, batch, fused=True)
    plain = _loss_and_grads(model, batch, fused=False)
    _assert_same(fused, plain)
    if method == "full":
        assert any(("embed_tokens" if tie else "lm_head") in name for name in fused[1])
    head = model.get_output_embeddings()
    assert "forward" not in head.__dict__  # the head computes logits again after the pass


def test_linear_cross_entropy_in_chunks_equals_cross_entropy():
    torch.manual_seed(3)
    hidden = torch.randn(11, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (11,))
    targets[[0, 4, 5]] = -100
    fused = loop.linear_cross_entropy(hidden, weight, targets, chunk_rows=3)
    fused.backward()
    fused_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets)
    plain.backward()
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(fused_grads[0], hidden.grad)
    torch.testing.assert_close(fused_grads[1], weight.grad)
    with torch.no_grad():  # evaluation: no gradients computed, same value
        torch.testing.assert_close(loop.linear_cross_entropy(hidden, weight, targets, 4), plain)


def _saved_activation_bytes(model, tokens: int) -> int:
    """Bytes of the tensors autograd keeps for backward, parameters excluded, storages once."""
    params = {p.data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 300, (1, tokens))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(input_ids=ids, use_cache=False)
    return sum(storages.values())


@pytest.mark.parametrize(("method", "dropout"), [("full", 0.0), ("lora", 0.05)])
def test_activation_estimate_matches_what_autograd_keeps(method, dropout):
    from transformers import LlamaConfig, LlamaForCausalLM

    def measured(layers: int) -> int:
        torch.manual_seed(0)
        config = LlamaConfig(
            hidden_size=384,
            intermediate_size=1024,
            num_attention_heads=6,
            num_key_value_heads=2,
            num_hidden_layers=layers,
            vocab_size=300,
        )
        model = LlamaForCausalLM(config).float()
        if method == "lora":
            model = loop.with_lora(_cfg(lora={"r": 8, "dropout": dropout}), model)
            model.enable_input_require_grads()
        return _saved_activation_bytes(model.train(), 128)

    shape = ModelShape(layers=2, hidden=384, intermediate=1024, kv_dim=2 * 64, vocab=300)
    per_two_layers = measured(3) - measured(1)  # the embedding and the head cancel out
    estimate = loop.activation_bytes(shape, 128, dtype_bytes=4, lora_dropout=dropout > 0)
    assert estimate == pytest.approx(per_two_layers, rel=0.1)


def test_checkpointing_chosen_from_memory_at_llama_8b_shape():
    lora = {
        "dtype_bytes": 2,
        "weights_bytes": 2 * LLAMA_31_8B_PARAMS + 4 * LORA_R16_ALL_LINEAR_PARAMS,
        "trainable_params": LORA_R16_ALL_LINEAR_PARAMS,
        "lora_dropout": True,
    }
    h200 = 141 * GB
    on, why = loop.checkpointing_needed(LLAMA_31_8B, 2048, free_bytes=h200, **lora)
    assert not on and "2048 tokens" in why and why.endswith("off")
    # 8k tokens: ~76 GiB of activations + 15 GiB of weights fit the 141 GB card ...
    on, why = loop.checkpointing_needed(LLAMA_31_8B, 8192, free_bytes=h200, **lora)
    assert not on, why
    assert 70 * 2**30 < loop.activation_bytes(LLAMA_31_8B, 8192, 2, True) < 85 * 2**30
    # ... not an 80 GB one, nor two 8k examples packed into one micro-batch
    assert loop.checkpointing_needed(LLAMA_31_8B, 8192, free_bytes=80 * GB, **lora)[0]
    assert loop.checkpointing_needed(LLAMA_31_8B, 16384, free_bytes=h200, **lora)[0]
    # the plain loss's logits (8k x 128k x 14 bytes = 14.7 GB) count where the loss is not fused
    assert loop.loss_bytes(LLAMA_31_8B, 8192, 2, fused=False) > 14 * GB
    assert loop.loss_bytes(LLAMA_31_8B, 8192, 2, fused=True) < GB
    # full fine-tuning sharded over 8 GPUs: fp32 weights + gradients + AdamW, an eighth each
    full = {"dtype_bytes": 2, "weights_bytes": 4 * LLAMA_31_8B_PARAMS}
    full["trainable_params"] = LLAMA_31_8B_PARAMS
    assert not loop.checkpointing_needed(LLAMA_31_8B, 2048, free_bytes=80 * GB, shards=8, **full)[0]
    assert loop.checkpointing_needed(LLAMA_31_8B, 8192, free_bytes=40 * GB, shards=8, **full)[0]


def test_checkpointing_auto_left_to_a_cpu_worker_is_off_and_true_turns_it_on(caplog):
    """On CPU the driver's memory plan resolves `auto` before the workers start
    (test_training.py: test_auto_checkpointing_follows_the_plan_on_cpu); one that still reaches a
    worker is off."""
    import logging

    caplog.set_level(logging.INFO, logger="care_ray.training.loop")
    cfg = _cfg(lora={"r": 4, "dropout": 0.0})
    assert cfg.gradient_checkpointing == "auto" and cfg.packing and cfg.fused_loss
    kwargs = {"device": torch.device("cpu"), "activation_dtype": torch.float32}
    model = _model("lora")
    assert not loop.setup_checkpointing(model, cfg, longest_tokens=8192, **kwargs)
    assert not model.is_gradient_checkpointing
    assert (
        "gradient checkpointing off (auto: on CPU the driver's memory plan decides" in caplog.text
    )
    forced = cfg.model_copy(update={"gradient_checkpointing": True})
    assert loop.setup_checkpointing(model, forced, longest_tokens=8192, **kwargs)
    assert model.is_gradient_checkpointing
    # checkpointed + packed + fused still trains to the same gradients as plain and padded
    examples = _examples(3)
    reference = _model("lora")
    _assert_same(
        _loss_and_grads(model, loop.collate_packed(examples), fused=True),
        _loss_and_grads(reference, loop.collate(examples, pad_id=0)),
    )
    assert _cfg(gradient_checkpointing=False).gradient_checkpointing is False
    with pytest.raises(ValueError):
        _cfg(gradient_checkpointing="sometimes")


def test_shipped_configs_pack_fuse_and_choose_checkpointing_from_memory():
    from pathlib import Path

    from care_ray.training.config import load_finetune_config

    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("finetune-*.yaml")):
        cfg = load_finetune_config(path)
        assert (cfg.gradient_checkpointing, cfg.packing, cfg.fused_loss) == ("auto", True, True)
