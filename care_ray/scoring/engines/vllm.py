"""vLLM engine: guided JSON decoding, prefix caching, optional LoRA adapter."""

from __future__ import annotations

import logging
import os

from care_ray.scoring.engines.base import EngineConfig, Generation, Sample

log = logging.getLogger(__name__)

_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
SCORE_WITHIN = 16  # generated positions whose log-probabilities are kept


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMEngine:
    name = "vllm"

    def __init__(self, config: EngineConfig):
        os.environ.setdefault(
            "VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(config.kv_cache_gib))))
        )
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine dies with its actor
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        os.environ.setdefault("DO_NOT_TRACK", "1")
        from vllm import LLM

        self.config = config
        cpu = _on_cpu()
        kwargs: dict = dict(
            model=config.model,
            dtype=("float32" if cpu and config.dtype == "auto" else config.dtype),
            max_model_len=config.max_model_len,
            enable_prefix_caching=config.enable_prefix_caching,
            enforce_eager=cpu if config.enforce_eager is None else config.enforce_eager,
            tensor_parallel_size=config.tensor_parallel_size,
            max_num_seqs=config.max_num_seqs,
            seed=config.seed,
            trust_remote_code=config.trust_remote_code,
            # whitespace control works at engine level only (per-request flag is ignored)
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
        )
        if config.block_size:
            kwargs["block_size"] = config.block_size
        elif cpu:
            # only whole blocks are cached: 32 (the CPU minimum) instead of 128 lets the 11 prompts
            # after a session's first recompute ~16 tokens of transcript each instead of ~64
            kwargs["block_size"] = 32
        self.lora_request = None
        if config.adapter:
            from vllm.lora.request import LoRARequest

            rank = config.adapter_rank() or 8
            # max_loras=2: with 1, base requests batched beside LoRA ones got the adapter too
            kwargs.update(
                enable_lora=True,
                max_lora_rank=next(r for r in _LORA_RANKS if r >= rank),
                max_loras=2,
            )
            self.lora_request = LoRARequest("adapter", 1, config.adapter)
        log.info(
            "starting vLLM engine (cpu=%s, prefix cache=%s, adapter=%s)",
            cpu,
            config.enable_prefix_caching,
            bool(config.adapter),
        )
        self.llm: LLM | None = LLM(**kwargs)

    def _params(self, max_tokens: int):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = (
            StructuredOutputsParams(json=self.config.output_schema)
            if self.config.guided and self.config.output_schema
            else None
        )
        return SamplingParams(
            n=self.config.samples,
            temperature=self.config.temperature,
            max_tokens=max_tokens,
            seed=self.config.seed if self.config.temperature > 0 else None,
            structured_outputs=structured,
            logprobs=self.config.score_logprobs or None,
        )

    def generate(self, prompts: list[list[int]], max_tokens: int | list[int]) -> list[Generation]:
        from vllm.inputs import TokensPrompt

        if self.llm is None:
            raise RuntimeError("the vLLM engine was shut down")
        params = (
            [self._params(m) for m in max_tokens]
            if isinstance(max_tokens, list)
            else self._params(max_tokens)
        )
        # token ids, not text: the engine's one core is spared 12 tokenisations of each transcript,
        # and no tokenizer can add a second BOS in front of the chat template's own
        inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outs = self.llm.generate(inputs, params, lora_request=self.lora_request, use_tqdm=False)
        return [
            Generation(
                samples=[_sample(c) for c in o.outputs],
                prompt_tokens=len(o.prompt_token_ids or []),
                cached_tokens=o.num_cached_tokens,
            )
            for o in outs
        ]

    def shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # already down: nothing left to release
            log.debug("engine shutdown raised", exc_info=True)
        self.llm = None


def _sample(c) -> Sample:
    """One completion; with log-probabilities, each position's chosen text and top-k."""
    sample = Sample(c.text, c.finish_reason, len(c.token_ids))
    if c.logprobs:
        chosen, top = [], []
        # the score comes right after `{"score":`: the first positions are all that is read
        for tid, position in zip(c.token_ids[:SCORE_WITHIN], c.logprobs, strict=False):
            chosen.append((position[tid].decoded_token or "") if tid in position else "")
            top.append([(lp.decoded_token or "", lp.logprob) for lp in position.values()])
        sample.chosen, sample.top_logprobs = chosen, top
    return sample
