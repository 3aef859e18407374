"""Sessions → chat-format SFT examples, one per (session, item), with client-disjoint folds.

Each example is the scoring prompt (system + user messages from care_ray.prompts, so training and
scoring cannot drift apart) and the assistant target the engine must produce
(care_ray.output.format_item_output: compact JSON, score first).

Where targets come from, per session:
- `client_wai` (the CounselingWAI layout): the client's own item ratings; rationales from the
  metadata key `rationale_key` (e.g. `rationale_7`) when present.
- otherwise a label map (e.g. ESConv: seeker empathy → Bond items, relevance → Goal and Task):
  proxy targets, marked `proxy_label=True`; rationales from the seeker's own feedback text when it
  says something, else a template that names the proxy label and quotes a client turn.
Every target records where its rationale came from (`rationale_source`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from care_ray.output import format_item_output, output_schema
from care_ray.prompts import PromptBuilder, PromptBuilders, full_dialogue
from care_ray.rubric import Rubric

log = logging.getLogger(__name__)

TARGET_MODES = ("score+rationale", "score")
# ESConv's seeker survey, mapped onto WAI-SR dimensions (the proposal): the supporter's
# empathy is closest to the Bond; relevance (did the talk address my problem) to Goal and Task.
ESCONV_LABEL_MAP: dict[str, str] = {"empathy": "bond", "relevance": "goal,task"}
FEEDBACK_KEY = "seeker_question1"  # ESConv: the seeker's free-text feedback on the supporter
RATIONALE_KEY = "rationale_{item}"  # CounselingWAI layout: one expert-revised rationale per item
EXAMPLES_FILE = "examples.parquet"
MANIFEST_FILE = "manifest.json"
SCORE_PREFIX = (
    '{"score":'  # what every target starts with; held-out scoring appends it to the prompt
)

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
EXAMPLE_SCHEMA = pa.schema(
    [
        ("session_id", pa.string()),
        ("client_id", pa.string()),
        ("source", pa.string()),
        ("language", pa.string()),
        ("item_id", pa.int32()),
        ("dimension", pa.string()),
        ("messages", pa.list_(MESSAGE)),  # system + user, exactly what scoring sends
        ("target", pa.string()),  # the assistant message
        ("score", pa.int8()),
        ("proxy_label", pa.bool_()),
        (
            "label_name",
            pa.string(),
        ),  # which label the score came from ("client_wai" for real ratings)
        ("rationale_source", pa.string()),  # reference | feedback | template | none (score-only)
        ("fold", pa.int32()),
    ]
)

# Templated rationales name their proxy source honestly, in the first person, with one quote.
_TEMPLATES = {
    "en": 'I would answer "{anchor}" ({score}/5). After the session I rated {label} {value}/5. I said: "{quote}"',
    "zh": "我的回答是“{anchor}”（{score}/5）。会谈结束后我给{label}打了{value}/5分。我说过：“{quote}”",
}
_LABEL_WORDS = {
    "en": {
        "empathy": "my supporter's empathy",
        "relevance": "how relevant the conversation was to my problem",
    },
    "zh": {"empathy": "咨询师的共情", "relevance": "谈话与我的问题的相关程度"},
}
_QUOTED = re.compile(r"[\"“「『]([^\"”」』]{4,400})[\"”」』]")


class SFTDataError(ValueError):
    """A mistake in the user's input (bad label map, no usable targets, bad option)."""


@dataclass(frozen=True)
class LabelMap:
    """Numeric session label → the rubric items it stands in for (a proxy target)."""

    items_by_label: dict[str, tuple[int, ...]]

    def label_of(self, item_id: int) -> str | None:
        return next((name for name, ids in self.items_by_label.items() if item_id in ids), None)


