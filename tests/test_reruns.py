"""Runs you can trust (issue 15): one configuration per output folder, errors retried on request,
the rubric follows each session's language, and selection means what it says."""

import json
import math

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from care_ray.cli import app
from care_ray.contracts.output import output_schema
from care_ray.scoring.checks import prepare_run_folder
from care_ray.scoring.config import ScoreConfig, select_sessions
from care_ray.scoring.engines import EngineConfig, Generation, Sample
from care_ray.scoring.items import score_item_prompts
from care_ray.scoring.pipeline import finalize
from care_ray.scoring.results import RESULT_SCHEMA, RunFolder

runner = CliRunner()


def zh_session(sid="zh-1"):
    turns = [
        ("client", "我最近工作压力很大，晚上总是睡不着。"),
        ("counselor", "听起来这段时间你很辛苦。能说说压力主要来自哪里吗？"),
        ("client", "主要是老板总是临时加任务，我觉得自己做不完。"),
        ("counselor", "我们一起看看，哪些任务是你可以先放一放的。"),
    ]
    return {
        "session_id": sid,
        "client_id": f"c-{sid}",
        "language": "zh-CN",
        "source": "zh-test",
        "turns": [{"role": r, "text": t} for r, t in turns],
    }


@pytest.fixture(scope="module")
def mixed_corpus(esconv_corpus, tmp_path_factory):
    """Two real English ESConv sessions and one Chinese session, in one corpus."""
    from care_ray.corpus.ingest import ingest_files
    from care_ray.corpus.reader import iter_sessions

    d = tmp_path_factory.mktemp("mixed")
    english = [s for _, s in zip(range(2), iter_sessions(esconv_corpus), strict=False)]
    with open(d / "s.jsonl", "w", encoding="utf-8") as f:
        for s in [*english, zh_session()]:
            f.write(json.dumps(s, ensure_ascii=False, default=str) + "\n")
    ingest_files("sessions-jsonl", [d / "s.jsonl"], d / "corpus")
    return d / "corpus"


def score_cfg(corpus, model, out, **kw):
    base = dict(
        max_model_len=1024,
        max_new_tokens=160,
        max_rationale_chars=160,
        max_quotes=2,
        max_quote_chars=60,
        sessions_per_block=4,
        progress=False,
    )
    return ScoreConfig(sessions=corpus, model=str(model), out=out, **{**base, **kw})


# --- 1. one configuration per folder -------------------------------------------------------------


def test_a_rerun_with_other_settings_is_refused_and_names_the_differences(
    esconv_corpus, tiny_model, tmp_path
):
    out = tmp_path / "scores"
    fp = prepare_run_folder(out, score_cfg(esconv_corpus, tiny_model, out))
    RunFolder(out).write_results(
        pa.Table.from_pylist(
            [
                {
                    "session_id": "s",
                    "item_id": 1,
                    "status": "ok",
                    "score": 3.0,
                    "run_fingerprint": fp,
                }
            ],
            schema=RESULT_SCHEMA,
        )
    )
    assert (
        prepare_run_folder(out, score_cfg(esconv_corpus, tiny_model, out)) == fp
    )  # same settings: resume
    base = [
        "score",
        "--sessions",
        str(esconv_corpus),
        "--model",
        str(tiny_model),
        "--out",
        str(out),
        "--max-model-len",
        "1024",
        "--max-new-tokens",
        "160",
        "--max-rationale-chars",
        "160",
        "--no-progress",
    ]
    r = runner.invoke(app, [*base, "--temperature", "0.7", "--max-rationale-chars", "200"])
    assert r.exit_code == 2
    msg = r.output.strip()
    assert len(msg.splitlines()) == 1 and "1 scored items" in msg
    assert (
        "sampling.temperature: 0.0 → 0.7" in msg
        and "output_schema.properties.rationale.maxLength: 160 → 200" in msg
    )
    assert "--overwrite" in msg
    assert (
        len(list((out / "items").glob("part-*.parquet"))) == 1
    )  # refused before touching anything


