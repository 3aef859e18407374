"""transformers fallback engine, for machines without vLLM. No guided decoding: outputs are parsed
tolerantly and fail validation more often. Three things make it worth using:

- Prompts that share a long token prefix (a session's item prompts share header + transcript) form
  a group: the prefix runs once and its KV cache is copied into each member's row, so only the
  item-specific tail is computed per prompt. `cached_tokens` reports the reused prefix, as vLLM does.
- Rows are batched by a token budget (rows × padded width), sorted by length, not a fixed count.
- A sequence ends at a stop token, at the end of its first complete top-level JSON object (nothing
  after it is parsed), or at its token budget; finished rows leave the batch.

transformers' generate() takes one cache for the whole batch and cannot start rows from different
prefixes, hence the decode loop here. Greedy decoding picks the same tokens as generate(); sampling
is plain temperature sampling (no top-p / top-k), the parameters the vLLM engine asks for."""

from __future__ import annotations

from typing import Any

import numpy as np

from care_ray.scoring.engines.base import EngineConfig, Generation, Sample

# a shared prefix shorter than this is not worth a forward pass of its own
MIN_SHARED_PREFIX = 32
# most query tokens (rows × padded suffix width) in one prefill forward: attention and MLP
# activations grow with it, the KV cache does not
PREFILL_CHUNK_TOKENS = 16384
# finished rows stay in the batch (fed padding) until this share of it is done: compacting the
# cache copies it, so it is done a few times per batch, not once per finished row
COMPACT_SHARE = 0.25


class JsonObjectEnd:
    """Fed decoded text piece by piece; `done` once one complete top-level JSON object has been
    seen: brace depth back to 0, braces inside strings not counted. Text before the first '{' is
    prose and does not open strings."""

    __slots__ = ("depth", "done", "escaped", "in_string")

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.done = False

    def feed(self, text: str) -> bool:
        for ch in text:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == "{":
                self.depth += 1
            elif ch == "}" and self.depth > 0:
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    return True
            elif ch == '"' and self.depth > 0:
                self.in_string = True
        return False


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if len(differ) else n


def group_by_prefix(
    prompts: list[list[int]], min_prefix: int = MIN_SHARED_PREFIX
) -> list[tuple[int, list[int]]]:
    """Split prompt indices into groups that share a token prefix: [(prefix length, indices)].

    Sorted prompts put sharers next to each other; a split of the sorted order into runs minimises
    the tokens computed (each run's shared prefix once + every member's own tail). Every member
    keeps at least one token of its own, whose logits start its generation. Prompts of different
    sessions share the rubric header too, but cutting them into per-session groups computes less
    than one group over the header, which the minimum finds."""
    n = len(prompts)
    order = sorted(range(n), key=lambda i: prompts[i])
    lens = [len(prompts[i]) for i in order]
    adjacent = [_common_prefix_len(prompts[order[k]], prompts[order[k + 1]]) for k in range(n - 1)]
    total = np.concatenate([[0], np.cumsum(lens)]).tolist()
    best = [0] * (n + 1)  # best[j]: fewest tokens computed for the first j sorted prompts
    cut: list[tuple[int, int]] = [(0, 0)] * (n + 1)  # (start of the last run, its prefix length)
    for j in range(1, n + 1):
        best[j], cut[j] = best[j - 1] + lens[j - 1], (j - 1, 0)
        shared, shortest = 1 << 62, lens[j - 1]
        for i in range(j - 2, -1, -1):
            shared, shortest = min(shared, adjacent[i]), min(shortest, lens[i])
            prefix = min(shared, shortest - 1)
            if prefix < min_prefix:  # only shrinks further back
                break
            cost = best[i] + total[j] - total[i] - (j - 1 - i) * prefix
            if cost < best[j]:
                best[j], cut[j] = cost, (i, prefix)
    groups: list[tuple[int, list[int]]] = []
    j = n
    while j > 0:
        i, prefix = cut[j]
        groups.append((prefix, [order[k] for k in range(i, j)]))
        j = i
    return groups[::-1]


def _layers_kv(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) per layer, each [batch, kv heads, tokens, head dim]; transformers ≥ 4.56
    keeps them in cache.layers, older versions in key_cache / value_cache."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def _cache_of(layers: list[tuple[Any, Any]]) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache()
    for idx, (k, v) in enumerate(layers):
        cache.update(k, v, idx)
    return cache


class _Row:
    """One sequence to generate: a sample of a prompt, started from its group's prefix."""

    __slots__ = ("budget", "group", "ids", "json_end", "prefix_len", "prompt", "reason", "suffix")

    def __init__(self, prompt: int, group: int, prefix_len: int, suffix: list[int], budget: int):
        self.prompt, self.group, self.prefix_len = prompt, group, prefix_len
        self.suffix, self.budget = suffix, budget
        self.ids: list[int] = []
        self.json_end = JsonObjectEnd()
        self.reason: str | None = None if budget > 0 else "length"


