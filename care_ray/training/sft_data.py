"""Sessions → chat-format SFT examples, one per (session, item), with client-disjoint folds.

Each example is the scoring prompt (system + user messages from care_ray.scoring.prompts, so training and
scoring cannot drift apart) and the assistant target the engine must produce
(care_ray.contracts.output.format_item_output: compact JSON, score first).

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
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from care_ray.cluster.storage import PathOrURI
from care_ray.common.options import cli
from care_ray.contracts.output import format_item_output, output_schema, quotes_in_rationale
from care_ray.contracts.rubric import Rubric
from care_ray.corpus.folds import assign_folds, write_folds
from care_ray.corpus.ratings import (  # noqa: F401 - LabelMap, parse_label_map: part of this module's API
    ESCONV_LABEL_MAP,
    RATIONALE_KEY,
    LabelMap,
    LabelMaps,
    LabelMapSpec,
    RatingError,
    parse_label_map,
)
from care_ray.rationales.stats import length_summary
from care_ray.scoring.prompts import PromptBuilder, PromptBuilders, full_dialogue

log = logging.getLogger(__name__)

TARGET_MODES = ("score+rationale", "score")
FEEDBACK_KEY = "seeker_question1"  # ESConv: the seeker's free-text feedback on the supporter
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
        # the prompt's token ids when sft-data built them (--align-prefix-blocks): training reads
        # these instead of tokenizing the messages, exactly what scoring sends the engine
        ("prompt_token_ids", pa.list_(pa.int32())),
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


# one error type for a mistake in the user's input, from the ratings rule or from here
SFTDataError = RatingError
MISSING_RATIONALE = ("skip", "template", "error")
DRAFT_USE = ("none", "unflagged", "all")


class SFTOptions(BaseModel):
    """How targets are built from sessions (the example-building half of `care-ray sft-data`)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    target: str = Field("score+rationale", description="score+rationale (CARE) | score (ablation)")
    folds: int = Field(5, ge=2, description="client-disjoint folds, stratified on the mean score")
    seed: int = Field(123, description="seed of the folds and of the session sample")
    label_map: LabelMapSpec | None = Field(
        None,
        description="proxy targets for sessions without client_wai: LABEL=DIMENSIONS_OR_ITEMS, "
        "repeatable (default ESConv: empathy=bond relevance=goal,task)",
        json_schema_extra=cli(type=list[str]),
    )
    items: str | None = Field(
        None, description="rubric items: all | a dimension | ids such as 1,3,4"
    )
    rationale_key: str = Field(
        RATIONALE_KEY, description="metadata key of reference rationales; {item} = item id"
    )
    feedback_key: str = Field(
        FEEDBACK_KEY,
        description="metadata key of the client's free-text feedback (proxy rationales)",
    )
    min_feedback_words: int = Field(
        4,
        ge=0,
        description='feedback shorter than this says nothing about the session ("no", "good job")',
    )
    max_sessions: int | None = Field(
        None, ge=1, description="a deterministic sample of this many sessions (smoke runs)"
    )
    drafts: str = Field(
        "none",
        description="unreviewed drafts of --rationales as targets too: none | unflagged | all",
    )
    missing_rationale: str = Field(
        "skip",
        description="a target no source gives a rationale: skip (counted in the manifest) | "
        "template (a fixed sentence naming the rating) | error",
    )
    # what a build found, filled as it runs (not settings: never on the command line)
    rationale_table: Mapping[tuple[str, int], Mapping[str, Any]] | None = Field(
        None, exclude=True, json_schema_extra=cli(hidden=True)
    )
    stats: Counter = Field(
        default_factory=Counter, exclude=True, json_schema_extra=cli(hidden=True)
    )
    rationale_lengths: dict[str, Any] = Field(
        default_factory=dict, exclude=True, json_schema_extra=cli(hidden=True)
    )


