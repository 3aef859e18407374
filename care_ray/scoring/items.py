"""The pure core of scoring: (session, item) prompts + an engine → one validated result row each.

Generate, parse and validate against the output schema that steered generation; an answer that
fails gets one retry with twice the token budget; what still fails is an error row with its reason
and the raw output. Works on Arrow tables and any Engine; Ray appears only in the stages around it."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from care_ray.contracts.output import (
    InvalidOutput,
    OutputError,
    output_schema,
    parse_item_output,
    quote_found_share,
)
from care_ray.scoring.distribution import (
    ScoreDistribution,
    allowed_scores,
    mean_distribution,
    read_score_distribution,
)
from care_ray.scoring.engines import Engine, EngineConfig, Generation
from care_ray.scoring.results import RESULT_SCHEMA

log = logging.getLogger(__name__)

ERROR_REASONS = tuple(r.value for r in OutputError)


def engine_message(e: BaseException) -> str:
    """The engine's own words, kept in errors/ (an error type alone tells a user nothing)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}"[:1000] if text else type(e).__name__


def _judge(samples: Sequence, schema: dict) -> tuple[list[dict], InvalidOutput | None]:
    valid, first_err = [], None
    for s in samples:
        try:
            valid.append(parse_item_output(s.text, schema, s.finish_reason))
        except InvalidOutput as e:
            first_err = first_err or e
    return valid, first_err


def _distribution(samples: Sequence, allowed: tuple[int, ...] | None) -> ScoreDistribution | None:
    """The score distribution of an item: its samples' (those that carry log-probabilities)."""
    if not allowed:
        return None
    read = [
        read_score_distribution(s.chosen, s.top_logprobs, allowed)
        for s in samples
        if getattr(s, "top_logprobs", None)
    ]
    return mean_distribution([d for d in read if d is not None])


def score_item_prompts(
    prompts: pa.Table, engine: Engine, config: EngineConfig, run_meta: dict[str, Any]
) -> pa.Table:
    """Generate, parse and validate every (session, item) prompt; retry failures once with twice
    the token budget. Returns one RESULT_SCHEMA row per input row: status ok or error."""
    # Answers are judged against the schema that steered generation, tighter bounds included:
    # a --max-rationale-chars the grammar let slip is an error row, never a longer rationale.
    schema = config.output_schema or output_schema(score_only=config.score_only)
    allowed = allowed_scores(schema) if config.score_logprobs else None
    texts = prompts.column("prompt_token_ids").to_pylist()
    budget = config.max_new_tokens
    try:
        gens: list[Generation | Exception] = list(engine.generate(texts, budget))
    except Exception as e:  # an engine that raises (not dies) fails its rows, not the job
        log.warning("engine failed on a batch of %d prompts: %s", len(texts), type(e).__name__)
        log.debug("engine error: %s", engine_message(e))
        gens = [e] * len(texts)
    attempts = [1] * len(texts)
    judged = [
        (
            _judge(g.samples, schema)
            if not isinstance(g, Exception)
            else ([], InvalidOutput(OutputError.ENGINE_ERROR, engine_message(g)))
        )
        for g in gens
    ]
    # One retry with twice the budget, where the context has room for more than the first try.
    room = [
        config.max_model_len - (g.prompt_tokens if not isinstance(g, Exception) else 0)
        for g in gens
    ]
    retry = [
        i
        for i, (valid, _) in enumerate(judged)
        if not valid and (isinstance(gens[i], Exception) or room[i] > budget)
    ]
    if retry:
        try:
            regen = engine.generate(
                [texts[i] for i in retry], [min(2 * budget, room[i]) for i in retry]
            )
            for i, again in zip(retry, regen, strict=True):
                gens[i], attempts[i] = again, 2
                judged[i] = _judge(again.samples, schema)
        except Exception as e:
            log.warning(
                "engine failed on a retry batch of %d prompts: %s", len(retry), type(e).__name__
            )
            for i in retry:
                attempts[i] = 2

    # each session's rubric follows its language, so the rubric id comes with the prompt
    keep = ["session_id", "item_id", "dimension", "n_turns", "n_elided_turns", "truncated"] + (
        ["rubric_id"] if "rubric_id" in prompts.schema.names else []
    )
    rows = prompts.select(keep).to_pylist()
    dialogues = prompts.column("transcript").to_pylist()
    out: list[dict] = []
    for i, row in enumerate(rows):
        g = gens[i]
        valid, err = judged[i]
        ok = not isinstance(g, Exception) and bool(valid)
        # no error and no valid sample: an engine that returned no samples at all
        error = None if ok else err or InvalidOutput(OutputError.ENGINE_ERROR, "no samples")
        first = valid[0] if valid else None
        scores = [v["score"] for v in valid]
        samples = [] if isinstance(g, Exception) else g.samples
        dist = _distribution(samples, allowed) if ok else None
        row.update(
            status="ok" if ok else "error",
            score=statistics.fmean(scores) if scores else None,
            scores=scores or None,
            score_probs=list(dist.probs) if dist else None,
            expected_score=dist.expected if dist else None,
            score_sd=dist.sd if dist else None,
            score_unseen_max=dist.unseen_max if dist else None,
            rationale=first.get("rationale") if first else None,
            quotes=first.get("quotes") if first else None,
            quote_found=quote_found_share(first["quotes"], dialogues[i])
            if first and "quotes" in first
            else None,
            n_valid_samples=len(valid),
            prompt_tokens=None if isinstance(g, Exception) else g.prompt_tokens,
            output_tokens=sum(s.output_tokens for s in samples) if samples else None,
            cached_tokens=None if isinstance(g, Exception) else g.cached_tokens,
            attempts=attempts[i],
            finish_reason=samples[0].finish_reason if samples else None,
            error_reason=error.reason.value if error else None,
            error_detail=error.detail if error else None,
            raw_output=None if ok else (samples[0].text if samples else ""),
            **{k: v for k, v in run_meta.items() if k not in row},
        )
        out.append(row)
    return pa.Table.from_pylist(out, schema=RESULT_SCHEMA)
