"""`care-ray rationales draft`: a teacher model explains each (session, item) rating it is given.

The CARE recipe: a strong LLM drafts one rationale per (session, item) *given the client's true
rating*, in the client's voice with direct quotes; experts then review the drafts. Drafting runs
on scoring's own path (Ray Data → vLLM engine actors, guided JSON, the transcript as a shared
prefix, resume, errors/, exactly-once output, a fingerprint per folder): `DraftConfig` is a
`ScoreConfig` whose prompt stage puts the known rating into the question. The teacher still
answers a score, so a draft that argues for another rating than the one it was given is caught.

    out/items/, errors/, _commits/   as for scoring (the teacher's answers)
    out/drafts.parquet               one row per drafted pair: rating, draft, quotes, flags
    out/manifest.json                counts, flag shares, rationale lengths per dimension
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, PrivateAttr

from care_ray.cluster.storage import PathOrURI
from care_ray.common.options import cli
from care_ray.contracts.rubric import Rubric
from care_ray.corpus.ratings import LabelMaps, LabelMapSpec
from care_ray.rationales.tables import DRAFT_SCHEMA, DRAFTS_FILE, FLAGS
from care_ray.scoring.config import ScoreConfig
from care_ray.scoring.prompts import PromptBuilder, PromptBuilders
from care_ray.scoring.stages import BuildItemPrompts

log = logging.getLogger(__name__)

# Bumped when the draft prompt's layout changes in code; enters the folder's fingerprint.
DRAFT_PROMPT_VERSION = 1
# "I'd give it 2/5", "2 out of 5", "2 分" — a rating named in the text
_NAMED_RATING = re.compile(r"(?<![\d.])([1-5])\s*(?:/\s*5|out of 5|分)")


class DraftConfig(ScoreConfig):
    """Draft one rationale per rated (session, item) with a teacher model, for review. The teacher
    is given the client's rating (client_wai, or a proxy label through --label-map) and explains
    it in the client's voice with quotes; drafts whose quotes are not in the transcript or that
    argue for another score are flagged, not dropped. Engine settings are `care-ray score`'s."""

    model: str = Field(
        description="the teacher model folder: safetensors, tokenizer, chat template",
        json_schema_extra=cli(flag="--teacher"),
    )
    out: PathOrURI = Field(
        description="output folder (drafts.parquet, items/, errors/), a local path or a URI; "
        "rerun to resume"
    )
    limit: int | None = Field(
        None, ge=1, description="draft the first N rated sessions, in corpus order"
    )
    label_map: LabelMapSpec | None = Field(
        None,
        description="ratings for sessions without client_wai: LABEL=DIMENSIONS_OR_ITEMS, "
        "repeatable (default ESConv's: empathy=bond relevance=goal,task)",
        json_schema_extra=cli(type=list[str]),
    )

    MANIFEST_KIND: ClassVar[str] = "care-ray rationale drafts"
    SESSION_SCORES: ClassVar[bool] = False  # a teacher's answers to given ratings are no scores

    def prompt_stage(self) -> type[BuildItemPrompts]:
        return BuildDraftPrompts  # the known rating goes into the question

    _ratings: tuple[pa.Table, pa.Table] | None = PrivateAttr(None)

    def ratings(self) -> tuple[pa.Table, pa.Table]:
        """`corpus_ratings`, read once per run (planning, drafting and the drafts table use it)."""
        if self._ratings is None:
            self._ratings = corpus_ratings(self)
        return self._ratings

    def selected_sessions(self) -> pa.ChunkedArray:
        """Sessions with a rating for every selected item, in corpus order (the first `limit`)."""
        rated = self.ratings()[0]
        ids = rated.filter(rated.column("complete")).column("session_id")
        return ids.slice(0, self.limit) if self.limit else ids

    def fingerprint_settings(self) -> tuple[dict[str, Any], dict[str, Any]]:
        settings, info = super().fingerprint_settings()
        settings["task"] = {
            "kind": "draft",
            "draft_prompt_version": DRAFT_PROMPT_VERSION,
            "label_map": self.label_map,
        }
        return settings, info


def draft_rubric(rubric: Rubric, rating: int) -> Rubric:
    """The rubric whose item question asks to explain `rating` (id unchanged: the same items)."""
    question = rubric.prompt.draft_question
    if question is None:
        raise ValueError(
            f"rubric {rubric.id} has no prompt.draft_question; add one with {{item}}, {{rating}} "
            "and {anchor} (see schemas/rubrics/wai-sr-client.en.yaml)"
        )
    question = question.replace("{rating}", str(rating)).replace("{anchor}", rubric.scale[rating])
    prompt = rubric.prompt.model_copy(update={"question": question})
    return rubric.model_copy(update={"prompt": prompt})


