"""The score token's distribution at no extra request: a vLLM logits processor that keeps, for
the requests that ask for it, the logits of the rubric's value tokens at each of the first
generated positions. Asking vLLM for log-probabilities (`SamplingParams(logprobs=k)`) returns and
detokenizes the top-k at every generated token (2.07x fewer items/s here); a one-token probe per
answer costs a second request (1.12-1.18x). This reads five numbers per early step instead.

It sees the logits the sampler sees (after the structured-output mask, before temperature), in
the process that runs the sampler. The engine registers it only where that is its own process:
an in-process engine core (VLLM_ENABLE_V1_MULTIPROCESSING=0, as the engine actors set it) with
one worker; elsewhere it reads the distribution with a one-token probe. Imported only where vLLM
is installed."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from care_ray.scoring.distribution import SCORE_WITHIN as POSITIONS

KEY = "care_ray_score_capture"  # SamplingParams.extra_args: this request's capture key
TOKENS = "care_ray_score_tokens"  # extra_args: the value tokens' ids, in the rubric's order


class ScoreLogitsCapture(LogitsProcessor):
    # capture key → {the generated tokens before a position: the value tokens' logits there, a
    # view of a small device tensor}. Keyed by the prefix, so the samples of one prompt (n > 1)
    # share what they share; a chunked or recomputed step is overwritten by its last pass.
    captured: ClassVar[dict[str, dict[tuple[int, ...], torch.Tensor]]] = {}

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.requests: dict[int, tuple[str, tuple[int, ...], list[int]]] = {}
        self.columns: dict[tuple[int, ...], torch.Tensor] = {}  # value token ids, on the device

    def is_argmax_invariant(self) -> bool:
        return False  # vLLM skips argmax-invariant processors for greedy requests

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.requests, batch_update, _tracked)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        # one gather per step and no host copy: a per-step sync would stall the GPU's queue; the
        # caller copies the few values it reads after generation
        picked: dict[tuple[int, ...], torch.Tensor] = {}
        for row, (key, tokens, output) in self.requests.items():
            if len(output) >= POSITIONS:
                continue
            values = picked.get(tokens)
            if values is None:
                columns = self.columns.get(tokens)
                if columns is None:
                    columns = self.columns[tokens] = torch.tensor(tokens, device=logits.device)
                values = picked[tokens] = logits.index_select(1, columns)
            self.captured.setdefault(key, {})[tuple(output)] = values[row]
        return logits


def _tracked(params: Any, _prompt: Any, output: list[int]) -> Any:
    extra = params.extra_args or {}
    if KEY not in extra:
        return None
    return (extra[KEY], tuple(extra[TOKENS]), output)
