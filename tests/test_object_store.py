"""Scoring with an object store for input and output (issue 8): a real S3 API served on localhost
by moto, the endpoint given the way users give theirs (AWS_* environment variables). Score to
s3://, kill the driver midway, rerun, and find exactly one row per pair."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from conftest import SMALL_ANSWERS, small_answer_flags

from care_ray.scoring.results import RunFolder

BUCKET = "care-ray-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    port = _free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        deadline = time.time() + 30
        while True:
            try:
                boto3.client("s3").create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        yield env
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def s3_corpus(s3_env, esconv_corpus):
    fs, _ = pafs.FileSystem.from_uri(f"s3://{BUCKET}/x")
    pafs.copy_files(
        str(esconv_corpus / "sessions"),
        f"{BUCKET}/corpus/sessions",
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=fs,
    )
    return f"s3://{BUCKET}/corpus"


def test_the_run_folder_commit_protocol_works_without_rename(s3_env):
    import pyarrow as pa

    from care_ray.scoring.results import RESULT_SCHEMA, consolidate, pending_plan

    run = RunFolder(f"s3://{BUCKET}/protocol")
    rows = [{"session_id": "a", "item_id": i, "status": "ok", "score": 3.0} for i in (1, 2)]
    run.write_results(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA))
    run.write_results(pa.Table.from_pylist(rows, schema=RESULT_SCHEMA))
    # a file whose writer died before its marker: invisible, then removed
    run.loc.join("items", "part-orphan.parquet").write_parquet(
        pa.Table.from_pylist(rows, schema=RESULT_SCHEMA).select(["session_id", "item_id"])
    )
    assert pending_plan(run, ["a", "b"], [1, 2])[1] == 2
    assert run.remove_orphans() == 1
    assert consolidate(run)["items_duplicates"] == 2 and run.read("items").num_rows == 2


@pytest.mark.slow
def test_score_to_s3_kill_the_driver_and_resume_exactly_once(s3_env, s3_corpus, tiny_model):
    import ray

    from care_ray.scoring.config import ScoreConfig
    from care_ray.scoring.pipeline import score_corpus

    out = f"s3://{BUCKET}/scores"
    args = [
        "--sessions",
        s3_corpus,
        "--model",
        str(tiny_model),
        "--out",
        out,
        "--limit",
        "6",
        "--items",
        "bond",
        *small_answer_flags(),
        "--no-progress",
    ]
    p = subprocess.Popen(
        [sys.executable, "-m", "care_ray", "score", "--ray-address", "local", *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "CARE_RAY_SESSIONS_PER_BLOCK": "1"},
    )
    run = RunFolder(out)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not run.committed("items"):
            assert p.poll() is None, "scoring finished or died before it could be killed"
            time.sleep(0.3)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert not run.loc.join("manifest.json").exists()
    before = (
        run.read("items", ["session_id", "item_id"]).num_rows
        + run.read("errors", ["session_id", "item_id"]).num_rows
    )
    assert 0 < before < 6 * 4

    ray.shutdown()  # the rerun's local Ray starts with this process's AWS_* settings
    rerun = ScoreConfig(
        sessions=s3_corpus,
        model=str(tiny_model),
        out=out,
        limit=6,
        items="bond",
        timeline=2,  # the cut points too: a run folder of their own under s3://…/scores/timeline
        timeline_drop=0,  # (the answers after drops are one more run folder of the same kind)
        **{**SMALL_ANSWERS, "sessions_per_block": 1},
    )
    m = score_corpus(rerun)
    assert m["pairs_done_before"] >= before
    assert m["items_scored"] + m["items_errors"] == m["items_in"] == 24
    keys = [
        (r["session_id"], r["item_id"])
        for sub in ("items", "errors")
        for r in run.read(sub, ["session_id", "item_id"]).to_pylist()
    ]
    assert len(keys) == len(set(keys)) == 24  # exactly one row per pair
    assert (
        run.loc.join("sessions", "part-00000.parquet").exists()
        and run.loc.join("fingerprint.json").exists()
    )
    names = {
        i.base_name for i in run.loc.fs.get_file_info(pafs.FileSelector(run.loc.join("items").path))
    }
    assert names == {Path(p).name for p in run.committed("items")}  # no orphans left behind
    # the timeline on the object store: its points joined back, and a rerun adds nothing
    import pyarrow.parquet as pq

    points_file = run.loc.join("timeline", "points.parquet")
    with points_file.fs.open_input_file(points_file.path) as f:
        points = pq.read_table(f).to_pylist()
    assert len(points) == m["timeline"]["points"] == 3 * m["timeline"]["cut_points"] > 0
    assert len({(r["session_id"], r["cut_turn"], r["item_id"]) for r in points}) == len(points)
    again = score_corpus(rerun)
    assert again["timeline"]["items_scored"] == len(points) and again["pairs_done_before"] == 24
    ray.shutdown()


def test_a_local_output_path_on_a_multi_node_cluster_is_refused():
    from care_ray.cluster.storage import location
    from care_ray.scoring.checks import check_output_reachable

    with pytest.raises(ValueError, match="other nodes would write to their own disks"):
        check_output_reachable(location("/tmp/x"), alive_nodes=2, shared_filesystem=False)
    check_output_reachable(
        location("/tmp/x"), alive_nodes=2, shared_filesystem=True
    )  # the user says it is mounted everywhere
    check_output_reachable(location("/tmp/x"), alive_nodes=1, shared_filesystem=False)


@pytest.mark.slow
def test_sft_data_finetune_and_the_adapter_travel_through_s3(
    s3_env, s3_corpus, esconv_corpus, tiny_model, tmp_path
):
    """Every path of the training side as a URI: sft-data writes its examples to s3://, finetune
    reads them from there, keeps Ray Train's checkpoints (storage_path) and publishes the adapter
    there (--out), score serves the adapter straight from its URI into s3://, and evaluate and
    analyze read those scores there."""
    import json

    from care_ray.cluster.storage import fetch_folder, location
    from care_ray.scoring.config import ScoreConfig
    from care_ray.scoring.fingerprint import folder_digest
    from care_ray.scoring.pipeline import score_corpus
    from care_ray.training.sft_data import SFTOptions, make_sft_data, read_examples

    sft = f"s3://{BUCKET}/sft"
    make_sft_data(
        s3_corpus, sft, SFTOptions(folds=2, max_sessions=16, seed=2, missing_rationale="template")
    )
    assert location(sft).join("examples.parquet").exists()
    examples = read_examples(sft)
    assert examples.num_rows and examples.num_rows % 12 == 0
    ft = f"s3://{BUCKET}/ft"
    run = subprocess.run(
        [
            sys.executable, "-m", "care_ray", "finetune",
            "--config", str(Path(__file__).parents[1] / "configs" / "finetune-tiny-cpu.yaml"),
            "--set", f"model={tiny_model}", "--set", f"data={sft}", "--set", "epochs=1",
            "--set", "folds=[0]", "--set", "scaling.num_workers=1",
            "--set", "max_train_examples=32", "--set", "max_eval_examples=16", "--out", ft,
        ],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(location(ft).join("summary.json").read_text())
    assert summary["per_fold"][0]["dir"] == f"{ft}/fold0"
    metrics = json.loads(location(ft).join("fold0", "metrics.json").read_text())
    assert metrics["adapter"] == f"{ft}/fold0/adapter"
    assert location(ft).join("fold0", "adapter", "adapter_model.safetensors").exists()
    assert metrics["selected_checkpoint"].startswith(f"{BUCKET}/ft/ray-results/") or metrics[
        "selected_checkpoint"
    ].startswith(f"s3://{BUCKET}/ft/ray-results/")
    assert location(ft).join("ray-results").is_dir()

    adapter = f"{ft}/fold0/adapter"
    scored = f"s3://{BUCKET}/scored-with-adapter"
    m = score_corpus(
        ScoreConfig(
            sessions=s3_corpus, model=str(tiny_model), adapter=adapter, out=scored,
            limit=2, items="bond", max_model_len=1024, max_new_tokens=96, max_rationale_chars=80,
            max_quotes=1, max_quote_chars=40, progress=False,
        )
    )  # fmt: skip
    assert m["items_in"] == 8 and m["items_scored"] + m["items_errors"] == 8
    recorded = json.loads(location(scored).join("fingerprint.json").read_text())
    assert recorded["settings"]["adapter"] == folder_digest(fetch_folder(adapter))
    assert recorded["info"]["adapter"] == adapter

    # the findings read the scores where they are
    from typer.testing import CliRunner

    from care_ray.cli import app

    res = CliRunner().invoke(
        app,
        [
            "evaluate", "--scores", scored, "--sessions", s3_corpus,
            "--truth", "labels.empathy=bond", "--out", str(tmp_path / "evaluation"),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert metrics["scores"] == scored and metrics["predicted_from"] == "sessions/"
    res = CliRunner().invoke(
        app,
        [
            "analyze", "--sessions", str(esconv_corpus), "--scores", scored,
            "--out", str(tmp_path / "analysis"),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    analysis = json.loads((tmp_path / "analysis" / "manifest.json").read_text())
    assert analysis["mode"] == "scores"