@dataclass
class SFTOptions:
    target: str = "score+rationale"
    folds: int = 5
    seed: int = 123
    label_map: Mapping[str, str] | None = None  # None: ESConv's map when sessions lack client_wai
    items: str | None = None  # rubric.select spec: all / a dimension / ids
    rationale_key: str = RATIONALE_KEY
    feedback_key: str = FEEDBACK_KEY
    min_feedback_words: int = 4  # "no", "nope", "good job" say nothing about the session
    max_sessions: int | None = None  # a deterministic sample, for smoke runs
    stats: Counter = field(default_factory=Counter)


def parse_label_map(spec: Mapping[str, str] | Sequence[str], rubric: Rubric) -> LabelMap:
    """{'empathy': 'bond', 'relevance': 'goal,task'} or ['empathy=bond', 'relevance=1,2,10'] →
    LabelMap. Values use the rubric's item selection syntax (dimensions or item ids); an item may
    take its target from one label only."""
    if not isinstance(spec, Mapping):
        pairs = {}
        for entry in spec:
            if "=" not in entry:
                raise SFTDataError(f"--label-map takes LABEL=DIMENSIONS_OR_ITEMS, got {entry!r}")
            name, value = entry.split("=", 1)
            pairs[name.strip()] = value.strip()
        spec = pairs
    items_by_label: dict[str, tuple[int, ...]] = {}
    owner: dict[int, str] = {}
    for name, value in spec.items():
        try:
            ids = tuple(i.id for i in rubric.select(str(value)))
        except ValueError as e:
            raise SFTDataError(f"label map {name}={value}: {e}".replace("--items: ", "")) from None
        for i in ids:
            if i in owner:
                raise SFTDataError(f"item {i} is mapped from both {owner[i]!r} and {name!r}")
            owner[i] = name
        items_by_label[str(name)] = ids
    if not items_by_label:
        raise SFTDataError("the label map is empty")
    return LabelMap(items_by_label)


def client_quote(turns: Sequence[Mapping[str, Any]], max_chars: int = 200) -> str:
    """The client's longest turn, cut at a word boundary: a verbatim quote for templated rationales."""
    client_turns = [" ".join(str(t["text"]).split()) for t in turns if t["role"] == "client"]
    if not client_turns:
        return ""
    text = max(client_turns, key=len)
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def quotes_in_rationale(rationale: str, dialogue: str, max_quotes: int = 5) -> list[str]:
    """Quoted spans of a reference rationale that really occur in the dialogue (normalised)."""
    hay = " ".join(dialogue.split()).casefold()
    found = []
    for m in _QUOTED.finditer(rationale):
        q = m.group(1).strip()
        if q and " ".join(q.split()).casefold() in hay and q not in found:
            found.append(q)
    return found[:max_quotes]


def templated_rationale(rubric: Rubric, score: int, label: str, value: float, quote: str) -> str:
    lang = rubric.language if rubric.language in _TEMPLATES else "en"
    label_words = _LABEL_WORDS[lang].get(label, label)
    return _TEMPLATES[lang].format(
        anchor=rubric.scale[score], score=score, label=label_words, value=f"{value:g}", quote=quote
    )


def _as_score(value: float, what: str) -> int:
    if not 1 <= value <= 5:
        raise SFTDataError(
            f"{what} = {value:g} is outside 1..5; proxy labels must be on the rating scale"
        )
    return int(np.clip(round(value), 1, 5))