class DraftPromptBuilders:
    """One PromptBuilder per (rubric, rating). The five builders of a rubric share one transcript
    budget (the smallest), so a session's transcript is cut the same way whatever its ratings,
    and its prompts share one prefix in the engine's cache."""

    def __init__(self, builders: PromptBuilders):
        self.base = builders
        self._by_key: dict[tuple[str, int], PromptBuilder] = {}

    def rubric(self, language: str | None) -> Rubric:
        return self.base.rubric(language)

    def for_rating(self, language: str | None, rating: int) -> PromptBuilder:
        rubric = self.base.rubric(language)
        if (rubric.id, rating) not in self._by_key:
            made = {
                r: PromptBuilder(
                    draft_rubric(rubric, r),
                    self.base.tokenizer,
                    self.base.max_model_len,
                    self.base.max_new_tokens,
                    align_to=self.base.align_to,
                )
                for r in rubric.scale
            }
            budgets = [b.budget for b in made.values() if b.budget is not None]
            for r, builder in made.items():
                builder.budget = min(budgets) if budgets else None
                self._by_key[(rubric.id, r)] = builder
        return self._by_key[(rubric.id, rating)]


class BuildDraftPrompts(BuildItemPrompts):
    """Ray Data stage: a block of sessions → one draft prompt per pending (session, item)."""

    columns = ("session_id", "turns", "language", "client_wai", "labels")

    def __init__(self, config: DraftConfig, item_ids: list[int], plan_ref: Any):
        super().__init__(config, item_ids, plan_ref)
        self.label_maps = LabelMaps(config.label_map)

    @staticmethod
    def make_builders(config: ScoreConfig, tokenizer: Any) -> DraftPromptBuilders:
        return DraftPromptBuilders(BuildItemPrompts.make_builders(config, tokenizer))

    def session_prompts(
        self, session: dict[str, Any], one: pa.Table, missing: list[int]
    ) -> list[pa.Table]:
        rubric = self.builders.rubric(session["language"])
        ratings = self.label_maps.ratings(session, rubric, [rubric.item(i) for i in missing])
        by_rating: dict[int, list[int]] = {}
        for item_id in missing:  # the plan holds only rated pairs; a gap here is a bug
            by_rating.setdefault(ratings[item_id].score, []).append(item_id)
        parts = []
        for rating, item_ids in sorted(by_rating.items()):
            builder = self.builders.for_rating(session["language"], rating)
            parts.append(
                builder.build_item_prompts(one, [builder.rubric.item(i) for i in item_ids])
            )
        return parts


def corpus_ratings(config: DraftConfig) -> tuple[pa.Table, pa.Table]:
    """One pass over the corpus (without its turns): (every session's id, language and whether
    it has a rating for every selected item, in corpus order; the (session_id, item_id, rating,
    rating_label, language) pairs of the complete ones). Sessions without a full set are not
    drafted: reconciling needs every selected pair answered."""
    from care_ray.corpus.reader import row_to_session

    label_maps = LabelMaps(config.label_map)
    builders = PromptBuilders(rubric_file=config.rubric, language_override=config.language)
    sessions: dict[str, list[Any]] = {"session_id": [], "language": [], "complete": []}
    pairs: dict[str, list[Any]] = {
        "session_id": [],
        "item_id": [],
        "rating": [],
        "rating_label": [],
        "language": [],
    }
    for batch in _rating_batches(config.sessions):
        for raw in batch.to_pylist():
            session = row_to_session(raw)
            rubric = builders.rubric(session["language"])
            items = rubric.select(config.items)
            ratings = label_maps.ratings(session, rubric, items)
            complete = len(ratings) == len(items)
            sessions["session_id"].append(session["session_id"])
            sessions["language"].append(session["language"])
            sessions["complete"].append(complete)
            for item_id, r in ratings.items() if complete else ():
                pairs["session_id"].append(session["session_id"])
                pairs["item_id"].append(item_id)
                pairs["rating"].append(r.score)
                pairs["rating_label"].append(r.label)
                pairs["language"].append(session["language"])
    return pa.table(sessions), pa.table(pairs)


def _rating_batches(corpus: str) -> Any:
    """The corpus without its turns: what a session's ratings are read from."""
    from care_ray.corpus.reader import sessions_dataset

    columns = [c for c in BuildDraftPrompts.columns if c != "turns"]
    return sessions_dataset(corpus).to_batches(columns=columns, batch_size=4096)


