"""What every engine is: the Engine protocol, its results (Generation, Sample) and the settings one
replica is built with (EngineConfig)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, Field


@dataclass
class Sample:
    text: str
    finish_reason: str | None
    output_tokens: int
    # (token text, log-probability) of the top-k tokens at each generated position, and each
    # position's chosen text: where the engine was asked for them (EngineConfig.score_logprobs)
    chosen: list[str] | None = None
    top_logprobs: list[list[tuple[str, float]]] | None = None


@dataclass
class Generation:
    """All samples for one prompt, with the prompt-side token accounting."""

    samples: list[Sample]
    prompt_tokens: int
    cached_tokens: int | None = None
    extra: dict = field(default_factory=dict)


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[list[int]], max_tokens: int | list[int]) -> list[Generation]:
        """Token-id prompts (already chat-templated); `max_tokens` for all, or one per prompt."""
        ...

    def shutdown(self) -> None: ...


class EngineConfig(BaseModel):
    """How one engine replica is built and sampled. The same for every replica of a job."""

    model: str = Field(description="model folder (HF layout, safetensors)")
    adapter: str | None = Field(
        None, description="PEFT LoRA adapter folder applied to every request"
    )
    kind: Literal["vllm", "hf"] = "vllm"
    max_model_len: int = 4096
    max_new_tokens: int = 512
    temperature: float = 0.0
    samples: int = Field(1, ge=1)
    seed: int = 0
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpus_per_engine: float = 0.0
    enable_prefix_caching: bool = True
    block_size: int | None = None
    enforce_eager: bool | None = Field(
        None, description="default: True on CPU (start-up 20 s instead of 50 s)"
    )
    kv_cache_gib: float = Field(1.0, description="vLLM CPU KV cache (VLLM_CPU_KVCACHE_SPACE)")
    max_num_seqs: int = 64
    max_batch_tokens: int | None = Field(
        None,
        description="transformers engine: most padded tokens in one batch, rows × (longest prompt"
        " + largest max_tokens), i.e. the KV cache the batch ends with; default max_num_seqs ×"
        " max_model_len, the cache vLLM would size for max_num_seqs full-length sequences",
    )
    score_logprobs: int = Field(
        0,
        ge=0,
        le=20,
        description="top-k log-probabilities returned per generated token (0: none), read at the"
        " score token for the expected score (vllm only)",
    )
    guided: bool = Field(True, description="JSON-schema guided decoding (vllm only)")
    output_schema: dict = Field(
        default_factory=dict,
        description="filled by the scoring job from schemas/output.schema.json",
    )
    score_only: bool = False
    trust_remote_code: bool = False
    crash_once_marker: str | None = Field(
        None, description="TEST ONLY: fault injection, see engines/faults.py"
    )
    fail_while_marker: str | None = Field(
        None, description="TEST ONLY: fault injection, see engines/faults.py"
    )

    def adapter_rank(self) -> int | None:
        if not self.adapter:
            return None
        cfg = json.loads((Path(self.adapter) / "adapter_config.json").read_text())
        return int(cfg.get("r", 8))