class SFTDataConfig(SFTOptions):
    """Build chat-format SFT examples, one per (session, item), with client-disjoint folds."""

    sessions: PathOrURI = Field(
        description="a corpus folder written by `care-ray ingest`, a local path or a URI"
    )
    out: PathOrURI = Field(
        description="folder for examples.parquet + folds.parquet + manifest.json, a local path "
        "or an s3://, gs:// URI"
    )
    rubric: Path | None = Field(None, description="rubric file; default: the session's language")
    model: str | None = Field(
        None,
        description="model folder whose tokenizer applies scoring's token budget (with "
        "--max-model-len)",
    )
    max_model_len: int | None = Field(
        None,
        ge=256,
        description="cut long transcripts exactly as `care-ray score` does at this context length",
    )
    max_new_tokens: int = Field(
        512, ge=16, description="the answer's token reserve in that budget (same as scoring's)"
    )
    align_prefix_blocks: int | None = Field(
        None,
        ge=2,
        description="train on prompts whose shared part is padded to this KV block size, as "
        "`score --align-prefix-blocks --block-size N` sends them (needs --model and "
        "--max-model-len)",
    )
    rationales: PathOrURI | None = Field(
        None,
        description="a `care-ray rationales draft` folder: its reviewed rationales become targets",
    )


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


def templated_rationale(rubric: Rubric, score: int, label: str, value: float, quote: str) -> str:
    lang = rubric.language if rubric.language in _TEMPLATES else "en"
    label_words = _LABEL_WORDS[lang].get(label, label)
    return _TEMPLATES[lang].format(
        anchor=rubric.scale[score], score=score, label=label_words, value=f"{value:g}", quote=quote
    )


def _client_feedback(meta: Mapping[str, Any], opts: SFTOptions) -> str:
    """The client's free-text feedback when it says something about the session, else ''."""
    feedback = str(meta.get(opts.feedback_key) or "").strip()
    if len(feedback.split()) < opts.min_feedback_words and not re.search(
        r"[\u4e00-\u9fff]{4,}", feedback
    ):
        return ""
    return feedback


def _table_rationale(
    row: Mapping[str, Any] | None, score: int, opts: SFTOptions
) -> tuple[str, list[str], str] | None:
    """(text, quotes, source) from the rationales table when it has a usable one for this score."""
    if row is None:
        return None
    if int(row["rating"]) != score:
        # it explains another rating (the label map changed since drafting): never train on it
        opts.stats["rationale_table_rating_mismatch"] += 1
        return None
    if row["status"] == "reviewed":
        return row["text"], list(row["quotes"] or []), "reviewed"
    if row["status"] == "draft" and (
        opts.drafts == "all" or (opts.drafts == "unflagged" and not row["flags"])
    ):
        return row["text"], list(row["quotes"] or []), "draft"
    return None


