"""The one line a failed fine-tune ends with (care_ray.training.failures), from the errors Ray
Train raises."""

from __future__ import annotations

from pathlib import Path

from ray.exceptions import OutOfMemoryError
from ray.train import WorkerGroupError

from care_ray.training.failures import fold_failure


def _raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as e:
        return e


def test_a_worker_error_is_its_own_first_line_and_the_report_is_kept(tmp_path):
    def inner() -> None:
        raise KeyError("labels")

    try:
        try:
            inner()
        except KeyError as e:
            raise ValueError("the held-out example 7 has no score digit") from e
    except ValueError as worker:
        error = _raised(WorkerGroupError("rank 1 failed", {1: worker}))
    (tmp_path / "ray" / "run-fold2" / "step-000016").mkdir(parents=True)
    (tmp_path / "ray" / "run-fold2" / "step-000008").mkdir()
    failed = fold_failure(error, 2, str(tmp_path / "out"), str(tmp_path / "ray"), "run-fold2")
    line = str(failed)
    assert "\n" not in line
    assert line.startswith("fold 2 failed after step 16 (its last checkpoint): ")
    assert "ValueError: the held-out example 7 has no score digit" in line
    log = Path(line.rsplit("Ray's full report: ", 1)[1])
    assert log.read_text().count("Traceback") >= 2 and "KeyError" in log.read_text()


def test_memory_errors_name_what_ran_out_and_the_settings(tmp_path):
    host = _raised(WorkerGroupError("x", {0: OutOfMemoryError("the node running low on memory")}))
    line = str(fold_failure(host, 0, str(tmp_path), str(tmp_path / "none"), "r-fold0"))
    assert "before its first checkpoint" in line and "host RAM" in line
    assert "micro_batch_size" in line and "max_seq_len" in line
    gpu = _raised(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    line = str(fold_failure(gpu, 1, str(tmp_path), str(tmp_path), "r-fold1", "~9 GiB of 8 GiB"))
    assert "GPU memory (the plan: ~9 GiB of 8 GiB)" in line and "host RAM" not in line