def session_targets(
    session: Mapping[str, Any],
    rubric: Rubric,
    items: Sequence,
    label_map: LabelMap | None,
    opts: SFTOptions,
) -> list[dict[str, Any]]:
    """The (item, score, rationale, quotes) targets of one session; [] when it has none."""
    meta = session.get("metadata") or {}
    labels = session.get("labels") or {}
    wai = session.get("client_wai")
    turns = session["turns"]
    out = []
    quote = client_quote(turns)
    feedback = (meta.get(opts.feedback_key) or "").strip()
    if len(feedback.split()) < opts.min_feedback_words and not re.search(
        r"[\u4e00-\u9fff]{4,}", feedback
    ):
        feedback = ""
    for item in items:
        if wai is not None:
            if wai[item.id - 1] is None:
                continue
            score, label, proxy = int(wai[item.id - 1]), "client_wai", False
            rationale = (meta.get(opts.rationale_key.format(item=item.id)) or "").strip()
            source = "reference" if rationale else "template"
            quotes = quotes_in_rationale(rationale, full_dialogue(turns)) if rationale else [quote]
            if not rationale:
                rationale = templated_rationale(rubric, score, "client_wai", score, quote)
        else:
            label = label_map.label_of(item.id) if label_map else None
            if label is None or labels.get(label) is None:
                continue
            value = float(labels[label])
            score, proxy = _as_score(value, f"session {session['session_id']} label {label}"), True
            if feedback:
                rationale, source = feedback, "feedback"
            else:
                rationale, source = (
                    templated_rationale(rubric, score, label, value, quote),
                    "template",
                )
            quotes = [quote] if quote else []
        out.append(
            {
                "item": item,
                "score": score,
                "label_name": label,
                "proxy_label": proxy,
                "rationale": rationale,
                "rationale_source": source,
                "quotes": quotes,
            }
        )
    return out


def target_text(target: Mapping[str, Any], mode: str, validator) -> str:
    """The assistant message. Score-only targets are `{"score":N}` (the ablation's supervision);
    score+rationale targets are validated against the output schema, lengths capped to it."""
    if mode == "score":
        return json.dumps({"score": int(target["score"])}, separators=(",", ":"))
    props = validator.schema["properties"]
    rationale = target["rationale"][: props["rationale"]["maxLength"]]
    quotes = [q[: props["quotes"]["items"]["maxLength"]] for q in target["quotes"]][
        : props["quotes"]["maxItems"]
    ]
    text = format_item_output(target["score"], rationale, quotes)
    # A target the engine's schema would reject is a bug here. One compiled validator: the
    # module-level jsonschema.validate re-checks the schema itself on every call (~5 ms).
    validator.validate(json.loads(text))
    return text


def output_validator():
    import jsonschema

    schema = output_schema()
    return jsonschema.validators.validator_for(schema)(schema)


def sample_sessions(
    sessions: Iterable[Mapping[str, Any]], n: int | None, seed: int
) -> list[Mapping[str, Any]]:
    """All sessions, or a deterministic pseudo-random `n` of them (by a seeded hash of the id)."""
    sessions = list(sessions)
    if n is None or n >= len(sessions):
        return sessions

    def key(s: Mapping[str, Any]) -> str:
        return hashlib.sha1(f"{seed}:{s['session_id']}".encode()).hexdigest()

    return sorted(sessions, key=key)[:n]


def stratum_labels(mean_scores: Sequence[float], n_splits: int) -> np.ndarray:
    """Rounded session means as strata, with strata smaller than n_splits merged into their
    nearest neighbour (StratifiedGroupKFold cannot spread a class of 2 over 5 folds)."""
    y = np.clip(np.rint(np.asarray(mean_scores, dtype=float)), 1, 5).astype(int)
    while True:
        counts = Counter(y.tolist())
        small = [c for c in sorted(counts, key=lambda c: counts[c]) if counts[c] < n_splits]
        if not small or len(counts) == 1:
            return y
        c = small[0]
        others = [o for o in counts if o != c]
        nearest = min(others, key=lambda o: (abs(o - c), -counts[o]))
        y[y == c] = nearest


