"""The pure parts of scoring, with no engine: CPU planning, duplicate compaction, resume keys."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from care_ray.scoring import ITEM_COLUMNS, RESULT_SCHEMA, _write_results_batch, compact_duplicates, done_pairs, drop_errors_scored_since, plan_cpus, write_results


def results(rows):
    base = {c: None for c in RESULT_SCHEMA.names}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=RESULT_SCHEMA)


def test_engines_never_take_the_cpus_that_read_and_write_tasks_need():
    assert plan_cpus(2, 1, None, 0) == 0.75
    assert plan_cpus(2, 2, None, 0) == pytest.approx(0.375)
    assert plan_cpus(2, 1, 1.0, 0) == 0.75  # asked for too much: clamped
    assert plan_cpus(16, 4, None, 0) == 1.0
    assert plan_cpus(2, 1, None, 1) == 1.0  # GPU engines: CPUs are not the constraint
    with pytest.raises(ValueError, match="do not fit"):
        plan_cpus(2, 4, None, 0)


def test_results_split_into_items_and_errors_and_resume_keys(tmp_path):
    t = results([
        {"session_id": "a", "item_id": 1, "status": "ok", "score": 4.0, "scores": [4]},
        {"session_id": "a", "item_id": 2, "status": "error", "error_reason": "truncated", "raw_output": "{"},
        {"session_id": "b", "item_id": 1, "status": "ok", "score": 2.0, "scores": [2]},
    ])
    assert write_results(t, tmp_path) == {"items": 2, "errors": 1}
    assert pq.read_table(tmp_path / "items").column_names == ITEM_COLUMNS
    assert done_pairs(tmp_path) == {"a": {1, 2}, "b": {1}}
    (tmp_path / "items" / ".tmp-part-x.parquet").write_bytes(b"half a file")
    (tmp_path / "items" / "part-broken.parquet").write_bytes(b"PAR1 not really")
    assert done_pairs(tmp_path) == {"a": {1, 2}, "b": {1}}  # half-written files are removed, not trusted
    assert not (tmp_path / "items" / "part-broken.parquet").exists()


def test_a_retried_write_leaves_one_row_per_pair(tmp_path):
    t = results([{"session_id": "a", "item_id": i, "status": "ok", "score": 3.0, "scores": [3]} for i in (1, 2)])
    write_results(t, tmp_path)
    write_results(t, tmp_path)  # what a write task retried after its rename looks like
    assert compact_duplicates(tmp_path / "items") == 2
    rows = pq.read_table(tmp_path / "items").to_pylist()
    assert sorted((r["session_id"], r["item_id"]) for r in rows) == [("a", 1), ("a", 2)]
    assert compact_duplicates(tmp_path / "items") == 0


def test_a_pair_both_scored_and_failed_keeps_its_score(tmp_path):
    write_results(results([{"session_id": "a", "item_id": 1, "status": "error", "error_reason": "truncated", "raw_output": "{"},
                           {"session_id": "a", "item_id": 2, "status": "error", "error_reason": "truncated", "raw_output": "{"}]), tmp_path)
    write_results(results([{"session_id": "a", "item_id": 1, "status": "ok", "score": 5.0, "scores": [5]}]), tmp_path)
    assert drop_errors_scored_since(tmp_path) == 1
    assert [(r["session_id"], r["item_id"]) for r in pq.read_table(tmp_path / "errors").to_pylist()] == [("a", 2)]


def test_a_superseded_run_cannot_write(tmp_path):
    (tmp_path / ".run-id").write_text("new\n")
    t = results([{"session_id": "a", "item_id": 1, "status": "ok", "score": 4.0, "scores": [4]}])
    assert _write_results_batch(t, str(tmp_path), "old").column("items").to_pylist() == [0]
    assert not (tmp_path / "items").exists()
    assert _write_results_batch(t, str(tmp_path), "new").column("items").to_pylist() == [1]
