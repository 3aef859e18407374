"""vLLM engine: guided JSON decoding, prefix caching, optional LoRA adapter."""

from __future__ import annotations

import logging
import os

from care_ray.scoring.distribution import SCORE_WITHIN, allowed_scores, score_position
from care_ray.scoring.engines.base import EngineConfig, Generation, Sample

log = logging.getLogger(__name__)

_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


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
        # the capture is read where the sampler runs: only an in-process engine core with one
        # worker shares this process's memory; elsewhere the probe reads the distribution
        self._capturing = bool(
            config.score_logprobs
            and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
            and config.tensor_parallel_size == 1
        )
        if self._capturing:
            from care_ray.scoring.engines.vllm_capture import ScoreLogitsCapture

            kwargs["logits_processors"] = [ScoreLogitsCapture]
        log.info(
            "starting vLLM engine (cpu=%s, prefix cache=%s, adapter=%s)",
            cpu,
            config.enable_prefix_caching,
            bool(config.adapter),
        )
        self.llm: LLM | None = LLM(**kwargs)
        self._calls = 0
        self._value_tokens: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        if self._capturing:
            self._value_tokens = _value_tokens(
                self.llm.get_tokenizer(), allowed_scores(config.output_schema or {})
            )

    def _params(self, max_tokens: int, capture: str | None = None):
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
            extra_args=self._capture_args(capture),
        )

    def _capture_args(self, capture: str | None) -> dict | None:
        """SamplingParams.extra_args that ask vllm_capture to keep this request's value logits."""
        if not capture or self._value_tokens is None:
            return None
        from care_ray.scoring.engines.vllm_capture import KEY, TOKENS

        return {KEY: capture, TOKENS: list(self._value_tokens[1])}

    def generate(self, prompts: list[list[int]], max_tokens: int | list[int]) -> list[Generation]:
        from vllm.inputs import TokensPrompt

        if self.llm is None:
            raise RuntimeError("the vLLM engine was shut down")
        self._calls += 1
        capture = bool(self.config.score_logprobs and self._value_tokens)
        keys = [f"{id(self)}-{self._calls}-{i}" if capture else None for i in range(len(prompts))]
        budgets = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
        params = [self._params(m, k) for m, k in zip(budgets, keys, strict=True)]
        # token ids, not text: the engine's one core is spared 12 tokenisations of each transcript,
        # and no tokenizer can add a second BOS in front of the chat template's own
        inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        try:
            outs = self.llm.generate(inputs, params, lora_request=self.lora_request, use_tqdm=False)
            gens = [
                Generation(
                    samples=[Sample(c.text, c.finish_reason, len(c.token_ids)) for c in o.outputs],
                    prompt_tokens=len(o.prompt_token_ids or []),
                    cached_tokens=o.num_cached_tokens,
                )
                for o in outs
            ]
            if self.config.score_logprobs:
                self._read_score_tokens(prompts, outs, gens, keys)
        finally:
            if capture:  # what this call captured, read or not (an error must not leave it behind)
                from care_ray.scoring.engines.vllm_capture import ScoreLogitsCapture

                for key in keys:
                    ScoreLogitsCapture.captured.pop(key or "", None)
        return gens

    def _read_score_tokens(
        self, prompts: list[list[int]], outs, gens: list[Generation], keys: list[str | None]
    ) -> None:
        """Each answer's distribution over the rubric's values at its score token: from the
        logits captured during generation (vllm_capture), else by a one-token probe."""
        from care_ray.scoring.engines.vllm_capture import ScoreLogitsCapture

        assert self.llm is not None
        tokenizer = self.llm.get_tokenizer()
        missed = []
        for i, (o, g) in enumerate(zip(outs, gens, strict=True)):
            key = keys[i]
            seen = ScoreLogitsCapture.captured.get(key, {}) if key else {}
            for c, sample in zip(o.outputs, g.samples, strict=True):
                head = list(c.token_ids[:SCORE_WITHIN])
                pieces = [tokenizer.decode([t]) for t in head]
                pos = score_position(pieces)
                if pos is None:
                    continue
                sample.chosen = pieces[: pos + 1]
                at_score = seen.get(tuple(head[:pos]))
                if at_score is None or self._value_tokens is None:
                    missed.append((prompts[i], head[:pos], sample))
                    continue
                # over the allowed values; the device copy waits until now, not every step
                logprobs = at_score.float().log_softmax(0).tolist()
                sample.top_logprobs = [[] for _ in range(pos)] + [
                    list(zip(map(str, self._value_tokens[0]), logprobs, strict=True))
                ]
        if missed:
            self._probe_score_tokens(missed)

    def _probe_score_tokens(self, missed: list[tuple[list[int], list[int], Sample]]) -> None:
        """The top-k log-probabilities at each answer's score token, read by a one-token probe:
        the prompt plus the answer up to the score, `max_tokens=1`, `logprobs=k`, constrained to
        the rubric's values (a fallback where the logits were not captured: an engine in another
        process, or value tokens that are not single tokens). The prompt is in the prefix cache,
        so it costs one short prefill and one step. vLLM computes log-probabilities from the
        logits after the structured-output mask: without the constraint a model that has not
        learned the format may rank no digit in its top-k; with it, the top-k are the allowed
        values, in the same ratios as under the JSON grammar at that position."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        assert self.llm is not None
        allowed = allowed_scores(self.config.output_schema or {})
        if not allowed:
            return  # no rubric values to read (items.py leaves the columns null)
        probes = [TokensPrompt(prompt_token_ids=[*prompt, *head]) for prompt, head, _ in missed]
        params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            # under the constraint only the allowed values have mass: more is detokenized for nothing
            logprobs=min(self.config.score_logprobs, len(allowed)),
            structured_outputs=StructuredOutputsParams(choice=[str(v) for v in allowed]),
        )
        done = self.llm.generate(probes, params, lora_request=self.lora_request, use_tqdm=False)
        for (_, head, sample), o in zip(missed, done, strict=True):
            top = o.outputs[0].logprobs[0] if o.outputs and o.outputs[0].logprobs else {}
            sample.top_logprobs = [[] for _ in head] + [
                [(lp.decoded_token or "", lp.logprob) for lp in top.values()]
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


def _value_tokens(tokenizer, allowed) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(values, their token ids) where every allowed value is one token of the vocabulary, as
    the digits 1-5 are in Llama-3's and SmolLM2's; else None (the probe reads them)."""
    if not allowed:
        return None
    ids = []
    for value in allowed:
        tid = tokenizer.convert_tokens_to_ids(str(value))
        if (
            not isinstance(tid, int)
            or tid == tokenizer.unk_token_id
            or tokenizer.decode([tid]) != str(value)
        ):
            return None
        ids.append(tid)
    return tuple(allowed), tuple(ids)
