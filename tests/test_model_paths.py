"""Model and adapter paths are checked before anything starts, and nothing reaches a hub (issue 10)."""

import json
import shutil
import socket
import time

import pytest
from typer.testing import CliRunner

from care_ray.cli import app

runner = CliRunner()
HUB_ID = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
def no_network(monkeypatch):
    """Any outbound connection attempt is recorded and refused."""
    attempts = []

    def refuse(self, address, *a, **kw):
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def run_quickly(args):
    started = time.perf_counter()
    r = runner.invoke(app, args)
    return r, time.perf_counter() - started


def one_line_error(r):
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output
    return lines[0]


def broken_copy(tiny_model, tmp_path, remove=(), edit=None):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    for name in remove:
        (model / name).unlink()
    if edit:
        edit(model)
    return model


def score_args(corpus, model, out, *extra):
    return [
        "score",
        "--sessions",
        str(corpus),
        "--model",
        str(model),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_a_hub_id_fails_fast_without_a_network_attempt(esconv_corpus, tmp_path, no_network):
    r, seconds = run_quickly(score_args(esconv_corpus, HUB_ID, tmp_path / "out"))
    line = one_line_error(r)
    assert "never downloads weights" in line and "--local-dir" in line and HUB_ID in line
    assert seconds < 5 and no_network == [] and not (tmp_path / "out").exists()


def no_chat_template(model):
    (model / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))


def pickled_only(model):
    (model / "model.safetensors").rename(model / "pytorch_model.bin")


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "no such folder"),
        ("empty", "has no config.json"),
        ("file", "is a file"),
        ("pickled", "has only pickled weights"),
        ("no-weights", "has no safetensors weights"),
        ("no-tokenizer", "has no tokenizer"),
        ("no-template", "has no chat template"),
    ],
)
def test_each_broken_model_folder_is_one_line_naming_what_is_missing(
    esconv_corpus, tiny_model, tmp_path, no_network, case, expected
):
    model = {
        "missing": lambda: tmp_path / "no" / "such" / "folder",
        "empty": lambda: (tmp_path / "empty").mkdir() or tmp_path / "empty",
        "file": lambda: tiny_model / "config.json",
        "pickled": lambda: broken_copy(tiny_model, tmp_path, edit=pickled_only),
        "no-weights": lambda: broken_copy(tiny_model, tmp_path, remove=["model.safetensors"]),
        "no-tokenizer": lambda: broken_copy(tiny_model, tmp_path, remove=["tokenizer.json"]),
        "no-template": lambda: broken_copy(tiny_model, tmp_path, edit=no_chat_template),
    }[case]()
    r, seconds = run_quickly(score_args(esconv_corpus, model, tmp_path / "out"))
    line = one_line_error(r)
    assert expected in line and str(model) in line
    assert seconds < 5 and no_network == [] and not (tmp_path / "out").exists()


def write_adapter(folder, r=8, targets=("q_proj", "v_proj"), weights=True):
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": list(targets)})
    )
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: d / "nope", "no such folder"),
        (lambda d: (d / "a").mkdir() or d / "a", "has no adapter_config.json"),
        (lambda d: write_adapter(d / "a", weights=False), "has no adapter_model.safetensors"),
        (lambda d: write_adapter(d / "a", r=1024), "rank 1024"),
        (lambda d: write_adapter(d / "a", targets=("q_proj", "c_attn")), "does not have: c_attn"),
    ],
)
def test_each_broken_adapter_is_one_line(
    esconv_corpus, tiny_model, tmp_path, no_network, make, expected
):
    adapter = make(tmp_path)
    r, seconds = run_quickly(
        score_args(esconv_corpus, tiny_model, tmp_path / "out", "--adapter", str(adapter))
    )
    line = one_line_error(r)
    assert expected in line and "--adapter" in line
    assert seconds < 5 and no_network == []


def test_sft_data_and_finetune_check_the_model_too(esconv_corpus, tmp_path, no_network):
    r, seconds = run_quickly(
        [
            "sft-data",
            "--sessions",
            str(esconv_corpus),
            "--out",
            str(tmp_path / "sft"),
            "--model",
            HUB_ID,
            "--max-model-len",
            "1024",
        ]
    )
    assert "never downloads weights" in one_line_error(r) and seconds < 5
    from care_ray.training.sft_data import SFTOptions, make_sft_data

    make_sft_data(
        esconv_corpus,
        tmp_path / "sft",
        SFTOptions(folds=2, max_sessions=8, seed=1, missing_rationale="template"),
    )  # valid data: the model is what is wrong
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(
        f"name: t\nmodel: {tmp_path / 'gone'}\ndata: {tmp_path / 'sft'}\noutput_dir: "
        f"{tmp_path / 'o'}\nstorage_path: {tmp_path / 's'}\n"
    )
    r, seconds = run_quickly(["finetune", "--config", str(cfg)])
    assert "no such folder" in one_line_error(r) and seconds < 5 and no_network == []


def test_ray_workers_are_offline_too(monkeypatch):
    import ray

    from care_ray.cluster.ray import start_ray

    # the test session sets these for itself: without them here, only care-ray's runtime env can set them in the worker
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)

    if ray.is_initialized():
        ray.shutdown()
    start_ray(None)
    try:

        @ray.remote
        def try_the_hub():
            import os
            import socket

            attempts = []

            def refuse(self, address, *a, **kw):
                attempts.append(address)
                raise OSError("network disabled by the test")

            socket.socket.connect = refuse
            from transformers import AutoConfig

            try:
                AutoConfig.from_pretrained(HUB_ID)
                outcome = "loaded"
            except OSError as e:
                outcome = type(e).__name__
            return (
                {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")},
                outcome,
                attempts,
            )

        env, outcome, attempts = ray.get(try_the_hub.remote())
    finally:
        ray.shutdown()
    assert env == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    assert (
        outcome != "loaded" and attempts == []
    )  # the hub client refused on its own, before any connection