def assign_folds(
    session_ids: Sequence[str],
    client_ids: Sequence[str],
    mean_scores: Sequence[float],
    n_splits: int,
    seed: int,
) -> dict[str, int]:
    """session_id → fold: client-disjoint (no client in two folds), stratified on the session's
    mean target score (scikit-learn's StratifiedGroupKFold)."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_clients = len(set(client_ids))
    if n_splits < 2:
        raise SFTDataError("--folds must be at least 2")
    if n_clients < n_splits:
        raise SFTDataError(f"{n_clients} clients cannot fill {n_splits} client-disjoint folds")
    y = stratum_labels(mean_scores, n_splits)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds: dict[str, int] = {}
    for k, (_, test_idx) in enumerate(
        splitter.split(np.zeros(len(y)), y, groups=np.asarray(client_ids))
    ):
        for i in test_idx:
            folds[session_ids[i]] = k
    return folds


def build_examples(
    sessions: Iterable[Mapping[str, Any]],
    opts: SFTOptions,
    rubric: Rubric | None = None,
    prompt_builder: PromptBuilder | PromptBuilders | None = None,
) -> pa.Table:
    """Canonical sessions → the example table (EXAMPLE_SCHEMA). Each session's rubric follows its
    language by the rule scoring uses (`rubric_for_language`) unless `rubric` fixes one.
    `prompt_builder` (with a tokenizer and max_model_len: PromptBuilders, one per rubric, or one
    PromptBuilder that fixes the rubric) applies scoring's token budget to each transcript; without
    one the whole transcript goes in and the trainer drops what does not fit its max_seq_len."""
    if opts.target not in TARGET_MODES:
        raise SFTDataError(
            f"--target must be one of {', '.join(TARGET_MODES)}, got {opts.target!r}"
        )
    validator = output_validator()
    if isinstance(prompt_builder, PromptBuilder) or rubric is not None:
        fixed = (
            prompt_builder if isinstance(prompt_builder, PromptBuilder) else PromptBuilder(rubric)
        )
        builder_for = lambda _language: fixed  # noqa: E731
    else:
        builder_for = (prompt_builder or PromptBuilders()).for_language
    label_maps: dict[str, LabelMap] = {}  # per rubric
    stats = opts.stats
    rows: list[dict[str, Any]] = []
    session_rows: list[tuple[str, str, float]] = []
    for s in sample_sessions(sessions, opts.max_sessions, opts.seed):
        stats["sessions_read"] += 1
        builder = builder_for(s["language"])
        r = builder.rubric
        items = r.select(opts.items)
        label_map = None
        if s.get("client_wai") is None:
            if r.id not in label_maps:
                label_maps[r.id] = parse_label_map(
                    opts.label_map if opts.label_map is not None else ESCONV_LABEL_MAP, r
                )
            label_map = label_maps[r.id]
        targets = session_targets(s, r, items, label_map, opts)
        if not targets:
            stats["sessions_without_targets"] += 1
            continue
        transcript = builder.transcript(s["turns"])
        stats["sessions_truncated"] += transcript.n_elided > 0
        for t in targets:
            rows.append(
                {
                    "session_id": s["session_id"],
                    "client_id": s["client_id"],
                    "source": s["source"],
                    "language": s["language"],
                    "item_id": t["item"].id,
                    "dimension": t["item"].dimension,
                    "messages": builder.messages(transcript.text, t["item"]),
                    "target": target_text(t, opts.target, validator),
                    "score": t["score"],
                    "proxy_label": t["proxy_label"],
                    "label_name": t["label_name"],
                    "rationale_source": "none" if opts.target == "score" else t["rationale_source"],
                    "fold": -1,
                }
            )
            stats[f"rationale_{rows[-1]['rationale_source']}"] += 1
        session_rows.append(
            (s["session_id"], s["client_id"], float(np.mean([t["score"] for t in targets])))
        )
    if not rows:
        raise SFTDataError(
            "no session has a target: no client_wai, and no label named in the label map"
        )
    sids, cids, means = zip(*session_rows, strict=True)
    folds = assign_folds(list(sids), list(cids), list(means), opts.folds, opts.seed)
    for row in rows:
        row["fold"] = folds[row["session_id"]]
    stats["examples"] = len(rows)
    stats["sessions_with_targets"] = len(session_rows)
    return pa.Table.from_pylist(rows, schema=EXAMPLE_SCHEMA)


def summarise_examples(table: pa.Table) -> dict[str, Any]:
    """Counts a reader checks before training: per fold, per dimension, the score distribution."""
    cols = table.select(
        ["fold", "session_id", "client_id", "score", "dimension", "proxy_label"]
    ).to_pydict()
    folds: dict[int, dict[str, Any]] = {}
    for fold, sid, cid, score in zip(
        cols["fold"], cols["session_id"], cols["client_id"], cols["score"], strict=True
    ):
        f = folds.setdefault(
            fold, {"sessions": set(), "clients": set(), "examples": 0, "scores": Counter()}
        )
        f["sessions"].add(sid)
        f["clients"].add(cid)
        f["examples"] += 1
        f["scores"][score] += 1
    return {
        "examples": table.num_rows,
        "proxy_label_examples": int(sum(cols["proxy_label"])),
        "by_dimension": dict(Counter(cols["dimension"])),
        "folds": {
            str(k): {
                "sessions": len(v["sessions"]),
                "clients": len(v["clients"]),
                "examples": v["examples"],
                "scores": {str(s): n for s, n in sorted(v["scores"].items())},
            }
            for k, v in sorted(folds.items())
        },
    }


def write_examples(table: pa.Table, out: Path, manifest: Mapping[str, Any]) -> Path:
    """out/examples.parquet + out/manifest.json; the Parquet file is replaced atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{EXAMPLES_FILE}.tmp"
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(out / EXAMPLES_FILE)
    (out / MANIFEST_FILE).write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
    return out / EXAMPLES_FILE