def test_new_weights_in_the_same_model_folder_change_the_fingerprint(
    esconv_corpus, tiny_model, tmp_path
):
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    out = tmp_path / "scores"
    prepare_run_folder(out, score_cfg(esconv_corpus, model, out))
    RunFolder(out).write_results(
        pa.Table.from_pylist(
            [{"session_id": "s", "item_id": 1, "status": "ok", "score": 3.0}], schema=RESULT_SCHEMA
        )
    )
    weights = load_file(model / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01  # "retrained": same names and shapes, other values
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model: "):
        prepare_run_folder(out, score_cfg(esconv_corpus, model, out))
    # --overwrite is the explicit way out: the old results go, the new fingerprint is recorded
    fp = prepare_run_folder(out, score_cfg(esconv_corpus, model, out, overwrite=True))
    assert (
        not (out / "items").exists()
        and json.loads((out / "fingerprint.json").read_text())["fingerprint"] == fp
    )


def test_a_folder_without_a_fingerprint_is_not_resumed_blindly(esconv_corpus, tiny_model, tmp_path):
    RunFolder(tmp_path).write_results(
        pa.Table.from_pylist(
            [{"session_id": "s", "item_id": 1, "status": "ok", "score": 3.0}], schema=RESULT_SCHEMA
        )
    )
    with pytest.raises(ValueError, match="no fingerprint.json"):
        prepare_run_folder(tmp_path, score_cfg(esconv_corpus, tiny_model, tmp_path))


# --- 3. samples at temperature 0; argument checks leave no trace ---------------------------------


@pytest.mark.parametrize(
    "extra", [["--samples", "3"], ["--items", "goal,nonsense"], ["--retry-errors", "timeout"]]
)
def test_bad_arguments_fail_in_one_line_before_out_is_created(
    esconv_corpus, tiny_model, tmp_path, extra
):
    out = tmp_path / "never"
    r = runner.invoke(
        app,
        [
            "score",
            "--sessions",
            str(esconv_corpus),
            "--model",
            str(tiny_model),
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ],
    )
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.startswith("error: ")
    assert not out.exists()
    if extra[0] == "--samples":
        assert "needs --temperature > 0" in r.output


def test_an_engine_error_keeps_the_engines_own_message():
    class RaisingEngine:  # TEST DOUBLE: an engine that rejects the request, as vLLM's validation does
        name = "raising"

        def generate(self, prompts, max_tokens):
            raise ValueError("n=3 sampling needs temperature > 0")

    prompts = pa.table(
        {
            "session_id": ["s"],
            "item_id": pa.array([1], pa.int32()),
            "dimension": ["task"],
            "prompt_token_ids": [[1, 2, 3]],
            "n_turns": pa.array([2], pa.int32()),
            "n_elided_turns": pa.array([0], pa.int32()),
            "truncated": [False],
            "transcript": ["x"],
        }
    )
    t = score_item_prompts(
        prompts, RaisingEngine(), EngineConfig(model="m", max_model_len=512, max_new_tokens=32), {}
    )
    row = t.to_pylist()[0]
    assert row["status"] == "error" and row["error_reason"] == "engine_error"
    assert row["error_detail"] == "ValueError: n=3 sampling needs temperature > 0"


def test_max_rationale_chars_is_a_bound_not_a_hint():
    long = "x" * 242

    class OverlongEngine:  # TEST DOUBLE: an engine whose grammar let a 242-character rationale through
        name = "overlong"

        def generate(self, prompts, max_tokens):
            text = json.dumps({"score": 4, "rationale": long, "quotes": []})
            return [Generation([Sample(text, "stop", 80)], prompt_tokens=3) for _ in prompts]

    prompts = pa.table(
        {
            "session_id": ["s"],
            "item_id": pa.array([1], pa.int32()),
            "dimension": ["task"],
            "prompt_token_ids": [[1, 2, 3]],
            "n_turns": pa.array([2], pa.int32()),
            "n_elided_turns": pa.array([0], pa.int32()),
            "truncated": [False],
            "transcript": ["x"],
        }
    )
    bounded = EngineConfig(
        model="m",
        max_model_len=512,
        max_new_tokens=32,
        output_schema=output_schema(max_rationale_chars=240),
    )
    row = score_item_prompts(prompts, OverlongEngine(), bounded, {}).to_pylist()[0]
    assert (
        row["status"] == "error"
        and row["error_reason"] == "schema_violation"
        and "rationale" in row["error_detail"]
    )
    unbounded = EngineConfig(
        model="m", max_model_len=512, max_new_tokens=32, output_schema=output_schema()
    )
    assert (
        score_item_prompts(prompts, OverlongEngine(), unbounded, {}).to_pylist()[0]["rationale"]
        == long
    )


# --- smaller points --------------------------------------------------------------------------------


def test_limit_takes_the_first_sessions_in_corpus_order(tmp_path):
    ids = ["0", "1", "10", "100", "2", "11"]
    order = ["2", "100", "0", "11", "1", "10"]  # the input's order, not string order
    rows = [
        f"{sid},{role},{text} {sid},{k}"
        for sid in order
        for k, (role, text) in enumerate([("client", "hello"), ("counselor", "hi")])
    ]
    # interleave two sessions' rows: a session's place is where it first appears
    (tmp_path / "t.csv").write_text("conv,who,utt,k\n" + "\n".join(rows[2:] + rows[:2]) + "\n")
    r = runner.invoke(
        app,
        [
            "ingest",
            "--format",
            "turns-csv",
            str(tmp_path / "t.csv"),
            "--out",
            str(tmp_path / "c"),
            "--map",
            "session=conv",
            "--map",
            "role=who",
            "--map",
            "text=utt",
            "--map",
            "order=k",
            "--map",
            "client_values=client",
            "--map",
            "counselor_values=counselor",
        ],
    )
    assert r.exit_code == 0, r.output
    expected = order[1:] + order[:1]
    assert sorted(ids) == sorted(expected)
    assert select_sessions(tmp_path / "c", 3).to_pylist() == expected[:3]
    assert select_sessions(tmp_path / "c", None).to_pylist() == expected


def test_ingest_into_an_existing_corpus_refuses_or_appends_by_source(esconv_dir, tmp_path):
    jsonl = tmp_path / "zh.jsonl"
    jsonl.write_text(json.dumps(zh_session(), ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "corpus"
    assert (
        runner.invoke(
            app, ["ingest", "--format", "sessions-jsonl", str(jsonl), "--out", str(out)]
        ).exit_code
        == 0
    )
    again = runner.invoke(app, ["ingest", "--format", "esconv", str(esconv_dir), "--out", str(out)])
    assert again.exit_code == 2 and "--mode append" in again.output and "zh-test" in again.output
    assert (
        runner.invoke(
            app,
            [
                "ingest",
                "--format",
                "esconv",
                str(esconv_dir),
                "--out",
                str(out),
                "--mode",
                "append",
            ],
        ).exit_code
        == 0
    )
    m = json.loads((out / "manifest.json").read_text())
    assert set(m["by_source"]) == {"zh-test", "esconv"}
    assert (
        m["sessions_written"] == 1 + 1496
        and m["input_records"] == m["records_written"] + m["records_quarantined"]
    )
    assert [i["format"] for i in m["ingests"]] == ["sessions-jsonl", "esconv"]
    t = ds.dataset(out / "sessions", partitioning="hive").to_table(columns=["session_id", "source"])
    assert t.num_rows == 1497 and t.column("source").to_pylist().count("zh-test") == 1
    # the same source twice is refused (a duplicate partition would double-count), and ids
    # already in the corpus are duplicates
    clash = runner.invoke(
        app,
        ["ingest", "--format", "sessions-jsonl", str(jsonl), "--out", str(out), "--mode", "append"],
    )
    assert clash.exit_code == 2 and "source 'zh-test' is already in" in clash.output
    dup = runner.invoke(
        app,
        [
            "ingest",
            "--format",
            "sessions-jsonl",
            str(jsonl),
            "--out",
            str(out),
            "--mode",
            "append",
            "--source",
            "zh-again",
        ],
    )
    assert (
        dup.exit_code == 1 and "duplicate_session_id ×1" in dup.output
    )  # nothing written: said, with the reason
    assert json.loads((out / "manifest.json").read_text())["quarantined_by_reason"] == {
        "duplicate_session_id": 1
    }
    from care_ray.corpus.reader import validate_corpus

    assert validate_corpus(out)["ok"]


def test_a_finished_run_always_has_items_errors_and_sessions_tables(
    esconv_corpus, tiny_model, tmp_path
):
    cfg = score_cfg(esconv_corpus, tiny_model, tmp_path)
    fp = prepare_run_folder(tmp_path, cfg)
    fail = [
        {
            "session_id": "s",
            "item_id": i,
            "dimension": "task",
            "status": "error",
            "error_reason": "truncated",
            "run_fingerprint": fp,
        }
        for i in (1, 2)
    ]
    RunFolder(tmp_path).write_results(
        pa.Table.from_pylist(fail, schema=RESULT_SCHEMA)
    )  # everything failed
    m = finalize(tmp_path, ["s"], [1, 2], cfg, 0.0, fingerprint=fp)
    assert m["items_scored"] == 0 and m["items_errors"] == 2
    con = duckdb.connect()
    for sub, n in (("items", 0), ("errors", 2), ("sessions", 0)):
        assert con.sql(
            f"SELECT count(*) FROM read_parquet('{tmp_path / sub}/*.parquet')"
        ).fetchall() == [(n,)]
    assert "score" in pq.read_schema(next((tmp_path / "items").glob("part-*.parquet"))).names


# --- 4. the rubric follows the session's language -------------------------------------------------


def test_training_and_scoring_prompts_are_byte_identical_in_english_and_chinese(
    mixed_corpus, tiny_model, tmp_path
):
    from care_ray.contracts.rubric import load_rubric
    from care_ray.scoring.prompts import PromptBuilder, load_tokenizer
    from care_ray.scoring.stages import BuildItemPrompts
    from care_ray.training.sft_data import SFTOptions, make_sft_data, read_examples

    # the zh session carries client ratings, the English ones proxy labels: both have training targets
    sessions = ds.dataset(mixed_corpus / "sessions", partitioning="hive").to_table()
    wai = pa.array(
        [
            [4] * 12 if sid.startswith("zh") else None
            for sid in sessions.column("session_id").to_pylist()
        ],
        pa.list_(pa.int8()),
    )
    sessions = sessions.set_column(sessions.schema.get_field_index("client_wai"), "client_wai", wai)
    (tmp_path / "rated" / "sessions").mkdir(parents=True)
    pq.write_table(sessions, tmp_path / "rated" / "sessions" / "part-0.parquet")
    make_sft_data(
        tmp_path / "rated",
        tmp_path / "sft2",
        SFTOptions(folds=2, seed=1, label_map={"empathy": "bond"}, missing_rationale="template"),
        tokenizer_path=str(tiny_model),
        max_model_len=1024,
        max_new_tokens=160,
    )
    examples = read_examples(tmp_path / "sft2").to_pylist()
    assert {e["language"] for e in examples} == {"en", "zh-CN"}

    cfg = score_cfg(mixed_corpus, tiny_model, tmp_path / "out")
    prompts = BuildItemPrompts(cfg, list(range(1, 13)), None)(
        sessions.select(["session_id", "turns", "language"])
    )
    scoring = {(r["session_id"], r["item_id"]): r for r in prompts.to_pylist()}
    tok = load_tokenizer(str(tiny_model))
    render = PromptBuilder(load_rubric(), tok).render
    checked = {"en": 0, "zh": 0}
    for e in examples:
        s = scoring[(e["session_id"], e["item_id"])]
        trained = render(e["messages"])
        assert trained == s["prompt"]  # the same bytes
        assert (
            tok(trained, add_special_tokens=False)["input_ids"] == s["prompt_token_ids"]
        )  # and the same tokens
        lang = "zh" if e["language"].startswith("zh") else "en"
        assert s["rubric_id"] == f"wai-sr-client-{lang}-v1"
        checked[lang] += 1
    assert checked["zh"] == 12 and checked["en"] >= 4
    assert "来访者" in scoring[("zh-1", 1)]["prompt"] or "咨询师" in scoring[("zh-1", 1)]["prompt"]
    # --language overrides: every session gets the English rubric
    forced = BuildItemPrompts(
        score_cfg(mixed_corpus, tiny_model, tmp_path / "o2", language="en"), [1], None
    )(sessions.select(["session_id", "turns", "language"]))
    assert set(forced.column("rubric_id").to_pylist()) == {"wai-sr-client-en-v1"}


# --- 2. errors retried, on the real engine ---------------------------------------------------------


@pytest.mark.slow
def test_retry_errors_rescores_failed_pairs_once_each_with_the_rubric_of_each_language(
    mixed_corpus, tiny_model, tmp_path
):
    from care_ray.scoring.pipeline import score_corpus

    out = tmp_path / "out"
    marker = tmp_path / "engine-down"
    marker.touch()
    m1 = score_corpus(
        score_cfg(mixed_corpus, tiny_model, out, items="bond", fail_while_marker=str(marker))
    )
    assert (
        m1["items_in"] == 12
        and m1["items_errors"] == 12
        and m1["errors_by_reason"] == {"engine_error": 12}
    )
    details = pq.read_table(out / "errors").column("error_detail").to_pylist()
    assert all(
        d == "RuntimeError: injected engine failure while engine-down exists" for d in details
    )
    marker.unlink()  # the engine is back
    # a plain rerun resumes: errors are final unless asked for
    assert (
        score_corpus(score_cfg(mixed_corpus, tiny_model, out, items="bond"))["items_errors"] == 12
    )
    m2 = score_corpus(
        score_cfg(mixed_corpus, tiny_model, out, items="bond", retry_errors="engine_error")
    )
    assert m2["errors_released_for_retry"] == 12
    assert m2["items_scored"] == 12 and m2["items_errors"] == 0
    items = pq.read_table(out / "items").to_pylist()
    keys = [(r["session_id"], r["item_id"]) for r in items]
    assert len(keys) == len(set(keys)) == 12 and pq.read_table(out / "errors").num_rows == 0
    assert {r["run_fingerprint"] for r in items} == {m2["fingerprint"]} == {m1["fingerprint"]}
    rubric_of = {r["session_id"]: r["rubric_id"] for r in items}
    assert rubric_of["zh-1"] == "wai-sr-client-zh-v1"
    assert sorted(rubric_of.values()).count("wai-sr-client-en-v1") == 2
    assert m2["items_by_rubric"] == {"wai-sr-client-en-v1": 8, "wai-sr-client-zh-v1": 4}


# --- 5. checkpoint selection ------------------------------------------------------------------------


def test_selection_means_skip_undefined_dimensions_by_one_rule():
    from care_ray.training.selection import NO_DEFINED_SCORE, best_checkpoint, heldout_metrics

    sids = [f"s{k}" for k in range(6) for _ in range(3)]
    iids = [i for _ in range(6) for i in (1, 3, 4)]  # task, bond, goal
    dims = ["task", "bond", "goal"] * 6
    truth = [1, 2, 3, 2, 3, 4, 3, 4, 5, 4, 5, 1, 5, 1, 2, 2, 4, 3]
    preds = []
    for k in range(6):
        task, bond, goal = truth[3 * k : 3 * k + 3]
        preds += [
            (3, 3.0),
            (bond, float(bond)),
            (max(1, 6 - goal), float(6 - goal)),
        ]  # task constant: r undefined
    m = heldout_metrics(sids, iids, dims, truth, preds)
    assert math.isnan(m["heldout_pearson_task"]) and m["heldout_pearson_bond"] == pytest.approx(1.0)
    assert m["heldout_pearson_n_defined"] == m["heldout_spearman_n_defined"] == 2
    assert m["heldout_pearson_mean"] == pytest.approx(
        (m["heldout_pearson_bond"] + m["heldout_pearson_goal"]) / 2
    )
    assert m["heldout_spearman_mean"] == pytest.approx(
        (m["heldout_spearman_bond"] + m["heldout_spearman_goal"]) / 2
    )
    assert (
        m["heldout_selection_score"] == m["heldout_pearson_mean"]
        and "defined" in m["heldout_mean_rule"]
    )
    constant = heldout_metrics(sids, iids, dims, truth, [(3, 3.0)] * len(truth))
    assert (
        math.isnan(constant["heldout_pearson_mean"]) and constant["heldout_pearson_n_defined"] == 0
    )
    assert constant["heldout_selection_score"] == NO_DEFINED_SCORE
    weak = {"heldout_selection_score": -0.9, "step": 1}
    ranked = [
        ("const", {**constant, "step": 9}),
        ("weak", weak),
        ("none", {"heldout_selection_score": None, "step": 10}),
    ]
    assert best_checkpoint(ranked, "heldout_selection_score")[0] == "weak"
    assert best_checkpoint([("none", {"x": None}), ("nan", {"x": float("nan")})], "x")[0] in (
        "none",
        "nan",
    )


def test_selection_sees_a_checkpoint_that_decodes_the_mode_but_ranks_sessions_well():
    """#30: greedy 5 everywhere (no r) while Σ s·p(s) follows the truth. Selecting on the
    expected score (the default) ranks it by that r; on the greedy score it ranks last."""
    from care_ray.training.selection import NO_DEFINED_SCORE, best_checkpoint, heldout_metrics

    sids = [f"s{k}" for k in range(8)]
    truth = [5, 4, 5, 3, 5, 2, 4, 5]
    mode = [(5, 4.0 + 0.2 * t) for t in truth]  # expected tracks the truth, argmax never moves
    args = (sids, [3] * 8, ["bond"] * 8, truth, mode)
    expected = heldout_metrics(*args)
    greedy = heldout_metrics(*args, select_on="greedy")
    assert math.isnan(expected["heldout_pearson_bond"])  # the decoded score: constant
    assert expected["heldout_expected_pearson_bond"] == pytest.approx(1.0)
    assert expected["heldout_selection_score"] == pytest.approx(1.0)
    assert (
        expected["heldout_selected_on"] == "expected" and greedy["heldout_selected_on"] == "greedy"
    )
    assert greedy["heldout_selection_score"] == NO_DEFINED_SCORE
    # both kinds are kept whichever ranks
    assert greedy["heldout_expected_pearson_mean"] == expected["heldout_expected_pearson_mean"]
    spread = [(t, float(t)) for t in [3, 3, 4, 4, 3, 4, 3, 3]]  # varies, weakly related
    weak = heldout_metrics(sids, [3] * 8, ["bond"] * 8, truth, spread)
    ranked = [("mode", {**expected, "step": 1}), ("weak", {**weak, "step": 2})]
    assert best_checkpoint(ranked, "heldout_selection_score")[0] == "mode"
    with pytest.raises(ValueError, match="select_on"):
        heldout_metrics(*args, select_on="argmax")