def session_targets(
    session: Mapping[str, Any],
    rubric: Rubric,
    items: Sequence,
    label_maps: LabelMaps,
    opts: SFTOptions,
) -> list[dict[str, Any]]:
    """The (item, score, rationale, quotes) targets of one session; [] when it has none.

    A target's rationale comes from the first source that has one: the corpus's own reference
    rationale, the rationales table (reviewed, then drafts when `opts.drafts` asks for them), the
    client's feedback text (proxy targets), and a template only when `missing_rationale` is
    'template'. Without any, the target is skipped and counted, or the build stops."""
    meta = session.get("metadata") or {}
    turns = session["turns"]
    out = []
    quote = client_quote(turns)
    feedback = _client_feedback(meta, opts)
    dialogue = full_dialogue(turns)
    table = opts.rationale_table or {}
    for item_id, rating in label_maps.ratings(session, rubric, items).items():
        item = rubric.item(item_id)
        reference = (meta.get(opts.rationale_key.format(item=item.id)) or "").strip()
        found = _table_rationale(table.get((session["session_id"], item.id)), rating.score, opts)
        if reference and not rating.proxy:
            rationale, quotes, source = (
                reference,
                quotes_in_rationale(reference, dialogue),
                "reference",
            )
        elif found is not None:
            rationale, quotes, source = found
        elif feedback and rating.proxy:
            rationale, quotes, source = feedback, [quote] if quote else [], "feedback"
        elif opts.target == "score" or opts.missing_rationale == "template":
            rationale = templated_rationale(rubric, rating.score, rating.label, rating.value, quote)
            quotes, source = [quote] if quote else [], "template"
        elif opts.missing_rationale == "error":
            raise SFTDataError(
                f"session {session['session_id']} item {item.id} has no rationale from any "
                "source; draft them (`care-ray rationales draft`), train with --target score, "
                "or pass --missing-rationale skip|template"
            )
        else:
            opts.stats["targets_without_rationale_skipped"] += 1
            continue
        out.append(
            {
                "item": item,
                "score": rating.score,
                "label_name": rating.label,
                "proxy_label": rating.proxy,
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
    if opts.missing_rationale not in MISSING_RATIONALE:
        raise SFTDataError(
            f"--missing-rationale must be one of {', '.join(MISSING_RATIONALE)}, "
            f"got {opts.missing_rationale!r}"
        )
    if opts.drafts not in DRAFT_USE:
        raise SFTDataError(f"--drafts must be one of {', '.join(DRAFT_USE)}, got {opts.drafts!r}")
    validator = output_validator()
    if isinstance(prompt_builder, PromptBuilder):
        builder_for = lambda _language: prompt_builder  # noqa: E731
    elif rubric is not None:
        fixed = PromptBuilder(rubric)
        builder_for = lambda _language: fixed  # noqa: E731
    else:
        builder_for = (prompt_builder or PromptBuilders()).for_language
    label_maps = LabelMaps(opts.label_map)
    stats = opts.stats
    rows: list[dict[str, Any]] = []
    session_rows: list[tuple[str, str, float]] = []
    lengths: list[tuple[str, int]] = []  # (dimension, rationale chars) of every target
    for s in sample_sessions(sessions, opts.max_sessions, opts.seed):
        stats["sessions_read"] += 1
        builder = builder_for(s["language"])
        r = builder.rubric
        targets = session_targets(s, r, r.select(opts.items), label_maps, opts)
        if not targets:
            stats["sessions_without_targets"] += 1
            continue
        transcript = builder.transcript(s["turns"])
        stats["sessions_truncated"] += transcript.n_elided > 0
        aligned_ids: list[list[int] | None] = [None] * len(targets)
        if builder.align_to is not None:
            aligned_ids = list(builder.item_prompts(s["turns"], [t["item"] for t in targets])[2])
        for t, ids in zip(targets, aligned_ids, strict=True):
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
                    "prompt_token_ids": ids,
                }
            )
            stats[f"rationale_{rows[-1]['rationale_source']}"] += 1
            if opts.target != "score":
                lengths.append((t["item"].dimension, len(t["rationale"])))
        session_rows.append(
            (s["session_id"], s["client_id"], float(np.mean([t["score"] for t in targets])))
        )
    if not rows and stats["targets_without_rationale_skipped"]:
        raise SFTDataError(
            f"none of the {stats['targets_without_rationale_skipped']} targets has a rationale "
            "(no reference rationales, no rationales table, no client feedback): draft them with "
            "`care-ray rationales draft` and review them, or train with --target score "
            "(--missing-rationale template trains on a fixed sentence instead)"
        )
    if not rows:
        raise SFTDataError(
            "no session has a target: no client_wai, and no label named in the label map"
        )
    if stats["targets_without_rationale_skipped"]:
        log.warning(
            "%d targets have no rationale from any source and are left out "
            "(--missing-rationale template|error to change that)",
            stats["targets_without_rationale_skipped"],
        )
    opts.rationale_lengths = length_summary(lengths)
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


