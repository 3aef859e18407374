"""Scoring on the real engine: Ray Data + vLLM (CPU build) + the tiny Llama, on real ESConv sessions."""

import os
import signal
import subprocess
import sys
import time

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import SMALL_ANSWERS as SMALL
from conftest import small_answer_flags

from care_ray.scoring.config import ScoreConfig
from care_ray.scoring.pipeline import score_corpus

pytestmark = pytest.mark.slow


def cfg(corpus, model, out, **kw):
    return ScoreConfig(sessions=corpus, model=str(model), out=out, **{**SMALL, **kw})


def pairs(folder):
    t = ds.dataset(folder).to_table(columns=["session_id", "item_id"])
    return list(
        zip(t.column("session_id").to_pylist(), t.column("item_id").to_pylist(), strict=True)
    )


@pytest.fixture(scope="module")
def scored(scored_esconv):
    return scored_esconv


def test_every_session_gets_twelve_validated_items(scored):
    out, m = scored
    assert m["sessions_in"] == 6 and m["items_in"] == 72
    assert m["items_scored"] == 72 and m["items_errors"] == 0  # guided decoding: nothing unparsed
    items = pq.read_table(out / "items").to_pylist()
    assert len(items) == 72 and len(set(pairs(out / "items"))) == 72
    for r in items:
        assert r["score"] in (1, 2, 3, 4, 5) and r["rationale"] and isinstance(r["quotes"], list)
        assert r["model"] and r["rubric_id"] == "wai-sr-client-en-v1" and r["engine"] == "vllm"
        assert r["quote_found"] is None or 0 <= r["quote_found"] <= 1
    assert not (out / "errors").exists() or not pairs(out / "errors")


def test_timeline_cut_points_are_scored_once_and_joined_back(scored, esconv_corpus):
    """`score --timeline 2`: each session also scored after two of its client turns (one item per
    dimension), into OUT/timeline/ with points.parquet; a rerun scores nothing again."""
    import polars as pl

    from care_ray.corpus.reader import sessions_dataset
    from care_ray.scoring.timeline import cut_turns

    out, m = scored
    timeline = m["timeline"]
    assert timeline["items"] == "1,3,4"  # the first item of each dimension: task, bond, goal
    points = pl.read_parquet(out / "timeline" / "points.parquet")
    turns = {
        r["session_id"]: [t["role"] for t in r["turns"]]
        for r in sessions_dataset(esconv_corpus)
        .head(6, columns=["session_id", "turns"])
        .to_pylist()
    }
    expected = {(sid, k) for sid, roles in turns.items() for k in cut_turns(roles, 2)}
    assert {(r["session_id"], r["cut_turn"]) for r in points.to_dicts()} == expected
    assert timeline["cut_points"] == len(expected) and points.height == 3 * len(expected)
    assert points.select("session_id", "cut_turn", "item_id").is_unique().all()
    for r in points.to_dicts():
        assert turns[r["session_id"]][r["cut_turn"]] == "client"
        assert r["position"] == pytest.approx(r["cut_turn"] / (r["n_turns"] - 1))
        assert r["score"] in (1, 2, 3, 4, 5) and r["expected_score"] is not None
    assert set(points["dimension"]) == {"goal", "task", "bond"}
    # a drop of >= 2 between consecutive cut points of an item: the cut after it has a full answer
    ordered = points.sort("session_id", "item_id", "cut_turn")
    after_drop = ordered.filter(
        (pl.col("score").shift(1).over("session_id", "item_id") - pl.col("score")) >= 2
    )
    assert after_drop.height > 0  # the random tiny model's scores jump: the path is exercised
    assert after_drop["rationale"].is_not_null().all()
    assert (
        timeline["answered_after_drops"] == after_drop.select("session_id", "cut_turn").n_unique()
    )
    # a rerun: every pair of every folder is already there, no engine starts
    again = score_corpus(cfg(esconv_corpus, m["config"]["model"], out, limit=6, timeline=2))
    assert again["pairs_done_before"] == 72 and again["timeline"]["items_scored"] == points.height
    assert pl.read_parquet(out / "timeline" / "points.parquet").height == points.height


