"""A CLI that teaches (issue 16): every option described, defaults shown, unknown keys named with
the nearest valid one, messages in the user's words, paths a submitted job cannot lose."""

import re
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from care_ray.cli import app

runner = CliRunner()


def one_line_error(r) -> str:
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    return lines[0]


def test_every_option_of_every_command_has_a_description():
    group = typer.main.get_command(app)
    ctx = click.Context(group)
    missing = []
    for name in group.list_commands(ctx):
        for param in group.get_command(ctx, name).params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{name} {param.opts[0]}")
    assert missing == []


def test_score_help_shows_the_defaults_a_run_gets():
    r = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    from care_ray.scoring.config import ScoreConfig

    text = " ".join(
        re.sub(r"[│╭╮╰╯─]", " ", r.output).split()
    )  # the help as one line, box drawing gone
    for option, field in (
        ("--max-model-len", "max_model_len"),
        ("--max-new-tokens", "max_new_tokens"),
        ("--num-engines", "num_engines"),
    ):
        described = text.split(option + " ", 1)[1].split(" --", 1)[0]
        assert f"[default: {ScoreConfig.model_fields[field].default}]" in described
    for option in (
        "--max-quotes",
        "--max-quote-chars",
        "--seed",
        "--dtype",
        "--kv-cache-gib",
        "--trust-remote-code",
        "--retry-errors",
        "--overwrite",
    ):
        assert option in r.output


def test_version():
    from importlib.metadata import version

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"care-ray {version('care-ray')}"


def test_score_config_rejects_unknown_keys_with_the_nearest_valid_one(tmp_path):
    cfg = tmp_path / "score.yaml"
    cfg.write_text("max_new_token: 128\nsessions: /x\nmodel: /m\nout: /o\n")
    line = one_line_error(runner.invoke(app, ["score", "--config", str(cfg)]))
    assert f"unknown key 'max_new_token' in {cfg} (did you mean 'max_new_tokens'?)" in line


def test_messages_name_the_option_not_the_field(tmp_path):
    line = one_line_error(
        runner.invoke(app, ["score", "--sessions", str(tmp_path), "--model", str(tmp_path)])
    )
    assert line == "error: --out is required"
    line = one_line_error(
        runner.invoke(
            app,
            [
                "score",
                "--sessions",
                str(tmp_path),
                "--model",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
                "--max-model-len",
                "100",
            ],
        )
    )
    assert line.startswith("error: --max-model-len: ") and "256" in line


def test_a_submitted_job_refuses_relative_paths(esconv_corpus, tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"working_dir": "."}}')
    line = one_line_error(
        runner.invoke(
            app,
            [
                "score",
                "--sessions",
                str(esconv_corpus),
                "--model",
                str(tiny_model),
                "--out",
                "out/x",
                "--no-progress",
            ],
        )
    )
    assert (
        "--out out/x is a relative path" in line
        and "ray job submit" in line
        and "$PWD/out/x" in line
    )
    # the fine-tuning job too: its config's relative paths are named with the config file
    config = Path(__file__).resolve().parents[1] / "configs" / "finetune-tiny-cpu.yaml"
    line = one_line_error(runner.invoke(app, ["finetune", "--config", str(config)]))
    assert f"{config}: model out/tiny-llama is a relative path" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["s3://bucket/x", "/abs/x"])
def test_absolute_paths_and_uris_pass_the_job_check(monkeypatch, value):
    from care_ray.cluster.jobs import refuse_relative_in_job

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    refuse_relative_in_job({"--out": value})


def test_a_config_file_that_is_not_yaml_is_one_line(tmp_path):
    bad = tmp_path / "score.yaml"
    bad.write_text("max_new_tokens: [1, 2\n")
    assert "not valid YAML" in one_line_error(runner.invoke(app, ["score", "--config", str(bad)]))
    missing = one_line_error(runner.invoke(app, ["score", "--config", str(tmp_path / "nope.yaml")]))
    assert "config file not found" in missing
