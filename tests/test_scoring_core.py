"""The pure parts of scoring, with no engine: CPU planning, the run folder's commit protocol,
consolidation to one row per pair, the resume plan."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from care_ray.cluster.resources import engine_cpus, plan_cpus
from care_ray.scoring.results import (
    ITEM_COLUMNS,
    RESULT_SCHEMA,
    RunFolder,
    consolidate,
    consolidate_and_count,
    pending_plan,
    reconcile,
)
from care_ray.scoring.stages import _write_results_batch


def results(rows):
    base = {c: None for c in RESULT_SCHEMA.names}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=RESULT_SCHEMA)


def test_engines_never_take_the_cpus_that_read_and_write_tasks_need():
    assert plan_cpus(2, 1, None, 0) == 0.75
    assert plan_cpus(2, 2, None, 0) == pytest.approx(0.375)
    assert plan_cpus(2, 1, 1.0, 0) == 0.75  # asked for too much: clamped
    assert plan_cpus(16, 4, None, 0) == 1.0
    assert plan_cpus(2, 1, None, 1) == 1.0  # GPU engines: CPUs are not the constraint
    # engines pinned to a 2-CPU node of a cluster whose head has 16: sized from the 2 (four
    # engines at 1 CPU each would wait forever), the light tasks go to the head
    nodes = [{"CPU": 16.0}, {"CPU": 2.0, "engine_node": 4.0}]
    pinned, elsewhere = engine_cpus(nodes, {"engine_node": 1})
    assert (pinned, elsewhere) == (2.0, 16.0)
    assert plan_cpus(pinned, 4, None, 0, cpus_elsewhere=elsewhere) == 0.5
    assert engine_cpus(nodes, {}) == (18.0, 0.0) and plan_cpus(18, 4, None, 0) == 1.0
    # a 1-CPU head cannot take the whole reserve: the pinned node keeps what it lacks
    assert plan_cpus(2, 1, None, 0, cpus_elsewhere=1.0) == 1.0
    assert plan_cpus(2, 2, None, 0, cpus_elsewhere=1.0) == pytest.approx(0.875)
    with pytest.raises(ValueError, match="do not fit"):
        plan_cpus(2, 4, None, 0)


def test_results_split_into_items_and_errors_and_resume_keys(tmp_path):
    run = RunFolder(tmp_path)
    t = results(
        [
            {"session_id": "a", "item_id": 1, "status": "ok", "score": 4.0, "scores": [4]},
            {
                "session_id": "a",
                "item_id": 2,
                "status": "error",
                "error_reason": "truncated",
                "raw_output": "{",
            },
            {"session_id": "b", "item_id": 1, "status": "ok", "score": 2.0, "scores": [2]},
        ]
    )
    assert run.write_results(t) == {"items": 2, "errors": 1}
    assert run.read("items").column_names == ITEM_COLUMNS
    plan, done = pending_plan(run, ["a", "b", "c"], [1, 2])
    assert done == 3 and plan.to_pylist() == [
        {"session_id": "b", "missing": [2]},
        {"session_id": "c", "missing": None},  # every wanted item: no list
    ]
    # a data file without its commit marker (a writer killed in between) is not trusted, and finalize removes it
    (tmp_path / "items" / ".tmp-part-x.parquet").write_bytes(b"half a file")
    pq.write_table(
        results([{"session_id": "c", "item_id": 1, "status": "ok", "score": 3.0}]).select(
            ITEM_COLUMNS
        ),
        tmp_path / "items" / "part-orphan.parquet",
    )
    assert pending_plan(run, ["a", "b", "c"], [1, 2])[1] == 3
    assert run.remove_orphans() == 2
    assert sorted(p.name for p in (tmp_path / "items").iterdir()) == [
        Path(run.committed("items")[0]).name
    ]


def test_a_retried_write_leaves_one_row_per_pair(tmp_path):
    run = RunFolder(tmp_path)
    t = results(
        [
            {"session_id": "a", "item_id": i, "status": "ok", "score": 3.0, "scores": [3]}
            for i in (1, 2)
        ]
    )
    run.write_results(t)
    run.write_results(t)  # what a write task retried after its commit looks like
    assert consolidate(run) == {"items_duplicates": 2, "errors_dropped": 0}
    rows = run.read("items").to_pylist()
    assert sorted((r["session_id"], r["item_id"]) for r in rows) == [("a", 1), ("a", 2)]
    assert len(run.committed("items")) == 1
    assert consolidate(run) == {"items_duplicates": 0, "errors_dropped": 0}


def test_a_pair_both_scored_and_failed_keeps_its_score(tmp_path):
    run = RunFolder(tmp_path)
    run.write_results(
        results(
            [
                {
                    "session_id": "a",
                    "item_id": 1,
                    "status": "error",
                    "error_reason": "truncated",
                    "raw_output": "{",
                },
                {
                    "session_id": "a",
                    "item_id": 2,
                    "status": "error",
                    "error_reason": "truncated",
                    "raw_output": "{",
                },
            ]
        )
    )
    run.write_results(
        results([{"session_id": "a", "item_id": 1, "status": "ok", "score": 5.0, "scores": [5]}])
    )
    assert consolidate(run)["errors_dropped"] == 1
    assert [(r["session_id"], r["item_id"]) for r in run.read("errors").to_pylist()] == [("a", 2)]


def test_one_pass_consolidates_and_counts_the_selected_pairs(tmp_path):
    run = RunFolder(tmp_path)

    def ok(s, i):
        return {
            "session_id": s,
            "item_id": i,
            "status": "ok",
            "score": 3.0,
            "scores": [3],
            "rubric_id": "r",
        }

    def err(s, i):
        return {"session_id": s, "item_id": i, "status": "error", "error_reason": "truncated"}

    # a: both items scored, item 1 twice (a retried write); b: item 1 failed twice, item 2
    # failed then scored; c: item 1 failed, item 2 never written; z: not selected
    run.write_results(results([ok("a", 1), ok("a", 2), err("b", 1), err("b", 2), err("c", 1)]))
    run.write_results(results([ok("a", 1), err("b", 1), ok("b", 2), ok("z", 1), err("z", 2)]))
    dropped, counts = consolidate_and_count(run, ["a", "b", "c"], [1, 2])
    assert dropped == {"items_duplicates": 1, "errors_dropped": 2}
    assert counts == {
        "items_in": 6,
        "items_scored": 3,
        "items_errors": 2,
        "missing": 1,
        "sessions_with_errors": 2,
    }
    assert run.read("items").num_rows == 4 and run.read("errors").num_rows == 3
    with pytest.raises(RuntimeError, match="1 of 6 selected pairs"):
        reconcile(run, ["a", "b", "c"], counts)
    # the same counts after consolidation, and with c's last pair failed they reconcile
    assert consolidate_and_count(run, ["a", "b", "c"], [1, 2]) == (
        {"items_duplicates": 0, "errors_dropped": 0},
        counts,
    )
    run.write_results(results([err("c", 2)]))
    manifest = reconcile(
        run, ["a", "b", "c"], consolidate_and_count(run, ["a", "b", "c"], [1, 2])[1]
    )
    assert (manifest["items_errors"], manifest["sessions_complete"]) == (3, 1)
    assert manifest["errors_by_reason"] == {"truncated": 4}  # z's error counts in the totals


def test_a_superseded_run_cannot_write(tmp_path):
    (tmp_path / ".run-id").write_text("new\n")
    t = results([{"session_id": "a", "item_id": 1, "status": "ok", "score": 4.0, "scores": [4]}])
    assert _write_results_batch(t, str(tmp_path), "old").column("items").to_pylist() == [0]
    assert not (tmp_path / "items").exists()
    assert _write_results_batch(t, str(tmp_path), "new").column("items").to_pylist() == [1]


def test_aligned_prefixes_are_refused_for_a_model_care_ray_fine_tuned(tmp_path, tiny_model):
    from care_ray.scoring.checks import check_alignment_fits_the_model
    from care_ray.scoring.config import ScoreConfig

    base, adapter = tiny_model, tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "heldout.json").write_text("{}")

    def config(**kw):
        return ScoreConfig(sessions=str(tmp_path), model=str(base), out=str(tmp_path / "o"), **kw)

    check_alignment_fits_the_model(config(align_prefix_blocks=True))  # a base model: fine
    check_alignment_fits_the_model(config(adapter=str(adapter)))  # not aligned: fine
    with pytest.raises(ValueError, match="without padding; score it without --align"):
        check_alignment_fits_the_model(config(adapter=str(adapter), align_prefix_blocks=True))
    # trained on aligned prompts (sft-data --align-prefix-blocks 32): scored the same way only
    (adapter / "training_prompts.json").write_text('{"prefix_alignment": 32}')
    check_alignment_fits_the_model(
        config(adapter=str(adapter), align_prefix_blocks=True, block_size=32)
    )
    with pytest.raises(ValueError, match="--align-prefix-blocks --block-size 32"):
        check_alignment_fits_the_model(config(adapter=str(adapter)))
    with pytest.raises(ValueError, match="aligned to 32-token blocks, not 128"):
        check_alignment_fits_the_model(
            config(adapter=str(adapter), align_prefix_blocks=True, block_size=128)
        )


def test_padding_a_model_cannot_take_is_refused_before_ray(tmp_path, tiny_model):
    """The driver builds a probe session's aligned prompts with the model's own tokenizer: a chat
    template that rewrites the content leaves no shared text to pad, refused in one line."""
    import shutil

    from care_ray.common.errors import UserError
    from care_ray.scoring.checks import check_alignment_fits_the_model
    from care_ray.scoring.config import ScoreConfig

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['content'] | upper }}\n{% endfor %}"
    )
    config = ScoreConfig(
        sessions=str(tmp_path), model=str(model), out=str(tmp_path / "o"), align_prefix_blocks=True
    )
    with pytest.raises(UserError, match="^--align-prefix-blocks: this model's chat template"):
        check_alignment_fits_the_model(config)
    check_alignment_fits_the_model(config.model_copy(update={"align_prefix_blocks": False}))
