"""A synthetic scored corpus at any scale, for benchmarking `care-ray analyze`.

Writes, under DIR:
- `sessions/source=NAME/part-CHUNK.parquet`: sessions in the corpus contract (schemas/session.schema.json),
  with `manifest.json` beside them as `care-ray ingest` writes it;
- `scores/items/part-CHUNK.parquet`: 12 scored items per session (care_ray.scoring.pipeline ITEM_COLUMNS), and
  `scores/sessions/part-00000.parquet` aggregated from them by queries/session_scores.sql, as `care-ray score` does;
- `truth.json`: the effects planted in the scores, so a benchmark can check that analyze finds them.

Every column is built as a whole Arrow array per chunk of sessions (numpy draws, `take` from small phrase
pools, list offsets), never as per-turn Python objects, so a million sessions (~30 M turns) take minutes.
Deterministic: chunk k draws from numpy's generator seeded with (seed, k); all of a client's sessions
lie in one chunk, so chunks are independent.

Planted effects (all on the 1-5 item scale, before rounding to whole item scores):
- bond rises with the session's share of "Reflection of feelings" turns, task with "Providing Suggestions";
- a few "star" counselors score higher and a few "weak" ones lower on every dimension;
- each client's scores drift over their sessions (a mean slope above zero, so most clients rise);
- source `helpline` scores lower on goal than source `clinic`.
The two sources spell three strategies differently ("Question" vs "Questions", ...), so a per-source
label rule has something to do; reactions follow the counselor strategy before them.

    .venv/bin/python benchmarks/synthetic_corpus.py DIR   # or python -m care_ray.analytics.synthetic DIR
    --sessions 1000000 [--seed 7 --chunk 50000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from care_ray.common.sql import connect, read_query
from care_ray.contracts.rubric import load_rubric
from care_ray.contracts.session import session_schema
from care_ray.scoring.results import ITEM_COLUMNS, RESULT_SCHEMA

SOURCES = ("clinic", "helpline")
SOURCE_SHARE = (0.65, 0.35)
ZH_SHARE_OF_HELPLINE = 0.3
# One list per source, index-aligned: same strategy, the source's own spelling.
STRATEGIES = {
    "clinic": [
        "Question",
        "Restatement or Paraphrasing",
        "Reflection of feelings",
        "Self-disclosure",
        "Affirmation and Reassurance",
        "Providing Suggestions",
        "Information",
        "Others",
    ],
    "helpline": [
        "Questions",
        "Restatement",
        "Reflection of feelings",
        "Self-disclosure",
        "Affirmation and Reassurance",
        "Providing Suggestions",
        "Information",
        "Other",
    ],
}
STRATEGY_BASE = np.array([0.22, 0.12, 0.14, 0.06, 0.16, 0.14, 0.10, 0.06])
QUESTION, REFLECTION, SUGGESTIONS = 0, 2, 5
STYLE_CONCENTRATION = (
    12.0  # of each session's Dirichlet draw of strategy shares: lower = sessions differ more
)
REACTIONS = ["positive", "neutral", "negative"]
# P(reaction | the strategy of the counselor turn just before), rows in STRATEGIES order
REACTION_GIVEN_STRATEGY = np.array(
    [
        [0.40, 0.45, 0.15],
        [0.45, 0.40, 0.15],
        [0.60, 0.30, 0.10],
        [0.40, 0.40, 0.20],
        [0.55, 0.35, 0.10],
        [0.35, 0.40, 0.25],
        [0.35, 0.50, 0.15],
        [0.30, 0.50, 0.20],
    ]
)
REACTION_WITHOUT_STRATEGY = np.array([0.4, 0.45, 0.15])
STRATEGY_LABELLED, REACTION_LABELLED = 0.92, 0.85

EN_COUNSELOR = [
    "I hear that this has been weighing on you",
    "that sounds really hard",
    "thank you for telling me that",
    "it makes sense that you feel this way",
    "many people go through something similar",
    "let us look at this together",
    "you have already taken a big step",
    "it might help to write your thoughts down",
    "you could try a short walk each day",
    "I am glad you reached out tonight",
    "that took courage to share",
    "it seems you feel stuck right now",
    "so work has been piling up lately",
    "you sound exhausted and worried",
    "one small step could be enough for now",
    "some people find breathing exercises useful",
    "I went through a difficult move once myself",
    "we have a few minutes left",
    "you are doing the best you can",
    "it is okay to ask for help",
]
EN_QUESTION = [
    "how did that make you feel?",
    "what would help you most right now?",
    "can you tell me more about that?",
    "when did this start?",
    "who else knows about this?",
    "what have you tried so far?",
    "how are you sleeping?",
    "is there someone you trust?",
]
EN_CLIENT = [
    "I feel tired all the time",
    "work has been really stressful",
    "my partner and I keep arguing",
    "I do not know what to do anymore",
    "yes that is exactly it",
    "I tried that but it did not help",
    "maybe you are right",
    "I have not told anyone else",
    "it started a few months ago",
    "I cannot sleep at night",
    "thanks that helps a bit",
    "I guess I could try",
    "my family does not understand",
    "I feel a little better now",
    "it is hard to explain",
    "I lost my job last month",
    "everything feels like too much",
    "ok",
    "I am not sure",
    "that makes sense",
]
ZH_COUNSELOR = [
    "我能感受到你的压力",
    "这听起来真的很不容易",
    "谢谢你愿意告诉我",
    "你已经做得很好了",
    "我们可以一起想想办法",
    "也许可以试着每天散散步",
]
ZH_QUESTION = [
    "你现在感觉怎么样？",
    "这种情况是从什么时候开始的？",
    "你试过哪些方法？",
    "有谁可以支持你吗？",
]
ZH_CLIENT = [
    "我最近很累",
    "工作压力很大",
    "我不知道该怎么办",
    "谢谢你",
    "好像好一点了",
    "我睡不好",
    "家里人不理解我",
    "我可以试试",
]
CLIENT_QUESTION_SHARE, COUNSELOR_EXTRA_QUESTION = 0.08, 0.06
# Each turn also gets a tail of words drawn from its language's vocabulary, so texts are as long and as
# varied as real turns (~15 words) and Parquet stores them plainly rather than as a few dictionary entries.
TAIL_MEAN, TAIL_MAX = 5.0, 8
EN_VOCABULARY = sorted(
    {w.strip("?") for phrase in EN_COUNSELOR + EN_QUESTION + EN_CLIENT for w in phrase.split()}
)
ZH_VOCABULARY = sorted(
    {c for phrase in ZH_COUNSELOR + ZH_QUESTION + ZH_CLIENT for c in phrase if c not in "？，。"}
)

LOW_RATIONALE = {
    "goal": [
        "the goals stayed vague and no direction was agreed",
        "the counselor never pinned down concrete aims",
        "no shared goals emerged, the aims stayed vague",
    ],
    "task": [
        "the suggested homework felt pointless to the client",
        "the activities did not match what the client needed",
        "the exercises seemed pointless and mismatched",
    ],
    "bond": [
        "the counselor sounded cold and mechanical",
        "the client felt dismissed by a cold tone",
        "responses were dismissive and mechanical",
    ],
}
HIGH_RATIONALE = [
    "the client engaged openly with the counselor",
    "the session stayed focused on what the client raised",
    "the client agreed with the plan discussed",
    "the counselor reflected the client's feelings accurately",
    "the client thanked the counselor and seemed relieved",
    "the conversation moved at the client's pace",
]

# Scores: dimension mean on the 1-5 scale, then the planted effects.
DIMENSION_BASE = {"goal": 3.45, "task": 3.35, "bond": 3.85}
BOND_PER_REFLECTION_SHARE = (
    3.0  # bond + 3.0 × (reflection share − its mean): ~+0.25 per sd of the share
)
TASK_PER_SUGGESTION_SHARE = 2.5
HELPLINE_GOAL_SHIFT = -0.2
COUNSELOR_SD, CLIENT_SD = 0.12, 0.25
STAR_SHIFT, STAR_SHARE = 0.6, 0.01  # the first and last 1% of counselors: +0.6 / −0.6
SLOPE_MEAN, SLOPE_SD = 0.08, 0.10  # per session, per client
ITEM_NOISE_SD = 0.7
SESSIONS_PER_COUNSELOR = 250
FINGERPRINT = "synthetic-analytics-benchmark"


@dataclass(frozen=True)
class Population:
    """Corpus-wide draws shared by every chunk: the counselors and their effects."""

    n_counselors: int
    counselor_ids: pa.Array
    counselor_effect: np.ndarray
    star: np.ndarray
    weak: np.ndarray


def population(n_sessions: int, seed: int, sessions_per_counselor: int | None = None) -> Population:
    rng = np.random.default_rng([seed, 10**9])
    n = max(20, n_sessions // (sessions_per_counselor or SESSIONS_PER_COUNSELOR))
    n_special = max(1, int(n * STAR_SHARE))
    effect = rng.normal(0.0, COUNSELOR_SD, n)
    star, weak = np.arange(n_special), np.arange(n - n_special, n)
    effect[star] += STAR_SHIFT
    effect[weak] -= STAR_SHIFT
    ids = pa.array([f"co{i:05d}" for i in range(n)])
    return Population(n, ids, effect, star, weak)


def _strings(pool: list[str], index: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """pool[index] as an Arrow string array; null where mask is True."""
    return pa.array(pool).take(pa.array(index, mask=mask))


def _join(parts: list[pa.Array]) -> pa.Array:
    return pc.binary_join_element_wise(*parts, " ", null_handling="skip")


def _clients(rng: np.random.Generator, n_sessions: int) -> np.ndarray:
    """Sessions per client (1..8, mean ~3), summing to exactly n_sessions."""
    counts = np.minimum(1 + rng.poisson(2.0, n_sessions), 8)
    cut = int(np.searchsorted(np.cumsum(counts), n_sessions)) + 1
    counts = counts[:cut]
    counts[-1] -= counts.sum() - n_sessions
    return counts


def _turn_texts(rng, is_counselor, is_zh, ask, n_turns_total) -> pa.Array:
    """Each turn: one or two phrases of its speaker, a tail of vocabulary words (Poisson, at most TAIL_MAX),
    and a question when `ask`."""
    en_pools = (EN_COUNSELOR, EN_CLIENT, EN_QUESTION)
    zh_pools = (ZH_COUNSELOR, ZH_CLIENT, ZH_QUESTION)
    pools = [en + zh for en, zh in zip(en_pools, zh_pools, strict=True)]
    offsets = [np.where(is_zh, len(en), 0) for en in en_pools]
    sizes = [np.where(is_zh, len(zh), len(en)) for en, zh in zip(en_pools, zh_pools, strict=True)]

    def pick(k: int) -> np.ndarray:
        return offsets[k] + (rng.random(n_turns_total) * sizes[k]).astype(np.int64)

    speaker = np.where(is_counselor, pick(0), pick(1) + len(pools[0]))
    speaker_pool = pools[0] + pools[1]
    first = _strings(speaker_pool, speaker)
    second = _strings(
        speaker_pool,
        np.where(is_counselor, pick(0), pick(1) + len(pools[0])),
        mask=rng.random(n_turns_total) < 0.55,
    )
    question = _strings(pools[2], pick(2), mask=~ask)
    vocabulary = EN_VOCABULARY + ZH_VOCABULARY
    word_offset = np.where(is_zh, len(EN_VOCABULARY), 0)
    word_range = np.where(is_zh, len(ZH_VOCABULARY), len(EN_VOCABULARY))
    tail_length = rng.poisson(TAIL_MEAN, n_turns_total)
    tail = [
        _strings(
            vocabulary,
            word_offset + (rng.random(n_turns_total) * word_range).astype(np.int64),
            mask=tail_length <= j,
        )
        for j in range(TAIL_MAX)
    ]
    return _join([first, second, *tail, question])


def session_chunk(
    pop: Population, seed: int, chunk: int, n_sessions: int, first_session: int
) -> tuple[pa.Table, pa.Table, dict]:
    """(sessions in the contract schema, scored items, sums for truth.json) for one chunk."""
    rng = np.random.default_rng([seed, chunk])
    per_client = _clients(rng, n_sessions)
    n_clients = len(per_client)
    client_of = np.repeat(np.arange(n_clients), per_client)
    session_index = (
        np.arange(n_sessions) - np.repeat(np.cumsum(per_client) - per_client, per_client) + 1
    ).astype(np.int32)

    client_source = (rng.random(n_clients) >= SOURCE_SHARE[0]).astype(np.int64)
    client_zh = (client_source == 1) & (rng.random(n_clients) < ZH_SHARE_OF_HELPLINE)
    client_counselor = rng.integers(0, pop.n_counselors, n_clients)
    client_effect = rng.normal(0.0, CLIENT_SD, n_clients)
    client_slope = rng.normal(SLOPE_MEAN, SLOPE_SD, n_clients)
    source = client_source[client_of]
    is_zh = client_zh[client_of]
    counselor = client_counselor[client_of]

    # turns: counselor first, then alternating
    n_turns = (4 + rng.poisson(26, n_sessions)).astype(np.int64)
    turn_offsets = np.concatenate([[0], np.cumsum(n_turns)])
    total = int(turn_offsets[-1])
    of_session = np.repeat(np.arange(n_sessions), n_turns)
    position = np.arange(total) - turn_offsets[:-1][of_session]
    is_counselor = position % 2 == 0

    style = rng.dirichlet(STRATEGY_BASE * STYLE_CONCENTRATION, n_sessions)
    cumulative = np.cumsum(style, axis=1)
    strategy = (
        (rng.random(total)[:, None] > cumulative[of_session])
        .sum(axis=1)
        .clip(max=len(STRATEGY_BASE) - 1)
    )
    has_strategy = is_counselor & (rng.random(total) < STRATEGY_LABELLED)
    # client turns sit at odd positions, so the turn before one is always its own session's counselor turn
    strategy_before = np.roll(np.where(has_strategy, strategy, -1), 1)
    reaction_probs = np.where(
        (strategy_before >= 0)[:, None],
        REACTION_GIVEN_STRATEGY[strategy_before.clip(min=0)],
        REACTION_WITHOUT_STRATEGY,
    )
    reaction = (
        (rng.random(total)[:, None] > np.cumsum(reaction_probs, axis=1))
        .sum(axis=1)
        .clip(max=len(REACTIONS) - 1)
    )
    has_reaction = ~is_counselor & (rng.random(total) < REACTION_LABELLED)

    ask = np.where(
        is_counselor,
        (has_strategy & (strategy == QUESTION)) | (rng.random(total) < COUNSELOR_EXTRA_QUESTION),
        rng.random(total) < CLIENT_QUESTION_SHARE,
    )
    texts = _turn_texts(rng, is_counselor, is_zh[of_session], ask, total)
    turn_source = source[of_session]
    spelled = strategy + turn_source * len(STRATEGY_BASE)
    rating_mask = is_counselor | (turn_source == 0) | (rng.random(total) >= 0.05)
    turn_type = session_schema().field("turns").type.value_type
    turns_struct = pa.StructArray.from_arrays(
        [
            _strings(["client", "counselor"], is_counselor.astype(np.int64)),
            texts,
            pa.nulls(total, pa.timestamp("us", tz="UTC")),
            _strings(STRATEGIES[SOURCES[0]] + STRATEGIES[SOURCES[1]], spelled, mask=~has_strategy),
            _strings(REACTIONS, reaction, mask=~has_reaction),
            pa.array(rng.integers(1, 6, total).astype(np.float64), mask=rating_mask),
        ],
        fields=list(turn_type),
    )
    turns = pa.ListArray.from_arrays(
        pa.array(turn_offsets.astype(np.int32)),
        turns_struct,
        type=session_schema().field("turns").type,
    )

    # planted scores
    labelled = np.bincount(of_session, weights=has_strategy, minlength=n_sessions)
    share = {
        k: np.bincount(of_session, weights=has_strategy & (strategy == k), minlength=n_sessions)
        / np.maximum(labelled, 1)
        for k in (REFLECTION, SUGGESTIONS)
    }
    expected = STRATEGY_BASE / STRATEGY_BASE.sum()
    common = (
        pop.counselor_effect[counselor]
        + client_effect[client_of]
        + client_slope[client_of] * (session_index - 1)
    )
    truth = {
        "goal": DIMENSION_BASE["goal"] + common + HELPLINE_GOAL_SHIFT * (source == 1),
        "task": DIMENSION_BASE["task"]
        + common
        + TASK_PER_SUGGESTION_SHARE * (share[SUGGESTIONS] - expected[SUGGESTIONS]),
        "bond": DIMENSION_BASE["bond"]
        + common
        + BOND_PER_REFLECTION_SHARE * (share[REFLECTION] - expected[REFLECTION]),
    }

    session_ids = pa.array([f"s{first_session + i:08d}" for i in range(n_sessions)])
    client_ids = pa.array([f"cl{chunk:04d}-{j:06d}" for j in range(n_clients)]).take(
        pa.array(client_of)
    )
    started = np.datetime64("2024-01-01T09:00:00", "s") + (
        rng.integers(0, 300, n_clients)[client_of] + 7 * (session_index - 1)
    ).astype("timedelta64[D]")
    satisfaction = np.clip(np.rint(truth["bond"] + rng.normal(0, 0.8, n_sessions)), 1, 5)
    intensity_before = rng.integers(2, 6, n_sessions).astype(np.float64)
    intensity_after = np.clip(intensity_before - np.rint(rng.normal(1.0, 1.0, n_sessions)), 1, 5)
    labels = pa.MapArray.from_arrays(
        pa.array(np.arange(0, 3 * n_sessions + 1, 3, dtype=np.int32)),
        pa.array(
            np.tile(
                ["satisfaction", "initial_emotion_intensity", "final_emotion_intensity"], n_sessions
            )
        ),
        pa.array(np.stack([satisfaction, intensity_before, intensity_after], axis=1).ravel()),
    )
    metadata = pa.MapArray.from_arrays(
        pa.array(np.arange(0, 2 * n_sessions + 1, 2, dtype=np.int32)),
        pa.array(np.tile(["channel", "problem_type"], n_sessions)),
        pa.array(
            np.stack(
                [
                    np.where(
                        source == 0,
                        "video",
                        np.where(rng.random(n_sessions) < 0.5, "chat", "phone"),
                    ),
                    np.array(["work", "relationship", "family", "health", "grief"])[
                        rng.integers(0, 5, n_sessions)
                    ],
                ],
                axis=1,
            ).ravel()
        ),
    )
    sessions = pa.Table.from_arrays(
        [
            session_ids,
            client_ids,
            pop.counselor_ids.take(pa.array(counselor)),
            pa.array(session_index),
            pa.array(started).cast(pa.timestamp("us", tz="UTC")),
            _strings(["en", "zh"], is_zh.astype(np.int64)),
            _strings(list(SOURCES), source),
            turns,
            pa.nulls(n_sessions, pa.list_(pa.int8())),
            pa.nulls(n_sessions, pa.list_(pa.int8())),
            labels,
            metadata,
        ],
        schema=session_schema(),
    )
    items = _items(rng, session_ids, truth, n_turns, is_zh)
    sums = {
        "sessions": n_sessions,
        "turns": total,
        "clients": n_clients,
        "by_source": np.bincount(source, minlength=2).tolist(),
    }
    return sessions, items, sums


def _items(
    rng: np.random.Generator,
    session_ids: pa.Array,
    truth: dict[str, np.ndarray],
    n_turns: np.ndarray,
    is_zh: np.ndarray,
) -> pa.Table:
    """12 scored items per session: item score = the dimension's planted value + noise, rounded to 1..5."""
    rubric = load_rubric()
    item_ids = np.array([i.id for i in rubric.items], dtype=np.int32)
    dims = [i.dimension for i in rubric.items]
    n_sessions, n_items = len(session_ids), len(item_ids)
    rows = n_sessions * n_items
    of_session = np.repeat(np.arange(n_sessions), n_items)
    dimension_value = np.stack([truth[d] for d in dims], axis=1).ravel()
    score = np.clip(np.rint(dimension_value + rng.normal(0, ITEM_NOISE_SD, rows)), 1, 5)
    dim_code = np.tile([("goal", "task", "bond").index(d) for d in dims], n_sessions)
    low = score <= 2
    low_pool = [r for d in ("goal", "task", "bond") for r in LOW_RATIONALE[d]]
    low_pick = dim_code * 3 + rng.integers(0, 3, rows)
    rationale_pool = low_pool + HIGH_RATIONALE
    rationale = _strings(
        rationale_pool,
        np.where(low, low_pick, len(low_pool) + rng.integers(0, len(HIGH_RATIONALE), rows)),
    )
    quote_pool = EN_CLIENT + ZH_CLIENT
    quote_pick = np.where(
        np.repeat(is_zh, n_items),
        len(EN_CLIENT) + rng.integers(0, len(ZH_CLIENT), rows),
        rng.integers(0, len(EN_CLIENT), rows),
    )
    one_each = pa.array(np.arange(rows + 1, dtype=np.int32))
    prompt_tokens = (300 + 35 * n_turns[of_session]).astype(np.int32)
    first_item = np.tile(np.arange(n_items) == 0, n_sessions)
    columns = {
        "session_id": session_ids.take(pa.array(of_session)),
        "item_id": pa.array(np.tile(item_ids, n_sessions)),
        "dimension": _strings(dims, np.tile(np.arange(n_items), n_sessions)),
        "score": pa.array(score),
        "scores": pa.ListArray.from_arrays(one_each, pa.array(score.astype(np.int8))),
        "rationale": rationale,
        "quotes": pa.ListArray.from_arrays(one_each, _strings(quote_pool, quote_pick)),
        "quote_found": pa.array(np.where(rng.random(rows) < 0.95, 1.0, 0.0)),
        "n_valid_samples": pa.array(np.ones(rows, dtype=np.int32)),
        "prompt_tokens": pa.array(prompt_tokens),
        "output_tokens": pa.array(rng.integers(30, 90, rows).astype(np.int32)),
        "cached_tokens": pa.array(np.where(first_item, 0, prompt_tokens - 40).astype(np.int32)),
        "n_turns": pa.array(n_turns[of_session].astype(np.int32)),
        "n_elided_turns": pa.array(np.zeros(rows, dtype=np.int32)),
        "truncated": pa.array(np.zeros(rows, dtype=bool)),
        "attempts": pa.array(np.ones(rows, dtype=np.int8)),
        "finish_reason": pa.array(np.full(rows, "stop")),
        "n_items_selected": pa.array(np.full(rows, n_items, dtype=np.int32)),
        "model": pa.array(np.full(rows, "synthetic")),
        "adapter": pa.nulls(rows, pa.string()),
        "rubric_id": _strings(
            ["wai-sr-client-en-v1", "wai-sr-client-zh-v1"],
            np.repeat(is_zh, n_items).astype(np.int64),
        ),
        "engine": pa.array(np.full(rows, "synthetic")),
        "run_fingerprint": pa.array(np.full(rows, FINGERPRINT)),
        # a synthetic score is drawn, not decoded: no distribution at a score token
        "score_probs": pa.nulls(rows, pa.list_(pa.float64())),
        "expected_score": pa.nulls(rows, pa.float64()),
        "score_sd": pa.nulls(rows, pa.float64()),
        "score_unseen_max": pa.nulls(rows, pa.float64()),
    }
    schema = pa.schema([RESULT_SCHEMA.field(c) for c in ITEM_COLUMNS])
    return pa.Table.from_pydict({c: columns[c] for c in ITEM_COLUMNS}, schema=schema)


