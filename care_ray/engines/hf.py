"""transformers fallback engine: plain greedy/sampled generate, no guided decoding, no prefix cache.
For machines without vLLM; outputs are parsed tolerantly and fail validation more often."""

from __future__ import annotations

from typing import Any

from care_ray.engines import EngineConfig, Generation, Sample


class HFEngine:
    name = "hf"

    def __init__(self, config: EngineConfig, batch_size: int = 8):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.batch_size = batch_size
        self.device = "cuda" if torch.cuda.is_available() and config.gpus_per_engine > 0 else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(
            config.model, trust_remote_code=config.trust_remote_code
        )
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        base = AutoModelForCausalLM.from_pretrained(
            config.model,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=config.trust_remote_code,
        )
        # a transformers model, or a PeftModel around one: both generate(), but their types share
        # only torch.nn.Module, which has no generate(); None after shutdown()
        self.model: Any = base
        if config.adapter:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(base, config.adapter)
        self.model = self.model.to(self.device).eval()
        torch.manual_seed(config.seed)

    def generate(self, prompts: list[list[int]], max_tokens: int | list[int]) -> list[Generation]:
        import torch

        if isinstance(max_tokens, list):  # one generate call per distinct budget
            by_index: dict[int, Generation] = {}
            for limit in sorted(set(max_tokens)):
                idx = [i for i, m in enumerate(max_tokens) if m == limit]
                by_index.update(
                    zip(idx, self.generate([prompts[i] for i in idx], limit), strict=True)
                )
            return [by_index[i] for i in range(len(prompts))]

        out: list[Generation] = []
        sample = self.config.temperature > 0
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            enc = self.tokenizer.pad({"input_ids": chunk}, return_tensors="pt", padding=True).to(
                self.device
            )
            with torch.no_grad():
                gen = self.model.generate(
                    **enc,
                    max_new_tokens=max_tokens,
                    do_sample=sample,
                    temperature=self.config.temperature if sample else None,
                    num_return_sequences=self.config.samples,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            width = enc["input_ids"].shape[1]
            prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
            for i, plen in enumerate(prompt_lens):
                samples = []
                for k in range(self.config.samples):
                    ids = gen[i * self.config.samples + k, width:]
                    ids = ids[ids != self.tokenizer.pad_token_id]
                    stopped = bool(len(ids)) and int(ids[-1]) == self.tokenizer.eos_token_id
                    text = self.tokenizer.decode(ids, skip_special_tokens=True)
                    if not isinstance(text, str):  # a list only for a batch of id rows
                        raise TypeError(f"decoding one sample gave {type(text).__name__}")
                    samples.append(
                        Sample(
                            text,
                            "stop" if stopped or len(ids) < max_tokens else "length",
                            len(ids),
                        )
                    )
                out.append(Generation(samples=samples, prompt_tokens=int(plen), cached_tokens=None))
        return out

    def shutdown(self) -> None:
        self.model = None