class HFEngine:
    name = "hf"

    def __init__(self, config: EngineConfig, model: Any = None, tokenizer: Any = None):
        """Loads config.model, or uses an already built `model` + `tokenizer` (benchmarks build
        a random-weight model of a real model's shape in memory)."""
        import torch

        self.config = config
        self.device = "cuda" if torch.cuda.is_available() and config.gpus_per_engine > 0 else "cpu"
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                config.model, trust_remote_code=config.trust_remote_code
            )
        self.tokenizer = tokenizer
        if model is None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(
                config.model,
                dtype=torch.bfloat16 if self.device == "cuda" else torch.float32,
                use_safetensors=True,
                trust_remote_code=config.trust_remote_code,
            )
            if config.adapter:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, config.adapter)
        else:
            self.device = str(next(model.parameters()).device)
        # a transformers model, or a PeftModel around one: their types share only torch.nn.Module;
        # None after shutdown()
        self.model: Any = model.to(self.device).eval()
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.stop_ids = {
            int(t)
            for t in ([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []))
            + [tokenizer.eos_token_id]
            if t is not None
        }
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else tokenizer.eos_token_id)
        self.max_batch_tokens = (
            config.max_batch_tokens or config.max_num_seqs * config.max_model_len
        )
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self._pieces: dict[int, str] = {}

    # ---- the Engine protocol

    def generate(self, prompts: list[list[int]], max_tokens: int | list[int]) -> list[Generation]:
        import torch

        budgets = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
        prompts = [list(map(int, p)) for p in prompts]
        groups = group_by_prefix(prompts)
        rows: list[_Row] = []
        cached = [0] * len(prompts)
        for g, (prefix_len, members) in enumerate(groups):
            for m in members:
                for _ in range(self.config.samples):
                    rows.append(_Row(m, g, prefix_len, prompts[m][prefix_len:], budgets[m]))
            first = min(members)  # the first prompt computes the prefix, the later ones reuse it
            for m in members:
                cached[m] = prefix_len if m != first else 0
        # sorted by prefix length, then group, then tail length: a group's rows stay together
        # (its prefix is copied into one batch, mostly) and padding stays small
        rows.sort(key=lambda r: (r.prefix_len, r.group, len(r.suffix)))
        rows_left = [0] * len(groups)
        for r in rows:
            rows_left[r.group] += 1
        prefix_kv: dict[int, list[tuple[Any, Any]]] = {}
        with torch.inference_mode():
            for batch in self._batches(rows):
                for g in {r.group for r in batch if r.prefix_len}:
                    if g not in prefix_kv:
                        prefix_kv[g] = self._prefill_prefix(
                            prompts[groups[g][1][0]][: groups[g][0]]
                        )
                self._run_batch(batch, prefix_kv)
                for r in batch:
                    rows_left[r.group] -= 1
                    if not rows_left[r.group]:
                        prefix_kv.pop(r.group, None)

        samples: list[list[Sample]] = [[] for _ in prompts]
        for r in sorted(rows, key=lambda r: r.prompt):  # stable: a prompt's samples keep order
            text = self.tokenizer.decode(r.ids, skip_special_tokens=True)
            if not isinstance(text, str):  # a list only for a batch of id rows
                raise TypeError(f"decoding one sample gave {type(text).__name__}")
            samples[r.prompt].append(Sample(text, r.reason, len(r.ids)))
        return [
            Generation(samples=s, prompt_tokens=len(p), cached_tokens=c)
            for s, p, c in zip(samples, prompts, cached, strict=True)
        ]

    def shutdown(self) -> None:
        self.model = None

    # ---- batching

    def _batches(self, rows: list[_Row]) -> list[list[_Row]]:
        """Consecutive runs of the sorted rows whose padded size, rows × (longest prefix + longest
        tail + largest token budget) — the KV cache the batch ends with — fits the token budget."""
        out: list[list[_Row]] = []
        batch: list[_Row] = []
        width = (0, 0, 0)
        for r in rows:
            grown = (
                max(width[0], r.prefix_len),
                max(width[1], len(r.suffix)),
                max(width[2], r.budget),
            )
            if batch and (len(batch) + 1) * sum(grown) > self.max_batch_tokens:
                out.append(batch)
                batch, grown = [], (r.prefix_len, len(r.suffix), r.budget)
            batch.append(r)
            width = grown
        if batch:
            out.append(batch)
        return out

    # ---- model calls

    def _forward(self, input_ids: Any, **kw: Any) -> Any:
        # logits of the last position only: a prefill's full logits would be rows × tokens × vocab
        return self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **kw)

    def _prefill_prefix(self, prefix: list[int]) -> list[tuple[Any, Any]]:
        import torch

        ids = torch.tensor([prefix], device=self.device)
        return _layers_kv(self._forward(ids, past_key_values=_cache_of([])).past_key_values)

    def _pick(self, logits: Any) -> Any:
        import torch

        logits = logits[:, -1, :].float()
        if self.config.temperature <= 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / self.config.temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)

    def _piece(self, token: int) -> str:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = str(self.tokenizer.decode([token]))
        return piece

    def _record(self, row: _Row, token: int) -> None:
        row.ids.append(token)
        if token in self.stop_ids or row.json_end.feed(self._piece(token)):
            row.reason = "stop"
        elif len(row.ids) >= row.budget:
            row.reason = "length"

    def _run_batch(self, batch: list[_Row], prefix_kv: dict[int, list[tuple[Any, Any]]]) -> None:
        """Each row's cache is its group's prefix KV, left-padded to the batch's longest prefix;
        its tail follows, left-padded to the longest tail. Padding is masked out and positions
        continue from each row's own prefix, so a row computes what it would alone."""
        import torch

        dev = self.device
        n, long_prefix = len(batch), max(r.prefix_len for r in batch)
        long_tail = max(len(r.suffix) for r in batch)
        ids = torch.full((n, long_tail), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, long_prefix + long_tail), dtype=torch.long)
        positions = torch.zeros((n, long_tail), dtype=torch.long)
        for i, r in enumerate(batch):
            s = len(r.suffix)
            ids[i, long_tail - s :] = torch.tensor(r.suffix)
            mask[i, long_prefix - r.prefix_len : long_prefix] = 1
            mask[i, long_prefix + long_tail - s :] = 1
            positions[i, long_tail - s :] = torch.arange(r.prefix_len, r.prefix_len + s)
        ids, mask, positions = ids.to(dev), mask.to(dev), positions.to(dev)

        # prefill in row chunks (bounded activations); the chunks' caches are joined afterwards
        step = max(1, PREFILL_CHUNK_TOKENS // long_tail)
        chunk_caches: list[Any] = []
        picks = []
        for a in range(0, n, step):
            b = min(n, a + step)
            cache = _cache_of(self._padded_prefixes(batch[a:b], prefix_kv, long_prefix))
            out = self._forward(
                ids[a:b],
                attention_mask=mask[a:b],
                position_ids=positions[a:b],
                past_key_values=cache,
            )
            picks.append(self._pick(out.logits))
            chunk_caches.append(out.past_key_values)
            del out, cache
        if len(chunk_caches) == 1:  # joining one chunk would only copy its cache
            cache = chunk_caches[0]
        else:
            parts = [_layers_kv(c) for c in chunk_caches]
            cache = _cache_of(
                [
                    (torch.cat([p[i][0] for p in parts]), torch.cat([p[i][1] for p in parts]))
                    for i in range(len(parts[0]))
                ]
            )
            del parts
        del chunk_caches
        token = torch.cat(picks)
        next_pos = torch.tensor([r.prefix_len + len(r.suffix) for r in batch], device=dev)
        alive = list(range(n))  # batch index of each cache row
        since_compact = 0
        while True:
            for k, t in zip(alive, token.tolist(), strict=True):
                r = batch[k]
                if r.reason is None:
                    self._record(r, t)
                    since_compact += r.reason is not None
            live = [i for i, k in enumerate(alive) if batch[k].reason is None]
            if not live:
                return
            if since_compact >= COMPACT_SHARE * len(alive):
                keep = torch.tensor(live, device=dev)
                cache = _cache_of([(k[keep], v[keep]) for k, v in _layers_kv(cache)])
                alive = [alive[i] for i in live]
                token, mask, next_pos = token[keep], mask[keep], next_pos[keep]
                since_compact = 0
            done = torch.tensor([batch[k].reason is not None for k in alive], device=dev)
            token = token.masked_fill(done, self.pad_id)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self._forward(
                token[:, None],
                attention_mask=mask,
                position_ids=next_pos[:, None],
                past_key_values=cache,
            )
            cache, token, next_pos = out.past_key_values, self._pick(out.logits), next_pos + 1

    def _padded_prefixes(
        self, rows: list[_Row], prefix_kv: dict[int, list[tuple[Any, Any]]], width: int
    ) -> list[tuple[Any, Any]]:
        """Per layer, the rows' prefix keys and values left-padded with zeros to `width` tokens
        (masked out); empty when no row has a prefix."""
        import torch

        if width == 0:
            return []
        out = []
        # every prefix has the same layer shapes; a batch with width > 0 has at least one
        for layer, (k0, v0) in enumerate(next(iter(prefix_kv.values()))):
            shape = (len(rows), k0.shape[1], width, k0.shape[3])
            keys = torch.zeros(shape, dtype=k0.dtype, device=k0.device)
            values = torch.zeros((*shape[:3], v0.shape[3]), dtype=v0.dtype, device=v0.device)
            start = 0
            while start < len(rows):  # rows of a group are consecutive: one copy per run
                end = start
                while end < len(rows) and rows[end].group == rows[start].group:
                    end += 1
                p = rows[start].prefix_len
                if p:
                    k, v = prefix_kv[rows[start].group][layer]
                    keys[start:end, :, width - p :] = k
                    values[start:end, :, width - p :] = v
                start = end
            out.append((keys, values))
        return out