def draft_flags(
    rating: int, teacher_score: int, rationale: str, quote_found: float | None
) -> list[str]:
    """What a reviewer should look at first: the teacher argued for another score (its answer, or
    a rating named in its text), a quote that is not in the transcript, or no quote at all."""
    flags = []
    named = {int(m) for m in _NAMED_RATING.findall(rationale)}
    if teacher_score != rating or named - {rating}:
        flags.append("score_mismatch")
    if quote_found is None:
        flags.append("no_quotes")
    elif quote_found < 1.0:
        flags.append("quote_not_found")
    return flags


def build_drafts_table(items: pa.Table, ratings: pa.Table) -> pa.Table:
    """The teacher's answers (items/ rows) joined with the ratings they were given → DRAFT_SCHEMA."""
    given = {
        (sid, iid): (r, label, lang)
        for sid, iid, r, label, lang in zip(
            *(ratings.column(c).to_pylist() for c in ratings.schema.names), strict=True
        )
    }
    out: dict[str, list[Any]] = {name: [] for name in DRAFT_SCHEMA.names}
    cols = items.select(
        [
            "session_id",
            "item_id",
            "dimension",
            "rubric_id",
            "score",
            "rationale",
            "quotes",
            "quote_found",
        ]
    ).to_pylist()
    for row in cols:
        rating, label, language = given[(row["session_id"], row["item_id"])]
        teacher = int(round(row["score"]))
        out["session_id"].append(row["session_id"])
        out["item_id"].append(row["item_id"])
        out["dimension"].append(row["dimension"])
        out["language"].append(language)
        out["rubric_id"].append(row["rubric_id"])
        out["rating"].append(rating)
        out["rating_label"].append(label)
        out["teacher_score"].append(teacher)
        out["rationale"].append(row["rationale"])
        out["quotes"].append(row["quotes"] or [])
        out["quote_found"].append(row["quote_found"])
        out["flags"].append(
            draft_flags(rating, teacher, row["rationale"] or "", row["quote_found"])
        )
    table = pa.table(out, schema=DRAFT_SCHEMA)
    return table.sort_by([("session_id", "ascending"), ("item_id", "ascending")])


def drafts_summary(drafts: pa.Table) -> dict[str, Any]:
    """Flag shares, quote-found share and rationale lengths per dimension, for the manifest."""
    from care_ray.rationales.stats import length_summary

    n = drafts.num_rows
    flags = pc.list_flatten(drafts.column("flags")).to_pylist()
    flagged = int(pc.sum(pc.greater(pc.list_value_length(drafts.column("flags")), 0)).as_py() or 0)
    found = pc.mean(drafts.column("quote_found")).as_py()
    return {
        "drafts": n,
        "flagged": flagged,
        "flagged_share": round(flagged / n, 4) if n else None,
        "flags": {f: flags.count(f) for f in FLAGS},
        "quote_found_share": round(found, 4) if found is not None else None,
        "length_chars_by_dimension": length_summary(
            list(
                zip(
                    drafts.column("dimension").to_pylist(),
                    pc.utf8_length(drafts.column("rationale").fill_null("")).to_pylist(),
                    strict=True,
                )
            )
        ),
    }


def draft_corpus(config: DraftConfig) -> dict[str, Any]:
    """Draft every rated (session, item) of the corpus; resumable like scoring."""
    from care_ray.scoring.pipeline import score_corpus
    from care_ray.scoring.results import RunFolder

    rated, ratings = config.ratings()
    if not pc.any(rated.column("complete")).as_py():
        raise ValueError(
            f"no session in {config.sessions} has a rating for every selected item "
            "(client_wai, or a session label named in --label-map); nothing to draft"
        )
    manifest = score_corpus(config)
    run = RunFolder(config.out)
    drafts = build_drafts_table(run.read("items"), ratings)
    run.loc.join(DRAFTS_FILE).write_parquet(drafts)
    incomplete = rated.filter(pc.invert(rated.column("complete")))
    manifest.update(
        {
            "sessions_in_corpus": rated.num_rows,
            "sessions_not_drafted": {
                "without_a_rating_for_every_item": incomplete.num_rows,
                "example_ids": incomplete.column("session_id").to_pylist()[:5],
            },
            **drafts_summary(drafts),
        }
    )
    run.loc.join("manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    from care_ray.rationales.tables import attach_review_summary

    attach_review_summary(run.loc)  # a rerun that drafts more keeps the review's counts
    return manifest