def read_examples(path: Path | str) -> pa.Table:
    """An sft-data folder (or its examples.parquet) → the example table."""
    p = Path(path)
    if p.is_dir():
        p = p / EXAMPLES_FILE
    if not p.exists():
        raise FileNotFoundError(f"no SFT examples at {path} (run `care-ray sft-data` first)")
    return pq.read_table(p, schema=EXAMPLE_SCHEMA)


def make_sft_data(
    sessions_dir: Path,
    out: Path,
    opts: SFTOptions,
    rubric_path: Path | None = None,
    tokenizer_path: str | None = None,
    max_model_len: int | None = None,
    max_new_tokens: int = 512,
) -> dict[str, Any]:
    """The `care-ray sft-data` command: read a corpus, build examples and folds, write them."""
    from care_ray.corpus import iter_sessions

    builder = None
    if max_model_len is not None:
        if tokenizer_path is None:
            raise SFTDataError("--max-model-len needs --model (its tokenizer counts the tokens)")
        from care_ray.prompts import load_tokenizer

        builder = PromptBuilders(
            load_tokenizer(str(tokenizer_path)),
            max_model_len=max_model_len,
            max_new_tokens=max_new_tokens,
            rubric_file=rubric_path,
        )
    elif rubric_path:
        builder = PromptBuilders(rubric_file=rubric_path)
    table = build_examples(iter_sessions(sessions_dir), opts, prompt_builder=builder)
    manifest = {
        "kind": "care-ray sft examples",
        "sessions": str(sessions_dir),
        "target": opts.target,
        "n_folds": opts.folds,
        "seed": opts.seed,
        "items": opts.items or "all",
        "label_map": dict(opts.label_map) if opts.label_map is not None else ESCONV_LABEL_MAP,
        "token_budget": {
            "tokenizer": tokenizer_path,
            "max_model_len": max_model_len,
            "max_new_tokens": max_new_tokens,
        }
        if builder
        else None,
        "counts": dict(opts.stats),
        **summarise_examples(table),
    }
    write_examples(table, out, manifest)
    log.info(
        "wrote %d examples (%d proxy-labelled) in %d folds to %s",
        table.num_rows,
        manifest["proxy_label_examples"],
        opts.folds,
        out,
    )
    return manifest


def iter_fold(table: pa.Table, fold: int, held_out: bool) -> Iterator[dict[str, Any]]:
    """Rows of the held-out fold (held_out=True) or of the other folds."""
    import pyarrow.compute as pc

    mask = pc.equal(table["fold"], fold) if held_out else pc.not_equal(table["fold"], fold)
    yield from table.filter(mask).to_pylist()
