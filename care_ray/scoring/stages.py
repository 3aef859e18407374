"""The Ray Data stages of a scoring run: a block of sessions → its pending (session, item) prompts →
an engine replica's results → committed files in the run folder. Each stage is an actor or task
that is safe to retry: prompts are rebuilt from the corpus, results are written once under unique
names with commit markers, and a superseded run's late batches are dropped."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from care_ray.scoring.engines import EngineConfig
from care_ray.scoring.items import score_item_prompts
from care_ray.scoring.results import RunFolder

if TYPE_CHECKING:
    from care_ray.scoring.config import ScoreConfig

log = logging.getLogger(__name__)


class BuildItemPrompts:
    """Ray Data stage: a block of sessions → its pending (session, item) prompts."""

    # the corpus columns this stage reads
    columns: tuple[str, ...] = ("session_id", "turns", "language")

    def __init__(self, config: ScoreConfig, item_ids: list[int], plan_ref: Any):
        import ray

        from care_ray.scoring.prompts import load_tokenizer

        self.config = config
        self.builders = self.make_builders(
            config, load_tokenizer(config.model, config.trust_remote_code)
        )
        self.item_ids = item_ids
        # the resume plan (session → items still to score, None: all of them); no plan: every
        # session, every item
        self.pending: dict[str, list[int] | None] | None = None
        if plan_ref is not None:
            plan = ray.get(plan_ref)
            self.pending = dict(
                zip(
                    plan.column("session_id").to_pylist(),
                    plan.column("missing").to_pylist(),
                    strict=True,
                )
            )

    @staticmethod
    def make_builders(config: ScoreConfig, tokenizer: Any) -> Any:
        from care_ray.scoring.prompts import PromptBuilders

        return PromptBuilders(
            tokenizer,
            config.max_model_len,
            config.max_new_tokens,
            rubric_file=config.rubric,
            language_override=config.language,
            align_to=config.prefix_alignment(),
        )

    def session_prompts(
        self, session: dict[str, Any], one: pa.Table, missing: list[int]
    ) -> list[pa.Table]:
        """The prompts of one session's pending items (`one`: its session_id and turns)."""
        builder = self.builders.for_language(session["language"])
        return [builder.build_item_prompts(one, [builder.rubric.item(i) for i in missing])]

    def __call__(self, sessions: pa.Table) -> pa.Table:
        from care_ray.corpus.reader import row_to_session
        from care_ray.scoring.prompts import ITEM_PROMPT_SCHEMA

        parts = []
        turns_type = sessions.schema.field("turns").type
        for row in sessions.select(list(self.columns)).to_pylist():
            session = row_to_session(row)
            sid = session["session_id"]
            if self.pending is None:
                missing = self.item_ids
            elif sid not in self.pending:
                continue
            else:
                missing = self.pending[sid] or self.item_ids
            one = pa.table({"session_id": [sid], "turns": pa.array([row["turns"]], turns_type)})
            parts += self.session_prompts(session, one, list(missing))
        return pa.concat_tables(parts) if parts else ITEM_PROMPT_SCHEMA.empty_table()


class ScoreItemsActor:
    """Ray Data actor: one engine replica, kept for the whole run."""

    def __init__(self, config: EngineConfig, run_meta: dict[str, Any]):
        from care_ray.scoring.engines import make_engine

        self.config = config
        self.run_meta = run_meta
        self.engine = make_engine(config)

    def __call__(self, prompts: pa.Table) -> pa.Table:
        return score_item_prompts(prompts, self.engine, self.config, self.run_meta)

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


def _write_results_batch(results: pa.Table, out: str, run_id: str) -> pa.Table:
    # Fencing: a worker of a killed earlier run can outlive its driver for a while and still
    # finish a batch; once a newer run has claimed the folder, that batch is dropped, not written.
    run = RunFolder(out)
    if run.run_id() != run_id:
        log.warning("dropping %d results of a superseded run", results.num_rows)
        return pa.table({"items": [0], "errors": [0], "session_ids": ["[]"]})
    counts = run.write_results(results)
    sessions = pc.unique(results.column("session_id")).to_pylist() if results.num_rows else []
    return pa.table(
        {
            "items": [counts["items"]],
            "errors": [counts["errors"]],
            "session_ids": [json.dumps(sessions)],
        }
    )