def _write_sessions(sessions: pa.Table, root: Path, chunk: int, row_group_size: int) -> None:
    """One file per source, the partition column in the path only (as `care-ray ingest` writes)."""
    for name in SOURCES:
        part = sessions.filter(pc.equal(sessions.column("source"), name)).drop_columns(["source"])
        if part.num_rows:
            folder = root / f"source={name}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(
                part, folder / f"part-{chunk:05d}.parquet", row_group_size=row_group_size
            )


def generate(
    out: Path,
    n_sessions: int,
    seed: int = 7,
    chunk_size: int = 50_000,
    row_group_size: int = 10_000,
    log=print,
    sessions_per_counselor: int | None = None,
) -> dict:
    """Write the corpus and its scores under `out` (replacing what is there); returns the corpus manifest."""
    out = Path(out)
    started = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    pop = population(n_sessions, seed, sessions_per_counselor)
    totals: dict[str, Any] = {"sessions": 0, "turns": 0, "clients": 0, "by_source": [0, 0]}
    for chunk, first in enumerate(range(0, n_sessions, chunk_size)):
        size = min(chunk_size, n_sessions - first)
        sessions, items, sums = session_chunk(pop, seed, chunk, size, first)
        _write_sessions(sessions, staging / "sessions", chunk, row_group_size)
        (staging / "scores" / "items").mkdir(parents=True, exist_ok=True)
        pq.write_table(
            items,
            staging / "scores" / "items" / f"part-{chunk:05d}.parquet",
            row_group_size=12 * row_group_size,
        )
        for key in ("sessions", "turns", "clients"):
            totals[key] += sums[key]
        totals["by_source"] = [
            a + b for a, b in zip(totals["by_source"], sums["by_source"], strict=True)
        ]
        log(
            f"chunk {chunk}: {totals['sessions']:,} sessions, {totals['turns']:,} turns "
            f"({time.perf_counter() - started:.0f} s)"
        )
    scores_dir = staging / "scores"
    (scores_dir / "sessions").mkdir(parents=True)
    con = connect("4GB", views={"items": scores_dir / "items"})
    con.execute("SET enable_progress_bar = false")
    con.sql(read_query("session_scores")).write_parquet(
        str(scores_dir / "sessions" / "part-00000.parquet")
    )
    seconds = round(time.perf_counter() - started, 1)
    manifest = {
        "kind": "care-ray sessions corpus",
        "contract_version": 1,
        "synthetic": {
            "generator": "care_ray.analytics.synthetic",
            "seed": seed,
            "chunk_size": chunk_size,
        },
        "input_records": totals["sessions"],
        "records_written": totals["sessions"],
        "records_quarantined": 0,
        "sessions_written": totals["sessions"],
        "turns_written": totals["turns"],
        "quarantine_rows": 0,
        "by_source": {
            name: {"sessions_written": n}
            for name, n in zip(SOURCES, totals["by_source"], strict=True)
        },
        "quarantined_by_reason": {},
        "seconds": seconds,
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (scores_dir / "manifest.json").write_text(
        json.dumps(
            {
                "kind": "care-ray scores",
                "synthetic": True,
                "sessions_in": totals["sessions"],
                "sessions_complete": totals["sessions"],
                "items_in": 12 * totals["sessions"],
                "items_scored": 12 * totals["sessions"],
                "items_errors": 0,
                "fingerprint": FINGERPRINT,
            },
            indent=2,
        )
        + "\n"
    )
    (staging / "truth.json").write_text(json.dumps(planted_truth(pop, totals), indent=2) + "\n")
    staging.rename(out)
    return manifest


def planted_truth(pop: Population, totals: dict) -> dict:
    return {
        "sessions": totals["sessions"],
        "turns": totals["turns"],
        "clients": totals["clients"],
        "counselors": pop.n_counselors,
        "star_counselors": pop.counselor_ids.take(pa.array(pop.star)).to_pylist(),
        "weak_counselors": pop.counselor_ids.take(pa.array(pop.weak)).to_pylist(),
        "effects": {
            "bond": {
                "feature": f"strategy:{STRATEGIES['clinic'][REFLECTION]}",
                "per_share": BOND_PER_REFLECTION_SHARE,
            },
            "task": {
                "feature": f"strategy:{STRATEGIES['clinic'][SUGGESTIONS]}",
                "per_share": TASK_PER_SUGGESTION_SHARE,
            },
            "goal": {"helpline_minus_clinic": HELPLINE_GOAL_SHIFT},
            "slope_per_session": {"mean": SLOPE_MEAN, "sd": SLOPE_SD},
        },
        "spellings": {"clinic": STRATEGIES["clinic"], "helpline": STRATEGIES["helpline"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--chunk",
        type=int,
        default=50_000,
        help="sessions per generated chunk (one file per source and chunk)",
    )
    a = ap.parse_args()
    print(json.dumps(generate(a.out, a.sessions, a.seed, a.chunk), indent=2))


if __name__ == "__main__":
    main()
