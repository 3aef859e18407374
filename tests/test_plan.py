"""`care-ray plan`: the arithmetic against a hand computation from the published and measured
figures, every assumption traced to a source that says it, tokens measured from a corpus recounted
independently, and one-line errors for bad options."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from care_ray.cli import app
from care_ray.scoring.plan import (
    GPUS,
    TokenProfile,
    default_tokens,
    estimate,
    measure_corpus_tokens,
    plan_table,
)
from care_ray.scoring.prompts import PromptBuilders, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

# The raw figures, as the sources state them (datasheets: dense bf16 TFLOP/s, memory GB/s).
DATASHEET = {"h200": (989, 4800), "h100": (989, 3350), "a100": (312, 2039), "l40s": (362.05, 864)}
H200_PREFILL, H200_SESSIONS_PER_S, EST_PREFILL, EST_DECODE = 21_300, 5, 1_800, 1_920


def one_line_error(r) -> str:
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


# --- arithmetic -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu", sorted(DATASHEET))
def test_estimate_matches_a_hand_computation(gpu):
    sessions, gpus, price = 123_457, 7, 2.5
    plan = estimate(sessions, default_tokens(), gpu=gpu, gpus=gpus, price_usd_per_gpu_hour=price)

    tflops, bandwidth = DATASHEET[gpu]
    h200_decode = EST_DECODE / (1 / H200_SESSIONS_PER_S - EST_PREFILL / H200_PREFILL)
    prefill = H200_PREFILL * tflops / DATASHEET["h200"][0]
    decode = h200_decode * bandwidth / DATASHEET["h200"][1]
    prompt_cached, output = (
        1.33 * 1_020,
        12 * 160,
    )  # RESULTS.md: 1.33 x a ~1,020-token prompt; 160 answer tokens x 12 items
    seconds = (prompt_cached / prefill + output / decode) * 1.20  # RESULTS.md pipeline overhead
    assert plan.prefill_tokens_per_s == pytest.approx(prefill, rel=1e-12)
    assert plan.decode_tokens_per_s == pytest.approx(decode, rel=1e-12)
    assert plan.seconds_per_session == pytest.approx(seconds, rel=1e-12)
    assert plan.engine_hours == pytest.approx(sessions * seconds / 3600, rel=1e-12)
    assert plan.wall_hours == pytest.approx(math.ceil(sessions / gpus) * seconds / 3600, rel=1e-12)
    assert plan.cost_usd == pytest.approx(sessions * seconds / 3600 * price, rel=1e-12)
    assert plan.tokens.prompt_tokens == 12 * 1_020
    d = plan.to_dict()
    assert d["totals"]["prompt_tokens_prefix_cache"] == pytest.approx(prompt_cached * sessions)
    assert d["totals"]["output_tokens"] == output * sessions


def test_the_h200_anchor_reproduces_the_estimate_it_came_from():
    shape = TokenProfile(
        items_per_session=12,
        prompt_tokens=12 * 1_122,
        prompt_tokens_cached=EST_PREFILL,
        output_tokens=EST_DECODE,
    )
    plan = estimate(1_000, shape, gpu="h200", overhead=1.0)
    assert plan.sessions_per_s_per_gpu == pytest.approx(H200_SESSIONS_PER_S)


def test_more_gpus_shorten_the_wall_time_not_the_bill():
    one = estimate(100_000, default_tokens(), gpu="h100", gpus=1, price_usd_per_gpu_hour=3.0)
    ten = estimate(100_000, default_tokens(), gpu="h100", gpus=10, price_usd_per_gpu_hour=3.0)
    assert ten.wall_hours == pytest.approx(one.wall_hours / 10)
    assert ten.cost_usd == pytest.approx(one.cost_usd) and ten.engine_hours == pytest.approx(
        one.engine_hours
    )
    few = estimate(3, default_tokens(), gpus=8)
    assert few.wall_hours == pytest.approx(
        few.seconds_per_session / 3600
    )  # 3 sessions on 8 GPUs: one session's time


# --- sources --------------------------------------------------------------------------------------


def _source_checks(source: str) -> bool:
    """A source is a file of this project or the shared docs that exists, a vendor datasheet, a
    derivation from figures listed with it, the corpus sample itself, or an option the user gave."""
    files = {
        "benchmarks/RESULTS.md": REPO / "benchmarks" / "RESULTS.md",
        "../shared/docs/stack-notes.md": REPO.parent / "shared" / "docs" / "stack-notes.md",
    }
    if any(name in source for name in files):
        return all(path.is_file() for name, path in files.items() if name in source)
    return bool(
        re.search(
            r"datasheet|implied by|a seeded sample|vllm/config/cache.py|--price|rule of thumb",
            source,
        )
    )


def test_every_assumption_names_a_source_and_is_printed_with_it():
    for gpu in GPUS:
        plan = estimate(10_000, default_tokens(), gpu=gpu, gpus=2, price_usd_per_gpu_hour=1.0)
        table = plan_table(plan)
        assert plan.assumptions
        for a in plan.assumptions:
            assert a.source.strip() and _source_checks(a.source), a
            assert a.source in table and a.name in table
        assert [x["source"] for x in plan.to_dict()["assumptions"]] == [
            a.source for a in plan.assumptions
        ]


def test_the_cited_figures_are_in_the_cited_files():
    results = (REPO / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    for figure in ("**1.33**", "~1,020-token prompts", "**1.12**", "**1.20**"):
        assert figure in results
    notes = (REPO.parent / "shared" / "docs" / "stack-notes.md").read_text(encoding="utf-8")
    for figure in (
        "21.3k tok/s",
        "5 sessions/s per H200",
        "1,920 decoded tokens",
        "160 output tokens",
        "1.8k prefill",
    ):
        assert figure in notes


# --- tokens measured from a corpus ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_corpus(esconv_corpus, tmp_path_factory) -> Path:
    """24 real ESConv sessions plus a Chinese one (scored with the Chinese rubric), as a corpus folder."""
    from care_ray.corpus.reader import sessions_dataset

    table = sessions_dataset(esconv_corpus).to_table().slice(0, 25)
    zh_turns = [
        {**t, "text": f"第{i}句：我最近总是睡不好，工作压力很大，不知道该怎么办。"}
        for i, t in enumerate(table.column("turns")[24].as_py())
    ]
    rows = table.to_pylist()
    rows[24] = {**rows[24], "session_id": "zh-1", "language": "zh-CN", "turns": zh_turns}
    out = tmp_path_factory.mktemp("small-corpus")
    (out / "sessions" / "source=test").mkdir(parents=True)
    pq.write_table(
        type(table).from_pylist(rows, schema=table.schema).drop_columns(["source"]),
        out / "sessions" / "source=test" / "part-0.parquet",
    )
    return out


def _lcp(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _hand_count(prompts_per_session, block, per_unit):
    """Without the cache every token is computed; with it, a prompt reuses the whole blocks it shares
    with any prompt run before it (this session's earlier items, the previous session's first item)."""
    totals, computed, previous = [], [], []
    for prompts in prompts_per_session:
        total = done = 0.0
        for i, p in enumerate(prompts):
            seen = previous + prompts[:i]
            shared = max([_lcp(p, s) for s in seen], default=0) * per_unit
            hit = max(0, math.floor(min(shared, len(p) * per_unit - 1) / block)) * block
            total += len(p) * per_unit
            done += len(p) * per_unit - hit
        totals.append(total)
        computed.append(done)
        previous = prompts[:1]
    return np.array(totals), np.array(computed)


def test_measured_tokens_with_the_models_tokenizer(small_corpus, tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    profile = measure_corpus_tokens(
        str(small_corpus),
        sample=1000,
        tokenizer=tokenizer,
        tokenizer_name=str(tiny_model),
        max_model_len=2048,
        max_new_tokens=512,
        block_size=16,
    )
    rows = pq.read_table(small_corpus / "sessions").to_pylist()
    assert profile.sessions_sampled == 25 and list(profile.session_ids) == [
        r["session_id"] for r in rows
    ]
    builders = PromptBuilders(tokenizer, 2048, 512)
    prompts, truncated = [], []
    for r in rows:
        builder = builders.for_language(r["language"])
        transcript, texts, _ = builder.item_prompts(r["turns"], builder.rubric.items)
        prompts.append(
            [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        )  # whole prompts, tokenised anew
        truncated.append(transcript.n_elided > 0)
    assert {builders.for_language(r["language"]).rubric.language for r in rows} == {"en", "zh"}
    totals, computed = _hand_count(prompts, 16, 1.0)
    assert profile.prompt_tokens == pytest.approx(totals.mean())
    assert profile.prompt_tokens_cached == pytest.approx(computed.mean())
    assert profile.prompt_tokens_p95 == pytest.approx(np.percentile(totals, 95))
    assert profile.prompt_tokens_cached_p95 == pytest.approx(np.percentile(computed, 95))
    assert (
        profile.truncated_share == pytest.approx(np.mean(truncated))
        and 0 < profile.truncated_share < 1
    )
    assert profile.output_tokens == 12 * 160
    # the cache leaves a session's 11 later prompts little to compute (RESULTS.md: 1.12-1.33 x one prompt)
    one_prompt = np.array([len(p[0]) for p in prompts])
    assert 1.0 < float(np.median(computed / one_prompt)) < 1.6


def test_measured_tokens_by_characters_without_a_tokenizer(small_corpus):
    profile = measure_corpus_tokens(
        str(small_corpus), sample=10, seed=3, chars_per_token=3.5, block_size=16
    )
    rows = pq.read_table(small_corpus / "sessions").to_pylist()
    chosen = np.sort(np.random.default_rng(3).choice(len(rows), size=10, replace=False))
    assert list(profile.session_ids) == [rows[i]["session_id"] for i in chosen]
    builders = PromptBuilders()
    prompts = []
    for i in chosen:
        builder = builders.for_language(rows[i]["language"])
        transcript = builder.transcript(rows[i]["turns"]).text
        prompts.append(
            [
                builder.rubric.prompt.system
                + "\n"
                + f"{builder.rubric.prompt.preamble}\n\n{transcript}\n\n"
                + builder.rubric.prompt.question.format(item=item.text)
                for item in builder.rubric.items
            ]
        )
    totals, computed = _hand_count(prompts, 16, 1 / 3.5)
    assert profile.prompt_tokens == pytest.approx(totals.mean())
    assert profile.prompt_tokens_cached == pytest.approx(computed.mean())
    assert profile.truncated_share is None
    assert any("3.5 characters per token" in a.source for a in profile.assumptions)


# --- the command ----------------------------------------------------------------------------------


def test_plan_command_table_and_json(small_corpus, tiny_model):
    r = runner.invoke(
        app,
        [
            "plan",
            "--sessions",
            "250000",
            "--corpus",
            str(small_corpus),
            "--model",
            str(tiny_model),
            "--gpu",
            "a100",
            "--gpus",
            "4",
            "--price",
            "1.5",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert (
        d["sessions"] == 250_000
        and d["gpus"] == 4
        and d["gpu"]["key"] == "a100"
        and d["sessions_sampled"] == 25
    )
    assert d["cost_usd"] == pytest.approx(d["engine_hours"] * 1.5)
    assert d["wall_hours"] == pytest.approx(d["engine_hours"] / 4)
    assert d["assumptions"] and all(_source_checks(a["source"]) for a in d["assumptions"]), d[
        "assumptions"
    ]
    r = runner.invoke(app, ["plan", "--sessions", "1000"])
    assert r.exit_code == 0, r.output
    assert (
        "engine-hours" in r.output
        and "pass --price" in r.output
        and "benchmarks/RESULTS.md" in r.output
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sessions", "0"], "--sessions: Input should be greater than or equal to 1"),
        (["--sessions", "10", "--gpus", "0"], "--gpus: Input should be greater than or equal to 1"),
        (
            ["--sessions", "10", "--gpu", "v100"],
            "--gpu: 'v100' is not one of h200, h100, a100, l40s",
        ),
        (
            ["--sessions", "10", "--price", "-2"],
            "--price: Input should be greater than or equal to 0",
        ),
        (
            ["--sessions", "10", "--chars-per-token", "0"],
            "--chars-per-token: Input should be greater than 0",
        ),
        (["--sessions", "10", "--model", "/m"], "give --corpus DIR too"),
        (
            ["--sessions", "10", "--corpus", "/nonexistent/corpus"],
            "no sessions corpus at /nonexistent/corpus",
        ),
    ],
)
def test_bad_options_are_one_line_errors(args, message):
    assert message in one_line_error(runner.invoke(app, ["plan", *args]))


def test_a_model_folder_without_a_tokenizer_is_refused(small_corpus, tmp_path):
    line = one_line_error(
        runner.invoke(
            app,
            ["plan", "--sessions", "10", "--corpus", str(small_corpus), "--model", str(tmp_path)],
        )
    )
    assert "no tokenizer" in line


def test_an_empty_corpus_is_refused(tmp_path):
    (tmp_path / "sessions").mkdir()
    line = one_line_error(
        runner.invoke(app, ["plan", "--sessions", "10", "--corpus", str(tmp_path)])
    )
    assert "no sessions" in line
