"""A tiny random Llama + a locally trained tokenizer with a Llama-3 chat template.

Same architecture and files as Llama-3.1-8B-Instruct (config.json, safetensors, tokenizer.json,
chat template), a few MB: tests and cluster smoke runs drive every stage through it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from care_ray.common.paths import esconv_dir, schemas_dir

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|pad|>",
]

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Written for care-ray so the tokenizer sees Chinese counseling language; not from any dataset.
CHINESE_TEXT = """来访者：最近工作压力很大，晚上总是睡不着，我不知道该怎么办。
咨询师：听起来你这段时间真的很辛苦。能说说压力主要来自哪里吗？
来访者：领导总是临时加任务，我觉得自己怎么做都不够好。
咨询师：你很努力，却总觉得不被认可，这种感觉一定很委屈。
来访者：是的，我甚至开始怀疑自己的能力。
咨询师：我们可以一起看看，哪些事情是你能掌控的，先定一个小目标。
来访者：我希望能先把睡眠调整好，再想办法和领导沟通。
咨询师：这是一个很清晰的目标。我们下次可以练习一下怎样表达你的需要。
我感到咨询师关心我，也尊重我的想法。我们对要解决的问题看法一致。
咨询让我用新的方式看待自己的问题，我更清楚自己可以怎样改变。
"""


def _training_text() -> Iterator[str]:
    yield CHINESE_TEXT
    for rubric in sorted((schemas_dir() / "rubrics").glob("*.yaml")):
        yield rubric.read_text(encoding="utf-8")
    d = esconv_dir()
    for name in ("train.json", "valid.json", "test.json"):
        p = d / name
        if p.exists():
            with open(p, encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        conv = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    yield "\n".join(t.get("text", "") for t in conv.get("dialog", []))


def build_tokenizer(vocab_size: int = 4096):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_text(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|pad|>",
        chat_template=LLAMA3_CHAT_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    out: Path, seed: int = 0, max_position_embeddings: int = 4096, vocab_size: int = 4096
) -> Path:
    """Write a tiny Llama (hidden 128, 4 heads of 32, 2 KV heads, 2 layers) to `out` as safetensors."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size)
    tokenizer.save_pretrained(out)
    # rope_theta and torch_dtype are transformers 4.x names (pyproject allows 4.51+); 5.x declares
    # rope_parameters and dtype instead and still takes the old names through **kwargs
    config = LlamaConfig(  # type: ignore[call-arg]
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # vLLM's CPU attention has no kernel below 32
        max_position_embeddings=max_position_embeddings,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
        initializer_range=0.2,  # peakier logits than the default 0.02, so greedy outputs depend on the input
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    (out / "CARE_RAY_TINY_MODEL").write_text(
        f"random weights, seed {seed}; for tests and smoke runs only\n"
    )
    return out
