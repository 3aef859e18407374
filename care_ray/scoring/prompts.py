"""Session + rubric + token budget → one chat prompt per (session, item).

The transcript comes first and is byte-identical across a session's items, the item comes last,
so vLLM's prefix cache serves the transcript once per session. Training builds its examples with
the same functions, so training and scoring prompts cannot drift apart."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import pyarrow as pa

from care_ray.common.errors import UserError
from care_ray.contracts.rubric import Rubric, RubricItem, rubric_for_language

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Bumped whenever the prompt's wording or layout changes in code (not in a rubric file): a scoring
# run's fingerprint includes it, so a folder is never resumed with differently built prompts.
PROMPT_VERSION = 2

ITEM_PROMPT_SCHEMA = pa.schema(
    [
        ("session_id", pa.string()),
        ("item_id", pa.int32()),
        ("dimension", pa.string()),
        ("prompt", pa.string()),  # chat-template-rendered text
        ("prompt_token_ids", pa.list_(pa.int32())),  # the same, tokenised: what the engine gets
        ("n_turns", pa.int32()),
        ("n_elided_turns", pa.int32()),
        ("truncated", pa.bool_()),
        ("transcript", pa.string()),  # the session's full dialogue text, for the quote check
        ("rubric_id", pa.string()),
    ]
)


# private-use markers no transcript contains
_ITEM_SLOT = "\ue000care-ray-item\ue000"
_TRANSCRIPT_SLOT = "\ue001care-ray-transcript\ue001"


@cache
def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


@dataclass
class Transcript:
    text: str
    n_turns: int
    n_elided: int


def render_turn(turn: dict[str, Any], rubric: Rubric) -> str:
    label = (
        rubric.prompt.client_label if turn["role"] == "client" else rubric.prompt.counselor_label
    )
    return f"{label}: {' '.join(str(turn['text']).split())}"


def full_dialogue(turns: Sequence[dict[str, Any]]) -> str:
    """All turn texts, for checking that a quote really occurs in the session."""
    return "\n".join(str(t["text"]) for t in turns)


class PromptBuilder:
    """Builds the 12 item prompts of a session within a token budget.

    With `max_model_len`, the transcript gets at most max_model_len - max_new_tokens - (the longest
    item question's overhead) tokens; longer sessions keep the opening turns (up to `head_share` of
    that budget) and the most recent ones, with a marker saying how many turns were cut.

    The chat template is rendered once, with placeholders for transcript and item; a prompt is
    then header + transcript + middle + item + tail. Token ids are assembled the same way (the
    transcript is tokenised once per session, not 12 times), after checking on the first session
    that this equals tokenising the whole prompt; if it ever does not, every prompt is tokenised whole.

    With `align_to` (the engine's KV block size), the part the 12 prompts share ends on a block
    boundary: that many newline tokens (at most align_to - 1) follow the transcript, a blank
    stretch after the dialogue. A prefix cache keeps whole blocks only, so without them each later
    prompt recomputes the partly filled last block of the transcript."""

    def __init__(
        self,
        rubric: Rubric,
        tokenizer: PreTrainedTokenizerBase | None = None,
        max_model_len: int | None = None,
        max_new_tokens: int = 512,
        head_share: float = 0.25,
        align_to: int | None = None,
    ) -> None:
        self.rubric = rubric
        self.align_to = align_to if align_to and align_to > 1 else None
        self._pad_id: int | None = None
        self._shared_suffix: int | None = None
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.head_share = head_share
        self.budget: int | None = None
        self._parts = self._split_template() if tokenizer is not None else None
        self._pieces_checked = False
        self._suffix_cache: dict[int, list[int]] = {}
        self._pieces_safe = self._parts is not None
        self._header_merges = False  # the header and the transcript tokenise as one (SmolLM2)
        if max_model_len is not None:
            if tokenizer is None:
                raise ValueError("a token budget needs a tokenizer")
            overhead = max(
                self._count(self.render(self.messages("", item))) for item in rubric.items
            )
            marker = self._count(rubric.prompt.elided.format(n=9999))
            pad_room = self.align_to - 1 if self.align_to else 0
            self.budget = max_model_len - max_new_tokens - overhead - marker - pad_room - 8
            if self.budget < 64:
                raise ValueError(
                    f"max_model_len {max_model_len} leaves {self.budget} tokens for the "
                    "transcript; raise it or lower max_new_tokens"
                )

    @overload
    def _ids(self, text: str) -> list[int]: ...
    @overload
    def _ids(self, text: list[str]) -> list[list[int]]: ...
    def _ids(self, text: str | list[str]) -> list[int] | list[list[int]]:
        if self.tokenizer is None:
            raise ValueError("counting tokens needs the model's tokenizer")
        fast = getattr(self.tokenizer, "backend_tokenizer", None)
        if fast is None:
            ids: list[int] | list[list[int]] = self.tokenizer(text, add_special_tokens=False)[
                "input_ids"
            ]
            return ids
        # the Rust tokenizer directly: the transformers wrapper costs as much as the encoding here
        if isinstance(text, str):
            one: list[int] = fast.encode(text, add_special_tokens=False).ids
            return one
        return [e.ids for e in fast.encode_batch(text, add_special_tokens=False)]

    def _count(self, text: str) -> int:
        return len(self._ids(text))

    def _split_template(self) -> tuple[str, str, str] | None:
        probe = RubricItem(id=1, dimension=self.rubric.items[0].dimension, text=_ITEM_SLOT)
        rendered = self.render(self.messages(_TRANSCRIPT_SLOT, probe))
        if (
            rendered.count(_TRANSCRIPT_SLOT) != 1
            or rendered.count(_ITEM_SLOT) != 1
            or rendered.index(_TRANSCRIPT_SLOT) > rendered.index(_ITEM_SLOT)
        ):
            return None  # a template that moves or rewrites content: render each prompt whole
        header, rest = rendered.split(_TRANSCRIPT_SLOT)
        middle, tail = rest.split(_ITEM_SLOT)
        self._header_ids = self._ids(header)
        return header, middle, tail

    def transcript(self, turns: Sequence[dict[str, Any]]) -> Transcript:
        return self._transcript(turns)[0]

    def _transcript(self, turns: Sequence[dict[str, Any]]) -> tuple[Transcript, list[int] | None]:
        """The transcript within budget, and its token ids when they were computed anyway."""
        lines = [render_turn(t, self.rubric) for t in turns]
        text = "\n".join(lines)
        if self.budget is None:
            return Transcript(text, len(lines), 0), None
        ids = self._ids(text)  # one pass decides the common case: the session fits
        if len(ids) <= self.budget:
            return Transcript(text, len(lines), 0), ids
        counts = [len(x) + 1 for x in self._ids(lines)]
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
            lines[-1] = self._decode(self._ids(lines[-1])[-self.budget :])
            tail = [len(lines) - 1]
        n_elided = len(lines) - len(head) - len(tail)
        kept = (
            [lines[i] for i in head]
            + [self.rubric.prompt.elided.format(n=n_elided)]
            + [lines[i] for i in tail]
        )
        return Transcript("\n".join(kept), len(lines), n_elided), None

    def messages(self, transcript_text: str, item: RubricItem) -> list[dict[str, str]]:
        p = self.rubric.prompt
        user = f"{p.preamble}\n\n{transcript_text}\n\n{p.question.format(item=item.text)}"
        return [{"role": "system", "content": p.system}, {"role": "user", "content": user}]

    def _decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            raise ValueError("decoding tokens needs the model's tokenizer")
        text = self.tokenizer.decode(ids)
        if not isinstance(text, str):  # a list only for a batch of id lists
            raise TypeError(f"the tokenizer decoded one id list to {type(text).__name__}")
        return text

    def render(self, messages: list[dict[str, str]]) -> str:
        if self.tokenizer is None:
            raise ValueError("rendering a chat prompt needs the model's tokenizer")
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        if not isinstance(text, str):  # token ids or a BatchEncoding only when tokenize=True
            raise TypeError(f"the chat template rendered to {type(text).__name__}, not text")
        return text

    def render_items(self, transcript_text: str, items: Sequence[RubricItem]) -> list[str]:
        """The rendered prompt of each item: the same bytes as rendering each one whole."""
        if (
            self._parts is None
            or _TRANSCRIPT_SLOT in transcript_text
            or _ITEM_SLOT in transcript_text
        ):
            return [self.render(self.messages(transcript_text, item)) for item in items]
        header, middle, tail = self._parts
        return [f"{header}{transcript_text}{middle}{item.text}{tail}" for item in items]

    def _suffix_ids(self, item: RubricItem, middle: str, tail: str) -> list[int]:
        """Tokens after the transcript: the same for every session, so computed once per item."""
        cached = self._suffix_cache.get(item.id)
        if cached is None:
            cached = self._suffix_cache[item.id] = self._ids(f"{middle}{item.text}{tail}")
        return cached

    def item_prompts(
        self, turns: Sequence[dict[str, Any]], items: Sequence[RubricItem]
    ) -> tuple[Transcript, list[str], list[list[int]]]:
        """One session's prompts as text and as token ids (what the engine is given)."""
        t, transcript_ids = self._transcript(turns)
        prompts = self.render_items(t.text, items)
        if not self._pieces_safe or self._parts is None:
            if self.align_to is not None:
                why = (
                    "chat template moves or rewrites the prompt's content"
                    if self._parts is None
                    else "tokenizer merges text where the transcript ends and the item begins"
                )
                raise UserError(
                    f"--align-prefix-blocks: this model's {why}, so the prompts' shared part "
                    "cannot end on a block boundary; leave the option off for this model"
                )
            return t, prompts, self._ids(prompts)
        header, middle, tail = self._parts
        if self._header_merges:
            # the header's last characters and the transcript's first tokenise as one: the
            # shared part is tokenised whole, once per session (the items' suffixes stay cached)
            shared = self._ids(header + t.text)
        else:
            if transcript_ids is None:
                transcript_ids = self._ids(t.text)
            shared = self._header_ids + transcript_ids
        ids = [shared + self._suffix_ids(item, middle, tail) for item in items]
        if not self._pieces_checked:
            if ids[0] != self._ids(prompts[0]):
                if not self._header_merges:
                    self._header_merges = True
                    return self.item_prompts(turns, items)
                logging.getLogger(__name__).info(
                    "this tokenizer merges across the prompt's pieces; tokenising prompts whole"
                )
                self._pieces_safe = False
                return self.item_prompts(turns, items)
            self._pieces_checked = True
        if self.align_to is not None:
            return self._aligned(t, prompts, ids, len(shared))
        return t, prompts, ids

    def _aligned(
        self, t: Transcript, prompts: list[str], ids: list[list[int]], transcript_end: int
    ) -> tuple[Transcript, list[str], list[list[int]]]:
        """The prompts with newline tokens after the transcript up to the next block boundary of
        the shared part (the text shows them as blank lines; the ids are what the engine reads)."""
        assert self.align_to is not None and self._parts is not None
        if self._pad_id is None:
            newline = self._ids("\n")
            if len(newline) != 1:
                logging.getLogger(__name__).info("no single newline token: prefixes not aligned")
                self.align_to = None
                return t, prompts, ids
            self._pad_id = newline[0]
        if self._shared_suffix is None:
            _, middle, tail = self._parts
            suffixes = [self._suffix_ids(item, middle, tail) for item in self.rubric.items]
            self._shared_suffix = next(
                (
                    i
                    for i, column in enumerate(zip(*suffixes, strict=False))
                    if len(set(column)) > 1
                ),
                min(map(len, suffixes)),
            )
        pad = -(transcript_end + self._shared_suffix) % self.align_to
        if not pad:
            return t, prompts, ids
        at = len(self._parts[0]) + len(t.text)
        return (
            t,
            [p[:at] + "\n" * pad + p[at:] for p in prompts],
            [x[:transcript_end] + [self._pad_id] * pad + x[transcript_end:] for x in ids],
        )

    def build_item_prompts(self, sessions: pa.Table, items: Sequence[RubricItem]) -> pa.Table:
        """sessions (contract columns session_id, turns) → one row per (session, item)."""
        out: dict[str, list[Any]] = {
            name: [] for name in ITEM_PROMPT_SCHEMA.names if name != "prompt_token_ids"
        }
        flat: list[np.ndarray[Any, np.dtype[np.int32]]] = []
        for sid, turns in zip(
            sessions.column("session_id").to_pylist(),
            sessions.column("turns").to_pylist(),
            strict=True,
        ):
            t, prompts, ids = self.item_prompts(turns, items)
            dialogue = full_dialogue(turns)
            for item, prompt, prompt_ids in zip(items, prompts, ids, strict=True):
                out["session_id"].append(sid)
                out["item_id"].append(item.id)
                out["dimension"].append(item.dimension)
                out["prompt"].append(prompt)
                flat.append(np.asarray(prompt_ids, dtype=np.int32))
                out["n_turns"].append(t.n_turns)
                out["n_elided_turns"].append(t.n_elided)
                out["truncated"].append(t.n_elided > 0)
                out["transcript"].append(dialogue)
                out["rubric_id"].append(self.rubric.id)
        # one flat int32 buffer + offsets: building the list column row by row from Python ints is slow
        offsets = np.zeros(len(flat) + 1, dtype=np.int32)
        np.cumsum([len(a) for a in flat], out=offsets[1:])
        values = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int32)
        out["prompt_token_ids"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
        return pa.table(
            {name: out[name] for name in ITEM_PROMPT_SCHEMA.names}, schema=ITEM_PROMPT_SCHEMA
        )


class PromptBuilders:
    """One PromptBuilder per rubric, sharing a tokenizer and token budget; a session's rubric comes
    from `rubric_for_language`, the rule sft-data and score both use."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase | None = None,
        max_model_len: int | None = None,
        max_new_tokens: int = 512,
        rubric_file: str | Path | None = None,
        language_override: str | None = None,
        align_to: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.align_to = align_to
        self.max_model_len = max_model_len
        self.max_new_tokens = max_new_tokens
        self.rubric_file = rubric_file
        self.language_override = language_override
        self._by_rubric: dict[str, PromptBuilder] = {}

    def rubric(self, language: str | None) -> Rubric:
        return rubric_for_language(language, self.rubric_file, self.language_override)

    def for_language(self, language: str | None) -> PromptBuilder:
        rubric = self.rubric(language)
        builder = self._by_rubric.get(rubric.id)
        if builder is None:
            builder = self._by_rubric[rubric.id] = PromptBuilder(
                rubric,
                self.tokenizer,
                self.max_model_len,
                self.max_new_tokens,
                align_to=self.align_to,
            )
        return builder