def test_analyze_reads_the_timeline_with_each_sessions_end(scored, esconv_corpus, tmp_path):
    import polars as pl
    from typer.testing import CliRunner

    from care_ray.cli import app

    out, _ = scored
    result = CliRunner().invoke(
        app,
        ["analyze", "--sessions", str(esconv_corpus), "--scores", str(out), "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    curves = pl.read_parquet(tmp_path / "timeline_points.parquet").filter(
        pl.col("dimension") != "turn_rating"
    )
    assert set(curves["dimension"]) == {"goal", "task", "bond"}
    cut = pl.read_parquet(out / "timeline" / "points.parquet")
    for (sid, dim), curve in curves.group_by("session_id", "dimension"):
        positions = curve.sort("turn_index")["position"].to_list()
        assert positions[-1] == 1.0  # the full-session score of the same item ends the curve
        assert (
            len(positions)
            == cut.filter((pl.col("session_id") == sid) & (pl.col("dimension") == dim)).height + 1
        )
    sessions = pl.read_parquet(tmp_path / "timeline_sessions.parquet")
    assert sessions.filter(pl.col("dimension") == "bond").height == 6
    # the curves go with the seekers' own ratings, never with the scores that end them
    links = pl.read_parquet(tmp_path / "timeline_links.parquet")
    assert set(links["outcome"]) <= {
        "empathy",
        "relevance",
        "initial_emotion_intensity",
        "final_emotion_intensity",
        "supporter_relevance",
    }
    assert set(links["predictor"]) >= {"bond_mean", "bond_last"}


def test_session_scores_are_the_mean_of_their_dimension_items(scored):
    out, _ = scored
    items = pq.read_table(out / "items").to_pylist()
    sessions = {r["session_id"]: r for r in pq.read_table(out / "sessions").to_pylist()}
    assert len(sessions) == 6
    for sid, s in sessions.items():
        for dim in ("goal", "task", "bond"):
            vals = [r["score"] for r in items if r["session_id"] == sid and r["dimension"] == dim]
            assert len(vals) == 4 and s[dim] == pytest.approx(sum(vals) / 4)
        assert s["n_items_scored"] == 12


def test_prefix_cache_serves_the_shared_transcript(scored):
    out, m = scored
    items = pq.read_table(out / "items").to_pylist()
    by_session = {}
    for r in items:
        by_session.setdefault(r["session_id"], []).append(r)
    for rows in by_session.values():
        hits = [r for r in rows if (r["cached_tokens"] or 0) > 0]
        assert len(hits) >= 11  # at most the first prompt of a session computes its transcript
    assert m["cached_prompt_tokens"] / m["prompt_tokens"] > 0.5


def test_failed_answers_are_retried_then_kept_in_errors(esconv_corpus, tiny_model, tmp_path):
    # No length bounds and 16 tokens: most answers are cut, retried at 32 tokens, cut again.
    m = score_corpus(
        ScoreConfig(
            sessions=esconv_corpus,
            model=str(tiny_model),
            out=tmp_path,
            limit=2,
            items="bond",
            max_model_len=1024,
            max_new_tokens=16,
            progress=False,
        )
    )
    assert m["items_in"] == 8 and m["items_scored"] + m["items_errors"] == 8
    assert m["items_errors"] >= 1
    errors = pq.read_table(tmp_path / "errors").to_pylist()
    assert all(
        e["attempts"] == 2
        and e["raw_output"]
        and e["error_reason"] in ("truncated", "invalid_json", "schema_violation")
        for e in errors
    )
    assert m["sessions_in"] == m["sessions_complete"] + m["sessions_with_errors"]


def test_a_dead_engine_actor_is_restarted_and_the_job_completes(
    esconv_corpus, tiny_model, tmp_path
):
    marker = tmp_path / "crashed"
    m = score_corpus(
        cfg(esconv_corpus, tiny_model, tmp_path / "out", limit=4, crash_once_marker=str(marker))
    )
    assert marker.exists()  # the engine process really died once
    assert m["items_in"] == 48 and m["items_scored"] + m["items_errors"] == 48
    assert m["items_scored"] == 48


def test_samples_give_a_spread(esconv_corpus, tiny_model, tmp_path):
    m = score_corpus(
        cfg(
            esconv_corpus,
            tiny_model,
            tmp_path,
            limit=2,
            items="bond",
            samples=3,
            temperature=1.0,
            seed=1,
        )
    )
    assert m["items_scored"] + m["items_errors"] == 8
    items = pq.read_table(tmp_path / "items").to_pylist()
    assert all(
        1 <= len(r["scores"]) <= 3 and r["n_valid_samples"] == len(r["scores"]) for r in items
    )
    assert all(r["score"] == pytest.approx(sum(r["scores"]) / len(r["scores"])) for r in items)
    sessions = pq.read_table(tmp_path / "sessions").to_pylist()
    assert all(s["goal"] is None for s in sessions)  # only bond items were asked for
    assert any(s["bond_spread"] is not None for s in sessions)


def test_kill_the_driver_midway_then_rerun_resumes(esconv_corpus, tiny_model, tmp_path):
    out = tmp_path / "out"
    args = [
        "--sessions",
        str(esconv_corpus),
        "--model",
        str(tiny_model),
        "--out",
        str(out),
        "--limit",
        "8",
        "--items",
        "bond",
        *small_answer_flags(),
        "--no-progress",
    ]
    env = {**os.environ, "CARE_RAY_SESSIONS_PER_BLOCK": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "care_ray", "score", "--ray-address", "local", *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not list((out / "items").glob("part-*.parquet")):
            assert p.poll() is None, "scoring finished or died before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # driver, its local Ray and the engine: a real kill
        p.wait()
    assert not (out / "manifest.json").exists()
    before = set(pairs(out / "items")) | (
        set(pairs(out / "errors")) if (out / "errors").exists() else set()
    )
    assert 0 < len(before) < 8 * 4
    m = score_corpus(
        cfg(esconv_corpus, tiny_model, out, limit=8, items="bond", sessions_per_block=1)
    )
    # Ray workers of the killed run can outlive it by seconds and finish a batch: at least what
    # was on disk at the kill counts as done, and nothing they write after the rerun starts lands
    assert m["pairs_done_before"] >= len(before)
    after = pairs(out / "items") + (pairs(out / "errors") if (out / "errors").exists() else [])
    assert len(after) == len(set(after)) == 8 * 4  # exactly one row per pair
    assert before <= set(after)
    assert m["items_scored"] + m["items_errors"] == m["items_in"] == 32


def test_transformers_fallback_engine_runs_the_same_pipeline(esconv_corpus, tiny_model, tmp_path):
    m = score_corpus(
        cfg(
            esconv_corpus,
            tiny_model,
            tmp_path,
            limit=1,
            items="1,3",
            engine="hf",
            max_new_tokens=24,
        )
    )
    assert m["items_in"] == 2 and m["items_scored"] + m["items_errors"] == 2
    rows = (
        pq.read_table(tmp_path / "items").to_pylist() if (tmp_path / "items").exists() else []
    ) + (pq.read_table(tmp_path / "errors").to_pylist() if (tmp_path / "errors").exists() else [])
    assert {r["engine"] for r in rows} == {"hf"}


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def random_adapter(tiny_model, tmp_path_factory):
    """A LoRA adapter with random (non-zero) weights: enough to change greedy outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=32,
            target_modules=["q_proj", "v_proj", "o_proj"],
            init_lora_weights=False,
        ),
    )
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return out


def test_score_with_adapter_really_applies_it(
    esconv_corpus, tiny_model, random_adapter, scored_esconv, tmp_path
):
    # the base model's answers: the shared scored sample (same prompts, same greedy settings)
    base_out, _ = scored_esconv
    tuned = score_corpus(
        cfg(
            esconv_corpus,
            tiny_model,
            tmp_path / "tuned",
            limit=2,
            items="bond",
            adapter=str(random_adapter),
            score_logprobs=20,
        )
    )
    assert tuned["items_in"] == 8
    key = lambda r: (r["session_id"], r["item_id"])  # noqa: E731
    b = {key(r): r for r in pq.read_table(base_out / "items").to_pylist()}
    t = {key(r): r for r in pq.read_table(tmp_path / "tuned" / "items").to_pylist()}
    assert {r["adapter"] for r in t.values()} == {str(random_adapter)} and {
        r["adapter"] for r in b.values()
    } == {None}
    shared = b.keys() & t.keys()
    assert shared
    # the score distribution is read through the adapter too
    assert all(r["expected_score"] is not None and r["score_probs"] for r in t.values())
    # greedy decoding on the same prompts: any difference comes from the adapter
    assert (
        sum(
            (b[k]["score"], b[k]["rationale"]) != (t[k]["score"], t[k]["rationale"]) for k in shared
        )
        >= len(shared) // 2
    )


def test_aligned_prefix_blocks_reach_the_engine(esconv_corpus, tiny_model, tmp_path):
    """--align-prefix-blocks: the prompts the engine gets share whole KV blocks, the cache serves
    every one of them, and the folder's fingerprint records the alignment."""
    import json

    m = score_corpus(
        cfg(esconv_corpus, tiny_model, tmp_path, limit=2, align_prefix_blocks=True, block_size=32)
    )
    assert m["items_in"] == 24 and m["items_scored"] + m["items_errors"] == 24
    settings = json.loads((tmp_path / "fingerprint.json").read_text())["settings"]
    assert settings["prefix_alignment"] == 32
    rows = pq.read_table(tmp_path / "items").to_pylist()
    from care_ray.contracts.rubric import load_rubric
    from care_ray.corpus.reader import iter_sessions
    from care_ray.scoring.prompts import PromptBuilder, load_tokenizer

    rubric = load_rubric()
    builder = PromptBuilder(
        rubric,
        load_tokenizer(str(tiny_model)),
        max_model_len=SMALL["max_model_len"],
        max_new_tokens=SMALL["max_new_tokens"],
        align_to=32,
    )
    turns = {s["session_id"]: s["turns"] for s in iter_sessions(esconv_corpus)}
    for sid in {r["session_id"] for r in rows}:
        _, _, ids = builder.item_prompts(turns[sid], rubric.items)
        shared = len(os.path.commonprefix(ids))
        assert shared % 32 == 0
        mine = [r for r in rows if r["session_id"] == sid]
        own = {r["item_id"]: len(ids[r["item_id"] - 1]) - shared for r in mine}
        # prompts scheduled beside the session's first one compute the transcript too; the rest
        # find every shared token cached and compute exactly their own item's tokens
        exact = [r["prompt_tokens"] - (r["cached_tokens"] or 0) == own[r["item_id"]] for r in mine]
        assert sum(exact) >= 8, [r["prompt_tokens"] - (r["cached_tokens"] or 0) for r in mine]
    # the score distribution is kept (the default) with aligned prompts too
    assert rows and all(r["expected_score"] is not None for r in rows)


def test_logits_read_during_generation_equal_a_one_token_probe(esconv_corpus, tiny_model, tmp_path):
    """The distribution comes from the logits captured while the answer is generated (no second
    request); where that cannot happen the one-token probe reads it. Both give the same numbers,
    and the guided greedy score is their argmax."""
    from care_ray.contracts.rubric import load_rubric
    from care_ray.corpus.reader import sessions_dataset
    from care_ray.scoring.engines.vllm import VLLMEngine
    from care_ray.scoring.engines.vllm_capture import ScoreLogitsCapture
    from care_ray.scoring.prompts import PromptBuilder, load_tokenizer

    config = cfg(esconv_corpus, tiny_model, tmp_path, score_logprobs=20).engine_config()
    rubric = load_rubric()
    turns = sessions_dataset(esconv_corpus).to_table(columns=["session_id", "turns"]).slice(0, 2)
    builder = PromptBuilder(
        rubric, load_tokenizer(str(tiny_model)), config.max_model_len, config.max_new_tokens
    )
    prompts = builder.build_item_prompts(turns, rubric.items).column("prompt_token_ids").to_pylist()
    engine = VLLMEngine(config)
    seen: list[int] = []
    read, probe = engine._read_score_tokens, engine._probe_score_tokens

    def reading(*args):  # what the capture held when the answers were read
        seen.append(sum(len(v) for v in ScoreLogitsCapture.captured.values()))
        return read(*args)

    def no_probe(missed):
        raise AssertionError(f"{len(missed)} answers were probed, not read from the capture")

    try:
        assert engine._capturing and engine._value_tokens is not None  # single-token digits
        engine._read_score_tokens, engine._probe_score_tokens = reading, no_probe
        captured = engine.generate(prompts, config.max_new_tokens)
        assert seen and seen[0] >= len(prompts)  # at least the score position of each answer
        assert not ScoreLogitsCapture.captured  # each call takes its own captures away
        engine._probe_score_tokens = probe
        engine._value_tokens = None  # as where the logits cannot be captured: the probe reads
        probed = engine.generate(prompts, config.max_new_tokens)
    finally:
        engine.shutdown()
    assert len(captured) == len(probed) == 24
    for a, b in zip(captured, probed, strict=True):
        sa, sb = a.samples[0], b.samples[0]
        assert sa.text == sb.text and sa.chosen == sb.chosen and sa.top_logprobs
        got = dict(sa.top_logprobs[-1])
        want = dict(sb.top_logprobs[-1])
        assert set(got) == set(want) == {"1", "2", "3", "4", "5"}
        assert all(got[v] == pytest.approx(want[v], abs=1e-4) for v in got)
        assert sa.chosen[-1].strip() == max(got, key=got.get)  # greedy = argmax


def test_each_item_keeps_the_score_tokens_distribution(scored):
    """p(1..5) read at the score token: sums to 1 over the rubric's values (what the top-k left
    out is bounded and kept), the expected score is Σ s·p(s), and the greedy guided score is the
    distribution's argmax (the raw log-probabilities rank the allowed values as the mask leaves them)."""
    out, _ = scored
    items = pq.read_table(out / "items").to_pylist()
    assert items and all(r["score_probs"] is not None for r in items)
    for r in items:
        p = r["score_probs"]
        assert len(p) == 5 and sum(p) == pytest.approx(1.0) and min(p) >= 0
        assert r["expected_score"] == pytest.approx(sum((k + 1) * q for k, q in enumerate(p)))
        mean = r["expected_score"]
        assert r["score_sd"] == pytest.approx(
            sum(q * (k + 1 - mean) ** 2 for k, q in enumerate(p)) ** 0.5
        )
        assert 0 <= r["score_unseen_max"] <= 1
        assert r["score"] == 1 + max(range(5), key=lambda k: p[k])
    sessions = {r["session_id"]: r for r in pq.read_table(out / "sessions").to_pylist()}
    for sid, s in sessions.items():
        for dim in ("goal", "task", "bond"):
            vals = [
                r["expected_score"]
                for r in items
                if r["session_id"] == sid and r["dimension"] == dim
            ]
            assert s[f"{dim}_expected"] == pytest.approx(sum(vals) / 4)