def write_examples(table: pa.Table, out: Path | str, manifest: Mapping[str, Any]) -> str:
    """out/examples.parquet + folds.parquet + manifest.json, on a local disk (each file replaced atomically)
    or an object store (one PUT each); returns the examples file's URI."""
    from care_ray.cluster.storage import location

    folder = location(out)
    examples = folder.join(EXAMPLES_FILE)
    examples.write_parquet(table)
    # the split as its own sidecar table: evaluate and baseline compare every scorer on it
    write_folds(
        dict(zip(table["session_id"].to_pylist(), table["fold"].to_pylist(), strict=True)), folder
    )
    folder.join(MANIFEST_FILE).write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n"
    )
    return examples.uri


def read_examples(path: Path | str) -> pa.Table:
    """An sft-data folder (or its examples.parquet), a local path or a URI → the example table."""
    from care_ray.cluster.storage import location

    found = location(path)
    if found.is_dir():
        found = found.join(EXAMPLES_FILE)
    if not found.exists():
        raise FileNotFoundError(f"no SFT examples at {path} (run `care-ray sft-data` first)")
    return pq.read_table(found.path, filesystem=found.fs, schema=EXAMPLE_SCHEMA)


def read_manifest(path: Path | str) -> dict[str, Any]:
    """An sft-data folder's manifest.json ({} when there is none)."""
    from care_ray.cluster.storage import location

    text = location(path).join(MANIFEST_FILE).read_text()
    return json.loads(text) if text else {}


def make_sft_data(
    sessions_dir: Path | str,
    out: Path | str,
    opts: SFTOptions,
    rubric_path: Path | None = None,
    tokenizer_path: str | None = None,
    max_model_len: int | None = None,
    max_new_tokens: int = 512,
    rationales_dir: Path | str | None = None,
    align_to: int | None = None,
) -> dict[str, Any]:
    """The `care-ray sft-data` command: read a corpus, build examples and folds, write them.
    `rationales_dir`: a `care-ray rationales draft` folder whose reviewed rationales (and drafts,
    per `opts.drafts`) become targets."""
    from care_ray.corpus.reader import iter_sessions

    if rationales_dir is not None:
        from care_ray.rationales.review import rationale_lookup

        opts.rationale_table = rationale_lookup(rationales_dir)
    elif opts.drafts != "none":
        raise SFTDataError("--drafts needs --rationales DIR (a `care-ray rationales draft` folder)")

    builder = None
    if align_to is not None and max_model_len is None:
        raise SFTDataError(
            "--align-prefix-blocks needs --model and --max-model-len (scoring's token budget)"
        )
    if max_model_len is not None:
        if tokenizer_path is None:
            raise SFTDataError("--max-model-len needs --model (its tokenizer counts the tokens)")
        from care_ray.scoring.prompts import load_tokenizer

        builder = PromptBuilders(
            load_tokenizer(str(tokenizer_path)),
            max_model_len=max_model_len,
            max_new_tokens=max_new_tokens,
            rubric_file=rubric_path,
            align_to=align_to,
        )
    elif rubric_path:
        builder = PromptBuilders(rubric_file=rubric_path)
    table = build_examples(iter_sessions(sessions_dir), opts, prompt_builder=builder)
    manifest = {
        "kind": "care-ray sft examples",
        "sessions": str(sessions_dir),
        "target": opts.target,
        "rationales_table": str(rationales_dir) if rationales_dir else None,
        "prefix_alignment": align_to,
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
        "rationales": {
            "drafts": opts.drafts,
            "missing_rationale": opts.missing_rationale,
            "by_source": {
                k.removeprefix("rationale_"): v
                for k, v in opts.stats.items()
                if k.startswith("rationale_") and k != "rationale_table_rating_mismatch"
            },
            "length_chars_by_dimension": opts.rationale_lengths,
        },
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
