"""The score token's distribution at no extra request: a vLLM logits processor that keeps, for
the requests that ask for it, the logits of the rubric's value tokens at each of the first
generated positions. Asking vLLM for log-probabilities (`SamplingParams(logprobs=k)`) returns and
detokenizes the top-k at every generated token (2.07x fewer items/s here); a one-token probe per
answer costs a second request (1.12-1.18x). This reads five numbers per early step instead.

It sees the logits the sampler sees (after the structured-output mask, before temperature), in
the process that runs the sampler: the engine core of `LLM` when it runs in-process
(VLLM_ENABLE_V1_MULTIPROCESSING=0, as the engine actors set it) with one worker. Elsewhere nothing
is captured and the engine falls back to the probe. Imported only where vLLM is installed."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from care_ray.scoring.distribution import SCORE_WITHIN as POSITIONS

KEY = "care_ray_score_capture"  # SamplingParams.extra_args: this request's capture key
TOKENS = "care_ray_score_tokens"  # extra_args: the value tokens' ids, in the rubric's order


class ScoreLogitsCapture(LogitsProcessor):
    # capture key → {the generated tokens before a position: the value tokens' logits there}.
    # Keyed by the prefix, so the samples of one prompt (n > 1) share what they share.
    captured: ClassVar[dict[str, dict[tuple[int, ...], list[float]]]] = {}

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.requests: dict[int, tuple[str, tuple[int, ...], list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # vLLM skips argmax-invariant processors for greedy requests

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.requests, batch_update, _tracked)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        groups: dict[tuple[int, ...], list[tuple[int, str, tuple[int, ...]]]] = {}
        for row, (key, tokens, output) in self.requests.items():
            if len(output) < POSITIONS:
                groups.setdefault(tokens, []).append((row, key, tuple(output)))
        for tokens, rows in groups.items():
            index = torch.tensor([r for r, _, _ in rows], device=logits.device)
            values = logits.index_select(0, index)[:, list(tokens)].float().tolist()
            for (_, key, prefix), v in zip(rows, values, strict=True):
                self.captured.setdefault(key, {})[prefix] = v
        return logits


def _tracked(params: Any, _prompt: Any, output: list[int]) -> Any:
    extra = params.extra_args or {}
    if KEY not in extra:
        return None
    return (extra[KEY], tuple(extra[TOKENS]), output)
