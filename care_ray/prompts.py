"""Session + rubric + token budget → one chat prompt per (session, item).

The transcript comes first and is byte-identical across a session's items, the item comes last,
so vLLM's prefix cache serves the transcript once per session. Training builds its examples with
the same functions, so training and scoring prompts cannot drift apart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import pyarrow as pa

from care_ray.rubric import Rubric, RubricItem

ITEM_PROMPT_SCHEMA = pa.schema(
    [
        ("session_id", pa.string()),
        ("item_id", pa.int32()),
        ("dimension", pa.string()),
        ("prompt", pa.string()),  # chat-template-rendered text, ready for the engine
        ("n_turns", pa.int32()),
        ("n_elided_turns", pa.int32()),
        ("truncated", pa.bool_()),
        ("transcript", pa.string()),  # the session's full dialogue text, for the quote check
    ]
)


_ITEM_SLOT = "\uE000care-ray-item\uE000"  # a private-use marker no transcript contains


@cache
def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


@dataclass
class Transcript:
    text: str
    n_turns: int
    n_elided: int


def render_turn(turn: dict[str, Any], rubric: Rubric) -> str:
    label = rubric.prompt.client_label if turn["role"] == "client" else rubric.prompt.counselor_label
    return f"{label}: {' '.join(str(turn['text']).split())}"


def full_dialogue(turns: Sequence[dict[str, Any]]) -> str:
    """All turn texts, for checking that a quote really occurs in the session."""
    return "\n".join(str(t["text"]) for t in turns)


class PromptBuilder:
    """Builds the 12 item prompts of a session within a token budget.

    With `max_model_len`, the transcript gets at most max_model_len - max_new_tokens - (the longest
    item question's overhead) tokens; longer sessions keep the opening turns (up to `head_share` of
    that budget) and the most recent ones, with a marker saying how many turns were cut."""

    def __init__(self, rubric: Rubric, tokenizer=None, max_model_len: int | None = None, max_new_tokens: int = 512, head_share: float = 0.25):
        self.rubric = rubric
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.head_share = head_share
        self.budget: int | None = None
        if max_model_len is not None:
            if tokenizer is None:
                raise ValueError("a token budget needs a tokenizer")
            overhead = max(self._count(self.render(self.messages("", item))) for item in rubric.items)
            marker = self._count(rubric.prompt.elided.format(n=9999))
            self.budget = max_model_len - max_new_tokens - overhead - marker - 8
            if self.budget < 64:
                raise ValueError(f"max_model_len {max_model_len} leaves {self.budget} tokens for the transcript; raise it or lower max_new_tokens")

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def transcript(self, turns: Sequence[dict[str, Any]]) -> Transcript:
        lines = [render_turn(t, self.rubric) for t in turns]
        if self.budget is None:
            return Transcript("\n".join(lines), len(lines), 0)
        counts = [len(ids) + 1 for ids in self.tokenizer(lines, add_special_tokens=False)["input_ids"]]
        if sum(counts) <= self.budget:
            return Transcript("\n".join(lines), len(lines), 0)
        head: list[int] = []
        used = 0
        for i, c in enumerate(counts):
            if used + c > self.budget * self.head_share:
                break
            head.append(i)
            used += c
        tail: list[int] = []
        for i in range(len(counts) - 1, (head[-1] if head else -1), -1):
            if used + counts[i] > self.budget:
                break
            tail.append(i)
            used += counts[i]
        tail.reverse()
        if not head and not tail:  # one turn longer than the whole budget: keep its end
            ids = self.tokenizer(lines[-1], add_special_tokens=False)["input_ids"][-self.budget :]
            lines, counts, tail = lines[:-1] + [self.tokenizer.decode(ids)], counts, [len(lines) - 1]
        n_elided = len(lines) - len(head) - len(tail)
        kept = [lines[i] for i in head] + [self.rubric.prompt.elided.format(n=n_elided)] + [lines[i] for i in tail]
        return Transcript("\n".join(kept), len(lines), n_elided)

    def messages(self, transcript_text: str, item: RubricItem) -> list[dict[str, str]]:
        p = self.rubric.prompt
        user = f"{p.preamble}\n\n{transcript_text}\n\n{p.question.format(item=item.text)}"
        return [{"role": "system", "content": p.system}, {"role": "user", "content": user}]

    def render(self, messages: list[dict[str, str]]) -> str:
        if self.tokenizer is None:
            raise ValueError("rendering a chat prompt needs the model's tokenizer")
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def render_items(self, transcript_text: str, items: Sequence[RubricItem]) -> list[str]:
        """The rendered prompt of each item. The chat template runs once per session with a
        placeholder item, then each item's text is substituted: the same bytes, 12× less Jinja."""
        probe = RubricItem(id=1, dimension=items[0].dimension, text=_ITEM_SLOT)
        rendered = self.render(self.messages(transcript_text, probe))
        if rendered.count(_ITEM_SLOT) != 1 or _ITEM_SLOT in transcript_text:
            return [self.render(self.messages(transcript_text, item)) for item in items]
        return [rendered.replace(_ITEM_SLOT, item.text) for item in items]

    def build_item_prompts(self, sessions: pa.Table, items: Sequence[RubricItem]) -> pa.Table:
        """sessions (contract columns session_id, turns) → one row per (session, item)."""
        out: dict[str, list] = {name: [] for name in ITEM_PROMPT_SCHEMA.names}
        for sid, turns in zip(sessions.column("session_id").to_pylist(), sessions.column("turns").to_pylist(), strict=True):
            t = self.transcript(turns)
            dialogue = full_dialogue(turns)
            for item, prompt in zip(items, self.render_items(t.text, items), strict=True):
                out["session_id"].append(sid)
                out["item_id"].append(item.id)
                out["dimension"].append(item.dimension)
                out["prompt"].append(prompt)
                out["n_turns"].append(t.n_turns)
                out["n_elided_turns"].append(t.n_elided)
                out["truncated"].append(t.n_elided > 0)
                out["transcript"].append(dialogue)
        return pa.table(out, schema=ITEM_PROMPT_SCHEMA)
